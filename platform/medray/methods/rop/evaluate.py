"""Evaluation of ROP staging: accuracy, per-class recall, quadratic-weighted kappa (stages are
ordinal), one-vs-rest AUC — all from :mod:`medray.evaluation.metrics` — on the workers (validation,
every epoch, student and teacher), on the driver (the test split, with the best student), and the
plot comparing the mean teacher with the supervised-only baseline across labelled shares.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


def staging_metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], prefix: str = "") -> dict[str, Any]:
    """Metrics of stage predictions ``probs`` (N, C) against stages ``y`` (N,)."""
    from medray.evaluation import metrics as M

    n_cls = len(classes)
    if len(y) == 0:
        return {f"{prefix}n": 0, f"{prefix}acc": math.nan, f"{prefix}kappa": math.nan, f"{prefix}auc": math.nan}
    p = np.asarray(probs, np.float64)
    y = np.asarray(y, np.int64)
    pred = p.argmax(1)
    prf = M.precision_recall_f1(y, pred, n_cls)
    per_auc, auc = M.roc_auc_ovr(y, p)
    out: dict[str, Any] = {
        f"{prefix}n": int(len(y)),
        f"{prefix}loss": float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)))),
        f"{prefix}acc": M.accuracy(y, pred),
        f"{prefix}bal_acc": float(M.balanced_accuracy(y, pred, n_cls)),
        f"{prefix}kappa": float(M.cohen_kappa(y, pred, n_cls, weights="quadratic")),
        f"{prefix}auc": float(auc),
    }
    for k, name in enumerate(classes):
        out[f"{prefix}recall_{name}"] = float(np.asarray(prf["recall"])[k])
        out[f"{prefix}auc_{name}"] = float(per_auc[k])
    return out


def evaluate_shard(w, model, it, label: str, classes: Sequence[str], bs: int, prefix: str = "val_") -> dict[str, Any]:
    """Validation over the whole (unsplit) set: batch k runs on worker ``k % world``; predictions are
    gathered so the metrics are computed on every row exactly once. Every worker gets the result."""
    import torch
    import torch.nn.functional as F

    from medray.data.transforms import normalize

    was_training = model.training
    model.eval()
    probs, ys = [], []
    with torch.no_grad():
        for k, batch in enumerate(it.iter_batches(batch_size=bs, batch_format="numpy")):
            if k % w.world != w.rank:
                continue
            x = normalize(torch.from_numpy(np.ascontiguousarray(batch["image"])).to(w.device))
            with w.autocast():
                logits = model(w.to_input(x))
            probs.append(F.softmax(logits.float(), 1).cpu().numpy())
            ys.append(np.asarray(batch[label], np.int64))
    n_cls = len(classes)
    parts = w.gather((np.concatenate(probs) if probs else np.zeros((0, n_cls), np.float32),
                      np.concatenate(ys) if ys else np.zeros(0, np.int64)))
    model.train(was_training)
    p = np.concatenate([a for a, _ in parts])
    y = np.concatenate([b for _, b in parts])
    return staging_metrics(y, p, classes, prefix)


def predict_dataset(model, ds, label: str, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` (CPU, eval) over a decoded Ray dataset on the driver: ``(stages, probs)``."""
    import torch
    import torch.nn.functional as F

    from medray.data.transforms import normalize

    model.eval()
    probs, ys = [], []
    with torch.inference_mode():
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            x = normalize(torch.from_numpy(np.array(batch["image"], copy=True)))
            probs.append(F.softmax(model(x).float(), 1).numpy())
            ys.append(np.asarray(batch[label], np.int64))
    if not ys:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return np.concatenate(ys), np.concatenate(probs)


def plot_confusion(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], title: str, path: str,
                   s3: Any = None) -> None:
    from medray.evaluation import metrics as M
    from medray.evaluation import plots

    cm = M.confusion_matrix(y, probs.argmax(1), len(classes))
    plots.plot_confusion_matrix(cm, list(classes), title=title, path=path, s3=s3)


def summarize_runs(results: list[dict[str, Any]], metric: str = "test_kappa") -> dict[str, Any]:
    """Group ``{"fraction", "mode", "seed", metric}`` rows: mean, std and the paired difference
    (mean teacher - supervised, same fraction and seed) per labelled fraction."""
    by: dict[float, dict[str, dict[int, float]]] = {}
    for r in results:
        by.setdefault(float(r["fraction"]), {}).setdefault(r["mode"], {})[int(r["seed"])] = float(r[metric])
    out: dict[str, Any] = {}
    for f in sorted(by):
        row: dict[str, Any] = {}
        for mode, vals in by[f].items():
            v = np.array(list(vals.values()), np.float64)
            row[mode] = {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0,
                         "n": int(len(v)), "values": [float(x) for x in v]}
        mt, sup = by[f].get("mean_teacher", {}), by[f].get("supervised", {})
        seeds = sorted(set(mt) & set(sup))
        if seeds:
            d = np.array([mt[s] - sup[s] for s in seeds], np.float64)
            se = float(np.nanstd(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan
            row["difference"] = {"mean": float(np.nanmean(d)), "se": se, "n": int(len(d)),
                                 "wins": int((d > 1e-9).sum()), "ties": int((np.abs(d) <= 1e-9).sum()), "values": [float(x) for x in d]}
        out[f"{f:g}"] = row
    return out


def plot_comparison(summary: dict[str, Any], metric: str = "test_kappa", path: str | None = None,
                    s3: Any = None, title: str | None = None) -> bytes:
    """Mean teacher vs supervised-only: ``metric`` (mean +- std over repeats) against the labelled share."""
    from medray.evaluation import plots

    fig = plots.new_figure((6.0, 4.5))
    with plots.style():
        ax = fig.add_subplot(1, 1, 1)
        fr = sorted(float(f) for f in summary)
        for i, (mode, name) in enumerate((("supervised", "supervised only"), ("mean_teacher", "mean teacher (SRC-MT)"))):
            xs = [f for f in fr if mode in summary[f"{f:g}"]]
            if not xs:
                continue
            m = np.array([summary[f"{f:g}"][mode]["mean"] for f in xs])
            s = np.array([summary[f"{f:g}"][mode]["std"] for f in xs])
            st = plots.series_style(i)
            ax.errorbar([100 * f for f in xs], m, yerr=s, marker="o", capsize=4, label=name, color=st["color"])
            for f, v in zip(xs, (summary[f"{f:g}"][mode]["values"] for f in xs)):
                ax.scatter([100 * f] * len(v), v, s=10, alpha=0.4, color=st["color"])
        ax.set_xlabel("labelled share of the training patients (%)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(title or f"ROP staging: mean teacher vs supervised ({metric})")
        ax.legend(loc="lower right")
        return plots.figure_png(fig, path, s3)
