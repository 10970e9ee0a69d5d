"""Launch a validated job on Ray: the same code on a laptop (embedded ``ray.init()``) and on a cluster
(``ray job submit --working-dir . -- medray train jobs/x.yaml``, or a KubeRay RayJob).

* Scaling from the job: ``num_workers``; GPUs when ``use_gpu`` is true, or ``"auto"`` and the cluster
  has enough of them (then NCCL + bf16 + channels_last); CPU + gloo otherwise. On a small machine the
  per-worker CPU request is lowered so Ray Data keeps at least one CPU (else the run starves).
* Everything goes under ``run.storage_path/run.name`` (local folder or ``s3://``): Ray Train's
  checkpoints (best ``checkpoints_to_keep`` by ``run.metric``), ``summary.json``, ``curves.png``.
* Re-running the same job with the same storage path resumes from the latest checkpoint (Ray Train
  V2 restores a run by ``(storage_path, name)``); a finished run resumes at its end and only
  re-publishes.
* ``FailureConfig(max_failures)`` restarts the worker group after a crash (a killed process, a lost
  node) from the last checkpoint.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from typing import Any

from medray import storage
from medray.config import METHOD_MODULES, JobBase
from medray.errors import ManifestError, MedrayError

log = logging.getLogger(__name__)

# Environment every Ray worker of a medray job should see.
WORKER_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
PASS_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EC2_METADATA_DISABLED",
            "MEDRAY_CATALOG")


def _submitted_job_env_vars() -> dict[str, str]:
    """``env_vars`` of the runtime env of the Ray job this driver runs in (empty outside a job)."""
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    try:
        return dict(((json.loads(raw).get("runtime_env") or {}).get("env_vars")) or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def ensure_ray() -> None:
    """Connect to the cluster this process runs in (``RAY_ADDRESS`` / a job submission), or start an
    embedded local one."""
    import ray

    from medray.training.loop import quiet_ray_data

    if ray.is_initialized():
        quiet_ray_data()
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {k: os.environ[k] for k in PASS_ENV if os.environ.get(k)}
    env.update(WORKER_ENV)
    # Inside `ray job submit --runtime-env-json ...` the job's env vars already reach every worker, and
    # ray.init refuses a driver runtime env that sets the same keys: leave those to the job.
    job_env = _submitted_job_env_vars()
    env = {k: v for k, v in env.items() if k not in job_env}
    ray.init(runtime_env={"env_vars": env}, log_to_driver=True, include_dashboard=False,
             configure_logging=True, logging_level=logging.WARNING)
    quiet_ray_data()


def method_module(job: JobBase):
    try:
        return importlib.import_module(METHOD_MODULES[job.method])
    except KeyError:
        raise MedrayError(f"method {job.method!r} has no module") from None


def _use_gpu(job: JobBase) -> bool:
    import ray

    if job.scaling.use_gpu == "auto":
        need = job.scaling.num_workers * job.scaling.gpus_per_worker
        return ray.cluster_resources().get("GPU", 0) >= need
    return bool(job.scaling.use_gpu)


def worker_cpus(n: int, cpus: float, total: float, reserved_cpus: float = 0.0, share: int = 1) -> float:
    """The CPUs per Train worker that fit a ``total``-CPU cluster: ``cpus`` unless ``n`` workers would
    not leave one CPU for Ray Data's read/decode tasks (the run would hang waiting for them), with
    ``share`` such runs side by side, each also holding ``reserved_cpus`` itself."""
    share = max(1, share)
    room = ((total - 1) / share - reserved_cpus) if total > 1 else total / (2 * share)
    if total and n * cpus > room:
        return min(cpus, max(0.1, round(room / n - 0.005, 2)))
    return cpus


def scaling_config(job: JobBase, reserved_cpus: float = 0.0, share: int = 1):
    """The job's ScalingConfig. The per-worker CPU request is lowered when the workers would not leave
    one CPU for Ray Data's read/decode tasks (the run would hang waiting for them). ``share`` runs of
    this kind run side by side (concurrent Tune trials), each also holding ``reserved_cpus`` itself
    (the trial's own placement)."""
    import ray
    from ray.train import ScalingConfig

    gpu = _use_gpu(job)
    n = job.scaling.num_workers
    cpus = job.scaling.cpus_per_worker
    total = ray.cluster_resources().get("CPU", 0)
    new = worker_cpus(n, cpus, total, reserved_cpus, share)
    if new < cpus:
        print(f"[medray] note: {n} workers x {cpus} CPU do not fit next to Ray Data on a {total:g}-CPU "
              f"cluster{f' ({share} runs side by side)' if share > 1 else ''}; using {new} CPU per worker",
              file=sys.stderr)
        cpus = new
    res = {"CPU": cpus}
    if gpu:
        res["GPU"] = job.scaling.gpus_per_worker
    return ScalingConfig(num_workers=n, use_gpu=gpu, resources_per_worker=res)


def run_paths(job: JobBase) -> tuple[Any, str, str]:
    """``(pyarrow filesystem or None, storage_path for Ray, run URI)``."""
    sp = job.run.storage_path
    run_uri = storage.join(storage.to_uri(sp), job.run.name)
    if storage.protocol_of(sp) == "file":
        return None, storage.to_uri(sp), run_uri
    fs, path = storage.pyarrow_filesystem(sp, job.storage.s3)
    return fs, path, run_uri


def check_rows(job: JobBase, meta: dict[str, Any]) -> None:
    """Refuse a run that has nothing to train on, or whose ``val_`` metric has no validation rows
    (it would train for nothing and select its checkpoints on a missing metric). Counts the method
    did not make (absent or -1) are not checked."""
    data = getattr(job, "data", None)
    where = f"of {list(getattr(data, 'manifests', []) or [])}"
    if meta.get("train_rows") == 0:
        raise ManifestError(f"no training rows in splits {getattr(data, 'train_splits', ['train'])} {where}")
    if meta.get("val_rows") == 0 and job.run.metric.startswith("val_"):
        raise ManifestError(
            f"no validation rows in splits {getattr(data, 'val_splits', ['val'])} {where}, but run.metric is "
            f"{job.run.metric!r}: give the manifest a validation split (e.g. more patients, or another split "
            f"seed) or choose a train_ metric")


def build_trainer(job: JobBase, train_loop, datasets: dict[str, Any], meta: dict[str, Any],
                  name: str | None = None, split: list[str] | None = None, callbacks: list | None = None,
                  reserved_cpus: float = 0.0, share: int = 1):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    check_rows(job, meta)
    fs, path, _ = run_paths(job)
    return TorchTrainer(
        train_loop_per_worker=train_loop,
        train_loop_config={"job": job.model_dump(mode="json"), "meta": meta},
        scaling_config=scaling_config(job, reserved_cpus, share),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=split or ["train"]),
        run_config=RunConfig(
            name=name or job.run.name,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=job.run.checkpoints_to_keep,
                checkpoint_score_attribute=job.run.metric,
                checkpoint_score_order=job.run.mode,
            ),
            failure_config=FailureConfig(max_failures=job.run.max_failures),
            worker_runtime_env={"env_vars": {**WORKER_ENV, **{k: os.environ[k] for k in PASS_ENV
                                                              if os.environ.get(k)}}},
            callbacks=callbacks,
        ),
    )


