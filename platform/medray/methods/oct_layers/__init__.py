"""oct_layers: OCT layer segmentation with width-wise windows (METHODS.md §2, seed 001).

Pipeline (each step where it runs):

1. Split by patient/eye FIRST: the manifest's ``split`` column (patient-level by construction of the
   generators and ingesters); the Ray datasets read one split each, pushed down into the read.
2. Window along the width INSIDE the Ray Data pipeline (:func:`windows.window_rows` in
   ``map_batches``: one B-scan row -> many window rows, streaming): windows of ``data.window`` columns,
   stride ``data.stride < data.window``, the last window right-aligned (union = full width).
3. Pad the height (bottom, never resized) to ``data.pad_height`` (default: the next power of two of
   the tallest scan); padded mask pixels = 255, ignored by the loss and the metrics.
4. Train a candidate (:mod:`.models`: Unet, Unet++, FPN, DeepLabV3+ with encoder depth, decoder
   kernels, convolutions per block) with CE + Dice (:mod:`.losses`); validation = IoU per class and
   mean IoU on the windowed validation set (``val_miou``; ``val_miou_fg`` leaves class 0 out). The
   selection among candidates is a Ray Tune search: ``medray tune tune/oct_candidates.yaml``
   (:mod:`medray.tuning`).
5. Inference on whole B-scans (:mod:`.infer`): pad, all windows as one batch, Gaussian-blended
   logits, crop back; per-layer thickness in pixels and micrometres (``axial_um``). After training,
   :func:`run` scores the best checkpoint this way on the held-out scans (``data.test_splits``) and
   writes ``test_report.json``, ``overlays.png`` and ``thickness.png`` beside the run.

Launch::

    medray data synth oct 96 --out runs/data/oct_synth.parquet
    medray train jobs/oct_layers.yaml
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from medray.config import JobBase, ModelSpec, StrictModel, register_job
from medray.methods.oct_layers import models as _models  # noqa: F401 - registers the candidates
from medray.methods.oct_layers.windows import IGNORE, next_pow2, window_starts

DEFAULT_DEPTH = {"oct_tiny": 3}


class OctData(StrictModel):
    manifests: list[str] = Field(min_length=1, description="oct_seg manifest URIs (same class map)")
    classes: list[str] | None = None  # default: the manifests' class map
    modality: str = "oct"
    window: int = Field(128, ge=8, description="window width W (columns)")
    stride: int = Field(64, ge=1, description="stride S < W between windows")
    pad_height: int | None = Field(None, description="padded height (a power of two); default: next "
                                                      "power of two of the tallest scan")
    train_splits: list[str] = ["train"]
    val_splits: list[str] = ["val"]
    test_splits: list[str] = ["test"]
    decode_batch_size: int = Field(4, ge=1, description="B-scans per windowing task")
    cache: bool | Literal["auto"] = "auto"
    cache_max_gb: float = 2.0
    shuffle_buffer: int = 256
    hflip: float = Field(0.5, ge=0, le=1)
    dice_weight: float = Field(1.0, ge=0)
    blend_sigma: float = Field(0.25, ge=0, description="Gaussian sigma (fraction of W); 0 = plain mean")
    mean: float = 0.5
    std: float = Field(0.25, gt=0)
    eval_max_scans: int = Field(32, ge=0, description="held-out scans scored by stitched inference")
    plot_scans: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "OctData":
        if self.stride >= self.window:
            raise ValueError(f"stride={self.stride} must be smaller than window={self.window} "
                             "(windows must overlap so the whole width is covered smoothly)")
        if self.pad_height is not None and self.pad_height != next_pow2(self.pad_height):
            raise ValueError(f"pad_height={self.pad_height} must be a power of two")
        return self


def _default_model() -> ModelSpec:
    return ModelSpec(name="oct_unet", in_chans=1, kwargs={"encoder": "resnet18", "encoder_depth": 4,
                                                          "decoder_channels": 64, "convs_per_block": 2})


@register_job
class Config(JobBase):
    method: Literal["oct_layers"]
    data: OctData
    model: ModelSpec = Field(default_factory=_default_model)

    @model_validator(mode="after")
    def _fits(self) -> "Config":
        if self.model.name.startswith("oct_"):
            depth = int(self.model.kwargs.get("encoder_depth", DEFAULT_DEPTH.get(self.model.name, 5)))
            if self.data.window % (2**depth):
                raise ValueError(f"data.window={self.data.window} must be a multiple of 2**encoder_depth="
                                 f"{2**depth} (model.kwargs.encoder_depth={depth})")
            if self.data.pad_height is not None and self.data.pad_height < 2**depth:
                raise ValueError(f"data.pad_height={self.data.pad_height} must be >= 2**encoder_depth={2**depth}")
        return self

    @property
    def depth(self) -> int:
        return int(self.model.kwargs.get("encoder_depth", DEFAULT_DEPTH.get(self.model.name, 5)))

    @property
    def mode(self) -> str:
        return "L" if self.model.in_chans == 1 else "RGB"


# --------------------------------------------------------------------------------------------
# driver side


def resolve_classes(cfg: Config) -> list[str]:
    from medray.data import pipeline
    from medray.errors import ConfigError

    infos = [pipeline.manifest_info(u, cfg.storage.s3) for u in cfg.data.manifests]
    for u, inf in zip(cfg.data.manifests, infos):
        if inf.task != "oct_seg":
            raise ConfigError(f"data.manifests: {u} is a {inf.task!r} manifest; oct_layers needs task 'oct_seg'")
    lists = [inf.classes for inf in infos]
    if cfg.data.classes:
        for u, c in zip(cfg.data.manifests, lists):
            if c and len(c) != len(cfg.data.classes):
                raise ConfigError(f"data.classes has {len(cfg.data.classes)} names but {u} has {len(c)} classes {c}")
        return list(cfg.data.classes)
    if any(c != lists[0] for c in lists):
        raise ConfigError(f"data.manifests have different class maps {lists}: set data.classes")
    if not lists[0]:
        raise ConfigError(f"{cfg.data.manifests[0]}: the manifest has no class map: set data.classes")
    return list(lists[0])


def scan_stats(cfg: Config) -> dict[str, Any]:
    """Streams (split, width, height, mask) of the manifests: window counts per split, max height."""
    import pyarrow.compute as pc

    from medray.data import manifest

    out = {"max_height": 0, "windows": {}, "scans": {}}
    for uri in cfg.data.manifests:
        for b in manifest.iter_batches(uri, columns=["split", "width", "height", "mask"], s3=cfg.storage.s3):
            keep = pc.is_valid(b.column(3))
            split = pc.filter(b.column(0), keep).to_pylist()
            ws = pc.filter(b.column(1), keep).to_numpy()
            hs = pc.filter(b.column(2), keep).to_numpy()
            if len(hs):
                out["max_height"] = max(out["max_height"], int(hs.max()))
            for s, w in zip(split, ws):
                out["windows"][s] = out["windows"].get(s, 0) + len(window_starts(int(w), cfg.data.window,
                                                                                  cfg.data.stride))
                out["scans"][s] = out["scans"].get(s, 0) + 1
    return out


def padded_height(cfg: Config, max_height: int) -> int:
    from medray.errors import ConfigError

    if cfg.data.pad_height is not None:
        if max_height > cfg.data.pad_height:
            raise ConfigError(f"data.pad_height={cfg.data.pad_height} is smaller than the tallest scan "
                              f"({max_height} rows) of {cfg.data.manifests}")
        return cfg.data.pad_height
    return max(next_pow2(max(1, max_height)), 2**cfg.depth)


def preprocessing(cfg: Config, pad_h: int) -> dict[str, Any]:
    return {"mode": cfg.mode, "window": cfg.data.window, "stride": cfg.data.stride, "pad_height": pad_h,
            "image_size": pad_h, "resize": "none", "mean": [cfg.data.mean], "std": [cfg.data.std],
            "blend_sigma": cfg.data.blend_sigma, "ignore_index": IGNORE}


def windowed_dataset(cfg: Config, splits: list[str], pad_h: int):
    """Streaming Ray dataset of the windows of the scans of ``splits`` (split first, then window)."""
    from ray.data.expressions import col

    from medray.data import pipeline
    from medray.methods.oct_layers.windows import window_rows

    s3 = cfg.storage.s3
    parts = [pipeline.read_manifest(u, splits=splits, columns=["image", "mask"], s3=s3) for u in cfg.data.manifests]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    ds = ds.filter(expr=col("mask").is_not_null())
    return ds.map_batches(window_rows, batch_size=cfg.data.decode_batch_size, batch_format="numpy",
                          fn_kwargs={"window": cfg.data.window, "stride": cfg.data.stride,
                                     "pad_height_to": pad_h, "mode": cfg.mode, "s3": s3})


def build_datasets(cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ray datasets of windows for train/val and the metadata the workers need."""
    from medray.errors import ConfigError

    classes = resolve_classes(cfg)
    st = scan_stats(cfg)
    pad_h = padded_height(cfg, st["max_height"])
    n_train = sum(st["windows"].get(s, 0) for s in cfg.data.train_splits)
    n_val = sum(st["windows"].get(s, 0) for s in cfg.data.val_splits)
    if n_train == 0:
        raise ConfigError(f"no labelled scans in splits {cfg.data.train_splits} of {cfg.data.manifests}")
    train = windowed_dataset(cfg, cfg.data.train_splits, pad_h)
    val = windowed_dataset(cfg, cfg.data.val_splits, pad_h)
    est_gb = (n_train + n_val) * pad_h * cfg.data.window * (2 if cfg.mode == "L" else 4) / 1e9
    if cfg.data.cache is True or (cfg.data.cache == "auto" and est_gb <= cfg.data.cache_max_gb):
        train, val = train.materialize(), val.materialize()
    meta = {"classes": classes, "train_rows": int(n_train), "val_rows": int(n_val),
            "train_scans": int(sum(st["scans"].get(s, 0) for s in cfg.data.train_splits)),
            "val_scans": int(sum(st["scans"].get(s, 0) for s in cfg.data.val_splits)),
            "pad_height": pad_h, "max_height": st["max_height"], "preprocessing": preprocessing(cfg, pad_h)}
    return {"train": train, "val": val}, meta


