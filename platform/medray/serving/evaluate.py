"""Efficacy of a served plan on a labelled manifest (METHODS.md §3: "model efficacy is evaluated on
labelled sets"): per-model metrics next to the metrics recorded on each card, plus latency
percentiles and throughput, as JSON + PNG plots + a self-contained HTML page.

Two ways in, one scoring code:

* ``POST /evaluate`` (small sets, inside the ingress: rows run through the same plan executor);
* ``medray evaluate-pipeline PRESET MANIFEST`` (:func:`evaluate_over_http`): every image goes through
  ``POST /infer`` of a running app (``--url``), or of an app started for the run, concurrently.

Which manifest column a model is scored against comes from the preset's ``evaluation`` section;
without one, a classifier (``label`` output) is scored against the ``label`` column.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import os
import time
from typing import Any, Awaitable, Callable

import numpy as np

from medray.catalog.card import ModelCard
from medray.catalog.planner import Plan
from medray.catalog.presets import EvalSpec, Preset
from medray.errors import MedrayError


def load_rows(manifest: str, split: str = "test", limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``split`` (or ``all``) of a manifest, with its class list under ``_classes``."""
    from medray.data import manifest as mf

    inf = mf.info(manifest)
    table = mf.read_manifest(manifest)
    rows = [r for r in table.to_pylist() if split == "all" or r.get("split") == split]
    if not rows:
        raise MedrayError(f"{manifest}: no rows in split {split!r} (use --split all?)")
    rows = rows[:limit] if limit else rows
    for r in rows:
        r["_classes"] = inf.classes
    return rows


def eval_specs(plan: Plan, cards: dict[str, ModelCard], preset: Preset | None) -> dict[str, EvalSpec]:
    specs = dict(preset.evaluation) if preset else {}
    for n in plan.nodes:
        if n.name not in specs and "label" in n.outputs and cards[n.name].labels:
            specs[n.name] = EvalSpec(column="label", output="label")
    return {k: v for k, v in specs.items() if k in cards}


def _truth_name(value: Any, classes: list[str], labels: list[str]) -> Any:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        names = classes or labels
        if 0 <= int(value) < len(names):
            return names[int(value)]
    return value


def score(rows: list[dict[str, Any]], results: list[dict[str, Any]], plan: Plan,
          cards: dict[str, ModelCard], preset: Preset | None) -> dict[str, Any]:
    """Per-model metrics from executor results (one per row) against the manifest labels."""
    from medray.evaluation import metrics as M

    out: dict[str, Any] = {}
    for name, spec in eval_specs(plan, cards, preset).items():
        card = cards[name]
        truth, pred, scores = [], [], []
        ran = 0
        for row, res in zip(rows, results):
            m = (res or {}).get("models", {}).get(name, {})
            if m.get("status") != "ok":
                continue
            ran += 1
            t = row.get(spec.column)
            if t is None:
                continue
            outs = m["outputs"]
            truth.append(_truth_name(t, row.get("_classes") or [], card.labels) if spec.kind == "classification" else float(t))
            pred.append(outs.get(spec.output))
            scores.append(outs.get("score"))
        entry: dict[str, Any] = {"ref": plan.node(name).ref, "column": spec.column, "output": spec.output, "n": len(truth),
                                 "ran": ran, "card_metrics": {k: v for k, v in card.metrics.items()
                                                              if isinstance(v, (int, float)) and not isinstance(v, bool)}}
        if truth and spec.kind == "classification":
            names = list(card.labels) or sorted({str(x) for x in truth + pred})
            idx = {n: i for i, n in enumerate(names)}
            keep = [i for i, (t, p) in enumerate(zip(truth, pred)) if t in idx and p in idx]
            yt = np.array([idx[truth[i]] for i in keep], np.int64)
            yp = np.array([idx[pred[i]] for i in keep], np.int64)
            if len(yt):
                entry["accuracy"] = M.accuracy(yt, yp)
                entry["balanced_accuracy"] = M.balanced_accuracy(yt, yp, n_classes=len(names))
                entry["confusion_matrix"] = M.confusion_matrix(yt, yp, n_classes=len(names)).tolist()
                entry["classes"] = names
                sc = [scores[i] for i in keep]
                if len(names) == 2 and all(isinstance(s, (int, float)) for s in sc) and len(set(yt.tolist())) == 2:
                    entry["auc"] = M.roc_auc(yt, np.array(sc, np.float64))
        elif truth:
            p = np.array([float(x) if x is not None else np.nan for x in pred])
            t = np.array(truth, np.float64)
            ok = np.isfinite(p)
            entry["mae"] = float(np.mean(np.abs(p[ok] - t[ok]))) if ok.any() else None
            entry["bias"] = float(np.mean(p[ok] - t[ok])) if ok.any() else None
        out[name] = entry
    return out


