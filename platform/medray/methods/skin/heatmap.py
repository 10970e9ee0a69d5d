"""Networks and losses of the skin method.

* :class:`HeatmapNet` -- the CenterNet-style lesion regressor: a timm ``features_only`` backbone, a
  small FPN-like upsampling head to ``out_stride`` (default 4), then per-class heat logits (K channels)
  and 2 radius channels (the lesion's two orthogonal half-sizes at its centre, as a fraction of the
  grid side). Registered as ``skin_heatnet``.
* :func:`focal_loss` -- CenterNet's penalty-reduced focal loss on the heat channels; pixels of the
  blind ring (``ignore``) are excluded. :func:`radius_l1` -- L1 on the radius channels at centres.
* :class:`SkinClassifier` -- an EfficientNetV2 (timm's V2 base blocks) scaled by width/depth
  multipliers, with ``in_chans`` inputs; an input with fewer channels is padded with zeros (the
  stage-5 heatmap prior channel is absent at inference). Registered as ``skin_effnetv2``.
  :func:`compound_scale` picks the width/depth/resolution under a params/FLOPs budget.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medray.models.registry import is_model, register_model

# --------------------------------------------------------------------------------------------
# the lesion regressor


class HeatmapNet(nn.Module):
    def __init__(self, backbone: str = "resnet18", n_classes: int = 5, in_chans: int = 3,
                 head_channels: int = 64, out_stride: int = 4, pretrained: bool = False):
        super().__init__()
        import timm

        self.backbone = timm.create_model(backbone, features_only=True, pretrained=pretrained, in_chans=in_chans)
        red = list(self.backbone.feature_info.reduction())
        chs = list(self.backbone.feature_info.channels())
        # levels at or below the output stride's resolution... and coarser ones
        self.use = [i for i, r in enumerate(red) if r >= out_stride]
        if not self.use:
            raise ValueError(f"backbone {backbone} has no feature level with stride >= {out_stride}")
        self.out_stride = out_stride
        self.lateral = nn.ModuleList([nn.Conv2d(chs[i], head_channels, 1) for i in self.use])
        self.fuse = nn.Sequential(nn.Conv2d(head_channels, head_channels, 3, padding=1),
                                  nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True))
        self.heat = nn.Sequential(nn.Conv2d(head_channels, head_channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(head_channels, n_classes, 1))
        self.radius = nn.Sequential(nn.Conv2d(head_channels, head_channels, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(head_channels, 2, 1))
        nn.init.constant_(self.heat[-1].bias, -2.19)  # CenterNet: initial p ~ 0.1
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        h, w = x.shape[-2] // self.out_stride, x.shape[-1] // self.out_stride
        y = None
        for lat, i in zip(self.lateral, self.use):
            f = lat(feats[i])
            if f.shape[-2:] != (h, w):
                f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
            y = f if y is None else y + f
        y = self.fuse(y)
        return {"heat": self.heat(y), "radius": self.radius(y)}


@register_model
def skin_heatnet(num_classes: int, in_chans: int = 3, pretrained: bool = False, backbone: str = "resnet18",
                 head_channels: int = 64, out_stride: int = 4, **kw: Any) -> nn.Module:
    """CenterNet-style skin lesion heatmap regressor (K heat + 2 radius channels)."""
    return HeatmapNet(backbone, num_classes, in_chans, head_channels, out_stride, pretrained=pretrained)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None,
               alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel focal loss, normalised by the number of centres.

    Args:
        logits: ``N x K x H x W`` heat logits.
        target: same shape, soft targets in [0, 1] (exactly 1 at centres).
        ignore: ``N x H x W`` bool; those pixels (the blind ring) contribute nothing, in every channel.
    """
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    t = target.float()
    pos = t.ge(1.0 - 1e-6).float()
    neg = 1.0 - pos
    keep = torch.ones_like(t) if ignore is None else (~ignore.bool()).unsqueeze(1).float().expand_as(t)
    pos_l = torch.log(p) * (1 - p) ** alpha * pos * keep
    neg_l = torch.log(1 - p) * p**alpha * (1 - t) ** beta * neg * keep
    n_pos = (pos * keep).sum()
    return -(pos_l.sum() + neg_l.sum()) / n_pos.clamp(min=1.0)