# --------------------------------------------------------------------------------------------
# worker side


def build_model(cfg: Config, n_classes: int):
    from medray.models import create_model

    return create_model(cfg.model.name, num_classes=n_classes, in_chans=cfg.model.in_chans, pretrained=False,
                        weights=cfg.model.weights, s3=cfg.storage.s3, **cfg.model.kwargs)


def _flip(x, y, p: float, gen):
    import torch

    if p <= 0:
        return x, y
    f = torch.rand(x.shape[0], generator=gen) < p
    if bool(f.any()):
        x = x.clone()
        y = y.clone()
        x[f] = x[f].flip(-1)
        y[f] = y[f].flip(-1)
    return x, y


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import torch

    from medray.data.transforms import normalize
    from medray.methods.oct_layers.losses import ce_dice_loss
    from medray.training import loop

    cfg = Config.model_validate(config["job"])
    meta = config["meta"]
    w = loop.Worker(cfg)
    classes = meta["classes"]
    model = w.prepare(build_model(cfg, len(classes)))
    bs, accum = cfg.optim.batch_size, cfg.optim.grad_accum_steps
    steps_per_epoch = max(1, math.ceil(meta["train_rows"] / (w.world * bs) / accum))
    opt = loop.build_optimizer(cfg.optim, model.parameters())
    sched = loop.build_scheduler(cfg.optim, opt, steps_per_epoch)
    state = w.restore({"model": model}, opt, sched)
    mean, std = (cfg.data.mean,), (cfg.data.std,)
    train_it, val_it = w.shard("train"), w.shard("val")
    w.log(f"oct_layers: {meta['train_rows']} train windows ({meta['train_scans']} scans), "
          f"{meta['val_rows']} val windows; window {cfg.data.window}/stride {cfg.data.stride}, "
          f"height padded to {meta['pad_height']}")

    for epoch in range(state.epoch, cfg.optim.epochs):
        w.epoch_start()
        model.train()
        gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch * 101 + w.rank)
        sums = {"loss": 0.0, "n": 0.0}
        n_steps, i = 0, -1
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(train_it.iter_torch_batches(
                batch_size=bs, local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                local_shuffle_seed=cfg.run.seed + epoch, prefetch_batches=2,
                dtypes={"image": torch.uint8, "mask": torch.uint8, "x0": torch.int32})):
            x, y = _flip(batch["image"], batch["mask"], cfg.data.hflip, gen)
            if len(y) == 1:  # BatchNorm in train mode (ASPP pooling) needs > 1 value per channel
                x, y = x.repeat(2, 1, 1, 1), y.repeat(2, 1, 1)
            x = normalize(x.to(w.device), mean, std)
            y = y.to(w.device).long()
            with w.autocast():
                logits = model(w.to_input(x))
            loss = ce_dice_loss(logits, y, cfg.data.dice_weight)
            (loss / accum).backward()
            if (i + 1) % accum == 0:
                loop.optimizer_step(cfg.optim, model, opt, sched)
                state.step += 1
                n_steps += 1
            sums["loss"] += float(loss) * len(y)
            sums["n"] += len(y)
            w.step_progress(epoch, i + 1, steps_per_epoch * accum, float(loss))
        if (i + 1) % accum != 0:
            loop.optimizer_step(cfg.optim, model, opt, sched)
            state.step += 1
            n_steps += 1
        tr = w.allreduce_sums(sums)
        val = evaluate_shard(w, model, val_it, classes, bs, cfg)
        metrics = {"epoch": epoch + 1, "train_loss": tr["loss"] / max(1.0, tr["n"]),
                   "lr": opt.param_groups[0]["lr"], **val,
                   "resumed_from_epoch": state.resumed_from_epoch if state.resumed_from_epoch is not None else -1}
        state.epoch = epoch + 1
        state.update_best(metrics.get(cfg.run.metric), cfg.run.mode)
        metrics["windows_per_s"] = tr["n"] / max(1e-9, time.time() - w._t_epoch)
        w.epoch_line(epoch, cfg.optim.epochs, n_steps, int(tr["n"]), metrics, cfg.run.metric)
        state.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        w.report(metrics, state, {"model": model}, opt, sched)



