"""The three stages of the retinal-age job, chained by :func:`run`.

Each stage writes its artifacts under ``run.storage_path/run.name/<stage>/`` and, LAST, an atomic
``_done.json`` marker; a re-run skips every stage whose marker exists (``force=True`` /
``medray train --force`` deletes the stage folders and runs everything again)::

    responses/  parts/*.parquet (one row per manifest row: image, split, age, [disease], r)
    offsets/    offsets.parquet (audit: ..., age_group, T_a, M_a, flagged, dy), age_stats.parquet,
                offset_hist.png, responses_by_age.png, summary.json
    train/      Ray Train run (checkpoints, resumable), summary.json, curves.png
    evaluate/   predictions.parquet, metrics.json, pred_vs_true.png, age_gap.png
"""

from __future__ import annotations

import io
import math
import sys
import time
from typing import Any

import numpy as np

from medray import storage
from medray.errors import ConfigError
from medray.methods.retinal_age.spec import Config

STAGES = ("responses", "offsets", "train", "evaluate")


def _say(msg: str) -> None:
    print(f"[medray] retinal_age: {msg}", file=sys.stderr, flush=True)


def stage_uri(job: Config, stage: str) -> str:
    return storage.join(storage.to_uri(job.run.storage_path), job.run.name, stage)


def _done(job: Config, stage: str) -> dict[str, Any] | None:
    uri = storage.join(stage_uri(job, stage), "_done.json")
    return storage.read_json(uri, job.storage.s3) if storage.exists(uri, job.storage.s3) else None


def _mark(job: Config, stage: str, info: dict[str, Any]) -> dict[str, Any]:
    info = {"stage": stage, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    storage.write_json(storage.join(stage_uri(job, stage), "_done.json"), info, job.storage.s3)
    return info


def _write_parquet(table, uri: str, s3: Any = None) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue(), s3)  # atomic


