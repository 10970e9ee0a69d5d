"""Box -> soft heatmap targets (METHODS.md §4, step 1). Pure numpy, no torch.

For every lesion box ``(x0, y0, x1, y1)`` (pixels of the target grid, x1/y1 exclusive):

* the lesion is the ellipse centred on the box centre whose two orthogonal diameters are the box
  width ``w`` and height ``h`` (semi-axes ``w / 2`` and ``h / 2``);
* its centre pixel (the pixel containing the box centre) has value exactly 1, and values decay with
  the normalised elliptical distance ``rho = sqrt((dx / (w/2))^2 + (dy / (h/2))^2)`` from the centre
  inside the ellipse (``rho <= 1``): ``exp(-rho^2 / (2 sigma^2))`` ("gaussian", default
  ``sigma = 0.5``) or ``1 - rho`` ("linear"); distances are measured from pixel centres;
* a ring outside the ellipse, ``w // 2`` pixels wide along x and ``h // 2`` along y (the ellipse with
  semi-axes ``w/2 + w//2`` and ``h/2 + h//2`` minus the lesion ellipse), is a blind zone: it is set in
  the returned ``ignore`` mask and gets no gradient;
* everything beyond is background 0;
* overlapping lesions take the maximum (per class channel), and a pixel inside any lesion ellipse is
  never ignored (it has a positive target there);
* the two radius channels hold the box half-sizes ``(w / 2, h / 2)`` at each centre pixel
  (``radius_mask`` marks the centres). Where two centres share a pixel the larger lesion wins.

Boxes may touch or cross the grid's border: the ellipse and the ring are clipped to the grid, the
centre is clamped into it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

DECAYS = ("gaussian", "linear")


@dataclass
class HeatTargets:
    """Targets of one image on an ``H x W`` grid.

    Attributes:
        heat: ``K x H x W`` float32 in [0, 1], one channel per class.
        ignore: ``H x W`` bool, the blind ring (no gradient).
        radii: ``2 x H x W`` float32: (x half-size, y half-size) at centre pixels, 0 elsewhere.
        radius_mask: ``H x W`` bool, the centre pixels.
        centres: ``(x, y, class)`` of each centre pixel, in box order.
    """

    heat: np.ndarray
    ignore: np.ndarray
    radii: np.ndarray
    radius_mask: np.ndarray
    centres: list[tuple[int, int, int]]

    def foreground(self) -> np.ndarray:
        """One channel: max over classes (what the foreground labeller stores)."""
        return self.heat.max(axis=0) if len(self.heat) else np.zeros(self.ignore.shape, np.float32)


def decay(rho: np.ndarray, kind: str = "gaussian", sigma: float = 0.5) -> np.ndarray:
    """Value inside the ellipse as a function of the normalised distance ``rho`` in [0, 1]."""
    if kind == "gaussian":
        return np.exp(-(rho**2) / (2.0 * sigma * sigma))
    if kind == "linear":
        return np.clip(1.0 - rho, 0.0, 1.0)
    raise ValueError(f"decay must be one of {DECAYS}, not {kind!r}")


def heat_targets(boxes: Sequence[Sequence[float]], labels: Sequence[int], shape: tuple[int, int],
                 n_classes: int, *, kind: str = "gaussian", sigma: float = 0.5) -> HeatTargets:
    """Soft heat targets, blind ring and radius targets for the ``boxes`` of one image.

    Args:
        boxes: ``(x0, y0, x1, y1)`` per lesion, in pixels of the target grid (x1/y1 exclusive).
        labels: class index per box (the channel it is drawn into).
        shape: ``(H, W)`` of the target grid.
        n_classes: number of heat channels K.
        kind: "gaussian" or "linear" decay inside the ellipse.
        sigma: width of the gaussian decay as a fraction of the semi-axes.

    Returns:
        A :class:`HeatTargets`.
    """
    h, w = int(shape[0]), int(shape[1])
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    heat = np.zeros((n_classes, h, w), np.float32)
    ring_any = np.zeros((h, w), bool)
    inside_any = np.zeros((h, w), bool)
    radii = np.zeros((2, h, w), np.float32)
    rmask = np.zeros((h, w), bool)
    area = np.zeros((h, w), np.float32)
    centres: list[tuple[int, int, int]] = []
    for (x0, y0, x1, y1), k in zip(boxes, labels):
        k = int(k)
        if not 0 <= k < n_classes:
            raise ValueError(f"box label {k} outside [0, {n_classes - 1}]")
        bw, bh = float(x1) - float(x0), float(y1) - float(y0)
        if bw <= 0 or bh <= 0:
            continue  # an empty box has no lesion
        cx, cy = (float(x0) + float(x1)) / 2.0, (float(y0) + float(y1)) / 2.0
        a, b = bw / 2.0, bh / 2.0
        ra, rb = a + (int(bw) // 2), b + (int(bh) // 2)  # outer ellipse of the blind ring
        # the window that holds the ring (clipped to the grid)
        gx0, gx1 = max(0, int(math.floor(cx - ra)) - 1), min(w, int(math.ceil(cx + ra)) + 1)
        gy0, gy1 = max(0, int(math.floor(cy - rb)) - 1), min(h, int(math.ceil(cy + rb)) + 1)
        px = min(max(int(math.floor(cx)), 0), w - 1)
        py = min(max(int(math.floor(cy)), 0), h - 1)
        if gx1 > gx0 and gy1 > gy0:
            xs = np.arange(gx0, gx1, dtype=np.float64) + 0.5 - cx
            ys = np.arange(gy0, gy1, dtype=np.float64) + 0.5 - cy
            dx, dy = xs[None, :], ys[:, None]
            rho = np.sqrt((dx / a) ** 2 + (dy / b) ** 2)
            inside = rho <= 1.0
            outer = (dx / ra) ** 2 + (dy / rb) ** 2 <= 1.0 + 1e-9
            val = np.where(inside, decay(np.minimum(rho, 1.0), kind, sigma), 0.0).astype(np.float32)
            win = heat[k, gy0:gy1, gx0:gx1]
            np.maximum(win, val, out=win)
            inside_any[gy0:gy1, gx0:gx1] |= inside
            ring_any[gy0:gy1, gx0:gx1] |= outer & ~inside
        heat[k, py, px] = 1.0
        inside_any[py, px] = True
        if not rmask[py, px] or bw * bh > area[py, px]:
            radii[0, py, px], radii[1, py, px] = a, b
            area[py, px] = bw * bh
        rmask[py, px] = True
        centres.append((px, py, k))
    ignore = ring_any & ~inside_any
    return HeatTargets(heat, ignore, radii, rmask, centres)


def transform_boxes(boxes: Iterable[Sequence[float]], width: int, height: int, size: int,
                    how: str = "pad", stride: float = 1.0) -> list[tuple[float, float, float, float]]:
    """Map boxes of a ``width x height`` image to the ``size x size`` model input made by
    :func:`medray.data.imageio.resize` (``pad``/``crop``/``stretch``), then to a grid of ``stride``
    input pixels per cell. Boxes are clipped to the grid."""
    out = []
    if how == "stretch":
        sx, sy, ox, oy = size / width, size / height, 0.0, 0.0
    else:
        s = min(size / height, size / width) if how == "pad" else max(size / height, size / width)
        nh, nw = max(1, round(height * s)), max(1, round(width * s))
        sx, sy = nw / width, nh / height
        if how == "pad":
            ox, oy = float((size - nw) // 2), float((size - nh) // 2)
        else:
            ox, oy = -float((nw - size) // 2), -float((nh - size) // 2)
    g = size / stride
    for x0, y0, x1, y1 in boxes:
        bx0, bx1 = (x0 * sx + ox) / stride, (x1 * sx + ox) / stride
        by0, by1 = (y0 * sy + oy) / stride, (y1 * sy + oy) / stride
        bx0, bx1 = min(max(bx0, 0.0), g), min(max(bx1, 0.0), g)
        by0, by1 = min(max(by0, 0.0), g), min(max(by1, 0.0), g)
        out.append((bx0, by0, bx1, by1))
    return out


def boxes_of(value: Any, default_label: int | None = None) -> tuple[list[tuple[float, float, float, float]], list[int]]:
    """Boxes and labels from a manifest ``boxes`` cell (a list of ``{x0, y0, x1, y1, label}``; Ray
    Data may hand it over as a numpy object array). A box without a label takes ``default_label``."""
    if value is None:
        return [], []
    boxes, labels = [], []
    for b in list(value):
        if b is None:
            continue
        lab = b.get("label") if isinstance(b, dict) else None
        if lab is None:
            lab = default_label
        if lab is None:
            raise ValueError("a box has no label and the row has none")
        boxes.append((float(b["x0"]), float(b["y0"]), float(b["x1"]), float(b["y1"])))
        labels.append(int(lab))
    return boxes, labels
