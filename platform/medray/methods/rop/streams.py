"""The two training streams of the mean teacher: labelled and unlabelled rows as two Ray datasets,
each split across the training workers (``DataConfig(datasets_to_split=["labelled", "unlabelled"])``,
an *equal* streaming split, so every worker gets the same number of rows of each per pass).

Driver side (:func:`build_streams`):

* The labelled share is chosen BY PATIENT from the train split of a fully labelled manifest: the
  patients are ordered by a seeded hash (``sha256(seed:labelled:patient_id)``) and the first
  ``round(fraction * n_patients)`` (at least one) are labelled; both eyes of an infant fall on the same
  side. Rows with a null label are always unlabelled, so a manifest that really has unlabelled
  images works unchanged.
* ``labelled`` = train rows of the chosen patients (image + label); ``unlabelled`` = every other
  train row, with the label column DROPPED (the loop cannot peek at it). ``val``/``test`` are
  unsplit (each worker evaluates every ``world``-th batch and the predictions are gathered).
* Decoding (read + resize) runs in Ray Data tasks and is cached in the object store when the set is
  small (``data.cache``); augmentation happens on the workers.

Worker side:

* :func:`cycle` turns a shard into an endless iterator of numpy batches (a new local-shuffle seed per
  pass). An epoch is a fixed number of steps, the same on every worker (computed on the driver from
  the row counts): one pass over the longer stream, the shorter one cycled.
* :class:`TwoViews` augments each image twice, independently (flip, rotation, scale, translation,
  brightness/contrast/saturation: :class:`medray.data.transforms.RandomAugment`, drawn from two
  separate generators): view 1 for the student, view 2 for the teacher.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Iterator

import numpy as np

ROW_ID = "row_id"


def choose_labelled_patients(patients: list[str], fraction: float, seed: int) -> set[str]:
    """The labelled share of ``patients`` (a seeded, stable choice; at least one patient)."""
    ps = sorted(set(patients), key=lambda p: hashlib.sha256(f"{seed}:labelled:{p}".encode()).digest())
    if not ps:
        return set()
    k = len(ps) if fraction >= 1.0 else min(len(ps), max(1, round(fraction * len(ps))))
    return set(ps[:k])


def _scan(uris: list[str], splits: list[str], label: str, s3: Any) -> list[tuple[str, bool, int]]:
    """``(patient_id, has_label, label)`` for every row of ``splits`` (three columns streamed)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from medray.data import manifest
    from medray.errors import ManifestError

    out: list[tuple[str, bool, int]] = []
    for uri in uris:
        names = manifest._parquet_file(uri, s3).schema_arrow.names
        missing = [c for c in ("split", "patient_id", label) if c not in names]
        if missing:
            raise ManifestError(f"{uri}: no column(s) {missing} (data.label_column={label!r})")
        for b in manifest.iter_batches(uri, columns=["split", "patient_id", label], s3=s3):
            m = pc.is_in(b.column(0), value_set=pa.array(splits))
            pid = pc.filter(b.column(1), m).to_pylist()
            lab = pc.filter(b.column(2), m).to_pylist()
            out.extend((str(p), v is not None, -1 if v is None else int(v)) for p, v in zip(pid, lab))
    return out


