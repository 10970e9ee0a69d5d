"""The five stages of the skin method as one resumable workflow (see the package docstring).

Layout under ``run.storage_path/run.name/``::

    1_regressor/   Ray Train run (epoch_* checkpoints), model.safetensors, summary.json, _SUCCESS.json
    2_foreground/  heatmaps/*.parquet (image, split, label, label_quality, heatmap PNG at 1/8), _SUCCESS.json
    3_classifier/  Ray Train run, model.safetensors, pseudo/*.parquet (+ pred, prob, probs), _SUCCESS.json
    4_sample/      rows/*.parquet (the ranked class-proportional sample), class_balance.png, _SUCCESS.json
    5_classifier/  Ray Train run, model.safetensors, summary.json, _SUCCESS.json
    evaluate/      metrics.json, confusion_stage3.png, confusion_stage5.png, heatmaps.png, _SUCCESS.json

A stage is finished when its ``_SUCCESS.json`` exists. Re-running the job skips finished stages; once
one stage runs again (``force`` or its marker missing), every later stage runs again too (its inputs
changed). A training stage interrupted mid-run resumes from its last checkpoint (same Ray Train run
name under the same storage path).
"""

from __future__ import annotations

import io
import math
import sys
import time
import types
from typing import Any

import numpy as np

from medray import storage
from medray.errors import ConfigError, ManifestError
from medray.methods.skin import STAGES, Config

# --------------------------------------------------------------------------------------------
# helpers


def say(msg: str) -> None:
    print(f"[medray] skin: {msg}", file=sys.stderr, flush=True)


def run_uri(job: Config) -> str:
    from medray.training.launcher import run_paths

    return run_paths(job)[2]


def stage_uri(job: Config, stage: str) -> str:
    return storage.join(run_uri(job), stage)


def is_done(job: Config, stage: str) -> bool:
    return storage.exists(storage.join(stage_uri(job, stage), "_SUCCESS.json"), job.storage.s3)


def read_done(job: Config, stage: str) -> dict[str, Any]:
    return storage.read_json(storage.join(stage_uri(job, stage), "_SUCCESS.json"), job.storage.s3)


