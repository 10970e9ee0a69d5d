"""Width-wise windows and power-of-two height padding for OCT B-scans (METHODS.md §2 steps 2-3).

Pure numpy/torch, no Ray: the same functions window the training data inside the Ray Data pipeline
(:func:`window_rows`, one B-scan row -> many window rows) and the whole scans at inference
(:mod:`medray.methods.oct_layers.infer`).

* :func:`window_starts`: windows of width ``W`` slide with stride ``S < W``; the last window is
  aligned to the right edge, so the union of the windows is exactly the full width. A scan narrower
  than ``W`` is padded on the right to ``W`` (one window).
* :func:`pad_height` / :func:`crop`: the height is padded at the bottom (never resized: thickness is
  the measurement) to the next power of two; padded mask pixels get :data:`IGNORE` and are ignored by
  the loss and the metrics. Cropping back is exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: mask value of padded pixels (ignored by the loss and the metrics)
IGNORE = 255


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``n`` (``n >= 1``)."""
    if n < 1:
        raise ValueError(f"next_pow2: n={n} must be >= 1")
    return 1 << (int(n) - 1).bit_length()


def window_starts(width: int, window: int, stride: int) -> list[int]:
    """Left columns of the windows covering ``width`` columns.

    ``range(0, width - window + 1, stride)`` plus a last window at ``width - window`` when the
    stride does not land there, so every column is covered and the last window ends at the right
    edge. A width <= ``window`` gives ``[0]`` (the scan is padded to the window width).
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window={window} and stride={stride} must be >= 1")
    if stride >= window:
        raise ValueError(f"stride={stride} must be smaller than window={window} (windows must overlap)")
    if width < 1:
        raise ValueError(f"width={width} must be >= 1")
    if width <= window:
        return [0]
    starts = list(range(0, width - window + 1, stride))
    if starts[-1] != width - window:
        starts.append(width - window)
    return starts


def padded_width(width: int, window: int) -> int:
    """Width after the right padding a scan narrower than the window gets."""
    return max(width, window)


def pad_to(arr: np.ndarray, height: int, width: int, value: int | float) -> np.ndarray:
    """Pad an ``H x W (x C)`` array at the bottom/right to ``height x width`` with ``value``."""
    h, w = arr.shape[:2]
    if h > height or w > width:
        raise ValueError(f"cannot pad a {h}x{w} array to {height}x{width} (it is larger)")
    if (h, w) == (height, width):
        return arr
    pad = [(0, height - h), (0, width - w)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, mode="constant", constant_values=value)


def pad_height(arr: np.ndarray, height: int | None = None, value: int | float = 0) -> np.ndarray:
    """Pad the height (bottom) to ``height`` (default: the next power of two)."""
    target = next_pow2(arr.shape[0]) if height is None else int(height)
    return pad_to(arr, target, arr.shape[1], value)


def crop(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Undo :func:`pad_to` (works on ``H x W ...`` arrays; use ``[..., :h, :w]`` for NCHW)."""
    return arr[:height, :width]


def windows(arr: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, list[int]]:
    """Cut an ``H x W (x C)`` array (already height-padded) into windows: ``(n, H, window (, C))``."""
    w = arr.shape[1]
    starts = window_starts(w, window, stride)
    if w < window:
        arr = pad_to(arr, arr.shape[0], window, 0)
    return np.stack([arr[:, s:s + window] for s in starts]), starts


def window_rows(batch: dict[str, np.ndarray], *, window: int, stride: int, pad_height_to: int,
                mode: str = "L", s3: Any = None, keep: tuple[str, ...] = (),
                with_scan: bool = False) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: B-scan rows (``image``/``mask`` URIs) -> window rows.

    Output columns: ``image`` uint8 ``(n, pad_height_to, window, 1)``, ``mask`` uint8
    ``(n, pad_height_to, window)`` (padding = :data:`IGNORE`), ``x0`` (left column of the window in
    its scan), with ``with_scan`` ``scan`` (the scan's image URI; off for training, where every column
    becomes a tensor) and the ``keep`` columns repeated per window.
    """
    from medray.data import imageio

    images, masks, x0s, scans = [], [], [], []
    extra: dict[str, list[Any]] = {k: [] for k in keep}
    for i in range(len(batch["image"])):
        uri = str(batch["image"][i])
        img = imageio.read_image(uri, s3=s3, mode="L" if mode == "L" else "RGB")
        if img.ndim == 2:
            img = img[..., None]
        muri = str(batch["mask"][i])
        m = imageio.read_mask(muri, s3=s3)
        if m.shape != img.shape[:2]:
            from medray.errors import ManifestError

            raise ManifestError(f"{muri}: mask is {m.shape[1]}x{m.shape[0]} but image {uri} is "
                                f"{img.shape[1]}x{img.shape[0]}")
        if m.max(initial=0) >= IGNORE:
            from medray.errors import ManifestError

            raise ManifestError(f"{muri}: class id {int(m.max())} collides with the padding label {IGNORE}")
        h, w = m.shape
        if h > pad_height_to:
            from medray.errors import ManifestError

            raise ManifestError(f"{uri}: height {h} exceeds the padded height {pad_height_to} "
                                "(data.pad_height too small)")
        img = pad_to(img, pad_height_to, max(w, window), 0)
        m = pad_to(m.astype(np.uint8), pad_height_to, max(w, window), IGNORE)
        for s in window_starts(w, window, stride):
            images.append(img[:, s:s + window])
            masks.append(m[:, s:s + window])
            x0s.append(s)
            scans.append(uri)
            for k in keep:
                extra[k].append(batch[k][i])
    c = 1 if mode == "L" else 3
    out = {
        "image": np.stack(images) if images else np.zeros((0, pad_height_to, window, c), np.uint8),
        "mask": np.stack(masks) if masks else np.zeros((0, pad_height_to, window), np.uint8),
        "x0": np.asarray(x0s, np.int32),
    }
    if with_scan:
        out["scan"] = np.asarray(scans, dtype=object)
    for k in keep:
        out[k] = np.asarray(extra[k])
    return out
