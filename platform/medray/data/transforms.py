"""Batch transforms on the training worker (torch, CPU or GPU), applied AFTER the cached decode.

``normalize`` turns uint8 NHWC batches into float NCHW model input. ``RandomAugment`` draws one set of
parameters per sample (flip, rotation, scale, translation, brightness/contrast/saturation) and
applies the same geometry to every spatial tensor given with the image (masks, heatmaps), so labels
stay aligned. Everything runs batched on the device: no per-image Python loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (N, H, W, C) or (N, H, W) -> float32 (N, C, H, W), scaled and standardised."""
    x = images
    if x.dim() == 3:
        x = x.unsqueeze(-1)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    c = x.shape[1]
    m = torch.tensor(mean[:c] if len(mean) >= c else [mean[0]] * c, device=x.device).view(1, c, 1, 1)
    s = torch.tensor(std[:c] if len(std) >= c else [std[0]] * c, device=x.device).view(1, c, 1, 1)
    return (x - m) / s


@dataclass
class RandomAugment:
    """Random geometric + photometric augmentation of a float NCHW batch.

    Args:
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip.
        rotate_deg: rotation drawn uniformly in [-rotate_deg, rotate_deg].
        scale: zoom factor range (min, max).
        translate: max shift as a fraction of the size.
        brightness, contrast, saturation: jitter strengths (0 = off), applied to the image only.
    """

    hflip: float = 0.5
    vflip: float = 0.0
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1

    def __call__(self, x: torch.Tensor, *others: torch.Tensor, generator: torch.Generator | None = None):
        """Augment ``x`` (N, C, H, W); ``others`` (N, K, H, W) get the same geometry (nearest for
        integer tensors such as masks). Returns ``x`` alone or a tuple ``(x, *others)``."""
        n, _, h, w = x.shape
        dev = x.device
        g = generator

        def rand(*shape):
            return torch.rand(*shape, generator=g, device="cpu").to(dev)

        ang = (rand(n) * 2 - 1) * math.radians(self.rotate_deg)
        sc = self.scale[0] + rand(n) * (self.scale[1] - self.scale[0])
        fx = torch.where(rand(n) < self.hflip, -1.0, 1.0)
        fy = torch.where(rand(n) < self.vflip, -1.0, 1.0)
        tx = (rand(n) * 2 - 1) * self.translate * 2
        ty = (rand(n) * 2 - 1) * self.translate * 2
        cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
        theta = torch.stack(
            [torch.stack([cos * fx, -sin * fy, tx], 1), torch.stack([sin * fx, cos * fy, ty], 1)], 1
        ).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # photometric jitter (on the standardised image: multiplicative contrast, additive brightness)
        if self.contrast:
            cf = 1 + (rand(n, 1, 1, 1) * 2 - 1) * self.contrast
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * cf.to(out.dtype) + mean
        if self.brightness:
            out = out + ((rand(n, 1, 1, 1) * 2 - 1) * self.brightness * 2).to(out.dtype)
        if self.saturation and out.shape[1] == 3:
            sf = 1 + (rand(n, 1, 1, 1) * 2 - 1) * self.saturation
            grey = out.mean(dim=1, keepdim=True)
            out = (out - grey) * sf.to(out.dtype) + grey
        if not others:
            return out
        res = [out]
        for o in others:
            is_int = not torch.is_floating_point(o)
            of = o.float() if is_int else o
            squeeze = of.dim() == 3
            if squeeze:
                of = of.unsqueeze(1)
            gr = F.affine_grid(theta.to(of.dtype), list(of.shape), align_corners=False)
            r = F.grid_sample(of, gr, mode="nearest" if is_int else "bilinear", padding_mode="zeros",
                              align_corners=False)
            if squeeze:
                r = r.squeeze(1)
            res.append(r.round().to(o.dtype) if is_int else r)
        return tuple(res)