def best_checkpoint(result, job: JobBase):
    """The best reported checkpoint by the job's metric (falls back to the latest)."""
    best = None
    for ckpt, m in (result.best_checkpoints or []):
        v = m.get(job.run.metric)
        if v is None or v != v:  # NaN
            continue
        if best is None or (v < best[1] if job.run.mode == "min" else v > best[1]):
            best = (ckpt, v, m)
    if best is None:
        if result.checkpoint is None:
            raise MedrayError(f"run {job.run.name} produced no checkpoint")
        return result.checkpoint, dict(result.metrics or {})
    return best[0], best[2]


def read_checkpoint_file(ckpt, name: str) -> bytes:
    with ckpt.as_directory() as d:
        with open(os.path.join(d, name), "rb") as f:
            return f.read()


def fit(job: JobBase, module, datasets: dict[str, Any], meta: dict[str, Any], name: str | None = None):
    """Run the trainer; raise a clear error when the run failed."""
    trainer = build_trainer(job, module.train_loop_per_worker, datasets, meta, name=name)
    t0 = time.time()
    result = trainer.fit()
    if result.error is not None:
        raise MedrayError(f"training run {name or job.run.name} failed: {result.error}")
    log.info("fit took %.1fs", time.time() - t0)
    return result


def write_summary(job: JobBase, result, meta: dict[str, Any], best_metrics: dict[str, Any],
                  run_uri: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``summary.json`` and ``curves.png`` beside the run's checkpoints."""
    with result.checkpoint.as_directory() as d:
        import torch

        ts = torch.load(os.path.join(d, "train_state.pt"), map_location="cpu", weights_only=True)
    history = json.loads(ts.get("history", "[]"))
    summary = {
        "job": job.run.name,
        "method": job.method,
        "run_uri": run_uri,
        "final_metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float, str))},
        "best_metric": {job.run.metric: best_metrics.get(job.run.metric)},
        "best_metrics": {k: v for k, v in best_metrics.items() if isinstance(v, (int, float, str))},
        "history": history,
        "meta": {k: v for k, v in meta.items() if k not in ("preprocessing",)},
        **(extra or {}),
    }
    storage.write_json(storage.join(run_uri, "summary.json"), summary, job.storage.s3)
    try:
        from medray.evaluation import plots

        series = {k: [float("nan") if h.get(k) is None else h[k] for h in history]
                  for k in dict.fromkeys(("train_loss", "val_loss", job.run.metric)) if any(k in h for h in history)}
        if series:
            plots.plot_curves(series, title=f"{job.run.name}: training curves", path=storage.join(run_uri, "curves.png"),
                              s3=job.storage.s3, mark_best={job.run.metric: job.run.mode})
    except Exception as e:  # noqa: BLE001 - a plot must never fail a finished run
        log.warning("could not plot curves: %s", e)
    return summary


def publish(job: JobBase, card: dict[str, Any], files: dict[str, bytes], alias: str | None = None):
    """Publish into ``run.catalog`` (safetensors weights, card, checksums); returns the card."""
    from medray.catalog import Catalog

    if not job.run.catalog:
        return None
    card = dict(card)
    card.setdefault("source", {})
    card["source"] = {**card["source"], "method": job.method, "job": job.run.name,
                      "run": storage.join(storage.to_uri(job.run.storage_path), job.run.name),
                      **({"git_commit": _git_commit()} if _git_commit() else {})}
    return Catalog(job.run.catalog, s3=job.storage.s3).publish(card, files, alias=alias)


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except Exception:  # noqa: BLE001
        return None


def run_single_stage(job: JobBase, module) -> dict[str, Any]:
    """The default flow: datasets -> TorchTrainer.fit -> summary -> publish the best checkpoint."""
    datasets, meta = module.build_datasets(job)
    _, _, run_uri = run_paths(job)
    print(f"[medray] {job.method} job {job.run.name}: {meta.get('train_rows')} train / "
          f"{meta.get('val_rows')} val rows, {job.scaling.num_workers} worker(s); run -> {run_uri}",
          file=sys.stderr, flush=True)
    result = fit(job, module, datasets, meta)
    ckpt, best_metrics = best_checkpoint(result, job)
    summary = write_summary(job, result, meta, best_metrics, run_uri)
    out: dict[str, Any] = {"run": run_uri, "best_checkpoint": ckpt.path, "metrics": summary["best_metrics"],
                           "resumed_from_epoch": summary["final_metrics"].get("resumed_from_epoch")}
    if job.run.catalog:
        card = module.card_for(job, meta, best_metrics)
        published = publish(job, card, {"weights": read_checkpoint_file(ckpt, "model.safetensors")})
        out["published"] = f"{published.name}:{published.version}"
        out["catalog"] = job.run.catalog
    return out


# Spec fields that hold storage URIs: relative local paths in them are resolved against the driver's
# working directory before the job reaches Ray workers (whose working directory differs).
PATH_KEYS = {"manifest", "manifests", "storage_path", "catalog", "weights", "classifier_catalog"}


def resolve_paths(job: JobBase) -> JobBase:
    """A copy of ``job`` with every relative local path in a URI field made absolute."""

    def fix(v: Any) -> Any:
        if isinstance(v, str) and v and storage.protocol_of(v) == "file":
            return storage.to_uri(v)
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    def walk(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: (fix(v) if k in PATH_KEYS else walk(v)) for k, v in d.items()}
        if isinstance(d, list):
            return [walk(x) for x in d]
        return d

    return type(job).model_validate(walk(job.model_dump(mode="json")))


def run_job(job: JobBase, source: str | None = None, force: bool = False) -> dict[str, Any]:
    """Entry point of ``medray train``."""
    job = resolve_paths(job)
    storage.configure(job.storage.s3)
    ensure_ray()
    module = method_module(job)
    if hasattr(module, "run"):  # multi-stage methods (retinal age, skin) orchestrate their stages
        return module.run(job, force=force)
    return run_single_stage(job, module)
