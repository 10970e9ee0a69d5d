"""Model registry: named variants over timm (and, for OCT, segmentation-models-pytorch).

``create_model(name, num_classes=..., in_chans=..., weights=URI)`` builds a registered variant. Names
are the function names of ``@register_model`` builders (timm's rule), plus a pass-through
``timm/<any timm model name>`` for everything else timm knows. Pretrained hub weights are OFF by
default (no network at run time); ``weights:`` loads a local or ``s3://`` safetensors file instead.

Every classification model exposes timm's interface: ``forward(x) -> logits``,
``forward_features(x)``, ``forward_head(feats, pre_logits=True) -> penultimate features`` and
``num_features`` (the ROP method's relation loss and the heatmap/age heads use these).
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from typing import Any, Callable

import torch
from torch import nn

from medray.errors import ConfigError

log = logging.getLogger(__name__)

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: the function name is the registry key."""
    name = fn.__name__
    if name in _ENTRYPOINTS:
        warnings.warn(f"overwriting model {name!r} in the registry", stacklevel=2)
    _ENTRYPOINTS[name] = fn
    _INFO[name] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    names = sorted(_ENTRYPOINTS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def model_info(name: str) -> str:
    return _INFO.get(name, "")


def is_model(name: str) -> bool:
    return name in _ENTRYPOINTS or name.startswith("timm/")


def _timm(name: str, *, num_classes: int, in_chans: int = 3, pretrained: bool = False, **kw: Any) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kw)


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | None = None,
    s3: Any = None,
    strict_weights: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model (or ``timm/<name>``) and optionally load safetensors ``weights``.

    Args:
        name: registry key (``medray models`` lists them) or ``timm/<timm name>``.
        num_classes: size of the output layer.
        in_chans: input channels (3 for colour photos, 1 for OCT, 4 for image + heatmap prior).
        pretrained: use timm's hub weights (needs network; off by default).
        weights: URI of a safetensors file whose tensors are loaded after building. Tensors whose
            shape does not match (e.g. a classifier head with another class count) are skipped with
            a warning unless ``strict_weights``.
        kwargs: extra builder arguments (``None`` values are dropped).

    Raises:
        ConfigError: unknown model name, or unusable weights.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name.startswith("timm/"):
        try:
            model = _timm(name[5:], num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
        except RuntimeError as e:
            raise ConfigError(f"model.name: {e}") from None
    elif name in _ENTRYPOINTS:
        model = _ENTRYPOINTS[name](num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kwargs)
    else:
        import difflib

        close = difflib.get_close_matches(name, list(_ENTRYPOINTS), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(
            f"model.name: unknown model {name!r}{hint} (registered: {', '.join(list_models())}; "
            "or use 'timm/<timm model name>')"
        )
    if weights:
        load_weights(model, weights, s3=s3, strict=strict_weights)
    return model


def load_weights(model: nn.Module, uri: str, s3: Any = None, strict: bool = False) -> dict[str, list[str]]:
    """Load a safetensors file (any storage URI) into ``model``; returns skipped/missing keys."""
    from safetensors.torch import load as st_load

    from medray import storage

    if uri.rsplit(".", 1)[-1].lower() in ("pt", "pth", "pkl", "bin", "ckpt"):
        raise ConfigError(f"model.weights: {uri}: only safetensors files are loaded (pickle is unsafe)")
    try:
        state = st_load(storage.read_bytes(uri, s3))
    except FileNotFoundError:
        raise ConfigError(f"model.weights: {uri}: file not found") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise ConfigError(f"model.weights: {uri}: not a safetensors file ({e})") from None
    own = model.state_dict()
    usable, skipped = {}, []
    for k, v in state.items():
        if k in own and own[k].shape == v.shape:
            usable[k] = v
        else:
            skipped.append(k)
    if strict and (skipped or set(own) - set(usable)):
        raise ConfigError(f"model.weights: {uri}: keys do not match the model (skipped {skipped[:5]}...)")
    missing = [k for k in own if k not in usable]
    model.load_state_dict(usable, strict=False)
    if skipped or missing:
        log.warning("weights %s: %d tensors skipped (shape/name mismatch), %d model tensors not in file",
                    uri, len(skipped), len(missing))
    return {"skipped": skipped, "missing": missing}


def state_dict_for_export(model: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous CPU state dict without the DDP ``module.`` prefix (safetensors-ready)."""
    m = model.module if hasattr(model, "module") else model
    m = getattr(m, "_orig_mod", m)  # torch.compile
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in m.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Classification variants (thin functions over timm; configs stop here)


@register_model
def tiny(num_classes: int, in_chans: int = 3, pretrained: bool = False, **kw: Any) -> nn.Module:
    """Tiny ConvNeXt (~0.2 M parameters) for tests and CPU smoke runs."""
    return _timm("test_convnext", num_classes=num_classes, in_chans=in_chans, pretrained=False, **kw)


@register_model
def tiny_effnet(num_classes: int, in_chans: int = 3, pretrained: bool = False, **kw: Any) -> nn.Module:
    """Tiny EfficientNet (~0.1 M parameters, BatchNorm) for tests."""
    return _timm("test_efficientnet", num_classes=num_classes, in_chans=in_chans, pretrained=False, **kw)


def _variant(timm_name: str, doc: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_chans: int = 3, pretrained: bool = False, **kw: Any) -> nn.Module:
        return _timm(timm_name, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kw)

    build.__name__ = timm_name
    build.__doc__ = doc
    return build


for _name, _doc in [
    ("resnet18", "ResNet-18 (11.7 M)"),
    ("resnet34", "ResNet-34 (21.8 M)"),
    ("resnet50", "ResNet-50 (25.6 M): the usual fundus baseline"),
    ("efficientnet_b0", "EfficientNet-B0 (5.3 M)"),
    ("efficientnet_b3", "EfficientNet-B3 (12 M)"),
    ("convnext_tiny", "ConvNeXt-T (28 M)"),
    ("tf_efficientnetv2_s", "EfficientNetV2-S (21.5 M)"),
    ("tf_efficientnetv2_m", "EfficientNetV2-M (54 M)"),
    ("tf_efficientnetv2_l", "EfficientNetV2-L (119 M)"),
    ("vit_small_patch16_224", "ViT-S/16 (22 M)"),
]:
    register_model(_variant(_name, _doc))