def latency_summary(latencies_s: list[float], wall_s: float) -> dict[str, Any]:
    a = np.array(latencies_s, np.float64) * 1e3
    if not len(a):
        return {"n": 0}
    return {"n": int(len(a)), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "max_ms": float(a.max()),
            "wall_s": float(wall_s), "throughput_per_s": float(len(a) / wall_s) if wall_s > 0 else None}


async def evaluate_rows(rows: list[dict[str, Any]],
                        one: Callable[[dict[str, Any]], Awaitable[tuple[dict[str, Any], float]]],
                        plan: Plan, deployed: list[ModelCard], preset: Preset | None,
                        concurrency: int = 8) -> dict[str, Any]:
    """Run ``one(row) -> (executor result, seconds)`` over the rows with bounded concurrency."""
    sem = asyncio.Semaphore(concurrency)
    errors: list[str] = []

    async def guarded(row):
        async with sem:
            try:
                return await one(row)
            except Exception as e:  # noqa: BLE001 - an unreadable row is counted, not fatal
                errors.append(f"{row.get('image')}: {type(e).__name__}: {e}"[:300])
                return None, None

    t0 = time.time()
    pairs = await asyncio.gather(*(guarded(r) for r in rows))
    wall = time.time() - t0
    results = [p[0] for p in pairs]
    cards = {c.name: c for c in deployed}
    return build_report(rows, results, [p[1] for p in pairs if p[1] is not None], wall, plan, cards, preset, errors)


def build_report(rows, results, latencies, wall, plan: Plan, cards, preset, errors) -> dict[str, Any]:
    status: dict[str, int] = {}
    for r in results:
        if r:
            status[r["status"]] = status.get(r["status"], 0) + 1
    return {"preset": plan.preset, "stages": plan.stages, "rows": len(rows), "status": status,
            "errors": errors[:20], "n_errors": len(errors), "models": score(rows, results, plan, cards, preset),
            "latency": latency_summary(latencies, wall)}