def seg_metrics(cm: np.ndarray, classes: list[str], prefix: str = "val_") -> dict[str, float]:
    """Flat metrics from a confusion matrix: mean IoU/Dice (all scored classes and without class 0),
    and IoU/Dice per class (NaN where a class is absent from truth and prediction)."""
    from medray.evaluation.metrics import iou_dice_from_confusion

    iou, dice = iou_dice_from_confusion(cm)
    out: dict[str, float] = {}

    def mean(a):
        a = a[~np.isnan(a)]
        return float(a.mean()) if len(a) else float("nan")

    out[f"{prefix}miou"] = mean(iou)
    out[f"{prefix}mdice"] = mean(dice)
    out[f"{prefix}miou_fg"] = mean(iou[1:])
    out[f"{prefix}mdice_fg"] = mean(dice[1:])
    total = cm.sum()
    out[f"{prefix}pixel_acc"] = float(np.trace(cm) / total) if total else float("nan")
    for k, name in enumerate(classes):
        out[f"{prefix}iou_{name}"] = float(iou[k])
        out[f"{prefix}dice_{name}"] = float(dice[k])
    return out


def evaluate_shard(w, model, val_it, classes: list[str], bs: int, cfg: Config) -> dict[str, float]:
    """IoU per class and mean IoU on the whole windowed validation set: batch k is run by worker
    ``k % world``; confusion matrices are summed over workers."""
    import torch

    from medray.data.transforms import normalize
    from medray.evaluation.metrics import segmentation_confusion
    from medray.methods.oct_layers.losses import ce_dice_loss

    n = len(classes)
    cm = np.zeros((n, n), np.int64)
    loss_sum, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for k, batch in enumerate(val_it.iter_torch_batches(
                batch_size=bs, dtypes={"image": torch.uint8, "mask": torch.uint8, "x0": torch.int32})):
            if k % w.world != w.rank:
                continue
            x = normalize(batch["image"].to(w.device), (cfg.data.mean,), (cfg.data.std,))
            y = batch["mask"].to(w.device).long()
            with w.autocast():
                logits = model(w.to_input(x)).float()
            loss_sum += float(ce_dice_loss(logits, y, cfg.data.dice_weight)) * len(y)
            count += len(y)
            cm += segmentation_confusion(logits.argmax(1).cpu().numpy(), y.cpu().numpy(), n, ignore_index=IGNORE)
    parts = w.gather((cm, loss_sum, count))
    cm = sum(p[0] for p in parts)
    loss_sum, count = sum(p[1] for p in parts), sum(p[2] for p in parts)
    model.train()
    if count == 0 or cm.sum() == 0:
        return {"val_loss": float("nan"), "val_miou": float("nan"), "val_n": 0}
    return {"val_loss": loss_sum / count, **seg_metrics(cm, classes), "val_n": int(count)}