def mark_done(job: Config, stage: str, info: dict[str, Any]) -> dict[str, Any]:
    info = {"stage": stage, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    storage.write_json(storage.join(stage_uri(job, stage), "_SUCCESS.json"), info, job.storage.s3)
    return info


def clear_stage(job: Config, stage: str) -> None:
    uri = stage_uri(job, stage)
    if storage.exists(uri, job.storage.s3):
        storage.remove(uri, recursive=True, s3=job.storage.s3)


def stage_job(job: Config, stage: str, metric: str, mode: str) -> Config:
    """The job as one Ray Train run named ``stage`` under the run folder."""
    run = job.run.model_copy(update={"name": stage, "storage_path": run_uri(job), "metric": metric, "mode": mode,
                                     "catalog": None})
    return job.model_copy(update={"run": run})


def _fs(uri: str, s3: Any):
    return storage.pyarrow_filesystem(uri, s3)


def write_parquet_dir(ds, uri: str, s3: Any) -> None:
    fs, path = _fs(uri, s3)
    ds.write_parquet(path, filesystem=fs)


def resolve_classes(job: Config) -> list[str]:
    from medray.data import pipeline

    try:
        inf = pipeline.manifest_info(job.data.manifest, job.storage.s3)
    except FileNotFoundError:
        raise ConfigError(f"data.manifest: {job.data.manifest}: file not found") from None
    if inf.task != "skin":
        raise ManifestError(f"data.manifest: {job.data.manifest} is a {inf.task!r} manifest; the skin method "
                            "needs task 'skin'")
    if job.data.classes:
        if inf.classes and len(inf.classes) != len(job.data.classes):
            raise ConfigError(f"data.classes has {len(job.data.classes)} names but {job.data.manifest} has "
                              f"{len(inf.classes)} classes {inf.classes}")
        return list(job.data.classes)
    if not inf.classes:
        raise ConfigError(f"{job.data.manifest}: the manifest has no class list: set data.classes")
    return list(inf.classes)


def count_parts(job: Config, n_classes: int) -> dict[str, Any]:
    """Per-class counts of the parts (streams four columns of the manifest; never holds the rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from medray.data import manifest

    d = job.data
    cols = ["split", d.label_column, d.boxes_column, d.quality_column]
    out = {k: np.zeros(n_classes, np.int64) for k in
           ("box_train", "box_val", "clean_train", "clean_val", "clean_test", "full_train", "full_test")}
    try:
        batches = manifest.iter_batches(d.manifest, columns=cols, s3=job.storage.s3)
        for b in batches:
            split, lab, box, qual = (b.column(i) for i in range(4))
            has_box = pc.is_valid(box)
            clean = pc.fill_null(pc.equal(qual, d.clean_value), False)
            labelled = pc.is_valid(lab)
            for name, sel_split, sel in (
                ("box_train", d.train_splits, has_box), ("box_val", d.val_splits, has_box),
                ("clean_train", d.train_splits, clean), ("clean_val", d.val_splits, clean),
                ("clean_test", d.test_splits, clean),
                ("full_train", d.train_splits, pc.invert(clean)), ("full_test", d.test_splits, pc.invert(clean)),
            ):
                m = pc.and_(pc.and_(pc.is_in(split, value_set=pa.array(sel_split)), sel), labelled)
                vals = pc.filter(lab, m).to_numpy(zero_copy_only=False).astype(np.int64)
                if len(vals) and (vals.min() < 0 or vals.max() >= n_classes):
                    raise ManifestError(f"{d.manifest}: {d.label_column} outside [0, {n_classes - 1}]")
                out[name] += np.bincount(vals, minlength=n_classes)
    except KeyError as e:
        raise ManifestError(f"{d.manifest}: missing column {e}") from None
    except Exception as e:  # noqa: BLE001 - pyarrow names the missing column in its message
        if "No match for FieldRef" in str(e) or "not in schema" in str(e):
            raise ManifestError(f"{d.manifest}: a column the skin method needs is missing ({cols}): {e}") from None
        raise
    return {k: v.tolist() for k, v in out.items()}


def _part_filter(job: Config, part: str):
    from ray.data.expressions import col

    d = job.data
    if part == "box":
        return col(d.boxes_column).is_not_null()
    if part == "clean":
        return (col(d.quality_column) == d.clean_value) & col(d.label_column).is_not_null()
    if part == "full":
        return (col(d.quality_column) != d.clean_value) | col(d.quality_column).is_null()
    raise ValueError(part)


def read_part(job: Config, part: str, splits: list[str], columns: list[str]):
    from medray.data import pipeline

    s3 = job.storage.s3
    packed = pipeline._is_packed(job.data.manifest, s3)
    cols = list(dict.fromkeys(columns + (["image_bytes"] if packed else [])))
    ds = pipeline.read_manifest(job.data.manifest, splits=splits, columns=cols, s3=s3)
    return ds.filter(expr=_part_filter(job, part))


def load_rgb(batch: dict[str, np.ndarray], i: int, size: int, how: str, s3: Any) -> np.ndarray:
    from medray.data import imageio

    packed = batch.get("image_bytes")
    name = str(batch["image"][i])
    if packed is not None:
        arr = imageio.decode(bytes(packed[i]), name, mode="RGB", target=size)
    else:
        arr = imageio.read_image(name, s3=s3, mode="RGB", target=size)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return imageio.resize(arr, size, how=how)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# stage 1: the heatmap regressor


def box_batch(batch: dict[str, np.ndarray], job: dict[str, Any], n_classes: int) -> dict[str, np.ndarray]:
    """``map_batches``: rows of the box set -> image + heat/ignore/radius targets on the output grid."""
    from medray.methods.skin.targets import boxes_of, heat_targets, transform_boxes

    cfg = Config.model_validate(job)
    r, d = cfg.regressor, cfg.data
    size, stride = r.image_size, r.out_stride
    g = size // stride
    n = len(batch["image"])
    img = np.empty((n, size, size, 3), np.uint8)
    heat = np.zeros((n, n_classes, g, g), np.float32)
    ign = np.zeros((n, g, g), np.uint8)
    radii = np.zeros((n, 2, g, g), np.float32)
    rmask = np.zeros((n, g, g), np.uint8)
    for i in range(n):
        img[i] = load_rgb(batch, i, size, d.resize, cfg.storage.s3)
        lab = batch[d.label_column][i]
        lab = None if lab is None or (isinstance(lab, float) and math.isnan(lab)) else int(lab)
        bx, bl = boxes_of(batch[d.boxes_column][i], lab)
        bx = transform_boxes(bx, int(batch["width"][i]), int(batch["height"][i]), size, d.resize, stride)
        t = heat_targets(bx, bl, (g, g), n_classes, kind=r.decay, sigma=r.sigma)
        heat[i], ign[i], rmask[i] = t.heat, t.ignore, t.radius_mask
        radii[i] = t.radii / g  # fraction of the grid side
    return {"image": img, "heat": heat, "ignore": ign, "radii": radii, "rmask": rmask}


def regressor_loop(config: dict[str, Any]) -> None:
    """Ray Train loop of stage 1 (focal loss on heat ignoring the blind ring + L1 on radii)."""
    import torch

    from medray.data.transforms import normalize
    from medray.methods.skin.heatmap import HeatmapNet, focal_loss, radius_l1
    from medray.training import loop

    cfg = Config.model_validate(config["job"])
    meta = config["meta"]
    r = cfg.regressor
    w = loop.Worker(cfg)
    model = w.prepare(HeatmapNet(r.backbone, len(meta["classes"]), 3, r.head_channels, r.out_stride))
    bs = r.optim.batch_size
    spe = max(1, math.ceil(meta["train_rows"] / (w.world * bs)))
    opt = loop.build_optimizer(r.optim, model.parameters())
    sched = loop.build_scheduler(r.optim, opt, spe)
    state = w.restore({"model": model}, opt, sched)
    train_it, val_it = w.shard("train"), w.shard("val")
    dtypes = {"image": torch.uint8, "heat": torch.float32, "ignore": torch.bool, "radii": torch.float32,
              "rmask": torch.bool}

    def losses(batch, net):
        x = normalize(batch["image"].to(w.device))
        heat, ign, radii, rm = (batch[k].to(w.device) for k in ("heat", "ignore", "radii", "rmask"))
        with w.autocast():
            out = net(w.to_input(x))
        lf = focal_loss(out["heat"], heat, ign, r.focal_alpha, r.focal_beta)
        lr_ = radius_l1(out["radius"], radii, rm)
        fg = torch.sigmoid(out["heat"].float()).amax(1)
        return lf, lr_, fg, rm

    for epoch in range(state.epoch, r.optim.epochs):
        w.epoch_start()
        model.train()
        gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch * 101 + w.rank)
        sums = {"loss": 0.0, "focal": 0.0, "radius": 0.0, "n": 0.0}
        steps = 0
        for batch in train_it.iter_torch_batches(batch_size=bs, dtypes=dtypes, local_shuffle_buffer_size=64,
                                                 local_shuffle_seed=cfg.run.seed + epoch):
            keys = ("image", "heat", "ignore", "radii", "rmask")
            # flips keep the half-sizes; image NHWC flips W at dim 2, targets (N,[C,]H,W) at their last dim
            ts = [batch[k] for k in keys]
            for p, axis in ((r.augment.hflip, "w"), (r.augment.vflip, "h")):
                if p <= 0:
                    continue
                m = torch.rand(len(ts[0]), generator=gen) < p
                if m.any():
                    out = []
                    for k, t in zip(keys, ts):
                        dim = (2 if axis == "w" else 1) if k == "image" else (-1 if axis == "w" else -2)
                        out.append(torch.where(m.view(-1, *([1] * (t.dim() - 1))), t.flip(dim), t))
                    ts = out
            batch = dict(zip(keys, ts))
            lf, lr_, _, _ = losses(batch, model)
            loss = lf + r.radius_weight * lr_
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if r.optim.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), r.optim.clip_grad_norm)
            opt.step()
            sched.step()
            state.step += 1
            steps += 1
            nb = len(batch["image"])
            sums["loss"] += loss.item() * nb
            sums["focal"] += lf.item() * nb
            sums["radius"] += lr_.item() * nb
            sums["n"] += nb
            w.step_progress(epoch, steps, spe, loss.item())
        tr = w.allreduce_sums(sums)
        # validation over the whole val set: batch k on worker k % world, sums all-reduced; through the
        # unwrapped module (DDP's forward would broadcast BatchNorm buffers: a collective that the
        # workers with fewer val batches never join)
        net = w.unwrap(model)
        net.eval()
        vs = {"loss": 0.0, "focal": 0.0, "radius": 0.0, "n": 0.0, "centres": 0.0, "hits": 0.0}
        with torch.no_grad():
            for k, batch in enumerate(val_it.iter_torch_batches(batch_size=bs, dtypes=dtypes)):
                if k % w.world != w.rank:
                    continue
                lf, lr_, fg, rm = losses(batch, net)
                nb = len(batch["image"])
                vs["loss"] += float(lf + r.radius_weight * lr_) * nb
                vs["focal"] += float(lf) * nb
                vs["radius"] += float(lr_) * nb
                vs["n"] += nb
                rm = rm.to(fg.device)
                vs["centres"] += float(rm.sum())
                vs["hits"] += float((fg[rm] >= 0.3).sum())
        net.train()
        vs = w.allreduce_sums(vs)
        nan = float("nan")
        metrics = {
            "epoch": epoch + 1,
            "train_loss": tr["loss"] / max(1.0, tr["n"]),
            "train_focal": tr["focal"] / max(1.0, tr["n"]),
            "train_radius_l1": tr["radius"] / max(1.0, tr["n"]),
            "val_loss": vs["loss"] / vs["n"] if vs["n"] else nan,
            "val_focal": vs["focal"] / vs["n"] if vs["n"] else nan,
            "val_radius_l1": vs["radius"] / vs["n"] if vs["n"] else nan,
            "val_centre_recall": vs["hits"] / vs["centres"] if vs["centres"] else nan,
            "lr": opt.param_groups[0]["lr"],
            "resumed_from_epoch": state.resumed_from_epoch if state.resumed_from_epoch is not None else -1,
        }
        state.epoch = epoch + 1
        w.epoch_line(epoch, r.optim.epochs, steps, int(tr["n"]), metrics, "val_loss")
        state.history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        w.report(metrics, state, {"model": model}, opt, sched)


def regressor_arch(job: Config, n_classes: int) -> dict[str, Any]:
    r = job.regressor
    return {"name": "skin_heatnet", "kwargs": {"backbone": r.backbone, "head_channels": r.head_channels,
                                              "out_stride": r.out_stride},
            "in_chans": 3, "num_classes": n_classes}


def _train_stage(job: Config, stage: str, loop_fn, datasets: dict[str, Any], meta: dict[str, Any],
                 metric: str, mode: str, base_job: Any = None) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """One Ray Train run for a stage; returns (best weights, best metrics, summary)."""
    from medray.training import launcher

    sj = base_job if base_job is not None else stage_job(job, stage, metric, mode)
    module = types.SimpleNamespace(train_loop_per_worker=loop_fn)
    result = launcher.fit(sj, module, datasets, meta, name=stage)
    ckpt, best = launcher.best_checkpoint(result, sj)
    summary = launcher.write_summary(sj, result, meta, best, stage_uri(job, stage))
    weights = launcher.read_checkpoint_file(ckpt, "model.safetensors")
    storage.write_bytes(storage.join(stage_uri(job, stage), "model.safetensors"), weights, job.storage.s3)
    return weights, best, summary


def _clean(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and (k.startswith("val_") or k == "epoch")}


def stage1_regressor(job: Config, classes: list[str], counts: dict[str, Any]) -> dict[str, Any]:
    from medray.training import launcher

    stage = "1_regressor"
    n_train, n_val = sum(counts["box_train"]), sum(counts["box_val"])
    if n_train == 0:
        raise ConfigError(f"{job.data.manifest}: no box rows (non-null {job.data.boxes_column}) in splits "
                          f"{job.data.train_splits}: the regressor has nothing to learn from")
    say(f"stage 1/5 regressor: {n_train} train / {n_val} val box rows, backbone {job.regressor.backbone}, "
        f"{job.regressor.image_size}px -> heat grid {job.regressor.image_size // job.regressor.out_stride}")
    cols = ["image", "width", "height", job.data.label_column, job.data.boxes_column]
    jd = job.model_dump(mode="json")

    def ds(splits):
        d = read_part(job, "box", splits, cols).map_batches(
            box_batch, fn_kwargs={"job": jd, "n_classes": len(classes)}, batch_size=job.data.decode_batch_size,
            batch_format="numpy")
        return d.materialize() if job.data.cache else d

    meta = {"classes": classes, "train_rows": n_train, "val_rows": n_val}
    weights, best, summary = _train_stage(job, stage, regressor_loop, {"train": ds(job.data.train_splits),
                                                                        "val": ds(job.data.val_splits)},
                                          meta, "val_loss", "min")
    card = {
        "name": job.regressor.publish_as or f"{job.run.publish_as or job.run.name}_localiser",
        "task": "skin_heatmap", "modality": job.data.modality,
        "description": job.description or "Skin lesion localiser: CenterNet-style heatmap regressor "
                                          "(per-class heat + 2 radii); the skin method's foreground labeller",
        "inputs": ["image"], "outputs": ["heatmap", "overlay", "peaks"], "labels": classes,
        "preprocessing": _preprocessing(job.regressor.image_size, job.data.resize),
        "architecture": regressor_arch(job, len(classes)),
        "metrics": _clean(best), "resources": {"num_cpus": 1, "num_gpus": 0},
        "extra": {"out_stride": job.regressor.out_stride, "decay": job.regressor.decay, "sigma": job.regressor.sigma},
    }
    published = launcher.publish(job, card, {"weights": weights}) if job.run.catalog else None
    return {"metrics": _clean(best), "published": published.ref if published else None,
            "epochs": len(summary.get("history", []))}


def _preprocessing(size: int, how: str) -> dict[str, Any]:
    from medray.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return {"image_size": size, "mode": "RGB", "resize": how, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


# --------------------------------------------------------------------------------------------
# stage 2: the foreground labeller


def build_regressor(arch: dict[str, Any], weights: bytes, device: Any = "cpu"):
    from safetensors.torch import load as st_load

    from medray.methods.skin import heatmap  # noqa: F401 - registers the models
    from medray.models import create_model

    m = create_model(arch["name"], num_classes=int(arch["num_classes"]), in_chans=int(arch.get("in_chans", 3)),
                     **dict(arch.get("kwargs") or {}))
    m.load_state_dict(st_load(weights))
    return m.eval().to(device)


def foreground_maps(model, images: np.ndarray, downsample: int, out_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(sigmoid heat ``N x K x h x w`` at the model's stride, foreground ``N x H/d x W/d`` in [0, 1]):
    class and scale dropped (max over class channels), resampled to 1/``downsample`` of the input."""
    import torch
    import torch.nn.functional as F

    from medray.data.transforms import normalize

    dev = next(model.parameters()).device
    with torch.inference_mode():
        out = model(normalize(torch.from_numpy(np.ascontiguousarray(images)).to(dev)))
        heat = torch.sigmoid(out["heat"].float())
        fg = heat.amax(1, keepdim=True)
        size = images.shape[1]
        tgt = size // downsample
        if fg.shape[-1] > tgt and fg.shape[-1] % tgt == 0:
            fg = F.max_pool2d(fg, fg.shape[-1] // tgt)
        elif fg.shape[-1] != tgt:
            fg = F.interpolate(fg, size=(tgt, tgt), mode="bilinear", align_corners=False)
    return heat.cpu().numpy(), fg[:, 0].cpu().numpy()


class ForegroundBatch:
    """``map_batches`` actor: the stage-1 regressor as a foreground labeller (one PNG channel per row)."""

    def __init__(self, weights_uri: str, arch: dict[str, Any], size: int, how: str, downsample: int,
                 s3: Any = None, keep: tuple[str, ...] = ()):
        import torch

        from medray.inference.predictor import default_device

        self.model = build_regressor(arch, storage.read_bytes(weights_uri, s3), default_device())
        self.size, self.how, self.down, self.s3 = size, how, downsample, s3
        self.stride = int(arch["kwargs"]["out_stride"])
        self.keep = keep
        torch.set_grad_enabled(False)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from medray.data import imageio

        imgs = np.stack([load_rgb(batch, i, self.size, self.how, self.s3) for i in range(len(batch["image"]))])
        _, fg = foreground_maps(self.model, imgs, self.down, self.stride)
        pngs = np.empty(len(fg), object)
        for i, f in enumerate(fg):
            pngs[i] = imageio.encode_png(np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8))
        out = {k: batch[k] for k in self.keep if k in batch}
        out["heatmap"] = pngs
        return out


def stage2_foreground(job: Config, classes: list[str], counts: dict[str, Any]) -> dict[str, Any]:
    import ray

    d, f = job.data, job.foreground
    n = sum(counts["full_train"])
    if n == 0:
        raise ConfigError(f"{d.manifest}: no full-set rows ({d.quality_column} != {d.clean_value!r}) in splits "
                          f"{d.train_splits}")
    side = job.regressor.image_size // f.downsample
    say(f"stage 2/5 foreground labeller: {n} full-set rows -> one {side}x{side} heatmap each (PNG in Parquet)")
    keep = ("image", "split", d.label_column, d.quality_column, "width", "height")
    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    ds = read_part(job, "full", d.train_splits, list(keep)).map_batches(
        ForegroundBatch,
        fn_constructor_kwargs={"weights_uri": storage.join(stage_uri(job, "1_regressor"), "model.safetensors"),
                               "arch": regressor_arch(job, len(classes)), "size": job.regressor.image_size,
                               "how": d.resize, "downsample": f.downsample, "s3": job.storage.s3, "keep": keep},
        batch_size=f.batch_size, compute=ray.data.ActorPoolStrategy(size=f.concurrency),
        num_cpus=f.num_cpus, num_gpus=1 if gpu else 0, batch_format="numpy")
    t0 = time.time()
    write_parquet_dir(ds, storage.join(stage_uri(job, "2_foreground"), "heatmaps"), job.storage.s3)
    say(f"stage 2/5: {n} heatmaps in {time.time() - t0:.1f}s")
    return {"rows": n, "heatmap_side": side}


# --------------------------------------------------------------------------------------------
# stage 3: the classifier (EfficientNetV2 under a budget) + pseudo-labels


def scaled_classifier(job: Config, n_classes: int) -> dict[str, Any]:
    from medray.methods.skin.heatmap import compound_scale

    c = job.classifier
    s = compound_scale(n_classes, c.budget.max_params_m, c.budget.max_gflops, c.base_resolution, c.alpha, c.beta,
                       c.gamma, c.phi_min, c.phi_max, c.phi_step, c.resolution_multiple, c.min_resolution)
    return {"phi": s.phi, "width": round(s.width, 6), "depth": round(s.depth, 6), "resolution": s.resolution,
            "params_m": round(s.params_m, 4), "gflops": round(s.gflops, 5)}


def classifier_arch(scale: dict[str, Any], n_classes: int, in_chans: int, drop_rate: float) -> dict[str, Any]:
    return {"name": "skin_effnetv2", "kwargs": {"width": scale["width"], "depth": scale["depth"],
                                               "drop_rate": drop_rate},
            "in_chans": in_chans, "num_classes": n_classes}


def labelled_clean(job: Config, splits: list[str], size: int, out_label: str = "label"):
    """Decoded clean rows of ``splits``: ``image`` uint8 NHWC + ``label``."""
    from medray.data import pipeline

    d = job.data
    spec = pipeline.DecodeSpec(size, "RGB", d.resize)
    ds = read_part(job, "clean", splits, ["image", d.label_column]).map_batches(
        pipeline.decode_batch, fn_kwargs={"spec": spec, "keep": (d.label_column,), "s3": job.storage.s3},
        batch_size=d.decode_batch_size, batch_format="numpy")
    if d.label_column != out_label:
        ds = ds.rename_columns({d.label_column: out_label})
    return ds


def stage3_classifier(job: Config, classes: list[str], counts: dict[str, Any]) -> dict[str, Any]:
    import ray

    from medray.data import pipeline

    stage = "3_classifier"
    c, d = job.classifier, job.data
    k = len(classes)
    scale = scaled_classifier(job, k)
    n_train, n_val = sum(counts["clean_train"]), sum(counts["clean_val"])
    say(f"stage 3/5 classifier: EfficientNetV2 phi={scale['phi']} (width {scale['width']:.3f}, depth "
        f"{scale['depth']:.3f}, {scale['resolution']}px; {scale['params_m']:.3f} M params, {scale['gflops']:.4f} "
        f"GFLOPs) on {n_train} clean train / {n_val} val rows")
    res = scale["resolution"]
    train, val = labelled_clean(job, d.train_splits, res), labelled_clean(job, d.val_splits, res)
    if d.cache:
        train, val = train.materialize(), val.materialize()
    weights_cls = balanced_weights(counts["clean_train"]) if c.class_weights == "balanced" else None
    meta = {"classes": classes, "train_rows": n_train, "val_rows": n_val, "train_counts": counts["clean_train"],
            "val_counts": counts["clean_val"], "class_weights": weights_cls, "section": "classifier",
            "arch": classifier_arch(scale, k, 3, c.drop_rate), "init_weights": None}
    weights, best, _ = _train_stage(job, stage, classifier_loop, {"train": train, "val": val}, meta,
                                    "val_bal_acc", "max")
    # pseudo-labels (argmax + its probability) for every full-set row, next to its heatmap
    say("stage 3/5: pseudo-labelling the full set")
    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    src = pipeline.read_parquet(storage.join(stage_uri(job, "2_foreground"), "heatmaps"), job.storage.s3)
    ds = src.map_batches(
        ClassifyBatch,
        fn_constructor_kwargs={"weights_uri": storage.join(stage_uri(job, stage), "model.safetensors"),
                               "arch": classifier_arch(scale, k, 3, c.drop_rate), "size": res, "how": d.resize,
                               "s3": job.storage.s3},
        batch_size=c.predict_batch_size, compute=ray.data.ActorPoolStrategy(size=job.foreground.concurrency),
        num_cpus=job.foreground.num_cpus, num_gpus=1 if gpu else 0, batch_format="numpy")
    write_parquet_dir(ds, storage.join(stage_uri(job, stage), "pseudo"), job.storage.s3)
    return {"metrics": _clean(best), "scale": scale}


def build_classifier(arch: dict[str, Any], weights: bytes, device: Any = "cpu"):
    from safetensors.torch import load as st_load

    from medray.methods.skin import heatmap  # noqa: F401 - registers the models
    from medray.models import create_model

    m = create_model(arch["name"], num_classes=int(arch["num_classes"]), in_chans=int(arch["in_chans"]),
                     **dict(arch.get("kwargs") or {}))
    m.load_state_dict(st_load(weights))
    return m.eval().to(device)


class ClassifyBatch:
    """``map_batches`` actor: a skin classifier -> ``pred`` (argmax), ``prob`` (its probability),
    ``probs``; every input column is kept."""

    def __init__(self, weights_uri: str, arch: dict[str, Any], size: int, how: str, s3: Any = None):
        from medray.inference.predictor import default_device

        self.model = build_classifier(arch, storage.read_bytes(weights_uri, s3), default_device())
        self.size, self.how, self.s3 = size, how, s3

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from medray.data.transforms import normalize

        imgs = np.stack([load_rgb(batch, i, self.size, self.how, self.s3) for i in range(len(batch["image"]))])
        dev = next(self.model.parameters()).device
        with torch.inference_mode():
            p = torch.softmax(self.model(normalize(torch.from_numpy(imgs).to(dev))).float(), 1).cpu().numpy()
        out = {k: v for k, v in batch.items() if k != "image_bytes"}
        out["pred"] = p.argmax(1).astype(np.int32)
        out["prob"] = p.max(1).astype(np.float32)
        out["probs"] = p.astype(np.float32)
        return out


# --------------------------------------------------------------------------------------------
# stage 4: ranked class-proportional sampling


def class_quotas(clean_counts: list[int] | np.ndarray, available: list[int] | np.ndarray,
                 total: int | None = None) -> np.ndarray:
    """Samples to take per class: the clean set's class proportions times ``total`` (largest-remainder
    rounding, so each class is within one sample of its exact share and the quotas sum to ``total``).
    When a class has fewer pseudo-labelled rows than its share, the total shrinks to the largest one
    every class can fill; ``total=None`` asks for that largest total. A class that received no
    pseudo-label at all cannot be represented: it is left out and the proportions are those of the
    other classes (stage 4 reports it), rather than emptying the whole sample."""
    p = np.asarray(clean_counts, np.float64)
    avail = np.asarray(available, np.int64)
    if p.shape != avail.shape:
        raise ValueError(f"{len(p)} clean counts but {len(avail)} available counts")
    if p.sum() <= 0:
        raise ValueError("the clean set has no labelled rows: no class proportions to sample by")
    p = np.where(avail > 0, p, 0.0)
    if p.sum() <= 0:
        return np.zeros(len(p), np.int64)
    p = p / p.sum()

    def quotas(t: int) -> np.ndarray:
        exact = p * t
        q = np.floor(exact).astype(np.int64)
        rest = t - int(q.sum())
        if rest > 0:
            order = np.argsort(-(exact - q), kind="stable")
            q[order[:rest]] += 1
        return q

    cap = int(avail.sum())
    t = cap if total is None else min(int(total), cap)
    while t > 0:
        q = quotas(t)
        if (q <= avail).all():
            return q
        # shrink to what the scarcest class allows, then step down until the rounding fits
        feasible = min(int(math.floor(avail[k] / p[k])) for k in range(len(p)) if p[k] > 0)
        t = min(t - 1, max(feasible, 0))
    return np.zeros(len(p), np.int64)


def ranked_sample(pred: np.ndarray, prob: np.ndarray, quotas: np.ndarray) -> np.ndarray:
    """Indices of the sample: per class ``k``, the ``quotas[k]`` rows predicted ``k`` with the highest
    probability (ties: the earlier row). Reference implementation of what stage 4 does with Ray Data."""
    pred, prob = np.asarray(pred), np.asarray(prob)
    out = []
    for k, q in enumerate(np.asarray(quotas)):
        idx = np.nonzero(pred == k)[0]
        order = idx[np.argsort(-prob[idx], kind="stable")]
        out.extend(order[: int(q)].tolist())
    return np.asarray(sorted(out), np.int64)


def stage4_sample(job: Config, classes: list[str], counts: dict[str, Any]) -> dict[str, Any]:
    from ray.data.expressions import col

    from medray.data import pipeline

    k = len(classes)
    s3 = job.storage.s3
    pseudo = pipeline.read_parquet(storage.join(stage_uri(job, "3_classifier"), "pseudo"), s3)
    avail = np.zeros(k, np.int64)
    for row in pseudo.groupby("pred").count().take_all():
        avail[int(row["pred"])] = int(row["count()"])
    q = class_quotas(counts["clean_train"], avail, job.sample.total)
    missing = [classes[c] for c in range(k) if counts["clean_train"][c] > 0 and avail[c] == 0]
    say(f"stage 4/5 sampling: pseudo-labelled per class {avail.tolist()}, clean proportions "
        f"{counts['clean_train']} -> take {q.tolist()} (total {int(q.sum())})"
        + (f"; no pseudo-label for {missing}: left out of the sample" if missing else ""))
    if q.sum() == 0:
        raise ConfigError("sample: no rows can be sampled in the clean set's proportions (a class with clean "
                          "rows got no pseudo-labels); lower classifier budget or check the data")
    parts = [pseudo.filter(expr=col("pred") == int(c)).sort("prob", descending=True).limit(int(n))
             for c, n in enumerate(q) if n > 0]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    write_parquet_dir(ds, storage.join(stage_uri(job, "4_sample"), "rows"), s3)
    # class balance before/after
    clean = np.asarray(counts["clean_train"], np.float64)
    noisy = np.asarray(counts["full_train"], np.float64)
    series = {"clean set (labels)": clean, "full set (noisy labels)": noisy, "full set (pseudo-labels)": avail,
              "sample (pseudo-labels)": q}
    plot_class_balance(series, classes, storage.join(stage_uri(job, "4_sample"), "class_balance.png"), s3)
    return {"available": avail.tolist(), "quotas": q.tolist(), "total": int(q.sum()), "missing_classes": missing,
            "clean_train": counts["clean_train"], "full_train_noisy_labels": counts["full_train"]}


def plot_class_balance(series: dict[str, Any], classes: list[str], path: str, s3: Any = None) -> bytes:
    """Grouped bars: the class shares of each set (clean, full, sample...)."""
    from medray.evaluation import plots

    with plots.style():
        fig = plots.new_figure((max(6.0, 1.2 * len(classes) + 2), 4.4))
        ax = fig.add_subplot()
        n = len(series)
        width = 0.8 / n
        x = np.arange(len(classes))
        for i, (name, v) in enumerate(series.items()):
            v = np.asarray(v, np.float64)
            share = v / v.sum() if v.sum() else v
            ax.bar(x + (i - (n - 1) / 2) * width, share * 100, width, label=f"{name} (n={int(v.sum())})",
                   **{k: val for k, val in plots.series_style(i).items() if k == "color"})
        ax.set_xticks(x, classes, rotation=30 if max(map(len, classes)) > 6 else 0)
        ax.set(ylabel="% of the set", title="Class balance before and after ranked class-proportional sampling")
        ax.legend(loc="best", fontsize=8)
        return plots.figure_png(fig, path, s3)


# --------------------------------------------------------------------------------------------
# stage 5: second training with the heatmap prior


def sample_batch(batch: dict[str, np.ndarray], size: int, how: str, s3: Any = None) -> dict[str, np.ndarray]:
    """``map_batches``: sample rows -> ``image`` uint8 NHWC, ``heat`` uint8 (N, h, w), ``label`` (pseudo)."""
    from PIL import Image

    n = len(batch["image"])
    img = np.stack([load_rgb(batch, i, size, how, s3) for i in range(n)])
    heat = np.stack([np.asarray(Image.open(io.BytesIO(bytes(b))).convert("L")) for b in batch["heatmap"]])
    return {"image": img, "heat": heat, "label": batch["pred"].astype(np.int64)}


def balanced_weights(counts) -> list[float]:
    """Cross-entropy class weights ``n / (k * n_c)`` (an empty class counts as 1)."""
    cnt = np.asarray(counts, np.float64)
    return (cnt.sum() / (len(cnt) * np.maximum(cnt, 1))).tolist()


def classifier_loop(config: dict[str, Any]) -> None:
    """Ray Train loop of the classifier stages (``meta["section"]``): stage 3 (``classifier``: CE on
    the clean labels, 3 channels) and stage 5 (``second``: CE on the pseudo-labels; the stored heatmap
    is a 4th input channel with probability q, zeros otherwise). Validation on clean rows without any
    heatmap (the network zero-pads the missing channel)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load as st_load

    from medray.data.transforms import RandomAugment, normalize
    from medray.methods import classify
    from medray.methods.skin.heatmap import inflate_state
    from medray.models import create_model
    from medray.training import loop

    cfg = Config.model_validate(config["job"])
    meta = config["meta"]
    s = cfg.second if meta["section"] == "second" else cfg.classifier
    q = cfg.second.q if meta["section"] == "second" else 0.0
    with_heat = meta["section"] == "second"
    weight = torch.tensor(meta["class_weights"], dtype=torch.float32) if meta.get("class_weights") else None
    w = loop.Worker(cfg)
    arch = meta["arch"]
    k = int(arch["num_classes"])
    model = create_model(arch["name"], num_classes=k, in_chans=int(arch["in_chans"]), **arch["kwargs"])
    if meta.get("init_weights"):
        model.load_state_dict(inflate_state(st_load(storage.read_bytes(meta["init_weights"], cfg.storage.s3)),
                                            model))
    model = w.prepare(model)
    bs = s.optim.batch_size
    spe = max(1, math.ceil(meta["train_rows"] / (w.world * bs)))
    opt = loop.build_optimizer(s.optim, model.parameters())
    sched = loop.build_scheduler(s.optim, opt, spe)
    state = w.restore({"model": model}, opt, sched)
    aug = RandomAugment(**s.augment.model_dump(exclude={"enabled"})) if s.augment.enabled else None
    train_it, val_it = w.shard("train"), w.shard("val")
    for epoch in range(state.epoch, s.optim.epochs):
        w.epoch_start()
        model.train()
        gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch * 101 + w.rank + 7)
        sums = {"loss": 0.0, "n": 0.0, "correct": 0.0, "with_heat": 0.0}
        steps = 0
        dtypes = {"image": torch.uint8, "label": torch.int64, **({"heat": torch.uint8} if with_heat else {})}
        for batch in train_it.iter_torch_batches(batch_size=bs, dtypes=dtypes, local_shuffle_buffer_size=128,
                                                 local_shuffle_seed=cfg.run.seed + epoch):
            x = normalize(batch["image"].to(w.device))
            y = batch["label"].to(w.device)
            if with_heat:
                heat = batch["heat"].to(w.device).float().div(255.0).unsqueeze(1)
                heat = F.interpolate(heat, size=x.shape[-2:], mode="bilinear", align_corners=False)
                present = (torch.rand(len(y), generator=gen) < q).to(w.device)
                heat = heat * present.view(-1, 1, 1, 1).float()
                if aug is not None:
                    x, heat = aug(x, heat, generator=gen)
                x = torch.cat([x, heat], 1)
            else:
                present = torch.zeros(len(y))
                if aug is not None:
                    x = aug(x, generator=gen)
            with w.autocast():
                logits = model(w.to_input(x))
            loss = F.cross_entropy(logits.float(), y, weight=None if weight is None else weight.to(w.device),
                                   label_smoothing=s.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s.optim.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.optim.clip_grad_norm)
            opt.step()
            sched.step()
            state.step += 1
            steps += 1
            sums["loss"] += loss.item() * len(y)
            sums["n"] += len(y)
            sums["correct"] += float((logits.argmax(1) == y).sum())
            sums["with_heat"] += float(present.sum())
            w.step_progress(epoch, steps, spe, loss.item())
        tr = w.allreduce_sums(sums)
        # 3-channel input (prior absent); the unwrapped module: see regressor_loop
        val = classify.evaluate_shard(w, w.unwrap(model), val_it, "label", k, bs)
        metrics = {"epoch": epoch + 1, "train_loss": tr["loss"] / max(1.0, tr["n"]),
                   "train_acc_pseudo": tr["correct"] / max(1.0, tr["n"]),
                   "heat_present_frac": tr["with_heat"] / max(1.0, tr["n"]), "lr": opt.param_groups[0]["lr"], **val,
                   "resumed_from_epoch": state.resumed_from_epoch if state.resumed_from_epoch is not None else -1}
        state.epoch = epoch + 1
        if not with_heat:
            metrics.pop("heat_present_frac")
            metrics["train_acc"] = metrics.pop("train_acc_pseudo")
        w.epoch_line(epoch, s.optim.epochs, steps, int(tr["n"]), metrics, "val_bal_acc")
        state.history.append({kk: v for kk, v in metrics.items() if isinstance(v, (int, float))})
        w.report(metrics, state, {"model": model}, opt, sched)


def stage5_second(job: Config, classes: list[str], counts: dict[str, Any], scale: dict[str, Any],
                  sample_info: dict[str, Any]) -> dict[str, Any]:
    from medray.data import pipeline
    from medray.training import launcher

    stage = "5_classifier"
    s, d = job.second, job.data
    k = len(classes)
    res = scale["resolution"]
    n_train = int(sample_info["total"])
    say(f"stage 5/5 second training: {n_train} sampled rows (pseudo-labels), heatmap channel with q={s.q}, "
        f"init {s.init}")
    train = pipeline.read_parquet(storage.join(stage_uri(job, "4_sample"), "rows"), job.storage.s3).map_batches(
        sample_batch, fn_kwargs={"size": res, "how": d.resize, "s3": job.storage.s3},
        batch_size=d.decode_batch_size, batch_format="numpy")
    val = labelled_clean(job, d.val_splits, res)
    if d.cache:
        train, val = train.materialize(), val.materialize()
    arch = classifier_arch(scale, k, 4, job.classifier.drop_rate)
    policy = job.classifier.class_weights if s.class_weights == "classifier" else s.class_weights
    weights_cls = balanced_weights(sample_info["quotas"]) if policy == "balanced" else None  # the sample's counts
    meta = {"classes": classes, "train_rows": n_train, "val_rows": sum(counts["clean_val"]), "arch": arch,
            "section": "second", "class_weights": weights_cls,
            "init_weights": storage.join(stage_uri(job, "3_classifier"), "model.safetensors")
            if s.init == "stage3" else None}
    weights, best, _ = _train_stage(job, stage, classifier_loop, {"train": train, "val": val}, meta, "val_bal_acc", "max")
    card = {
        "name": s.publish_as or job.run.publish_as or job.run.name,
        "task": "skin_classify", "modality": d.modality,
        "description": job.description or (
            f"Skin disease classifier (EfficientNetV2 phi={scale['phi']}, {res}px) trained with heatmap labels: "
            "pseudo-labels from a clean-set classifier + a lesion-heatmap prior channel (absent at inference)"),
        "inputs": ["image"], "outputs": ["probs", "label", "score"], "labels": classes,
        "preprocessing": _preprocessing(res, d.resize), "architecture": arch,
        "metrics": _clean(best), "resources": {"num_cpus": 1, "num_gpus": 0},
        "extra": {"scale": scale, "q": s.q, "sample": {"total": n_train, "quotas": sample_info["quotas"]}},
    }
    published = launcher.publish(job, card, {"weights": weights}) if job.run.catalog else None
    return {"metrics": _clean(best), "published": published.ref if published else None}


# --------------------------------------------------------------------------------------------
# the workflow


def run_all(job: Config, force: bool = False) -> dict[str, Any]:
    from medray.methods.skin import evaluate

    t0 = time.time()
    classes = resolve_classes(job)
    counts = count_parts(job, len(classes))
    root = run_uri(job)
    say(f"job {job.run.name}: {len(classes)} classes; box {sum(counts['box_train'])}+{sum(counts['box_val'])}, "
        f"clean {sum(counts['clean_train'])}+{sum(counts['clean_val'])}+{sum(counts['clean_test'])}, "
        f"full {sum(counts['full_train'])} (train) rows; run -> {root}")
    storage.write_json(storage.join(root, "counts.json"), {"classes": classes, **counts}, job.storage.s3)
    out: dict[str, Any] = {"run": root, "stages": {}, "skipped": [], "ran": []}
    redo = force
    infos: dict[str, Any] = {}
    fns = {
        "1_regressor": lambda: stage1_regressor(job, classes, counts),
        "2_foreground": lambda: stage2_foreground(job, classes, counts),
        "3_classifier": lambda: stage3_classifier(job, classes, counts),
        "4_sample": lambda: stage4_sample(job, classes, counts),
        "5_classifier": lambda: stage5_second(job, classes, counts, infos["3_classifier"]["scale"],
                                              infos["4_sample"]),
        "evaluate": lambda: evaluate.evaluate(job, classes, counts, infos),
    }
    for stage in STAGES:
        if not redo and is_done(job, stage):
            infos[stage] = read_done(job, stage)
            out["skipped"].append(stage)
            say(f"{stage}: finished earlier, skipped")
            continue
        if redo or storage.exists(stage_uri(job, stage), job.storage.s3) and stage in ("2_foreground", "4_sample"):
            # outputs written by Ray Data are not resumable: start the stage clean (training stages keep
            # their checkpoints unless forced, so an interrupted run resumes)
            clear_stage(job, stage)
        ts = time.time()
        info = fns[stage]()
        info["seconds"] = round(time.time() - ts, 1)
        infos[stage] = mark_done(job, stage, info)
        out["ran"].append(stage)
        redo = True  # later stages consume this one's new output
    out["stages"] = {k: {kk: v for kk, v in infos[k].items() if kk not in ("finished_at",)} for k in STAGES}
    out["published"] = [p for p in (infos["1_regressor"].get("published"), infos["5_classifier"].get("published")) if p]
    out["metrics"] = infos["evaluate"].get("summary", {})
    out["seconds"] = round(time.time() - t0, 1)
    if job.run.catalog:
        out["catalog"] = job.run.catalog
    storage.write_json(storage.join(root, "summary.json"), out, job.storage.s3)
    say(f"done in {out['seconds']}s: {out['metrics']}")
    return out
