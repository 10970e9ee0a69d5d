"""Ray Tune searches over training jobs: ``medray tune tune/<study>.yaml [key=value ...]``.

A study spec names a base job (``job: ../jobs/oct_layers.yaml``), dotted ``overrides`` of it, and a
search ``space`` of dotted job fields, each ``{grid: [...]}``, ``{choice: [...]}``,
``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}`` or ``{randint: [lo, hi]}``. Every trial is a
function trainable that launches a FULL Ray Train run (``TorchTrainer``, the job's own workers and
checkpoints) named ``<study>-<trial id>`` under ``<storage_path>/<study>/trials``; Train reports are
forwarded to Tune (``TuneReportCallback``) so ASHA stops weak candidates after ``grace_period``
epochs. Re-running the same study restores the Tune experiment and each unfinished trial's Train run
resumes from its last checkpoint (same trial id -> same run name).

``max_concurrent_trials: auto`` = how many trials' Train workers fit in the cluster's CPUs (GPUs)
with one CPU left for Ray Data, capped by ``max_concurrent_cap``.

Outputs in ``<storage_path>/<study>/``: ``leaderboard.csv``/``.md``/``.json`` and
``leaderboard.png`` (every trial, its knobs, best metric, epochs run, status), ``study.json`` (the
selection); with ``catalog`` the best candidate's best checkpoint is published (card metrics = its
validation IoU table); with ``evaluate_test`` it is scored on the held-out scans by the method's
whole-scan inference (``test_report.json``, ``overlays.png``, ``thickness.png``).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from medray import storage
from medray.config import StrictModel, load_spec, load_yaml, parse_job, resolve_relative
from medray.errors import ConfigError, MedrayError


class ParamSpec(StrictModel):
    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one(self) -> "ParamSpec":
        set_ = [k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError("give exactly one of grid, choice, uniform, loguniform, randint")
        if self.grid is not None and not self.grid or self.choice is not None and not self.choice:
            raise ValueError("an empty list of values")
        if self.loguniform is not None and not 0 < self.loguniform[0] < self.loguniform[1]:
            raise ValueError("loguniform needs 0 < lo < hi")
        return self

    def to_tune(self):
        from ray import tune

        if self.grid is not None:
            return tune.grid_search(list(self.grid))
        if self.choice is not None:
            return tune.choice(list(self.choice))
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        return tune.randint(*self.randint)  # type: ignore[misc]


class SchedulerSpec(StrictModel):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="default: the job's optim.epochs")


class StudySpec(StrictModel):
    name: str = Field(min_length=1)
    description: str = ""
    job: str = Field(description="base job YAML (relative to this spec)")
    overrides: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, ParamSpec] = Field(min_length=1)
    num_samples: int = Field(1, ge=1, description="samples of the space (x every grid combination)")
    metric: str = "val_miou"
    mode: Literal["min", "max"] = "max"
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    max_concurrent_trials: int | Literal["auto"] = "auto"
    max_concurrent_cap: int = Field(4, ge=1)
    trial_resources: dict[str, float] = Field(default_factory=lambda: {"cpu": 0.1})
    storage_path: str = "runs/tune"
    catalog: str | None = None
    publish_as: str | None = None
    evaluate_test: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> "StudySpec":
        if any(c in self.name for c in "/\\ "):
            raise ValueError("name must not contain '/', '\\' or spaces")
        if not any(v > 0 for v in self.trial_resources.values()):
            raise ValueError("trial_resources must request > 0 of something (e.g. {cpu: 0.1}): a trial "
                             "that launches a TorchTrainer needs a placement")
        return self

    @property
    def trial_cpu(self) -> float:
        """The CPUs a trial's own placement holds (``trial_resources`` keys are case-insensitive)."""
        return float({k.lower(): v for k, v in self.trial_resources.items()}.get("cpu", 0.0))


# --------------------------------------------------------------------------------------------


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = d
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"space/overrides: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def load_study(path: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[StudySpec, dict[str, Any]]:
    """The study spec and its base job mapping (relative paths resolved against the spec's folder)."""
    spec = load_spec(StudySpec, path, overrides)
    job_path = resolve_relative(path, spec.job) if "://" not in path else spec.job
    base = load_yaml(job_path)
    for k, v in spec.overrides.items():
        _set(base, k, v)
    # validate the base job and every listed value of the space now (not inside a trial)
    base_job = parse_job(copy.deepcopy(base), source=f"{job_path} (base of {path})")
    for key, p in spec.space.items():
        for v in (p.grid or p.choice or []):
            probe = copy.deepcopy(base)
            _set(probe, key, v)
            try:
                parse_job(probe, source=f"{path}: space.{key}={v!r}")
            except ConfigError as e:
                raise ConfigError(str(e)) from None
    del base_job
    return spec, base