# --------------------------------------------------------------------------------------------
# held-out evaluation on whole scans, plots


def held_out_rows(cfg: Config, splits: list[str], limit: int) -> list[dict[str, Any]]:
    from medray.data import manifest

    rows: list[dict[str, Any]] = []
    for uri in cfg.data.manifests:
        for b in manifest.iter_batches(uri, columns=["image", "mask", "split", "axial_um", "patient_id"],
                                       s3=cfg.storage.s3):
            for r in b.to_pylist():
                if r["split"] in splits and r["mask"]:
                    rows.append(r)
                    if len(rows) >= limit:
                        return rows
    return rows


def structure_score(mask: np.ndarray, n_classes: int) -> tuple[int, int]:
    """How much labelled structure a true mask shows, for picking the scans worth plotting: the number of
    classes present, then the pixel count of the rarest present class (a scan with a small cyst ranks
    above one without; among scans with fluid, more fluid first)."""
    counts = np.bincount(np.asarray(mask).ravel(), minlength=n_classes)
    return int((counts > 0).sum()), int(counts[counts > 0].min())


def keep_most_structured(kept: list, k: int, index: int, mask: np.ndarray, n_classes: int, item: Any) -> None:
    """Add ``item`` (row ``index`` of a stream, true ``mask``) to ``kept`` and keep only the ``k`` entries
    with the most labelled structure (:func:`structure_score`; ties: the earlier row). Entries are
    ``(score, -index, item)``, best first."""
    kept.append((structure_score(mask, n_classes), -index, item))
    kept.sort(key=lambda x: x[:2], reverse=True)
    del kept[k:]


