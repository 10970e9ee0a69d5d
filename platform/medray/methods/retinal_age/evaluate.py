"""Evaluation of METHODS.md §1: metrics and the plots a person looks at.

* :func:`age_metrics`: MAE and Pearson r of retinal age against true age, overall and on the ``dy = 0``
  subset, beside ``mae_constant``, the MAE of the best constant prediction (a model that learned no
  age); the age gap (retinal - chronological) for ``dy = 0`` vs ``dy > 0``; with a ``disease`` flag in
  the manifest, the gap for diseased and healthy eyes and ``mae_healthy`` on the disease-free eyes.
* :func:`plot_offsets`: the offset histogram and the per-age response distributions with ``T_a`` and
  ``M_a`` marked (stage 2).
* :func:`plot_predictions`: predicted-vs-true scatter (dy = 0 / dy > 0) and the age-gap histograms.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _gap_stats(gap: np.ndarray) -> dict[str, float]:
    if len(gap) == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan, "std": math.nan}
    return {"n": int(len(gap)), "mean": float(gap.mean()), "median": float(np.median(gap)),
            "std": float(gap.std())}


def age_metrics(age: Any, pred: Any, dy: Any, disease: Any = None) -> dict[str, Any]:
    from medray.evaluation import metrics as M

    age = np.asarray(age, np.float64)
    pred = np.asarray(pred, np.float64)
    dy = np.asarray(dy, np.int64)
    gap = pred - age
    zero = dy == 0
    out: dict[str, Any] = {"n": int(len(age))}
    if len(age) >= 2:
        out["mae"] = M.mae(age, pred)
        out["pearson_r"] = M.pearson_r(age, pred)
        # the reference a model must beat: the best constant prediction (the median age of these rows)
        out["mae_constant"] = M.mae(age, np.full_like(age, np.median(age)))
    if zero.sum() >= 2:
        out["mae_dy0"] = M.mae(age[zero], pred[zero])
        out["pearson_r_dy0"] = M.pearson_r(age[zero], pred[zero])
    out["gap_dy0"] = _gap_stats(gap[zero])
    out["gap_dy_pos"] = _gap_stats(gap[~zero])
    if disease is not None:
        d = np.asarray(disease, np.float64)
        ok = np.isfinite(d)
        h = ok & (d == 0)
        out["gap_disease"] = _gap_stats(gap[ok & (d > 0)])
        out["gap_healthy"] = _gap_stats(gap[h])
        out["gap_disease_minus_healthy"] = out["gap_disease"]["mean"] - out["gap_healthy"]["mean"]
        if h.sum() >= 2:  # the eyes whose retinal age should equal their age
            out["mae_healthy"] = M.mae(age[h], pred[h])
    return out


def plot_offsets(table, stats, out_uri: str, s3: Any = None, max_panels: int = 12) -> list[str]:
    """``offset_hist.png`` and ``responses_by_age.png`` under ``out_uri``; returns their URIs."""
    from medray import storage
    from medray.evaluation import plots

    dy = table["dy"].to_numpy(zero_copy_only=False).astype(np.int64)
    paths = []
    p = storage.join(out_uri, "offset_hist.png")
    plots.plot_histogram(dy, bins=np.arange(-0.5, max(int(dy.max()), 1) + 1.5), xlabel="age offset dy (years)",
                         title=f"Age offsets: {int((dy > 0).sum())} of {len(dy)} shifted", path=p, s3=s3)
    paths.append(p)

    ages = stats.ages[stats.count > 0]
    if len(ages):
        pick = ages[np.unique(np.linspace(0, len(ages) - 1, min(max_panels, len(ages))).round().astype(int))]
        g = table["age_group"].to_numpy(zero_copy_only=False)
        r = table["r"].to_numpy(zero_copy_only=False).astype(np.float64)
        lo, hi = float(np.nanmin(r)), float(np.nanmax(r))
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-3, 21)
        with plots.style():
            n = len(pick)
            cols = min(4, n)
            rows = math.ceil(n / cols)
            fig = plots.new_figure((3.2 * cols, 2.5 * rows))
            for j, a in enumerate(pick):
                ax = fig.add_subplot(rows, cols, j + 1)
                vals = r[g == a]
                i = int(a - stats.ages[0])
                ax.hist(vals, bins=edges, color="0.6")
                ax.axvline(stats.threshold[i], color="#D55E00", linestyle="--", label=f"T={stats.threshold[i]:.2f}")
                ax.axvline(stats.mean[i], color="#0072B2", label=f"M={stats.mean[i]:.2f}")
                ax.set_title(f"age {a} (n={len(vals)}{', pooled T' if stats.pooled[i] else ''})", fontsize=9)
                ax.set_xlabel("response r", fontsize=8)
                ax.legend(fontsize=7)
            fig.suptitle("Classifier responses per age group, threshold T_a and mean M_a")
            fig.tight_layout()
            p = storage.join(out_uri, "responses_by_age.png")
            plots.figure_png(fig, p, s3)
            paths.append(p)
    return paths


def plot_predictions(age: Any, pred: Any, dy: Any, out_uri: str, s3: Any = None, disease: Any = None) -> list[str]:
    from medray import storage
    from medray.evaluation import plots

    age = np.asarray(age, np.float64)
    pred = np.asarray(pred, np.float64)
    dy = np.asarray(dy)
    groups = np.where(dy > 0, "dy > 0", "dy = 0")
    paths = []
    p = storage.join(out_uri, "pred_vs_true.png")
    plots.plot_scatter(age, pred, groups=groups, xlabel="Chronological age (years)",
                       ylabel="Retinal age (years)", title="Retinal age vs chronological age", path=p, s3=s3)
    paths.append(p)
    gap = pred - age
    p = storage.join(out_uri, "age_gap.png")
    hist = {"dy = 0": gap[dy == 0], "dy > 0": gap[dy > 0]}
    if disease is not None:
        d = np.asarray(disease, np.float64)
        hist.update({"disease": gap[d > 0], "no disease": gap[d == 0]})
    plots.plot_histogram(hist, bins=30, density=True, xlabel="age gap: retinal - chronological (years)",
                         title="Age-gap distribution", vlines={"0": 0.0}, path=p, s3=s3)
    paths.append(p)
    return paths
