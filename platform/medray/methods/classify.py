"""classify: a generic image classifier (binary or multi-class) on Ray Train.

Used as the fundus-disease classifier of METHODS.md §1 (its response ``r`` drives the retinal-age
label shift), as the image-quality gate of the screening preset, and as the baseline of the other
methods.

Manifest: any task with an integer class column (``label`` for ``fundus_disease``/``skin``, ``stage``
for ``rop``; ``data.label_column``). Rows with a null label are skipped. Several manifests can be
combined when their class lists agree in length (``data.classes`` names the shared meaning, e.g.
HEI-MED's exudate and ODIR's abnormal both as ``disease``).

Loss: cross-entropy (optional class weights: ``balanced`` = inverse frequency, or a list), label
smoothing. Metrics (all workers' predictions gathered before computing): ``val_loss``, ``val_acc``,
``val_bal_acc``, ``val_auc`` (binary AUC, or macro one-vs-rest).

Launch::

    medray train jobs/fundus_disease.yaml optim.lr=3e-4 scaling.num_workers=2
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from medray.config import JobBase, StrictModel, register_job


class AugmentSpec(StrictModel):
    enabled: bool = True
    hflip: float = 0.5
    vflip: float = 0.0
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1


class ClassifyData(StrictModel):
    manifests: list[str] = Field(min_length=1, description="manifest URIs (same number of classes)")
    label_column: str = "label"
    classes: list[str] | None = None  # default: the manifests' class list
    modality: str = "fundus"
    image_size: int = Field(224, ge=16)
    mode: Literal["RGB", "L"] = "RGB"
    resize: Literal["pad", "crop", "stretch"] = "pad"
    train_splits: list[str] = ["train"]
    val_splits: list[str] = ["val"]
    test_splits: list[str] = ["test"]
    class_weights: Literal["balanced"] | list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    cache: bool | Literal["auto"] = "auto"
    cache_max_gb: float = 4.0
    decode_batch_size: int = 16
    shuffle_buffer: int = 256
    augment: AugmentSpec = Field(default_factory=AugmentSpec)


@register_job
class Config(JobBase):
    method: Literal["classify"]
    data: ClassifyData
    publish_task: str = "classify"  # catalogue task of the published model ("classify", "quality", ...)


# --------------------------------------------------------------------------------------------
# driver side


def _label_counts(cfg: Config, splits: list[str], n_classes: int) -> np.ndarray:
    """Per-class row counts of the given splits (streams two columns; never all rows)."""
    import pyarrow.compute as pc

    from medray.data import manifest

    counts = np.zeros(n_classes, np.int64)
    for uri in cfg.data.manifests:
        for b in manifest.iter_batches(uri, columns=["split", cfg.data.label_column]):
            mask = pc.is_in(b.column(0), value_set=__import__("pyarrow").array(splits))
            labels = pc.filter(b.column(1), mask).drop_null().to_numpy()
            if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
                from medray.errors import ManifestError

                raise ManifestError(f"{uri}: {cfg.data.label_column} outside [0, {n_classes - 1}]")
            counts += np.bincount(labels.astype(np.int64), minlength=n_classes)
    return counts


def resolve_classes(cfg: Config) -> list[str]:
    from medray.data import pipeline
    from medray.errors import ConfigError

    lists = [pipeline.manifest_info(u).classes for u in cfg.data.manifests]
    if cfg.data.classes:
        for u, c in zip(cfg.data.manifests, lists):
            if c and len(c) != len(cfg.data.classes):
                raise ConfigError(f"data.classes has {len(cfg.data.classes)} names but {u} has {len(c)} classes {c}")
        return list(cfg.data.classes)
    if any(c != lists[0] for c in lists):
        raise ConfigError(f"data.manifests have different class lists {lists}: set data.classes to name them")
    if not lists[0]:
        raise ConfigError("the manifest has no class list: set data.classes")
    return list(lists[0])


def build_datasets(cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ray datasets for train/val and the metadata the workers need (counts, classes, weights)."""
    from ray.data.expressions import col

    from medray.data import pipeline

    classes = resolve_classes(cfg)
    spec = pipeline.DecodeSpec(cfg.data.image_size, cfg.data.mode, cfg.data.resize)
    counts = _label_counts(cfg, cfg.data.train_splits, len(classes))
    val_counts = _label_counts(cfg, cfg.data.val_splits, len(classes))
    if counts.sum() == 0:
        from medray.errors import ConfigError

        raise ConfigError(f"no labelled rows in splits {cfg.data.train_splits} of {cfg.data.manifests}")
    s3 = cfg.storage.s3
    packed = any(pipeline._is_packed(u, s3) for u in cfg.data.manifests)
    label = cfg.data.label_column

    def one(splits: list[str]):
        cols = ["image", label] + (["image_bytes"] if packed else [])
        parts = [pipeline.read_manifest(u, splits=splits, columns=cols, s3=s3) for u in cfg.data.manifests]
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        ds = ds.filter(expr=col(label).is_not_null())
        return ds.map_batches(pipeline.decode_batch, fn_kwargs={"spec": spec, "keep": (label,), "s3": s3},
                              batch_size=cfg.data.decode_batch_size, batch_format="numpy")

    train, val = one(cfg.data.train_splits), one(cfg.data.val_splits)
    est_gb = int(counts.sum() + val_counts.sum()) * spec.image_size**2 * (3 if spec.mode == "RGB" else 1) / 1e9
    if cfg.data.cache is True or (cfg.data.cache == "auto" and est_gb <= cfg.data.cache_max_gb):
        train, val = train.materialize(), val.materialize()
    if cfg.data.class_weights == "balanced":
        weights = (counts.sum() / (len(classes) * np.maximum(counts, 1))).tolist()
    elif isinstance(cfg.data.class_weights, list):
        if len(cfg.data.class_weights) != len(classes):
            from medray.errors import ConfigError

            raise ConfigError(f"data.class_weights has {len(cfg.data.class_weights)} values for {len(classes)} classes")
        weights = list(cfg.data.class_weights)
    else:
        weights = None
    meta = {"classes": classes, "train_rows": int(counts.sum()), "val_rows": int(val_counts.sum()),
            "train_counts": counts.tolist(), "val_counts": val_counts.tolist(), "class_weights": weights,
            "preprocessing": spec.as_dict()}
    return {"train": train, "val": val}, meta


