"""The catalogue predictor of task ``retinal_age``: retinal age per image and, given the chronological
age, the age gap (retinal - chronological)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from medray.inference.predictor import Predictor, register_predictor


@register_predictor("retinal_age")
class RetinalAgePredictor(Predictor):
    """Outputs per image: ``retinal_age`` (expected age over the bins, years), ``spread`` (std of the
    predicted age distribution, years), and ``age_gap`` when ``ages`` are given."""

    def __init__(self, card: Any, weights: bytes, device=None):
        from safetensors.torch import load as st_load

        from medray.methods.retinal_age.model import build_model

        super().__init__(card, weights, device)
        arch = dict(card.architecture or {})
        self.age_min, self.age_max = int(arch["age_min"]), int(arch["age_max"])
        self.model = build_model(arch["name"], int(arch["num_classes"]), in_chans=int(arch.get("in_chans", 3)),
                                 **dict(arch.get("kwargs") or {}))
        self.model.load_state_dict(st_load(weights))
        self.model = self.model.eval().to(self.device)
        self.bins = torch.arange(self.age_min, self.age_max + 1, dtype=torch.float32, device=self.device)

    @torch.inference_mode()
    def ages(self, images: Sequence[np.ndarray | bytes]) -> tuple[np.ndarray, np.ndarray]:
        """``(retinal age, variance)`` arrays for a batch."""
        x = self.to_tensor([im if isinstance(im, np.ndarray) else self.load_image(im) for im in images])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(x)
        p = torch.softmax(logits.float(), 1)
        m = p @ self.bins
        var = (p * (self.bins[None, :] - m[:, None]) ** 2).sum(1)
        return m.cpu().numpy(), var.cpu().numpy()

    def predict(self, images: Sequence[np.ndarray | bytes], ages: Sequence[float | None] | None = None
                ) -> list[dict[str, Any]]:
        if ages is not None and len(ages) != len(images):
            from medray.errors import MedrayError

            raise MedrayError(f"predict: {len(ages)} ages for {len(images)} images")
        m, var = self.ages(images)
        out = []
        for i in range(len(m)):
            d: dict[str, Any] = {"retinal_age": round(float(m[i]), 3), "spread": round(float(np.sqrt(var[i])), 3)}
            if ages is not None and ages[i] is not None:
                d["age"] = float(ages[i])
                d["age_gap"] = round(float(m[i]) - float(ages[i]), 3)
            out.append(d)
        return out
