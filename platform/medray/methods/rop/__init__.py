"""rop: semi-supervised ROP staging with a mean teacher (METHODS.md §5; SRC-MT, Liu et al. 2020).

A student and a teacher of one timm architecture; the teacher is the EMA of the student
(:mod:`.ema`: ``decay = min(1 - 1/(step+1), alpha)``), never trained by gradient. Every step takes a
batch from each of two Ray Data streams (:mod:`.streams`): labelled and unlabelled, both split across
the workers, the shorter cycled. Each image is augmented twice independently; the student sees view 1,
the teacher view 2. Loss (:mod:`.losses`)::

    CE(student(labelled)) + w(t) * (MSE(p_student, p_teacher) + lambda * L_relation)

over the whole batch (labelled + unlabelled) for the consistency terms, ``w(t)`` a sigmoid ramp-up.
Validation (student, every epoch; the teacher's kappa is reported too) picks the best epoch by
quadratic-weighted kappa; the test split is then scored with that epoch's STUDENT on the driver
(:mod:`.evaluate`), and the student is published (task ``rop_stage``).

``mean_teacher.enabled: false`` is the supervised-only baseline with the same labelled share, the same
augmentation and the same number of optimizer steps (the labelled stream is cycled to the length the
mean-teacher epoch would have).

Launch::

    medray data synth rop --n 600 --out runs/data/rop.parquet --size 64
    medray train jobs/rop.yaml data.labelled_fraction=0.1
    medray train jobs/rop.yaml data.labelled_fraction=0.1 mean_teacher.enabled=false run.name=rop_sup
"""

from __future__ import annotations

import math
import sys
from typing import Any, Literal

from pydantic import Field

from medray.config import JobBase, StrictModel, register_job
from medray.methods.classify import AugmentSpec


class RopData(StrictModel):
    manifests: list[str] = Field(min_length=1, description="manifest URIs (fully or partly labelled)")
    label_column: str = "stage"
    classes: list[str] | None = None  # default: the manifests' class list (ordered stages)
    modality: str = "fundus"
    image_size: int = Field(64, ge=16)
    mode: Literal["RGB", "L"] = "RGB"
    resize: Literal["pad", "crop", "stretch"] = "pad"
    train_splits: list[str] = ["train"]
    val_splits: list[str] = ["val"]
    test_splits: list[str] = ["test"]
    labelled_fraction: float = Field(0.2, gt=0, le=1, description="share of the train PATIENTS labelled")
    labelled_seed: int = 0
    unlabelled_batch_size: int | None = Field(None, ge=1, description="per worker; default optim.batch_size")
    cache: bool | Literal["auto"] = "auto"
    cache_max_gb: float = 4.0
    decode_batch_size: int = 16
    shuffle_buffer: int = 256
    augment: AugmentSpec = Field(default_factory=lambda: AugmentSpec(hflip=0.5, rotate_deg=20.0,
                                                                     scale=(0.9, 1.1), brightness=0.2,
                                                                     contrast=0.2, saturation=0.1))
    record_rows: bool = False  # put the row ids each worker saw into every checkpoint (rows_seen.json)


class MeanTeacherSpec(StrictModel):
    enabled: bool = True  # false: the supervised-only baseline (same labelled share and steps)
    ema_decay: float = Field(0.99, ge=0, lt=1, description="alpha of min(1 - 1/(step+1), alpha)")
    consistency: float = Field(1.0, ge=0, description="w_max of the ramped consistency weight")
    relation_weight: float = Field(1.0, ge=0, description="lambda of the relation (SRC) loss")
    rampup_epochs: float = Field(5.0, ge=0)
    evaluate_teacher: bool = True  # also report the teacher's validation kappa each epoch


@register_job
class Config(JobBase):
    method: Literal["rop"]
    data: RopData
    mean_teacher: MeanTeacherSpec = Field(default_factory=MeanTeacherSpec)
    publish_task: str = "rop_stage"


# --------------------------------------------------------------------------------------------
# driver side


def resolve_classes(cfg: Config) -> list[str]:
    from medray.data import pipeline
    from medray.errors import ConfigError

    lists = [pipeline.manifest_info(u, cfg.storage.s3).classes for u in cfg.data.manifests]
    if cfg.data.classes:
        for u, c in zip(cfg.data.manifests, lists):
            if c and len(c) != len(cfg.data.classes):
                raise ConfigError(f"data.classes has {len(cfg.data.classes)} names but {u} has {len(c)} stages {c}")
        classes = list(cfg.data.classes)
    elif any(c != lists[0] for c in lists):
        raise ConfigError(f"data.manifests have different stage lists {lists}: set data.classes")
    elif not lists[0]:
        raise ConfigError("the manifest has no stage list: set data.classes")
    else:
        classes = list(lists[0])
    if not 2 <= len(classes) <= 6:
        raise ConfigError(f"data.classes: {len(classes)} stages; ROP staging takes 2 to 6 ordered stages")
    return classes


