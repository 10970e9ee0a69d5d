"""Predictors: a catalogued model as ``preprocess -> forward -> postprocess``. Pure torch, no Ray.

The same predictor runs in ``medray predict``, ``medray evaluate``, batch inference stages inside
training jobs (Ray Data ``map_batches`` on an actor pool) and the Serve deployments. A predictor is
built from a model card alone: architecture, preprocessing and label map are in the card, the weights
are fetched from the catalogue with their checksum verified.

Tasks register their predictor class with :func:`register_predictor` (``classify`` and ``quality``
here; other methods add theirs).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from medray.data import imageio
from medray.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from medray.errors import MedrayError

_PREDICTORS: dict[str, Callable[..., "Predictor"]] = {}


def register_predictor(*tasks: str):
    def deco(cls):
        for t in tasks:
            _PREDICTORS[t] = cls
        return cls

    return deco


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """Base: holds the card, the device and the preprocessing spec."""

    def __init__(self, card: Any, weights: bytes, device: torch.device | str | None = None):
        self.card = card
        self.device = torch.device(device) if device else default_device()
        pre = dict(card.preprocessing or {})
        self.image_size = int(pre.get("image_size", 224))
        self.mode = pre.get("mode", "RGB")
        self.resize = pre.get("resize", "pad")
        self.mean = tuple(pre.get("mean", IMAGENET_MEAN))
        self.std = tuple(pre.get("std", IMAGENET_STD))
        self.labels = list(card.labels or [])
        self.amp = self.device.type == "cuda"

    def load_image(self, data: bytes | np.ndarray, name: str = "<upload>") -> np.ndarray:
        """Bytes of any supported format (or an array) -> resized uint8 array."""
        arr = data if isinstance(data, np.ndarray) else imageio.decode(data, name, mode=self.mode,
                                                                     target=self.image_size)
        if self.mode == "RGB" and arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if self.mode == "L" and arr.ndim == 3:
            arr = arr.mean(axis=2).astype(np.uint8)
        return imageio.resize(arr, self.image_size, how=self.resize)  # type: ignore[arg-type]

    def to_tensor(self, images: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack([self.load_image(im) for im in images]))
        return normalize(batch, self.mean, self.std).to(self.device)

    def predict(self, images: list[np.ndarray | bytes]) -> list[dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError


def _build_model(card: Any, weights: bytes) -> torch.nn.Module:
    from safetensors.torch import load as st_load

    from medray.models import create_model

    arch = dict(card.architecture or {})
    model = create_model(arch["name"], num_classes=int(arch.get("num_classes", len(card.labels))),
                         in_chans=int(arch.get("in_chans", 3)), **dict(arch.get("kwargs") or {}))
    model.load_state_dict(st_load(weights))
    return model.eval()


@register_predictor("classify", "quality", "fundus_disease")
class ClassifierPredictor(Predictor):
    """Outputs per image: ``probs`` {class: p}, ``label`` (argmax class), ``score`` (P(class 1) for
    binary models — the fundus-disease response ``r`` of METHODS.md §1 — else the max probability)."""

    def __init__(self, card: Any, weights: bytes, device=None):
        super().__init__(card, weights, device)
        self.model = _build_model(card, weights).to(self.device)

    @torch.inference_mode()
    def probabilities(self, images: list[np.ndarray | bytes]) -> np.ndarray:
        x = self.to_tensor([im if isinstance(im, np.ndarray) else self.load_image(im) for im in images])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(x)
        return torch.softmax(logits.float(), 1).cpu().numpy()

    def predict(self, images: list[np.ndarray | bytes]) -> list[dict[str, Any]]:
        probs = self.probabilities(images)
        out = []
        for p in probs:
            k = int(p.argmax())
            out.append({
                "probs": {name: round(float(v), 6) for name, v in zip(self.labels, p)},
                "label": self.labels[k] if k < len(self.labels) else k,
                "score": float(p[1]) if len(p) == 2 else float(p[k]),
            })
        return out


def load_predictor(card: Any, catalog: Any = None, device: str | None = None) -> Predictor:
    """Build the predictor for a card; weights come from ``catalog`` (checksum verified)."""
    cls = _PREDICTORS.get(card.task)
    if cls is None:
        _import_task_predictors()
        cls = _PREDICTORS.get(card.task)
    if cls is None:
        raise MedrayError(f"no predictor for task {card.task!r} (known: {sorted(_PREDICTORS)})")
    if catalog is None:
        raise MedrayError("load_predictor needs the catalogue the card came from")
    return cls(card, catalog.fetch(card, "weights"), device=device)


def _import_task_predictors() -> None:
    """Method modules register their predictors on import."""
    import importlib

    for mod in ("medray.methods.retinal_age", "medray.methods.oct_layers", "medray.methods.skin",
                "medray.methods.rop"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