def evaluate_scans(predictor, rows: list[dict[str, Any]], out_uri: str | None = None, s3: Any = None,
                   plot_scans: int = 3, title: str = "") -> dict[str, Any]:
    """Stitched whole-scan inference on ``rows`` (image, mask, axial_um): IoU/Dice per class and mean,
    per-layer mean thickness error; with ``out_uri``: ``test_report.json``, ``overlays.png`` (the
    ``plot_scans`` scans with the most labelled structure), ``thickness.png``."""
    from medray import storage
    from medray.data import imageio
    from medray.evaluation.metrics import segmentation_confusion

    classes = predictor.labels
    n = len(classes)
    cm = np.zeros((n, n), np.int64)
    shown: list[Any] = []  # keep_most_structured's entries of (image, true, pred, true/predicted thickness)
    abs_err: dict[str, list[float]] = {}
    t0 = time.time()
    for i, r in enumerate(rows):
        img = imageio.read_image(r["image"], s3=s3, mode=predictor.mode)
        true = imageio.read_mask(r["mask"], s3=s3)
        res = predictor.predict([img], axial_um=r.get("axial_um"))[0]
        pred = res["mask"]
        cm += segmentation_confusion(pred, true, n)
        from medray.methods.oct_layers.infer import thickness

        tt = thickness(true, classes, r.get("axial_um"))
        unit = "um" if "um" in tt else "px"
        for name, vals in res["thickness"][unit].items():
            abs_err.setdefault(name, []).append(float(np.mean(np.abs(np.asarray(vals) - np.asarray(tt[unit][name])))))
        if plot_scans:
            # show the scans with the most labelled structure (e.g. Duke DME scans WITH fluid, not the
            # first ones, which may have none): distinct classes, then the rarest present class's pixels
            keep_most_structured(shown, plot_scans, i, true, n, (img, true, pred, tt, res["thickness"]))
    report = {"scans": len(rows), "seconds": round(time.time() - t0, 2), "classes": classes,
              **seg_metrics(cm, classes, prefix="test_"),
              "thickness_mae": {k: float(np.mean(v)) for k, v in abs_err.items()},
              "thickness_unit": "um" if rows and rows[0].get("axial_um") else "px",
              "confusion_matrix": cm.tolist()}
    shown = [x[2] for x in shown]
    if out_uri:
        storage.write_json(storage.join(out_uri, "test_report.json"), report, s3)
        if shown:
            plot_overlays(shown, classes, storage.join(out_uri, "overlays.png"), s3, title)
            plot_thickness(shown[0][3], shown[0][4], storage.join(out_uri, "thickness.png"), s3, title)
    return report