def build_datasets(cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """``labelled``/``unlabelled`` (split across workers) and ``val`` Ray datasets, and the metadata."""
    from medray.methods.rop import streams

    classes = resolve_classes(cfg)
    datasets, meta = streams.build_streams(cfg, classes)
    meta["classes"] = classes
    meta["train_rows"] = meta["labelled_rows"] + meta["unlabelled_rows"]
    meta["val_rows"] = -1  # counted by the workers
    return datasets, meta


def run(job: Config, force: bool = False) -> dict[str, Any]:
    """Train (two streams), pick the best epoch on validation kappa, score its student on the test
    split, write summary + plots, publish the student."""
    from medray.errors import MedrayError
    from medray.training import launcher

    datasets, meta = build_datasets(job)
    _, _, run_uri = launcher.run_paths(job)
    print(f"[medray] rop job {job.run.name} ({meta['mode']}): {meta['labelled_rows']} labelled rows "
          f"({meta['labelled_patients']}/{meta['patients']} patients) + {meta['unlabelled_rows']} unlabelled, "
          f"{job.scaling.num_workers} worker(s); run -> {run_uri}", file=sys.stderr, flush=True)
    split = [k for k in ("labelled", "unlabelled") if k in datasets]
    trainer = launcher.build_trainer(job, train_loop_per_worker, datasets, meta, split=split)
    result = trainer.fit()
    if result.error is not None:
        raise MedrayError(f"training run {job.run.name} failed: {result.error}")
    ckpt, best = launcher.best_checkpoint(result, job)
    weights = launcher.read_checkpoint_file(ckpt, "model.safetensors")
    test = evaluate_test(job, meta, weights, run_uri)
    summary = launcher.write_summary(job, result, meta, best, run_uri, extra={"test_metrics": test})
    out: dict[str, Any] = {"run": run_uri, "best_checkpoint": ckpt.path, "metrics": summary["best_metrics"],
                           "test_metrics": test, "mode": meta["mode"],
                           "resumed_from_epoch": summary["final_metrics"].get("resumed_from_epoch")}
    if job.run.catalog:
        card = card_for(job, meta, {**best, **test})
        published = launcher.publish(job, card, {"weights": weights})
        out["published"] = f"{published.name}:{published.version}"
        out["catalog"] = job.run.catalog
    return out


def evaluate_test(job: Config, meta: dict[str, Any], weights: bytes, run_uri: str) -> dict[str, Any]:
    """Test-split metrics of the student ``weights`` (driver, CPU) + ``test_confusion.png``."""
    from safetensors.torch import load as st_load

    from medray import storage
    from medray.data import pipeline
    from medray.methods.rop import evaluate
    from medray.models import create_model

    d = job.data
    if not d.test_splits:
        return {}
    spec = pipeline.DecodeSpec(d.image_size, d.mode, d.resize)
    parts = []
    for u in d.manifests:
        cols = ["image", d.label_column] + (["image_bytes"] if pipeline._is_packed(u, job.storage.s3) else [])
        parts.append(pipeline.read_manifest(u, splits=d.test_splits, columns=cols, s3=job.storage.s3))
    from ray.data.expressions import col

    ds = (parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]).filter(expr=col(d.label_column).is_not_null())
    ds = ds.map_batches(pipeline.decode_batch, fn_kwargs={"spec": spec, "keep": (d.label_column,), "s3": job.storage.s3},
                        batch_size=d.decode_batch_size, batch_format="numpy")
    model = create_model(job.model.name, num_classes=len(meta["classes"]), in_chans=job.model.in_chans,
                         **job.model.kwargs)
    model.load_state_dict(st_load(weights))
    y, p = evaluate.predict_dataset(model, ds, d.label_column)
    if len(y) == 0:
        return {"test_n": 0}
    m = evaluate.staging_metrics(y, p, meta["classes"], "test_")
    try:
        evaluate.plot_confusion(y, p, meta["classes"], f"{job.run.name}: test (student, {meta['mode']})",
                                storage.join(run_uri, "test_confusion.png"), job.storage.s3)
    except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
        print(f"[medray] could not plot the confusion matrix: {e}", file=sys.stderr)
    print(f"[medray] test (student): kappa {m['test_kappa']:.4f} | acc {m['test_acc']:.4f} | "
          f"auc {m['test_auc']:.4f} | n {m['test_n']}", file=sys.stderr, flush=True)
    return m


