"""Turn model outputs into JSON plus rendered overlays.

Arrays of at least two dimensions in a model's outputs are images: an integer array is a class mask
(blended in class colours), a float array a heatmap (blended with a colour map). They are returned as
PNG bytes and replaced in the JSON by ``{"overlay": <url>, "shape": [...]}``. PNG bytes a predictor
rendered itself (e.g. the skin localiser's ``overlay``) are stored the same way. Everything else
becomes plain JSON (numpy scalars and 1-D arrays included).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def overlay_png(image: np.ndarray, arr: np.ndarray) -> bytes:
    """PNG of ``arr`` (mask or heatmap) over ``image``, at the image's resolution."""
    from medray.evaluation.plots import overlay_heatmap, overlay_mask

    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3:  # per-class maps (C, H, W): show the argmax as a mask
        a = a.argmax(axis=0)
    if np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        return overlay_mask(image, a.astype(np.int64))
    return overlay_heatmap(image, a.astype(np.float32))


def render_outputs(outputs: dict[str, Any], image: np.ndarray,
                   store: Callable[[str, bytes], str]) -> dict[str, Any]:
    """JSON-ready outputs; ``store(key, png) -> url`` keeps each rendered overlay."""
    out: dict[str, Any] = {}
    for k, v in (outputs or {}).items():
        if isinstance(v, (bytes, bytearray)):  # a predictor's own rendering (PNG) or other binary
            if bytes(v[:8]) == b"\x89PNG\r\n\x1a\n":
                out[k] = {"overlay": store(k, bytes(v)), "bytes": len(v)}
            else:
                out[k] = {"bytes": len(v)}
            continue
        if isinstance(v, np.ndarray) and v.ndim >= 2 and min(v.shape[-2:]) > 1:
            try:
                url = store(k, overlay_png(image, v))
                out[k] = {"overlay": url, "shape": list(v.shape), "dtype": str(v.dtype)}
            except Exception as e:  # noqa: BLE001 - a result is still returned without its picture
                out[k] = {"overlay": None, "shape": list(v.shape), "error": f"render failed: {e}"[:200]}
        else:
            out[k] = _jsonable(v)
    return out