def plot_overlays(shown, classes: list[str], path: str, s3: Any = None, title: str = "") -> bytes:
    from medray.evaluation import plots

    images, titles = [], []
    for i, (img, true, pred, _, _) in enumerate(shown):
        images += [img, plots.blend_mask(img, true, n_classes=len(classes)),
                   plots.blend_mask(img, pred, n_classes=len(classes))]
        titles += [f"scan {i + 1}", f"scan {i + 1}: true mask", f"scan {i + 1}: predicted mask"]
    return plots.image_grid(images, titles, ncols=3, title=title or "OCT segmentation (held-out scans)",
                            legend=plots.class_legend(classes), cell_size=3.5, path=path, s3=s3)


def plot_thickness(true_t: dict, pred_t: dict, path: str, s3: Any = None, title: str = "") -> bytes:
    from medray.evaluation import plots

    unit = "um" if "um" in pred_t else "px"
    names = [k for k in pred_t[unit] if max(true_t[unit].get(k, [0]) or [0]) > 0]
    fig = plots.new_figure((10, 5))
    ax = fig.add_subplot(111)
    for i, name in enumerate(names):
        st = plots.series_style(i)
        color = st.get("color")
        ax.plot(true_t[unit][name], color=color, lw=1.2, label=f"{name} (true)")
        ax.plot(pred_t[unit][name], color=color, lw=1.2, ls="--")
    ax.set_xlabel("column (A-scan)")
    ax.set_ylabel("thickness (" + ("µm" if unit == "um" else "pixels") + ")")
    ax.set_title(title or "Per-layer thickness along the scan: true (solid) vs predicted (dashed)")
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    return plots.figure_png(fig, path, s3)


# --------------------------------------------------------------------------------------------
# predictor, export


def card_for(cfg: Config, meta: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    classes = meta["classes"]
    iou = {c: metrics.get(f"val_iou_{c}") for c in classes}
    return {
        "name": cfg.run.publish_as or cfg.run.name,
        "task": "oct_seg",
        "modality": cfg.data.modality,
        "description": cfg.description or f"{cfg.model.name} OCT segmentation ({len(classes)} classes), "
                                          f"window {cfg.data.window}/stride {cfg.data.stride}",
        "inputs": ["image"],
        "outputs": ["mask", "thickness"],
        "labels": classes,
        "preprocessing": dict(meta["preprocessing"]),
        "architecture": {"name": cfg.model.name, "kwargs": cfg.model.kwargs, "in_chans": cfg.model.in_chans,
                         "num_classes": len(classes)},
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k.startswith("val_")
                    and not (isinstance(v, float) and math.isnan(v))},
        "resources": {"num_cpus": 1, "num_gpus": 0},
        "extra": {"iou_table": iou},
    }


from medray.inference.predictor import Predictor, register_predictor  # noqa: E402


@register_predictor("oct_seg")
class OctSegPredictor(Predictor):
    """Whole B-scans of any width/height -> class mask (uint8 H x W) and per-layer thickness.

    ``predict(images, axial_um=None)``: each output has ``mask``, ``labels``, ``class_pixels``,
    ``thickness`` ({"px": {layer: [per column]}, "um": ... when ``axial_um``, "mean_px", "mean_um"})."""

    def __init__(self, card: Any, weights: bytes, device=None):
        super().__init__(card, weights, device)
        from safetensors.torch import load as st_load

        from medray.models import create_model

        pre = dict(card.preprocessing or {})
        arch = dict(card.architecture or {})
        self.window, self.stride = int(pre["window"]), int(pre["stride"])
        self.pad_height = int(pre["pad_height"])
        self.sigma = float(pre.get("blend_sigma", 0.25))
        self.mode = pre.get("mode", "L")
        self.in_chans = int(arch.get("in_chans", 1))
        model = create_model(arch["name"], num_classes=int(arch.get("num_classes", len(card.labels))),
                             in_chans=self.in_chans, **dict(arch.get("kwargs") or {}))
        model.load_state_dict(st_load(weights))
        self.model = model.eval().to(self.device)
        self.max_batch: int | None = None

    def tensor(self, image: np.ndarray | bytes):
        import torch

        from medray.data import imageio
        from medray.data.transforms import normalize

        arr = image if isinstance(image, np.ndarray) else imageio.decode(image, "<upload>", mode=self.mode)
        if arr.ndim == 3 and self.in_chans == 1:
            arr = arr.mean(axis=2).astype(np.uint8)
        if arr.ndim == 2 and self.in_chans == 3:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim == 2:
            arr = arr[..., None]
        x = normalize(torch.from_numpy(np.ascontiguousarray(arr))[None], self.mean, self.std)[0]
        return x.to(self.device)

    def predict(self, images: list[np.ndarray | bytes], axial_um: float | list[float | None] | None = None
                ) -> list[dict[str, Any]]:
        from medray.methods.oct_layers.infer import predict_mask, thickness

        axial = axial_um if isinstance(axial_um, (list, tuple)) else [axial_um] * len(images)
        out = []
        for im, ax in zip(images, axial):
            x = self.tensor(im)
            if x.shape[1] > self.pad_height:
                from medray.errors import MedrayError

                raise MedrayError(f"scan height {x.shape[1]} exceeds the model's padded height {self.pad_height}")
            mask = predict_mask(self.model, x, self.window, self.stride, self.pad_height, self.sigma,
                                max_batch=self.max_batch, autocast=self.amp)
            counts = np.bincount(mask.ravel(), minlength=len(self.labels))
            out.append({"mask": mask, "labels": self.labels,
                        "class_pixels": {n: int(c) for n, c in zip(self.labels, counts)},
                        "thickness": thickness(mask, self.labels, ax)})
        return out