# --------------------------------------------------------------------------------------------
# worker side


class _Penultimate:
    """Captures the input of the network's classifier (the pooled penultimate features) on every
    forward, so the student runs through DDP's own ``forward`` (gradient sync intact)."""

    def __init__(self, model):
        from medray.errors import ConfigError

        m = model.module if hasattr(model, "module") else model
        head = m.get_classifier() if hasattr(m, "get_classifier") else None
        if head is None or not hasattr(head, "register_forward_hook"):
            raise ConfigError(f"model {type(m).__name__}: no get_classifier(); the rop method needs a timm classifier")
        self.features = None
        head.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.features = inputs[0]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import time

    import numpy as np
    import torch

    from medray.data.transforms import RandomAugment, normalize
    from medray.methods.rop import evaluate, losses, streams
    from medray.methods.rop.ema import MeanTeacher
    from medray.models import create_model
    from medray.training import loop

    cfg = Config.model_validate(config["job"])
    meta = config["meta"]
    mt_cfg = cfg.mean_teacher
    w = loop.Worker(cfg)
    classes = meta["classes"]
    label = cfg.data.label_column
    semi = meta["mode"] == "mean_teacher"
    student = create_model(cfg.model.name, num_classes=len(classes), in_chans=cfg.model.in_chans,
                           pretrained=cfg.model.pretrained, weights=cfg.model.weights, s3=cfg.storage.s3,
                           **cfg.model.kwargs)
    student = w.prepare(student)
    # the teacher starts as a copy of the (DDP-broadcast) student: equal on every rank
    teacher = MeanTeacher(student, alpha=mt_cfg.ema_decay) if semi else None
    feats = _Penultimate(student)
    if teacher is not None:
        teacher.model.to(w.device)
        tfeats = _Penultimate(teacher.model)
    bs_l = cfg.optim.batch_size
    bs_u = cfg.data.unlabelled_batch_size or bs_l
    # the same number of steps for both modes: the supervised baseline cycles its labelled stream
    spe_meta = dict(meta, unlabelled_rows=meta["unlabelled_available"])
    spe = streams.steps_per_epoch(spe_meta, w.world, bs_l, bs_u)
    opt = loop.build_optimizer(cfg.optim, student.parameters())
    sched = loop.build_scheduler(cfg.optim, opt, spe)
    models = {"model": student, **({"teacher": teacher.model} if teacher else {})}
    state = w.restore(models, opt, sched)
    restored = {}
    if state.resumed_from_epoch is not None:  # proof of what the checkpoint brought back
        restored["restored_student_checksum"] = _checksum(student)
        if teacher is not None:
            restored["restored_teacher_checksum"] = teacher.checksum()
    aug = RandomAugment(**cfg.data.augment.model_dump(exclude={"enabled"})) if cfg.data.augment.enabled else None
    sbuf = cfg.data.shuffle_buffer
    lab_it = streams.cycle(w.shard("labelled"), bs_l, cfg.run.seed * 7 + state.epoch * 1009, sbuf)
    unl_it = streams.cycle(w.shard("unlabelled"), bs_u, cfg.run.seed * 11 + state.epoch * 1013, sbuf) if semi else None
    val_it = w.shard("val")
    ddp = w.world > 1

    for epoch in range(state.epoch, cfg.optim.epochs):
        w.epoch_start()
        student.train()
        views = streams.TwoViews(aug, cfg.run.seed * 1_000_003 + epoch * 101 + w.rank)
        sums = {k: 0.0 for k in ("loss", "ce", "pc", "src", "n_l", "n_u", "correct")}
        seen: dict[str, list[str]] = {"labelled": [], "unlabelled": []}
        wt = decay = 0.0
        for i in range(spe):
            bl = next(lab_it)
            xl = normalize(torch.from_numpy(np.ascontiguousarray(bl["image"])).to(w.device))
            yl = torch.as_tensor(np.asarray(bl[label], np.int64), device=w.device)
            nl = len(yl)
            if cfg.data.record_rows:
                seen["labelled"].extend(map(str, bl[streams.ROW_ID]))
            if semi:
                bu = next(unl_it)
                xu = normalize(torch.from_numpy(np.ascontiguousarray(bu["image"])).to(w.device))
                if cfg.data.record_rows:
                    seen["unlabelled"].extend(map(str, bu[streams.ROW_ID]))
                x = torch.cat([xl, xu])
            else:
                x = xl
            v_s, v_t = views(x)
            with w.autocast():
                logits = student(w.to_input(v_s))
            f_s = feats.features
            ce = losses.supervised_loss(logits[:nl], yl)
            if semi:
                with torch.no_grad(), w.autocast():
                    t_logits = teacher.model(w.to_input(v_t))
                f_t = tfeats.features
                t = epoch + i / spe
                wt = losses.consistency_weight(t, mt_cfg.consistency, mt_cfg.rampup_epochs)
                l_pc = losses.prediction_consistency(logits, t_logits)
                l_src = losses.relation_consistency(f_s, f_t)
                loss = losses.total_loss(ce, l_pc, l_src, wt, mt_cfg.relation_weight)
                sums["pc"] += float(l_pc) * len(x)
                sums["src"] += float(l_src) * len(x)
                sums["n_u"] += len(x) - nl
            else:
                loss = ce
            loss.backward()
            if cfg.optim.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.clip_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            state.step += 1
            if teacher is not None:
                decay = teacher.update(student, state.step, sync_buffers=ddp)
            sums["loss"] += float(loss) * nl
            sums["ce"] += float(ce) * nl
            sums["n_l"] += nl
            sums["correct"] += float((logits[:nl].argmax(1) == yl).sum())
            w.step_progress(epoch, i + 1, spe, float(loss))
        tr = w.allreduce_sums(sums)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": tr["loss"] / max(1.0, tr["n_l"]),
            "train_ce": tr["ce"] / max(1.0, tr["n_l"]),
            "train_acc": tr["correct"] / max(1.0, tr["n_l"]),
            "lr": opt.param_groups[0]["lr"],
            "steps": state.step,
        }
        if semi:
            n_all = max(1.0, tr["n_l"] + tr["n_u"])
            metrics.update(train_pc=tr["pc"] / n_all, train_src=tr["src"] / n_all, consistency_weight=wt,
                           ema_decay=decay)
        metrics.update(evaluate.evaluate_shard(w, student, val_it, label, classes, bs_l, "val_"))
        if semi:
            sums_t = w.gather(teacher.checksum())
            metrics["teacher_rank_spread"] = float(max(sums_t) - min(sums_t))
            metrics["teacher_checksum"] = sums_t[0]
            if mt_cfg.evaluate_teacher:
                tm = evaluate.evaluate_shard(w, teacher.model, val_it, label, classes, bs_l, "teacher_val_")
                metrics.update({k: tm[k] for k in ("teacher_val_kappa", "teacher_val_acc", "teacher_val_auc")})
        metrics["student_checksum"] = _checksum(student)
        metrics.update(restored)
        metrics["resumed_from_epoch"] = state.resumed_from_epoch if state.resumed_from_epoch is not None else -1
        state.epoch = epoch + 1
        state.update_best(metrics.get(cfg.run.metric), cfg.run.mode)
        metrics["images_per_s"] = (tr["n_l"] + tr["n_u"]) / max(1e-9, time.time() - w._t_epoch)
        w.epoch_line(epoch, cfg.optim.epochs, spe, int(tr["n_l"] + tr["n_u"]), metrics, cfg.run.metric)
        state.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        extra = None
        if cfg.data.record_rows:
            import json

            extra = {"rows_seen.json": json.dumps({k: w.gather(v) for k, v in seen.items()}).encode()}
        w.report(metrics, state, models, opt, sched, extra_files=extra)


