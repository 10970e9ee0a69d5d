"""Metrics against hand-computed values, plots as decodable PNGs, and the self-contained report."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from medray.evaluation import metrics as M
from medray.evaluation import plots, report


def test_auc_is_the_mann_whitney_fraction_with_ties_as_half():
    y = [0, 0, 1, 1, 0, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4]
    # positives 0.35, 0.8, 0.4 vs negatives 0.1, 0.4, 0.4: wins 1+0+0, 1+1+1, 1+.5+.5 -> 6/9
    assert M.roc_auc(y, s) == pytest.approx(6 / 9)
    assert math.isnan(M.roc_auc([1, 1], [0.2, 0.3]))


def test_quadratic_kappa_matches_the_formula():
    y = np.array([0, 1, 2, 2, 1, 0, 2, 1])
    p = np.array([0, 2, 2, 1, 1, 0, 2, 0])
    cm = M.confusion_matrix(y, p, 3).astype(float)
    w = np.array([[(i - j) ** 2 / 4 for j in range(3)] for i in range(3)])
    e = np.outer(cm.sum(1), cm.sum(0)) / cm.sum()
    assert M.cohen_kappa(y, p, 3, weights="quadratic") == pytest.approx(1 - (w * cm).sum() / (w * e).sum())


def test_regression_metrics_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    b = a + rng.normal(scale=0.5, size=50)
    assert M.pearson_r(a, b) == pytest.approx(stats.pearsonr(a, b)[0])
    assert M.spearman_rho(a, b) == pytest.approx(stats.spearmanr(a, b)[0])
    assert M.mae(a, b) == pytest.approx(np.abs(a - b).mean())


def test_streaming_segmentation_meter_equals_one_shot():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 4, (3, 16, 16))
    p = np.where(rng.random((3, 16, 16)) < 0.7, t, rng.integers(0, 4, (3, 16, 16)))
    t[0, :2] = 255  # ignored pixels
    cm_all = M.segmentation_confusion(p, t, 4, ignore_index=255)
    cm_parts = sum(M.segmentation_confusion(p[i], t[i], 4, ignore_index=255) for i in range(3))
    np.testing.assert_array_equal(cm_all, cm_parts)
    iou, dice = M.iou_dice_from_confusion(cm_all)[:2]
    inter = np.diag(cm_all)
    np.testing.assert_allclose(iou, inter / (cm_all.sum(0) + cm_all.sum(1) - inter))


def test_plots_are_png_and_report_is_self_contained(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 80)
    p1 = np.clip(y * 0.6 + rng.random(80) * 0.4, 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    rep = M.classification_report(y, probs, ["healthy", "disease"])
    pngs = {
        "roc.png": plots.plot_roc(y, probs, ["healthy", "disease"]),
        "cm.png": plots.plot_confusion_matrix(M.confusion_matrix(y, probs.argmax(1), 2), ["healthy", "disease"]),
        "curves.png": plots.plot_curves({"train_loss": [1.0, 0.6, None, 0.4]}),
    }
    for png in pngs.values():
        im = Image.open(io.BytesIO(png))
        assert im.format == "PNG" and im.size[0] > 200
    uri = report.write_report(str(tmp_path), "Evaluation", rep,
                              images=[(k, v, k) for k, v in pngs.items()], notes=["a note"], classes=["healthy", "disease"])
    page = open(uri).read()
    srcs = re.findall(r"src='([^']+)'", page)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page and "https://" not in page
    assert "<td class='k'>disease</td>" in page and "research use only" in page
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["n"] == 80 and saved["accuracy"] == pytest.approx(rep["accuracy"])
