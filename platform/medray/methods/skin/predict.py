"""Predictors of the skin method (registered on import of :mod:`medray.methods.skin`).

* ``skin_heatmap`` -- the lesion localiser (stage-1 regressor). Per image: ``heatmap`` (foreground,
  max over classes, ``h x w`` list of floats at the model's output stride), ``overlay`` (PNG bytes of
  the heatmap over the input image), ``peaks`` (local maxima: ``x``/``y`` in input-image pixels of the
  resized input, ``class``, ``score``, ``rx``/``ry`` the regressed half-sizes in those pixels).
* ``skin_classify`` -- the final (stage-5) classifier: the generic classifier outputs (``probs``,
  ``label``, ``score``); the network zero-pads its heatmap-prior channel, so no heatmap is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medray.inference.predictor import ClassifierPredictor, Predictor, register_predictor
from medray.methods.skin import heatmap as _heatmap  # noqa: F401 - registers skin_heatnet / skin_effnetv2


@register_predictor("skin_heatmap")
class HeatmapPredictor(Predictor):
    def __init__(self, card: Any, weights: bytes, device=None, threshold: float = 0.3, max_peaks: int = 10):
        super().__init__(card, weights, device)
        from medray.methods.skin.stages import build_regressor

        self.model = build_regressor(dict(card.architecture), weights, self.device)
        self.stride = int(card.architecture["kwargs"]["out_stride"])
        self.threshold, self.max_peaks = threshold, max_peaks

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray | bytes]) -> list[dict[str, Any]]:
        from medray.evaluation import plots
        from medray.methods.skin.heatmap import peaks

        arrs = [im if isinstance(im, np.ndarray) and im.shape[:2] == (self.image_size, self.image_size)
                else self.load_image(im) for im in images]
        x = self.to_tensor(arrs)
        out = self.model(x)
        heat = torch.sigmoid(out["heat"].float())
        radius = out["radius"].float()
        g = heat.shape[-1]
        found = peaks(heat, k=self.max_peaks, threshold=self.threshold)
        res = []
        for i, arr in enumerate(arrs):
            fg = heat[i].amax(0).cpu().numpy()
            pk = []
            for (px, py, c, score) in found[i]:
                rx, ry = (radius[i, :, py, px] * g * self.stride).tolist()
                pk.append({"x": (px + 0.5) * self.stride, "y": (py + 0.5) * self.stride,
                           "class": self.labels[c] if c < len(self.labels) else c, "score": round(score, 4),
                           "rx": round(max(rx, 0.0), 2), "ry": round(max(ry, 0.0), 2)})
            res.append({"heatmap": fg.round(4).tolist(),
                        "overlay": plots.overlay_heatmap(arr, fg, alpha=0.6, vmin=0.0, vmax=1.0),
                        "peaks": pk})
        return res


@register_predictor("skin_classify")
class SkinClassifierPredictor(ClassifierPredictor):
    """The stage-5 classifier: images only (the heatmap channel is zero-padded by the network)."""