def _checksum(model) -> float:
    import torch

    m = model.module if hasattr(model, "module") else model
    with torch.no_grad():
        return float(sum(t.double().sum() for t in m.state_dict().values() if t.is_floating_point()))


# --------------------------------------------------------------------------------------------
# export


def card_for(cfg: Config, meta: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The catalogue card of the STUDENT (weights attached by the publisher)."""
    from medray.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    classes = meta["classes"]
    mode = "mean teacher (SRC-MT)" if meta["mode"] == "mean_teacher" else "supervised only"
    return {
        "name": cfg.run.publish_as or cfg.run.name,
        "task": cfg.publish_task,
        "modality": cfg.data.modality,
        "description": cfg.description or (f"ROP stager ({cfg.model.name}, {mode}, "
                                           f"{100 * meta['labelled_fraction']:g}% of patients labelled): "
                                           f"{', '.join(classes)}"),
        "inputs": ["image"],
        "outputs": ["probs", "label", "stage", "expected_stage", "score"],
        "labels": classes,
        "preprocessing": {**meta["preprocessing"], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "architecture": {"name": cfg.model.name, "kwargs": cfg.model.kwargs, "in_chans": cfg.model.in_chans,
                         "num_classes": len(classes)},
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and k.startswith(("val_", "test_")) and not (isinstance(v, float) and math.isnan(v))},
        "resources": {"num_cpus": 1, "num_gpus": 0},
    }


from medray.methods.rop import predict as _predict  # noqa: E402,F401 - registers the "rop_stage" predictor