def _read_parquet(uri: str, s3: Any = None, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(uri, s3)
    return pq.read_table(path, filesystem=fs, columns=columns)


def check_manifests(job: Config) -> list[str]:
    """The columns every manifest has; a clear error when one is missing or not an age manifest."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from medray.data import pipeline

    common: list[str] | None = None
    for uri in job.data.manifests:
        info = pipeline.manifest_info(uri, job.storage.s3)
        if info.task != "fundus_age":
            raise ConfigError(f"data.manifests: {uri} is a {info.task!r} manifest; retinal_age needs "
                              "'fundus_age' manifests (image + age)")
        fs, path = storage.pyarrow_filesystem(uri, job.storage.s3)
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            path = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                          if f.path.endswith(".parquet"))[0]
        with fs.open_input_file(path) as f:
            names = pq.ParquetFile(f).schema_arrow.names
        if job.data.age_column not in names:
            raise ConfigError(f"data.age_column: {uri} has no column {job.data.age_column!r}")
        common = names if common is None else [c for c in common if c in names]
    return common or []


# --------------------------------------------------------------------------------------------
# stage 1: responses


def _keep_response(batch: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    """``map_batches`` step after :class:`medray.inference.batch.PredictBatch`: ``r`` = P(class ``index``)."""
    probs = np.stack(list(batch.pop("probs")))
    batch.pop("score", None)
    batch.pop("pred", None)
    batch["r"] = probs[:, index].astype(np.float32)
    return batch


def stage_responses(job: Config, columns: list[str]) -> dict[str, Any]:
    from medray.catalog import Catalog
    from medray.inference.batch import predict_dataset

    rs = job.responses
    cat_uri = rs.classifier_catalog or job.run.catalog
    if not cat_uri:
        raise ConfigError("responses.classifier_catalog: not set (and run.catalog is empty): where is "
                          f"the classifier {rs.classifier!r} catalogued?")
    card = Catalog(cat_uri, s3=job.storage.s3).get(rs.classifier)
    labels = list(card.labels or [])
    if rs.positive_class is None:
        if len(labels) > 2:
            raise ConfigError(f"responses.positive_class: classifier {card.name}:{card.version} has {len(labels)} "
                              f"classes {labels}; name the disease class")
        index = 1
    elif isinstance(rs.positive_class, int):
        index = rs.positive_class
    elif rs.positive_class in labels:
        index = labels.index(rs.positive_class)
    else:
        raise ConfigError(f"responses.positive_class: {rs.positive_class!r} not in the classifier's labels {labels}")
    keep = [c for c in ("image", "patient_id", "eye", "dataset", "split", job.data.age_column, "disease")
            if c in columns]
    t0 = time.time()
    out = stage_uri(job, "responses")
    parts = storage.join(out, "parts")
    if storage.exists(parts, job.storage.s3):
        storage.remove(parts, recursive=True, s3=job.storage.s3)  # a half-written earlier attempt
    for i, uri in enumerate(job.data.manifests):
        _say(f"stage 1/4 responses: {card.name}:{card.version} over {uri}")
        ds = predict_dataset(cat_uri, f"{card.name}:{card.version}", uri, splits=None, columns=keep,
                             s3=job.storage.s3, batch_size=rs.batch_size, concurrency=rs.concurrency,
                             use_gpu=rs.use_gpu, num_cpus=rs.num_cpus)
        ds = ds.map_batches(_keep_response, fn_kwargs={"index": index}, batch_format="numpy")
        fs, path = storage.pyarrow_filesystem(storage.join(parts, f"m{i:03d}"), job.storage.s3)
        ds.write_parquet(path, filesystem=fs)
    n = _read_parquet(parts, job.storage.s3, columns=["r"]).num_rows
    return _mark(job, "responses", {"classifier": f"{card.name}:{card.version}", "catalog": cat_uri,
                                    "positive_index": index, "rows": n, "seconds": round(time.time() - t0, 1)})


# --------------------------------------------------------------------------------------------
# stage 2: offsets


def stage_offsets(job: Config) -> dict[str, Any]:
    from medray.methods.retinal_age import evaluate, offsets

    _say("stage 2/4 offsets: T_a, M_a per age group, upward search per sample")
    t0 = time.time()
    table = _read_parquet(storage.join(stage_uri(job, "responses"), "parts"), job.storage.s3)
    if "image_bytes" in table.column_names:
        table = table.drop_columns(["image_bytes"])
    table = table.rename_columns([("age" if c == job.data.age_column else c) for c in table.column_names])
    audit, stats = offsets.offsets_table(table, job.offsets, age_col="age", response_col="r")
    out = stage_uri(job, "offsets")
    _write_parquet(audit, storage.join(out, "offsets.parquet"), job.storage.s3)
    _write_parquet(stats.as_table(), storage.join(out, "age_stats.parquet"), job.storage.s3)
    dy = audit["dy"].to_numpy(zero_copy_only=False)
    summ = offsets.summary(dy, stats)
    if "disease" in audit.column_names:
        d = audit["disease"].to_numpy(zero_copy_only=False).astype(np.float64)
        summ["shifted_share_disease"] = float((dy[d > 0] > 0).mean()) if (d > 0).any() else math.nan
        summ["shifted_share_healthy"] = float((dy[d == 0] > 0).mean()) if (d == 0).any() else math.nan
    try:
        summ["plots"] = evaluate.plot_offsets(audit, stats, out, job.storage.s3)
    except Exception as e:  # noqa: BLE001 - a plot never fails the stage
        _say(f"could not plot offsets: {e}")
    summ["seconds"] = round(time.time() - t0, 2)
    storage.write_json(storage.join(out, "summary.json"), summ, job.storage.s3)
    _say(f"  {summ['shifted']} of {summ['rows']} rows shifted, dy histogram {summ['dy_hist']}")
    return _mark(job, "offsets", summ)


# --------------------------------------------------------------------------------------------
# stage 3: training


def _train_job(job: Config) -> Config:
    """The job as the trainer sees it: its Ray Train run lives at ``<run>/train``."""
    run_uri = storage.join(storage.to_uri(job.run.storage_path), job.run.name)
    return job.model_copy(update={"run": job.run.model_copy(update={"storage_path": run_uri, "name": "train"})})


def build_datasets(job: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    import pyarrow.compute as pc
    from ray.data.expressions import col

    from medray.data import pipeline

    off_uri = storage.join(stage_uri(job, "offsets"), "offsets.parquet")
    small = _read_parquet(off_uri, job.storage.s3, columns=["split", "age", "dy"])
    valid = pc.is_valid(small["age"])

    def count(splits):
        return int(pc.sum(pc.and_(valid, pc.is_in(small["split"], value_set=__import__("pyarrow").array(splits))))
                   .as_py() or 0)

    n_train, n_val = count(job.data.train_splits), count(job.data.val_splits)
    if n_train == 0:
        raise ConfigError(f"data.train_splits: no rows with an age in {job.data.train_splits} of {job.data.manifests}")
    spec = pipeline.DecodeSpec(job.data.image_size, job.data.mode, job.data.resize)
    keep = ("age", "dy", "r")

    def one(splits):
        ds = pipeline.read_parquet(off_uri, job.storage.s3, columns=["image", "split", *keep])
        ds = ds.filter(expr=pipeline._split_expr(splits)).filter(expr=col("age").is_not_null())
        return ds.map_batches(pipeline.decode_batch, fn_kwargs={"spec": spec, "keep": keep, "s3": job.storage.s3},
                              batch_size=job.data.decode_batch_size, batch_format="numpy")

    train, val = one(job.data.train_splits), one(job.data.val_splits)
    est_gb = (n_train + n_val) * spec.image_size ** 2 * (3 if spec.mode == "RGB" else 1) / 1e9
    if job.data.cache is True or (job.data.cache == "auto" and est_gb <= job.data.cache_max_gb):
        train, val = train.materialize(), val.materialize()
    dy = small["dy"].to_numpy(zero_copy_only=False)
    meta = {"train_rows": n_train, "val_rows": n_val, "preprocessing": spec.as_dict(),
            "shifted_train_rows": int(((dy > 0) & pc.is_in(small["split"], value_set=__import__("pyarrow").array(
                job.data.train_splits)).to_numpy(zero_copy_only=False)).sum())}
    return {"train": train, "val": val}, meta


def stage_train(job: Config) -> dict[str, Any]:
    from medray.training import launcher

    from medray.methods import retinal_age as module

    _say(f"stage 3/4 train: {job.model.name}, {job.head.num_bins} age bins, loss {job.head.loss}")
    datasets, meta = build_datasets(job)
    tjob = _train_job(job)
    result = launcher.fit(tjob, module, datasets, meta)
    ckpt, best = launcher.best_checkpoint(result, tjob)
    _, _, train_uri = launcher.run_paths(tjob)
    summary = launcher.write_summary(tjob, result, meta, best, train_uri)
    best_metrics = summary["best_metrics"]
    # keep the chosen weights as a stage artifact (the catalogue and evaluation read them from here)
    storage.write_bytes(storage.join(stage_uri(job, "train"), "best_model.safetensors"),
                        launcher.read_checkpoint_file(ckpt, "model.safetensors"), job.storage.s3)
    return _mark(job, "train", {"best_checkpoint": ckpt.path, "metrics": best_metrics, "meta": meta,
                                "resumed_from_epoch": summary["final_metrics"].get("resumed_from_epoch")})


# --------------------------------------------------------------------------------------------
# stage 4: evaluation


class _AgeBatch:
    """``map_batches`` callable: retinal age for a batch of image URIs (one model per actor)."""

    def __init__(self, card: dict[str, Any], weights: bytes, s3: Any = None):
        from medray.catalog.card import ModelCard
        from medray.methods.retinal_age.predictor import RetinalAgePredictor

        if s3 is not None:
            storage.configure(s3)
        self.pred = RetinalAgePredictor(ModelCard.model_validate(card), weights)
        self.s3 = s3

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from medray.data import imageio

        imgs = [imageio.read_image(str(u), s3=self.s3, mode=self.pred.mode, target=self.pred.image_size)
                for u in batch["image"]]
        ages, var = self.pred.ages(imgs)
        batch["retinal_age"] = ages.astype(np.float32)
        batch["spread"] = np.sqrt(var).astype(np.float32)
        return batch


def stage_evaluate(job: Config, card: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.data

    from medray.data import pipeline
    from medray.methods.retinal_age import evaluate

    _say(f"stage 4/4 evaluate on {job.data.eval_splits}")
    out = stage_uri(job, "evaluate")
    weights = storage.read_bytes(storage.join(stage_uri(job, "train"), "best_model.safetensors"), job.storage.s3)
    off_uri = storage.join(stage_uri(job, "offsets"), "offsets.parquet")
    cols = _read_parquet(off_uri, job.storage.s3, columns=None).column_names
    keep = [c for c in ("image", "patient_id", "split", "age", "disease", "r", "T_a", "M_a", "dy") if c in cols]
    ds = pipeline.read_parquet(off_uri, job.storage.s3, columns=keep)
    from ray.data.expressions import col

    ds = ds.filter(expr=pipeline._split_expr(job.data.eval_splits)).filter(expr=col("age").is_not_null())
    ds = ds.map_batches(_AgeBatch, fn_constructor_kwargs={"card": card, "weights": weights, "s3": job.storage.s3},
                        batch_size=32, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1),
                        num_cpus=0.5)
    table = ds.to_arrow_refs()
    import pyarrow as pa
    import pyarrow.compute as pc

    tables = [t for t in ray.get(table) if t.num_rows]
    if not tables:
        raise ConfigError(f"data.eval_splits: no rows in {job.data.eval_splits} of {job.data.manifests}")
    preds = pa.concat_tables(tables)
    preds = preds.append_column("age_gap", pc.subtract(preds["retinal_age"], preds["age"].cast(pa.float32())))
    _write_parquet(preds, storage.join(out, "predictions.parquet"), job.storage.s3)
    age = preds["age"].to_numpy(zero_copy_only=False)
    ra = preds["retinal_age"].to_numpy(zero_copy_only=False)
    dy = preds["dy"].to_numpy(zero_copy_only=False)
    dis = preds["disease"].to_numpy(zero_copy_only=False) if "disease" in preds.column_names else None
    metrics = evaluate.age_metrics(age, ra, dy, dis)
    metrics["splits"] = job.data.eval_splits
    try:
        metrics["plots"] = evaluate.plot_predictions(age, ra, dy, out, job.storage.s3, disease=dis)
    except Exception as e:  # noqa: BLE001
        _say(f"could not plot predictions: {e}")
    storage.write_json(storage.join(out, "metrics.json"), metrics, job.storage.s3)
    mae, const = metrics.get("mae", math.nan), metrics.get("mae_constant", math.nan)
    _say(f"  MAE {mae:.2f} y (a constant prediction: {const:.2f} y), r {metrics.get('pearson_r', math.nan):.3f}; "
         f"gap dy=0 {metrics['gap_dy0']['mean']:.2f}, dy>0 {metrics['gap_dy_pos']['mean']:.2f}")
    if mae >= 0.9 * const:
        _say(f"  warning: MAE {mae:.2f} y is not clearly below the {const:.2f} y of one age predicted for every "
             "eye: the model learned little age, so its age gaps say little (more images or epochs, a larger "
             "image_size, or a lower lr)")
    return _mark(job, "evaluate", metrics)


# --------------------------------------------------------------------------------------------
# the chain


def card_for(job: Config, meta: dict[str, Any], metrics: dict[str, Any], extra: dict[str, Any] | None = None):
    from medray.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return {
        "name": job.run.publish_as or job.run.name,
        "task": "retinal_age",
        "modality": job.modality,
        "description": job.description or (f"{job.model.name} retinal age ({job.head.age_min}-{job.head.age_max} y, "
                                           f"loss {job.head.loss})"),
        "inputs": ["image"],
        "outputs": ["retinal_age", "age_gap"],
        "preprocessing": {**meta["preprocessing"], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "architecture": {"name": job.model.name, "kwargs": job.model.kwargs, "in_chans": job.model.in_chans,
                         "num_classes": job.head.num_bins, "age_min": job.head.age_min,
                         "age_max": job.head.age_max},
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "resources": {"num_cpus": 1, "num_gpus": 0},
        "extra": {"loss": job.head.loss, "sigma": job.head.sigma, "lambda_1": job.head.lambda_1,
                  "lambda_2": job.head.lambda_2, "offsets": job.offsets.model_dump(mode="json"), **(extra or {})},
    }


def run(job: Config, force: bool = False) -> dict[str, Any]:
    """Responses -> offsets -> train -> evaluate -> publish; finished stages are skipped unless ``force``."""
    from medray.training import launcher

    columns = check_manifests(job)
    s3 = job.storage.s3
    run_uri = storage.join(storage.to_uri(job.run.storage_path), job.run.name)
    if force:
        for st in STAGES:
            if storage.exists(stage_uri(job, st), s3):
                storage.remove(stage_uri(job, st), recursive=True, s3=s3)
    out: dict[str, Any] = {"run": run_uri, "stages": {}}
    done = {st: _done(job, st) for st in STAGES}
    # a stage re-runs when it or any earlier stage re-ran
    rerun = False
    for st in STAGES:
        if done[st] is not None and not rerun:
            _say(f"stage {st}: finished earlier, skipped ({stage_uri(job, st)})")
            out["stages"][st] = "skipped"
            continue
        if rerun and storage.exists(stage_uri(job, st), s3):  # stale: built on an earlier stage's old output
            storage.remove(stage_uri(job, st), recursive=True, s3=s3)
        if st == "responses":
            done[st] = stage_responses(job, columns)
        elif st == "offsets":
            done[st] = stage_offsets(job)
        elif st == "train":
            done[st] = stage_train(job)
        else:
            meta = done["train"]["meta"]
            done[st] = stage_evaluate(job, card_for(job, meta, done["train"]["metrics"]))
        out["stages"][st] = "ran"
        rerun = True
    tr = done["train"]
    ev = done["evaluate"]
    out["metrics"] = tr["metrics"]
    out["evaluation"] = {k: v for k, v in ev.items() if k not in ("stage", "finished_at", "plots")}
    out["offsets"] = {k: done["offsets"].get(k) for k in ("rows", "shifted", "dy_hist")}
    out["resumed_from_epoch"] = tr.get("resumed_from_epoch")
    if job.run.catalog:
        eval_metrics = {f"test_{k}": v for k, v in ev.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        card = card_for(job, tr["meta"], {**tr["metrics"], **eval_metrics},
                        extra={"classifier": done["responses"].get("classifier")})
        weights = storage.read_bytes(storage.join(stage_uri(job, "train"), "best_model.safetensors"), s3)
        published = launcher.publish(job, card, {"weights": weights})
        out["published"] = f"{published.name}:{published.version}"
        out["catalog"] = job.run.catalog
    storage.write_json(storage.join(run_uri, "summary.json"), out, s3)
    return out