def trial_job(base: dict[str, Any], params: dict[str, Any], study: str, trial_id: str, trials_dir: str):
    from medray.training.launcher import resolve_paths

    data = copy.deepcopy(base)
    for k, v in params.items():
        _set(data, k, v)
    _set(data, "run.name", f"{study}-{trial_id}")
    _set(data, "run.storage_path", trials_dir)
    _set(data, "run.catalog", None)
    return resolve_paths(parse_job(data, source=f"trial {trial_id}"))


def _trainable(config: dict[str, Any], base: dict[str, Any], study: str, trials_dir: str, trial_cpu: float = 0.0,
               concurrency: int = 1) -> None:
    """One trial: a full Ray Train run of the base job with this trial's parameters."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from medray.training.launcher import build_trainer, method_module

    trial_id = tune.get_context().get_trial_id()
    if concurrency == 1:  # before any Ray Data work of this trial: its reads need that CPU
        _release_stale_worker_groups()
    job = trial_job(base, config, study, trial_id, trials_dir)
    module = method_module(job)
    datasets, meta = module.build_datasets(job)
    run_uri = storage.join(storage.to_uri(trials_dir), job.run.name)
    storage.write_json(storage.join(run_uri, "trial.json"),
                       {"trial_id": trial_id, "params": config, "job": job.model_dump(mode="json"), "meta": meta},
                       job.storage.s3)
    print(f"[medray] trial {trial_id}: {config}", file=sys.stderr, flush=True)
    # the trial's own placement and the other concurrent trials share the cluster with this one's
    # workers; one CPU stays free for Ray Data (else the trial's reads starve and it hangs)
    trainer = build_trainer(job, module.train_loop_per_worker, datasets, meta, name=job.run.name,
                            callbacks=[TuneReportCallback()], reserved_cpus=trial_cpu, share=concurrency)
    result = trainer.fit()
    if result.error is not None:
        raise MedrayError(f"trial {trial_id}: training failed: {result.error}")


def _job_placement_groups() -> set[str]:
    """Ids of the live placement groups of this process's Ray job."""
    import ray
    from ray.util.placement_group import placement_group_table

    job = ray.get_runtime_context().get_job_id()
    return {k for k, v in placement_group_table().items() if v.get("state") != "REMOVED" and k.endswith(job)}