# --------------------------------------------------------------------------------------------
# worker side


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import torch
    import torch.nn.functional as F

    from medray.data.transforms import RandomAugment, normalize
    from medray.models import create_model
    from medray.training import loop

    cfg = Config.model_validate(config["job"])
    meta = config["meta"]
    w = loop.Worker(cfg)
    classes = meta["classes"]
    n_cls = len(classes)
    model = create_model(cfg.model.name, num_classes=n_cls, in_chans=cfg.model.in_chans,
                         pretrained=cfg.model.pretrained, weights=cfg.model.weights, s3=cfg.storage.s3,
                         **cfg.model.kwargs)
    model = w.prepare(model)
    bs, accum = cfg.optim.batch_size, cfg.optim.grad_accum_steps
    steps_per_epoch = max(1, math.ceil(meta["train_rows"] / (w.world * bs) / accum))
    opt = loop.build_optimizer(cfg.optim, model.parameters())
    sched = loop.build_scheduler(cfg.optim, opt, steps_per_epoch)
    state = w.restore({"model": model}, opt, sched)
    weight = torch.tensor(meta["class_weights"], dtype=torch.float32, device=w.device) \
        if meta.get("class_weights") else None
    aug = RandomAugment(**cfg.data.augment.model_dump(exclude={"enabled"})) if cfg.data.augment.enabled else None
    label = cfg.data.label_column
    train_it, val_it = w.shard("train"), w.shard("val")

    for epoch in range(state.epoch, cfg.optim.epochs):
        w.epoch_start()
        model.train()
        gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch * 101 + w.rank)
        sums = {"loss": 0.0, "n": 0.0, "correct": 0.0}
        n_steps, i = 0, -1
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(train_it.iter_torch_batches(
                batch_size=bs, local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                local_shuffle_seed=cfg.run.seed + epoch, prefetch_batches=2,
                dtypes={"image": torch.uint8, label: torch.int64})):
            x = normalize(batch["image"].to(w.device))
            y = batch[label].to(w.device)
            if aug is not None:
                x = aug(x, generator=gen)
            with w.autocast():
                logits = model(w.to_input(x))
            loss = F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=cfg.data.label_smoothing)
            (loss / accum).backward()
            if (i + 1) % accum == 0:
                loop.optimizer_step(cfg.optim, model, opt, sched)
                state.step += 1
                n_steps += 1
            sums["loss"] += float(loss) * len(y)
            sums["n"] += len(y)
            sums["correct"] += float((logits.argmax(1) == y).sum())
            w.step_progress(epoch, i + 1, steps_per_epoch * accum, float(loss))
        if (i + 1) % accum != 0:  # leftover micro-batches of the epoch
            loop.optimizer_step(cfg.optim, model, opt, sched)
            state.step += 1
            n_steps += 1
        train_s = time.time() - w._t_epoch
        tr = w.allreduce_sums(sums)
        val = evaluate_shard(w, model, val_it, label, n_cls, bs)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": tr["loss"] / max(1.0, tr["n"]),
            "train_acc": tr["correct"] / max(1.0, tr["n"]),
            "lr": opt.param_groups[0]["lr"],
            **val,
            "resumed_from_epoch": state.resumed_from_epoch if state.resumed_from_epoch is not None else -1,
        }
        state.epoch = epoch + 1
        state.update_best(metrics.get(cfg.run.metric), cfg.run.mode)
        metrics["images_per_s"] = tr["n"] / max(1e-9, train_s)  # training throughput (validation excluded)
        w.epoch_line(epoch, cfg.optim.epochs, n_steps, int(tr["n"]), metrics, cfg.run.metric)
        state.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        w.report(metrics, state, {"model": model}, opt, sched)



