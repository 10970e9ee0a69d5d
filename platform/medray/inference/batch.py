"""Batch inference of a catalogued model over a manifest with Ray Data.

``map_batches`` on an actor pool: each actor loads the predictor once (weights fetched from the
catalogue, checksum verified), on a GPU when the cluster has one, and streams batches of rows through
it. Used by ``medray evaluate``, the retinal-age responses stage (``r_i`` for every training image),
the skin foreground labeller and pseudo-labelling. Output rows keep the manifest's identifying
columns plus the model's outputs (``probs`` list<float>, ``score``).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np


class PredictBatch:
    """Callable class for ``map_batches``: one predictor per actor."""

    def __init__(self, catalog_uri: str, model_ref: str, s3: Any = None, image_col: str = "image"):
        from medray import storage
        from medray.catalog import Catalog
        from medray.inference.predictor import load_predictor

        if s3 is not None:
            storage.configure(s3)
        cat = Catalog(catalog_uri, s3=s3)
        self.card = cat.get(model_ref)
        self.pred = load_predictor(self.card, cat)
        self.s3 = s3
        self.image_col = image_col

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from medray.data import imageio

        images = []
        packed = batch.get("image_bytes")
        for i, uri in enumerate(batch[self.image_col]):
            if packed is not None:
                arr = imageio.decode(bytes(packed[i]), str(uri), mode=self.pred.mode, target=self.pred.image_size)
            else:
                arr = imageio.read_image(str(uri), s3=self.s3, mode=self.pred.mode, target=self.pred.image_size)
            images.append(self.pred.load_image(arr))
        probs = self.pred.probabilities(images)  # type: ignore[attr-defined]
        out = {k: v for k, v in batch.items() if k != "image_bytes"}
        out["probs"] = probs.astype(np.float32)
        out["score"] = (probs[:, 1] if probs.shape[1] == 2 else probs.max(1)).astype(np.float32)
        out["pred"] = probs.argmax(1).astype(np.int32)
        return out


def predict_dataset(catalog_uri: str, model_ref: str, manifest_uri: str, splits: Iterable[str] | None = None,
                    columns: list[str] | None = None, s3: Any = None, batch_size: int = 32,
                    concurrency: int | tuple[int, int] = 1, use_gpu: bool | str = "auto",
                    num_cpus: float = 0.5):
    """A lazy Ray dataset of predictions over the manifest rows of ``splits`` (None = all rows)."""
    import ray

    from medray.data import pipeline

    gpu = use_gpu is True or (use_gpu == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)
    ds = pipeline.read_manifest(manifest_uri, splits=list(splits) if splits else None, columns=columns, s3=s3)
    return ds.map_batches(
        PredictBatch,
        fn_constructor_kwargs={"catalog_uri": catalog_uri, "model_ref": model_ref, "s3": s3},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency) if isinstance(concurrency, int)
        else ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1]),
        num_gpus=1 if gpu else 0,
        num_cpus=num_cpus,
        batch_format="numpy",
    )