def _release_placement_groups(ids: set[str], why: str) -> None:
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for pg_id in sorted(ids):
        try:
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
            print(f"[medray] removed placement group {pg_id[:12]} left by a trial ({why})", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - already gone
            print(f"[medray] could not remove placement group {pg_id}: {e}", file=sys.stderr)


def _release_stale_worker_groups() -> None:
    """Remove the worker placement groups earlier trials of this study left behind.

    Ray 2.60's Train V2 inside a Tune trial keeps its worker placement group alive when Tune stops the
    trial (at ``max_t`` or by ASHA) before Train shuts down: its PlacementGroupCleaner needs the State
    API, which an embedded cluster without a dashboard lacks. On a small cluster the next trial's Ray
    Data reads then wait forever for that CPU. Called only when trials run one at a time: every live
    placement group of this job (the Tune driver's) other than this trial's own is such a leftover.
    :func:`run_study` removes what the last trial left the same way."""
    from ray.util import get_current_placement_group

    own = get_current_placement_group()
    own_id = own.id.hex() if own is not None else None
    _release_placement_groups(_job_placement_groups() - {own_id}, "before the next trial")


def auto_concurrency(spec: StudySpec, base: dict[str, Any]) -> int:
    """Trials whose Train workers fit the cluster next to one CPU for Ray Data (and the cap)."""
    import ray

    from medray.training.launcher import worker_cpus

    res = ray.cluster_resources()
    sc = base.get("scaling", {}) or {}
    n = int(sc.get("num_workers", 1))
    trial_cpu = spec.trial_cpu
    total = float(res.get("CPU", 1.0))
    # the launcher lowers the per-worker request the same way (one trial alone on the cluster)
    cpus = worker_cpus(n, float(sc.get("cpus_per_worker", 1.0)), total, trial_cpu)
    per_trial = n * cpus + trial_cpu
    k = int(max(1.0, total - 1) // per_trial) if per_trial > 0 else 1
    gpus = float(res.get("GPU", 0.0))
    if gpus and sc.get("use_gpu", "auto") in (True, "auto"):
        k = min(k, int(gpus // (n * float(sc.get("gpus_per_worker", 1.0)))) or k)
    return max(1, min(k, spec.max_concurrent_cap))


def run_study(path: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Entry point of ``medray tune``: search, leaderboard, publish the best, score it on held-out data."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from medray.training.launcher import ensure_ray

    spec, base = load_study(path, overrides)
    study_uri = storage.join(storage.to_uri(spec.storage_path), spec.name)
    trials_dir = storage.join(study_uri, "trials")
    ensure_ray()
    epochs = int((base.get("optim") or {}).get("epochs", 10))
    max_t = spec.scheduler.max_t or epochs
    sched = (ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=spec.scheduler.grace_period,
                           reduction_factor=spec.scheduler.reduction_factor)
             if spec.scheduler.type == "asha" else FIFOScheduler())
    concurrency = spec.max_concurrent_trials if spec.max_concurrent_trials != "auto" else auto_concurrency(spec, base)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, base=base, study=spec.name, trials_dir=trials_dir,
                             trial_cpu=spec.trial_cpu,
                             concurrency=concurrency),
        {k.lower(): v for k, v in spec.trial_resources.items()})
    tune_root = storage.to_uri(spec.storage_path)
    exp_path = storage.join(tune_root, spec.name, "tune")
    space = {k: p.to_tune() for k, p in spec.space.items()}
    print(f"[medray] tune study {spec.name}: {len(space)} knobs, {spec.num_samples} sample(s), "
          f"{spec.scheduler.type} (grace {spec.scheduler.grace_period}, max_t {max_t}), "
          f"{concurrency} concurrent trial(s); -> {study_uri}", file=sys.stderr, flush=True)
    t0 = time.time()
    if tune.Tuner.can_restore(exp_path):
        print(f"[medray] restoring the study from {exp_path} (unfinished trials resume)", file=sys.stderr)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                                        scheduler=sched, max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(name="tune", storage_path=storage.join(tune_root, spec.name), verbose=0),
        )
    before = _job_placement_groups()
    grid = tuner.fit()
    _release_placement_groups(_job_placement_groups() - before, "after the study")
    board = leaderboard(grid, spec, max_t)
    write_leaderboard(board, spec, study_uri)
    ok = [r for r in board if r["best"] is not None and not math.isnan(r["best"])]
    if not ok:
        raise MedrayError(f"tune study {spec.name}: no trial reported {spec.metric} "
                          f"(errors: {[r['error'] for r in board if r['error']]})")
    best = ok[0]
    out: dict[str, Any] = {"study": spec.name, "study_uri": study_uri, "trials": len(board),
                           "concurrency": concurrency, "seconds": round(time.time() - t0, 1),
                           "best": {k: best[k] for k in ("trial_id", "params", "best", "epochs")},
                           "leaderboard": storage.join(study_uri, "leaderboard.png")}
    out.update(finish_best(spec, best, board, trials_dir, study_uri))
    storage.write_json(storage.join(study_uri, "study.json"), out)
    return out


def leaderboard(grid, spec: StudySpec, max_t: int) -> list[dict[str, Any]]:
    rows = []
    for r in grid:
        df = r.metrics_dataframe
        best = None
        if df is not None and spec.metric in getattr(df, "columns", []):
            col = df[spec.metric].dropna()
            if len(col):
                best = float(col.max() if spec.mode == "max" else col.min())
        m = r.metrics or {}
        epochs = int(df["epoch"].max()) if df is not None and "epoch" in getattr(df, "columns", []) else 0
        status = ("error" if r.error else "done" if epochs >= max_t else "stopped early" if epochs
                  else "no result (interrupted before its first epoch)")
        rows.append({"trial_id": m.get("trial_id") or os.path.basename(str(r.path)).split("_")[1]
                     if r.path else "?", "params": dict(r.config or {}), "best": best, "epochs": epochs,
                     "status": status, "error": str(r.error).splitlines()[0][:200] if r.error else None})
    sign = -1 if spec.mode == "max" else 1
    rows.sort(key=lambda x: (x["best"] is None or math.isnan(x["best"]), sign * (x["best"] or 0.0)))
    for i, x in enumerate(rows):
        x["rank"] = i + 1
    return rows


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_leaderboard(board: list[dict[str, Any]], spec: StudySpec, study_uri: str) -> None:
    from medray.evaluation import plots

    keys = list(spec.space)
    head = ["rank", "trial_id", *keys, spec.metric, "epochs", "status"]
    lines = [",".join(head)]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in board:
        vals = [str(r["rank"]), r["trial_id"], *[_short(r["params"].get(k)) for k in keys],
                "n/a" if r["best"] is None else f"{r['best']:.4f}", str(r["epochs"]), r["status"]]
        lines.append(",".join(vals))
        md.append("| " + " | ".join(vals) + " |")
    storage.write_text(storage.join(study_uri, "leaderboard.csv"), "\n".join(lines) + "\n")
    storage.write_text(storage.join(study_uri, "leaderboard.md"), "\n".join(md) + "\n")
    storage.write_json(storage.join(study_uri, "leaderboard.json"), board)
    print("[medray] leaderboard:\n" + "\n".join(md), file=sys.stderr, flush=True)

    def label(r):
        p = r["params"]
        return f"#{r['rank']} " + " ".join(_short(p.get(k)).replace("oct_", "") for k in keys)

    values = {label(r): r["best"] for r in board}
    best = label(board[0]) if board and board[0]["best"] is not None else None
    plots.plot_bar(values, ylabel=spec.metric, title=f"{spec.name}: candidates by best {spec.metric}",
                   highlight=best, path=storage.join(study_uri, "leaderboard.png"))


def _best_checkpoint_dir(run_uri: str, metric: str, mode: str) -> tuple[str, dict[str, Any]]:
    best: tuple[str, float, dict] | None = None
    for d in storage.listdir(run_uri):
        if not storage.basename(d).startswith("epoch_"):
            continue
        mpath = storage.join(d, "meta.json")
        if not storage.exists(mpath):
            continue
        m = storage.read_json(mpath).get("metrics", {})
        v = m.get(metric)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if best is None or (v > best[1] if mode == "max" else v < best[1]):
            best = (d, float(v), m)
    if best is None:
        raise MedrayError(f"{run_uri}: no checkpoint reports {metric}")
    return best[0], best[2]


def finish_best(spec: StudySpec, best: dict[str, Any], board: list[dict[str, Any]], trials_dir: str,
                study_uri: str) -> dict[str, Any]:
    """Publish the best trial's best checkpoint (with its IoU table) and score it on held-out data."""
    from medray.config import parse_job
    from medray.training.launcher import method_module

    run_uri = storage.join(storage.to_uri(trials_dir), f"{spec.name}-{best['trial_id']}")
    info = storage.read_json(storage.join(run_uri, "trial.json"))
    job = parse_job(info["job"], source=f"{run_uri}/trial.json")
    meta = info["meta"]
    module = method_module(job)
    ckpt_dir, metrics = _best_checkpoint_dir(run_uri, spec.metric, spec.mode)
    weights = storage.read_bytes(storage.join(ckpt_dir, "model.safetensors"))
    out: dict[str, Any] = {"best_checkpoint": ckpt_dir, "best_metrics": {k: v for k, v in metrics.items()
                                                                         if isinstance(v, (int, float))}}
    test = None
    if spec.evaluate_test and hasattr(module, "held_out_test"):
        test = module.held_out_test(job, meta, weights, study_uri)
        if test:
            out["test"] = {k: v for k, v in test.items() if k.startswith("test_")}
    if spec.catalog:
        from medray.catalog import Catalog

        card = module.card_for(job, meta, metrics)
        card["name"] = spec.publish_as or spec.name
        card["description"] = (f"Best of tune study {spec.name} ({len(board)} candidates): "
                               f"{best['params']}; {card.get('description', '')}")
        if test:
            card["metrics"].update({k: v for k, v in test.items() if k.startswith("test_") and isinstance(v, float)
                                    and not math.isnan(v)})
        card.setdefault("extra", {})
        card["extra"]["selection"] = {"study": spec.name, "trial_id": best["trial_id"], "params": best["params"],
                                      "metric": spec.metric, "leaderboard": [
                                          {k: r[k] for k in ("rank", "trial_id", "params", "best", "epochs", "status")}
                                          for r in board]}
        card["source"] = {"method": job.method, "job": job.run.name, "run": run_uri, "study": study_uri}
        catalog = resolve_catalog(spec.catalog)
        pub = Catalog(catalog, s3=job.storage.s3).publish(card, {"weights": weights})
        out["published"] = f"{pub.name}:{pub.version}"
        out["catalog"] = catalog
    return out


def resolve_catalog(uri: str) -> str:
    return storage.to_uri(uri) if storage.protocol_of(uri) == "file" else uri