# --------------------------------------------------------------------------------------------
# launcher entry: train, then score the best checkpoint on the held-out scans


def load_checkpoint_predictor(cfg: Config, meta: dict[str, Any], weights: bytes, device: str = "cpu"):
    from medray.catalog.card import ModelCard

    card = ModelCard.model_validate({**card_for(cfg, meta, {}), "name": "candidate", "version": 0})
    return OctSegPredictor(card, weights, device=device)


def run(job: Config, force: bool = False) -> dict[str, Any]:
    """``medray train jobs/oct_layers.yaml``: the single-stage flow, then stitched whole-scan
    inference of the best checkpoint on ``data.test_splits`` (report + overlays + thickness plots)."""
    from medray.training import launcher

    module = sys.modules[__name__]
    datasets, meta = build_datasets(job)
    _, _, run_uri = launcher.run_paths(job)
    print(f"[medray] oct_layers job {job.run.name}: {meta['train_scans']} train scans -> {meta['train_rows']} "
          f"windows, {meta['val_scans']} val scans -> {meta['val_rows']} windows; run -> {run_uri}",
          file=sys.stderr, flush=True)
    result = launcher.fit(job, module, datasets, meta)
    ckpt, best = launcher.best_checkpoint(result, job)
    weights = launcher.read_checkpoint_file(ckpt, "model.safetensors")
    test = held_out_test(job, meta, weights, run_uri)
    summary = launcher.write_summary(job, result, meta, best, run_uri, extra={"test": test})
    out: dict[str, Any] = {"run": run_uri, "best_checkpoint": ckpt.path, "metrics": summary["best_metrics"],
                           "test": {k: v for k, v in (test or {}).items() if k.startswith("test_m")},
                           "resumed_from_epoch": summary["final_metrics"].get("resumed_from_epoch")}
    if job.run.catalog:
        card = card_for(job, meta, best)
        if test:
            card["metrics"].update({k: v for k, v in test.items() if k.startswith("test_") and isinstance(v, float)
                                    and not math.isnan(v)})
        published = launcher.publish(job, card, {"weights": weights})
        out["published"] = f"{published.name}:{published.version}"
        out["catalog"] = job.run.catalog
    return out


def held_out_test(job: Config, meta: dict[str, Any], weights: bytes, out_uri: str) -> dict[str, Any] | None:
    rows = held_out_rows(job, job.data.test_splits, job.data.eval_max_scans) if job.data.eval_max_scans else []
    if not rows:
        print(f"[medray] no labelled scans in {job.data.test_splits}: held-out evaluation skipped", file=sys.stderr)
        return None
    pred = load_checkpoint_predictor(job, meta, weights)
    print(f"[medray] stitched inference on {len(rows)} held-out scans ({job.data.test_splits})...",
          file=sys.stderr, flush=True)
    rep = evaluate_scans(pred, rows, out_uri, job.storage.s3, job.data.plot_scans, title=job.run.name)
    print(f"[medray] held-out: test_miou {rep['test_miou']:.4f} test_miou_fg {rep['test_miou_fg']:.4f} "
          f"test_mdice_fg {rep['test_mdice_fg']:.4f} ({rep['scans']} scans, {rep['seconds']}s)",
          file=sys.stderr, flush=True)
    return rep