def evaluate_shard(w, model, val_it, label: str, n_cls: int, bs: int) -> dict[str, float]:
    """Validation over the whole (unsplit) val set: batch k is run by worker ``k % world``; the
    predictions are gathered so every metric is computed on all rows, exactly once each."""
    import torch
    import torch.nn.functional as F

    from medray.data.transforms import normalize
    from medray.evaluation import metrics as M

    # the unwrapped module: a DDP forward broadcasts BatchNorm buffers (a collective call), and the
    # workers run different numbers of validation batches here -> it would hang
    net = w.unwrap(model)
    net.eval()
    probs, ys = [], []
    with torch.no_grad():
        for k, batch in enumerate(val_it.iter_torch_batches(batch_size=bs, dtypes={"image": torch.uint8,
                                                                                   label: torch.int64})):
            if k % w.world != w.rank:
                continue
            x = normalize(batch["image"].to(w.device))
            with w.autocast():
                logits = net(w.to_input(x))
            probs.append(F.softmax(logits.float(), 1).cpu().numpy())
            ys.append(batch[label].numpy())
    parts = w.gather((np.concatenate(probs) if probs else np.zeros((0, n_cls), np.float32),
                      np.concatenate(ys) if ys else np.zeros(0, np.int64)))
    p = np.concatenate([a for a, _ in parts]).astype(np.float64)
    y = np.concatenate([b for _, b in parts]).astype(np.int64)
    net.train()
    if len(y) == 0:
        return {"val_loss": float("nan"), "val_acc": float("nan"), "val_auc": float("nan"), "val_n": 0}
    pred = p.argmax(1)
    return {"val_loss": float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)))),
            "val_acc": M.accuracy(y, pred), "val_bal_acc": float(M.balanced_accuracy(y, pred, n_cls)),
            "val_auc": float(M.roc_auc_ovr(y, p)[1]), "val_n": int(len(y))}


# --------------------------------------------------------------------------------------------
# export


def card_for(cfg: Config, meta: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The catalogue card of a trained classifier (weights attached by the publisher)."""
    classes = meta["classes"]
    from medray.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return {
        "name": cfg.run.publish_as or cfg.run.name,
        "task": cfg.publish_task,
        "modality": cfg.data.modality,
        "description": cfg.description or f"{cfg.model.name} classifier: {', '.join(classes)}",
        "inputs": ["image"],
        "outputs": ["probs", "label", "score"],
        "labels": classes,
        "preprocessing": {**meta["preprocessing"], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "architecture": {"name": cfg.model.name, "kwargs": cfg.model.kwargs, "in_chans": cfg.model.in_chans,
                         "num_classes": len(classes)},
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k.startswith("val_")},
        "resources": {"num_cpus": 1, "num_gpus": 0},
    }
