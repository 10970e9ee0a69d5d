"""Inference on whole B-scans of any width and height (METHODS.md §2 step 5).

:func:`predict_logits`: pad the height (bottom) to the padded height and the width to at least one
window, cut ALL windows of the scan, run them as ONE batch, blend the overlapping logits with a
Gaussian weight along the width (centre columns of a window count more than its edges, where the
network saw less context), crop back to the scan's size.

:func:`thickness`: per-structure thickness along the scan: pixels of each class in every column, and
micrometres when the axial resolution (``axial_um`` per pixel) is known.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from medray.methods.oct_layers.windows import next_pow2, window_starts


def gaussian_weights(window: int, sigma: float = 0.25) -> np.ndarray:
    """Blending weight of each column of a window: ``exp(-d^2 / (2 (sigma * window)^2))`` with ``d``
    the distance to the window's centre; ``sigma <= 0`` means uniform (plain averaging)."""
    if sigma <= 0:
        return np.ones(window, np.float32)
    x = np.arange(window, dtype=np.float64) - (window - 1) / 2.0
    w = np.exp(-(x**2) / (2 * (sigma * window) ** 2))
    return (w / w.max()).astype(np.float32)


def cut_windows(x: torch.Tensor, window: int, stride: int, pad_height_to: int | None = None
                ) -> tuple[torch.Tensor, list[int], tuple[int, int]]:
    """``x`` C x H x W (normalised) -> windows ``n x C x Hp x window``, their starts, and (H, W)."""
    c, h, w = x.shape
    hp = pad_height_to or next_pow2(h)
    if h > hp:
        raise ValueError(f"scan height {h} exceeds the padded height {hp}")
    wp = max(w, window)
    xp = torch.zeros((c, hp, wp), dtype=x.dtype, device=x.device)
    xp[:, :h, :w] = x
    starts = window_starts(w, window, stride)
    return torch.stack([xp[:, :, s:s + window] for s in starts]), starts, (h, w)


def blend(logits: torch.Tensor, starts: Sequence[int], size: tuple[int, int], sigma: float = 0.25
          ) -> torch.Tensor:
    """Window logits ``n x K x Hp x window`` -> scan logits ``K x H x W`` (weighted mean, cropped)."""
    n, k, hp, window = logits.shape
    h, w = size
    wp = max(w, window)
    g = torch.from_numpy(gaussian_weights(window, sigma)).to(logits.device, torch.float32)
    acc = torch.zeros((k, hp, wp), dtype=torch.float32, device=logits.device)
    norm = torch.zeros(wp, dtype=torch.float32, device=logits.device)
    for i, s in enumerate(starts):
        acc[:, :, s:s + window] += logits[i].float() * g
        norm[s:s + window] += g
    return (acc / norm)[:, :h, :w]


@torch.inference_mode()
def predict_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, window: int, stride: int,
                   pad_height_to: int | None = None, sigma: float = 0.25, max_batch: int | None = None,
                   autocast: bool = False) -> torch.Tensor:
    """Blended logits ``K x H x W`` of one normalised scan ``x`` (``C x H x W``).

    All windows of the scan go through the model as one batch (``max_batch`` splits it only when
    memory requires)."""
    wins, starts, size = cut_windows(x, window, stride, pad_height_to)
    outs = []
    step = max_batch or len(wins)
    for i in range(0, len(wins), step):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            outs.append(model(wins[i:i + step]).float())
    return blend(torch.cat(outs), starts, size, sigma)


def predict_mask(model, x: torch.Tensor, window: int, stride: int, pad_height_to: int | None = None,
                 sigma: float = 0.25, **kw: Any) -> np.ndarray:
    """Class-id mask ``H x W`` (uint8) of one normalised scan."""
    logits = predict_logits(model, x, window, stride, pad_height_to, sigma, **kw)
    return logits.argmax(0).to(torch.uint8).cpu().numpy()


def thickness(mask: np.ndarray, class_names: Sequence[str], axial_um: float | None = None,
              skip: Sequence[int] = (0,)) -> dict[str, Any]:
    """Per-structure thickness along the scan.

    Returns ``{"px": {name: [W values]}, "um": {name: [...]} (when axial_um), "mean_px": {...},
    "mean_um": {...}}``; a structure's thickness in a column is the number of its pixels there."""
    m = np.asarray(mask)
    out: dict[str, Any] = {"px": {}, "mean_px": {}}
    if axial_um:
        out["um"], out["mean_um"] = {}, {}
        out["axial_um"] = float(axial_um)
    for k, name in enumerate(class_names):
        if k in skip:
            continue
        col = (m == k).sum(0).astype(np.float64)
        out["px"][name] = col.tolist()
        out["mean_px"][name] = float(col.mean())
        if axial_um:
            out["um"][name] = (col * axial_um).round(2).tolist()
            out["mean_um"][name] = float(col.mean() * axial_um)
    return out