def write_report(report: dict[str, Any], out_dir: str, latencies_s: list[float] | None = None) -> dict[str, str]:
    """``report.json``, ``latency.png``, ``metrics.png`` and ``report.html`` (PNG embedded) in ``out_dir``."""
    from medray.evaluation import plots

    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "report.json"), "html": os.path.join(out_dir, "report.html")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=2, default=float)
    figs: dict[str, bytes] = {}
    if latencies_s:
        fig = plots.new_figure()
        ax = fig.axes[0] if fig.axes else fig.add_subplot(111)
        ax.hist(np.array(latencies_s) * 1e3, bins=30, color="#4477aa")
        ax.set_xlabel("request latency (ms)")
        ax.set_ylabel("requests")
        lat = report["latency"]
        ax.set_title(f"p50 {lat['p50_ms']:.0f} ms  p99 {lat['p99_ms']:.0f} ms  {lat['throughput_per_s']:.1f} img/s")
        figs["latency"] = plots.figure_png(fig, os.path.join(out_dir, "latency.png"))
    bars = {}
    for name, m in report["models"].items():
        for key in ("accuracy", "auc", "balanced_accuracy"):
            if m.get(key) is not None:
                bars[f"{name}\n{key} (served)"] = m[key]
                card_val = next((v for k, v in m["card_metrics"].items() if k.endswith(key.replace("balanced_", "bal_"))
                                 or k.endswith(key)), None)
                if card_val is not None:
                    bars[f"{name}\n{key} (card)"] = card_val
    if bars:
        fig = plots.new_figure((max(6, 1.2 * len(bars)), 4.5))
        ax = fig.axes[0] if fig.axes else fig.add_subplot(111)
        ax.bar(range(len(bars)), list(bars.values()), color=["#4477aa" if "served" in k else "#bbbbbb" for k in bars])
        ax.set_xticks(range(len(bars)), list(bars), fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title("served plan vs card metrics")
        figs["metrics"] = plots.figure_png(fig, os.path.join(out_dir, "metrics.png"))
    imgs = "".join(f'<h2>{k}</h2><img src="data:image/png;base64,{base64.b64encode(v).decode()}">'
                   for k, v in figs.items())
    body = html.escape(json.dumps(report, indent=2, default=float))
    with open(paths["html"], "w") as f:
        f.write(f"<!doctype html><meta charset=utf-8><title>pipeline evaluation: {html.escape(str(report['preset']))}"
                f"</title><h1>Pipeline evaluation: {html.escape(str(report['preset']))}</h1>{imgs}"
                f"<h2>report.json</h2><pre>{body}</pre>")
    for k in figs:
        paths[k] = os.path.join(out_dir, f"{k}.png")
    return paths


def evaluate_over_http(url: str, manifest: str, *, preset: str | None = None, split: str = "test",
                       limit: int | None = None, concurrency: int = 8, api_key: str | None = None,
                       timeout: float = 120.0) -> tuple[dict[str, Any], list[float]]:
    """Send every row's image to ``POST {url}/infer`` (concurrently) and score the answers.

    Returns:
        ``(report, latencies in seconds)``.
    """
    from concurrent.futures import ThreadPoolExecutor

    import requests

    from medray.catalog.planner import Plan as _Plan
    from medray.data.imageio import read_file

    rows = load_rows(manifest, split, limit)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = url.rstrip("/")
    health = requests.get(f"{base}/healthz", timeout=timeout).json()
    data = {"preset": preset} if preset else {}

    def one(row):
        body = read_file(row["image"])
        t0 = time.time()
        r = requests.post(f"{base}/infer", files={"image": (os.path.basename(row["image"]), body)}, data=data,
                          headers=headers, timeout=timeout)
        dt = time.time() - t0
        if r.status_code != 200:
            raise MedrayError(f"{row['image']}: HTTP {r.status_code}: {r.text[:200]}")
        return r.json(), dt

    errors: list[str] = []
    results, lats = [], []
    t0 = time.time()
    with ThreadPoolExecutor(concurrency) as pool:
        futs = [pool.submit(one, r) for r in rows]
        for i, f in enumerate(futs):
            try:
                js, dt = f.result()
                results.append(js["results"][0])
                lats.append(dt)
            except Exception as e:  # noqa: BLE001
                errors.append(str(e)[:300])
                results.append(None)
            if (i + 1) % 20 == 0 or i + 1 == len(futs):
                print(f"evaluate-pipeline: {i + 1}/{len(futs)} images", flush=True)
    wall = time.time() - t0
    plan_req = {"preset": preset} if preset else None
    r = requests.post(f"{base}/plans", json=plan_req or {"models": list(health["models"])}, headers=headers,
                      timeout=timeout)
    if r.status_code != 200:
        raise MedrayError(f"POST /plans: HTTP {r.status_code}: {r.text[:300]}")
    plan = _Plan.model_validate(r.json()["plan"])
    cards = _cards_from_http(base, headers, plan, timeout)
    presets_raw = requests.get(f"{base}/models", headers=headers, timeout=timeout).json().get("presets", {})
    pr = None
    if preset:
        from medray.catalog.presets import find_preset
        try:
            pr = find_preset(preset, _presets_dir())
        except Exception:  # noqa: BLE001 - the server's preset has no evaluation section then
            pr = None
        if pr is None and preset in presets_raw:
            pr = None
    return build_report(rows, results, lats, wall, plan, cards, pr, errors), lats


def _presets_dir() -> str:
    from medray.serving.app import resolve_local

    return resolve_local("serve/presets")


def _cards_from_http(base: str, headers: dict, plan: Plan, timeout: float) -> dict[str, ModelCard]:
    import requests

    rows = requests.get(f"{base}/models", headers=headers, timeout=timeout).json()["models"]
    out = {}
    for m in rows:
        if m["name"] in plan.names:
            out[m["name"]] = ModelCard(name=m["name"], task=m["task"], modality=m["modality"], inputs=m["inputs"],
                                       outputs=m["outputs"], excludes=m["excludes"], metrics=m["metrics"],
                                       labels=m.get("labels") or [])
    return out
