"""The published student as a predictor for task ``rop_stage``: per image the stage probabilities,
the most likely stage (name and index) and the expected stage ``sum_k k * p_k`` (ordinal)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medray.inference.predictor import ClassifierPredictor, register_predictor


@register_predictor("rop_stage")
class RopStagePredictor(ClassifierPredictor):
    def predict(self, images: list[np.ndarray | bytes]) -> list[dict[str, Any]]:
        probs = self.probabilities(images)
        ks = np.arange(probs.shape[1])
        out = []
        for p in probs:
            k = int(p.argmax())
            out.append({
                "probs": {name: round(float(v), 6) for name, v in zip(self.labels, p)},
                "label": self.labels[k] if k < len(self.labels) else k,
                "stage": k,
                "expected_stage": float((ks * p).sum()),
                "score": float(p[k]),
            })
        return out