def radius_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 over the centre pixels of both radius channels (``pred``/``target`` ``N x 2 x H x W``)."""
    m = mask.bool().unsqueeze(1).expand_as(pred)
    if not m.any():
        return pred.sum() * 0.0
    return F.l1_loss(pred.float()[m], target.float()[m])


def peaks(heat: torch.Tensor, k: int = 10, threshold: float = 0.3) -> list[list[tuple[int, int, int, float]]]:
    """Local maxima (3x3 NMS) of sigmoid heat ``N x K x H x W``: per image ``(x, y, class, score)``."""
    hmax = F.max_pool2d(heat, 3, stride=1, padding=1)
    keep = (heat == hmax) & (heat >= threshold)
    out = []
    n, c, h, w = heat.shape
    for i in range(n):
        s = (heat[i] * keep[i]).reshape(-1)
        top = torch.topk(s, min(k, s.numel()))
        found = []
        for v, idx in zip(top.values.tolist(), top.indices.tolist()):
            if v < threshold:
                break
            cls, rem = divmod(idx, h * w)
            y, x = divmod(rem, w)
            found.append((x, y, cls, float(v)))
        out.append(found)
    return out


# --------------------------------------------------------------------------------------------
# the classifier: EfficientNetV2 with compound scaling


class SkinClassifier(nn.Module):
    """EfficientNetV2 (V2 base blocks scaled by ``width``/``depth``) taking ``in_chans`` channels; an
    input with fewer channels (the image without its heatmap prior) is padded with zero channels."""

    def __init__(self, num_classes: int, in_chans: int = 3, width: float = 1.0, depth: float = 1.0,
                 drop_rate: float = 0.2):
        super().__init__()
        from timm.models.efficientnet import _gen_efficientnetv2_base

        self.in_chans = in_chans
        self.net = _gen_efficientnetv2_base("efficientnetv2_rw_t", channel_multiplier=width, depth_multiplier=depth,
                                            num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] < self.in_chans:
            pad = x.new_zeros((x.shape[0], self.in_chans - x.shape[1], *x.shape[2:]))
            x = torch.cat([x, pad], 1)
        return self.net(x)


@register_model
def skin_effnetv2(num_classes: int, in_chans: int = 3, pretrained: bool = False, width: float = 1.0,
                  depth: float = 1.0, drop_rate: float = 0.2, **kw: Any) -> nn.Module:
    """EfficientNetV2 (compound-scaled width/depth) for skin classification; zero-pads missing input
    channels (the optional heatmap prior)."""
    return SkinClassifier(num_classes, in_chans, width, depth, drop_rate)


def inflate_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Stage-3 weights for a stage-5 model with more input channels: tensors that differ only in their
    input-channel dimension get zero weights for the new channels (the model starts as stage 3)."""
    own = model.state_dict()
    out = {}
    for k, v in state.items():
        if k in own and own[k].shape != v.shape and v.dim() == 4 and own[k].shape[0] == v.shape[0] \
                and own[k].shape[2:] == v.shape[2:] and own[k].shape[1] > v.shape[1]:
            nv = torch.zeros_like(own[k])
            nv[:, : v.shape[1]] = v
            out[k] = nv
        else:
            out[k] = v
    return out


@dataclass
class Scaled:
    phi: float
    width: float
    depth: float
    resolution: int
    params_m: float
    gflops: float


@functools.lru_cache(maxsize=256)
def model_cost(num_classes: int, in_chans: int, width: float, depth: float, resolution: int) -> tuple[float, float]:
    """(parameters in millions, GFLOPs of one forward pass at ``resolution``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):  # shapes only: no memory, no initialisation, no arithmetic
        m = SkinClassifier(num_classes, in_chans, width, depth).eval()
        params = sum(p.numel() for p in m.parameters()) / 1e6
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            m(torch.zeros(1, in_chans, resolution, resolution))
    return params, fc.get_total_flops() / 1e9


def compound_scale(num_classes: int, max_params_m: float, max_gflops: float, base_resolution: int = 224,
                   alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15, phi_min: float = -10.0,
                   phi_max: float = 4.0, phi_step: float = 0.5, resolution_multiple: int = 8,
                   min_resolution: int = 32, in_chans: int = 4) -> Scaled:
    """EfficientNet compound scaling: depth ``alpha**phi``, width ``beta**phi``, input side
    ``base_resolution * gamma**phi``; the largest ``phi`` on the grid whose model (with the stage-5
    input channels) fits both budgets."""
    n = int(round((phi_max - phi_min) / phi_step))
    best: Scaled | None = None
    first = None
    for i in range(n + 1):  # costs grow with phi: walk up from phi_min, stop at the first miss
        phi = phi_min + i * phi_step
        depth, width = alpha**phi, beta**phi
        res = max(min_resolution, int(round(base_resolution * gamma**phi / resolution_multiple)) * resolution_multiple)
        params, gflops = model_cost(num_classes, in_chans, width, depth, res)
        first = first or (phi, params, gflops)
        if params > max_params_m or gflops > max_gflops:
            break
        best = Scaled(phi, width, depth, res, params, gflops)
    if best is not None:
        return best
    from medray.errors import ConfigError

    raise ConfigError(f"classifier.budget: no EfficientNetV2 scaling fits {max_params_m} M params / "
                      f"{max_gflops} GFLOPs (smallest tried: phi={first[0]}: {first[1]:.3f} M, "
                      f"{first[2]:.4f} GFLOPs); raise the budget or lower classifier.phi_min")


assert is_model("skin_heatnet") and is_model("skin_effnetv2")