def _add_row_id(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    batch[ROW_ID] = np.asarray(batch["image"]).astype(str) if "image" in batch else np.arange(len(batch))
    return batch


def _decode(batch: dict[str, np.ndarray], spec, keep: tuple[str, ...], s3: Any) -> dict[str, np.ndarray]:
    from medray.data import pipeline

    ids = np.asarray(batch["image"]).astype(str)
    out = pipeline.decode_batch(batch, spec, keep=keep, s3=s3)
    out[ROW_ID] = ids
    return out


def build_streams(cfg, classes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ray datasets ``labelled``, ``unlabelled`` (absent when empty or in supervised mode), ``val``
    and the row counts the workers need."""
    from ray.data.expressions import col

    from medray.data import pipeline
    from medray.errors import ConfigError

    d = cfg.data
    label, s3 = d.label_column, cfg.storage.s3
    rows = _scan(d.manifests, d.train_splits, label, s3)
    patients = [p for p, has, _ in rows if has]
    chosen = choose_labelled_patients(patients, d.labelled_fraction, d.labelled_seed)
    lab_rows = [(p, y) for p, has, y in rows if has and p in chosen]
    n_lab, n_unl = len(lab_rows), len(rows) - len(lab_rows)
    if n_lab == 0:
        raise ConfigError(f"data.manifests: no labelled rows in splits {d.train_splits} of {d.manifests}")
    bad = [y for _, y in lab_rows if y < 0 or y >= len(classes)]
    if bad:
        raise ConfigError(f"data.label_column {label!r}: values {sorted(set(bad))[:5]} outside [0, {len(classes) - 1}]"
                          f" for the {len(classes)} classes {classes}")
    counts = np.bincount([y for _, y in lab_rows], minlength=len(classes))
    spec = pipeline.DecodeSpec(d.image_size, d.mode, d.resize)
    packed = any(pipeline._is_packed(u, s3) for u in d.manifests)
    img_cols = ["image"] + (["image_bytes"] if packed else [])
    chosen_l = sorted(chosen)

    def read(splits: list[str], cols: list[str]):
        parts = [pipeline.read_manifest(u, splits=splits, columns=cols, s3=s3) for u in d.manifests]
        return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]

    def decoded(ds, keep: tuple[str, ...]):
        return ds.map_batches(_decode, fn_kwargs={"spec": spec, "keep": keep, "s3": s3},
                              batch_size=d.decode_batch_size, batch_format="numpy")

    semi = cfg.mean_teacher.enabled and n_unl > 0
    base = read(d.train_splits, img_cols + ["patient_id", label])
    labelled = decoded(base.filter(expr=col("patient_id").is_in(chosen_l) & col(label).is_not_null()), (label,))
    datasets: dict[str, Any] = {"labelled": labelled}
    if semi:
        unl = base.filter(expr=col("patient_id").not_in(chosen_l) | col(label).is_null()).select_columns(
            img_cols + ["patient_id"])
        datasets["unlabelled"] = decoded(unl, ())
    val = read(d.val_splits, img_cols + [label])
    datasets["val"] = decoded(val.filter(expr=col(label).is_not_null()), (label,))

    c = 3 if d.mode == "RGB" else 1
    est_gb = len(rows) * d.image_size**2 * c / 1e9
    if d.cache is True or (d.cache == "auto" and est_gb <= d.cache_max_gb):
        datasets = {k: v.materialize() for k, v in datasets.items()}
    meta = {
        "labelled_rows": n_lab, "unlabelled_rows": n_unl if semi else 0, "unlabelled_available": n_unl,
        "labelled_patients": len(chosen), "patients": len(set(patients)),
        "labelled_fraction": d.labelled_fraction, "labelled_counts": counts.tolist(),
        "mode": "mean_teacher" if semi else "supervised",
        "preprocessing": spec.as_dict(),
    }
    return datasets, meta


def steps_per_epoch(meta: dict[str, Any], world: int, bs_l: int, bs_u: int) -> int:
    """Steps of one epoch on every worker: one pass over the longer of the two (equal-split) shards."""
    n_l = meta["labelled_rows"] // world or 1
    steps = math.ceil(n_l / bs_l)
    if meta.get("unlabelled_rows"):
        steps = max(steps, math.ceil((meta["unlabelled_rows"] // world or 1) / bs_u))
    return max(1, steps)


def cycle(shard, batch_size: int, seed: int, shuffle_buffer: int | None) -> Iterator[dict[str, np.ndarray]]:
    """Endless numpy batches of a dataset shard; every pass reshuffles locally with a new seed. All
    workers start a new pass at the same step (equal split -> same number of batches per pass)."""
    p = 0
    while True:
        n = 0
        for b in shard.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2,
                                    local_shuffle_buffer_size=shuffle_buffer or None,
                                    local_shuffle_seed=seed + 7919 * p):
            n += 1
            yield b
        if n == 0:
            raise RuntimeError("a training stream is empty on this worker (fewer rows than workers?)")
        p += 1


class TwoViews:
    """Two independent random views of a batch: ``(student_view, teacher_view)``."""

    def __init__(self, augment, seed: int):
        import torch

        self.aug = augment
        self.g_student = torch.Generator().manual_seed(seed * 2 + 1)
        self.g_teacher = torch.Generator().manual_seed(seed * 2 + 2)

    def __call__(self, x):
        if self.aug is None:
            return x, x
        return self.aug(x, generator=self.g_student), self.aug(x, generator=self.g_teacher)
