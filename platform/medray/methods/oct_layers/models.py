"""Segmentation candidates (segmentation-models-pytorch) with the seed's knobs exposed.

Registered in the model registry (``medray.models.create_model``)::

    oct_unet, oct_unetplusplus, oct_fpn, oct_deeplabv3plus   # the candidate architectures
    oct_tiny                                                  # a ~0.1 M-parameter Unet for tests

Knobs (``model.kwargs`` of a job; the Tune search varies them):

* ``encoder``: smp encoder name (``resnet18``, ``resnet34``, ``tu-<timm name>``...); weights are never
  downloaded (``encoder_weights=None``).
* ``encoder_depth``: number of down-samplings (3..5). Input height and width must be multiples of
  ``2**encoder_depth`` (the padded power-of-two height is; the window width is checked).
* ``decoder_channels``: number of kernels of the decoder: the width of the deepest decoder block
  (Unet/Unet++: halved at each following block, min 8), the pyramid width (FPN; its segmentation
  branch uses GroupNorm(32), so it gets max(32, half of it rounded down to 32)) or the ASPP/decoder
  width (DeepLabV3+).
* ``convs_per_block``: 3x3 conv-BN-ReLU layers per decoder block (Unet/Unet++ blocks have 2 by
  default: 1 drops the second, more adds layers); for FPN and DeepLabV3+ (whose decoders are not
  built from such blocks) ``convs_per_block - 1`` extra conv-BN-ReLU layers refine the decoder output
  before the segmentation head.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medray.errors import ConfigError
from medray.models.registry import register_model

ARCHITECTURES = ("unet", "unetplusplus", "fpn", "deeplabv3plus")


def _conv_bn_relu(c: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))


def _out_channels(m: nn.Module) -> int:
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    return convs[-1].out_channels


def _set_block_convs(decoder: nn.Module, n: int) -> None:
    """Unet/Unet++ decoder blocks (attributes conv1, conv2): keep conv1, then n-1 conv layers."""
    for block in decoder.modules():
        if hasattr(block, "conv1") and hasattr(block, "conv2") and isinstance(block.conv2, nn.Module):
            c = _out_channels(block.conv2)
            if n == 1:
                block.conv2 = nn.Identity()
            elif n > 2:
                block.conv2 = nn.Sequential(block.conv2, *[_conv_bn_relu(c) for _ in range(n - 2)])


class _Refined(nn.Module):
    """An smp model whose decoder output passes through extra conv layers before the head."""

    def __init__(self, model: nn.Module, n_extra: int):
        super().__init__()
        self.model = model
        c = model.segmentation_head[0].in_channels
        self.refine = nn.Sequential(*[_conv_bn_relu(c) for _ in range(n_extra)])

    def forward(self, x):
        m = self.model
        return m.segmentation_head(self.refine(m.decoder(m.encoder(x))))


def build_candidate(arch: str, *, num_classes: int, in_chans: int = 1, encoder: str = "resnet18",
                    encoder_depth: int = 5, decoder_channels: int = 64, convs_per_block: int = 2,
                    **kw: Any) -> nn.Module:
    import segmentation_models_pytorch as smp

    if arch not in ARCHITECTURES:
        raise ConfigError(f"model: unknown architecture {arch!r} (one of {', '.join(ARCHITECTURES)})")
    if not 3 <= int(encoder_depth) <= 5:
        raise ConfigError(f"model.kwargs.encoder_depth={encoder_depth} must be 3, 4 or 5")
    if int(convs_per_block) < 1:
        raise ConfigError(f"model.kwargs.convs_per_block={convs_per_block} must be >= 1")
    if int(decoder_channels) < 8:
        raise ConfigError(f"model.kwargs.decoder_channels={decoder_channels} must be >= 8")
    d, c = int(encoder_depth), int(decoder_channels)
    common = dict(encoder_name=encoder, encoder_depth=d, encoder_weights=None, in_channels=in_chans,
                  classes=num_classes, **kw)
    try:
        if arch in ("unet", "unetplusplus"):
            chans = [max(8, c >> i) for i in range(d)]
            cls = smp.Unet if arch == "unet" else smp.UnetPlusPlus
            model = cls(decoder_channels=chans, **common)
            _set_block_convs(model.decoder, int(convs_per_block))
            return model
        if arch == "fpn":
            model = smp.FPN(decoder_pyramid_channels=c, decoder_segmentation_channels=max(32, (c // 2) // 32 * 32),
                            decoder_dropout=0.0, upsampling=2 ** (d - 3), **common)
        else:
            model = smp.DeepLabV3Plus(decoder_channels=c, **common)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ConfigError(f"model: cannot build {arch} with encoder {encoder!r}, depth {d}: {e}") from None
    return _Refined(model, int(convs_per_block) - 1) if int(convs_per_block) > 1 else model


def _drop(kw: dict[str, Any]) -> dict[str, Any]:
    kw.pop("pretrained", None)
    return kw


@register_model
def oct_unet(num_classes: int, in_chans: int = 1, **kw: Any) -> nn.Module:
    """OCT candidate: smp Unet (encoder, encoder_depth, decoder_channels, convs_per_block)."""
    return build_candidate("unet", num_classes=num_classes, in_chans=in_chans, **_drop(kw))


@register_model
def oct_unetplusplus(num_classes: int, in_chans: int = 1, **kw: Any) -> nn.Module:
    """OCT candidate: smp Unet++ (encoder, encoder_depth, decoder_channels, convs_per_block)."""
    return build_candidate("unetplusplus", num_classes=num_classes, in_chans=in_chans, **_drop(kw))


@register_model
def oct_fpn(num_classes: int, in_chans: int = 1, **kw: Any) -> nn.Module:
    """OCT candidate: smp FPN (encoder, encoder_depth, decoder_channels, convs_per_block)."""
    return build_candidate("fpn", num_classes=num_classes, in_chans=in_chans, **_drop(kw))


@register_model
def oct_deeplabv3plus(num_classes: int, in_chans: int = 1, **kw: Any) -> nn.Module:
    """OCT candidate: smp DeepLabV3+ (encoder, encoder_depth, decoder_channels, convs_per_block)."""
    return build_candidate("deeplabv3plus", num_classes=num_classes, in_chans=in_chans, **_drop(kw))


@register_model
def oct_tiny(num_classes: int, in_chans: int = 1, **kw: Any) -> nn.Module:
    """Tiny OCT Unet for tests (timm test_resnet encoder, depth 3, 16 decoder kernels)."""
    kw = _drop(kw)
    kw.setdefault("encoder", "tu-test_resnet")
    kw.setdefault("encoder_depth", 3)
    kw.setdefault("decoder_channels", 16)
    return build_candidate(kw.pop("arch", "unet"), num_classes=num_classes, in_chans=in_chans, **kw)
