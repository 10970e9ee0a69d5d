"""Every plot function writes a decodable PNG of sensible size; overlays blend exactly."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from medray.evaluation import metrics as M
from medray.evaluation import plots as P

RNG = np.random.default_rng(7)
Y3 = RNG.integers(0, 3, 60)
_L = RNG.normal(size=(60, 3))
_L[np.arange(60), Y3] += 1.2
P3 = np.exp(_L) / np.exp(_L).sum(1, keepdims=True)
YB = RNG.integers(0, 2, 50)
SB = np.clip(0.5 * YB + 0.5 * RNG.random(50), 0, 1)
AGE = RNG.uniform(20, 80, 120)
PRED = AGE + RNG.normal(0, 4, 120)
IMG = (RNG.random((40, 64)) * 255).astype(np.uint8)
MASK = np.repeat(np.arange(5), 8)[:, None].repeat(64, axis=1)

PLOTS = {
    "roc_multiclass": lambda path: P.plot_roc(Y3, P3, ["normal", "stage 1", "stage 2"], path=path),
    "roc_binary": lambda path: P.plot_roc(YB, SB, ["healthy", "disease"], threshold=0.5, path=path),
    "roc_absent_class": lambda path: P.plot_roc(np.r_[Y3[Y3 < 2], 0], np.r_[P3[Y3 < 2], P3[:1]], path=path),
    "pr_multiclass": lambda path: P.plot_pr(Y3, P3, path=path),
    "pr_binary": lambda path: P.plot_pr(YB, SB, path=path),
    "confusion": lambda path: P.plot_confusion_matrix(M.confusion_matrix(Y3, P3.argmax(1)), ["a", "b", "c"],
                                                      path=path),
    "confusion_row_only": lambda path: P.plot_confusion_matrix([[3, 1], [0, 0]], normalize="row", path=path),
    "reliability": lambda path: P.plot_reliability(YB, SB, positive_name="disease", path=path),
    "reliability_top_label": lambda path: P.plot_reliability(Y3, P3, path=path),
    "scatter": lambda path: P.plot_scatter(AGE, PRED, xlabel="Age (years)", ylabel="Retinal age (years)",
                                           path=path),
    "scatter_groups": lambda path: P.plot_scatter(AGE, PRED, groups=np.where(AGE > 50, "old", "young"),
                                                  path=path),
    "histogram": lambda path: P.plot_histogram(PRED - AGE, xlabel="gap", path=path),
    "histogram_groups": lambda path: P.plot_histogram({"dy = 0": PRED[:80] - AGE[:80], "dy > 0": PRED[80:] - AGE[80:]},
                                                      density=True, vlines={"T_a": 1.5}, path=path),
    "bar": lambda path: P.plot_bar({"RNFL": 0.8, "GCL": 0.7, "sclera": None}, ylabel="IoU", limits=(0, 1),
                                   path=path),
    "bar_leaderboard": lambda path: P.plot_bar({f"candidate-{i}": v for i, v in enumerate(RNG.random(10))},
                                               sort="descending", highlight="candidate-3", path=path),
    "curves": lambda path: P.plot_curves({"train": [1.0, 0.6, None, 0.4], "val": ([1, 2, 3, 4], [1.1, 0.8, 0.7, 0.75])},
                                         mark_best="min", logy=True, path=path),
    "curves_panels": lambda path: P.plot_curves({"loss": {"train": [1, 0.5, 0.3]}, "mean IoU": {"val": [0.2, 0.5, 0.6]}},
                                                mark_best={"loss": "min", "mean IoU": "max"}, path=path),
    "image_grid": lambda path: P.image_grid([IMG, P.blend_mask(IMG, MASK), P.blend_heatmap(IMG, RNG.random((5, 8)))],
                                            ["scan", "layers", "heat"], legend=P.class_legend(list("abcde")),
                                            title="Examples", path=path),
}


def test_agg_backend_is_forced():
    assert matplotlib.get_backend().lower() == "agg"


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_plot_writes_a_decodable_png_of_sensible_size(name, tmp_path):
    path = tmp_path / "sub" / f"{name}.png"
    data = PLOTS[name](str(path))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.read_bytes() == data
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.format == "PNG"
    w, h = im.size
    assert 300 <= w <= 3000 and 200 <= h <= 3000, im.size
    assert len(np.unique(np.asarray(im.convert("L")))) > 2  # not a blank canvas
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_blend_mask_formula_and_transparent_background():
    img = np.full((4, 4), 100, np.uint8)
    mask = np.zeros((4, 4), int)
    mask[0, 0], mask[1, 1], mask[2, 2] = 1, 2, 255
    out = P.blend_mask(img, mask, alpha=0.5, ignore_index=255)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[3, 3], [100, 100, 100])  # background kept
    np.testing.assert_array_equal(out[2, 2], [100, 100, 100])  # ignored pixel kept
    colors = P.class_colors(3).astype(float)
    np.testing.assert_array_equal(out[0, 0], np.round(0.5 * 100 + 0.5 * colors[1]))
    np.testing.assert_array_equal(out[1, 1], np.round(0.5 * 100 + 0.5 * colors[2]))
    with pytest.raises(M.MetricInputError, match="shape"):
        P.blend_mask(img, np.zeros((3, 4), int))


def test_class_colours_are_distinct_and_cycle():
    cols = P.class_colors(17)
    assert len({tuple(c) for c in cols[1:]}) == 16
    np.testing.assert_array_equal(P.class_colors(18)[17], cols[1])
    assert list(P.class_legend(["bg", "RNFL", "GCL"])) == ["RNFL", "GCL"]


def test_overlays_keep_native_resolution_and_heatmap_is_resized():
    rgb = np.stack([IMG] * 3, -1)
    for data in (P.overlay_mask(rgb, MASK), P.overlay_heatmap(IMG, RNG.random((5, 8)))):
        im = Image.open(io.BytesIO(data))
        assert im.format == "PNG" and im.size == (64, 40) and im.mode == "RGB"
    cold = P.blend_heatmap(IMG, np.zeros((5, 8)))  # zero heat, alpha by value -> image unchanged
    np.testing.assert_array_equal(cold, np.stack([IMG] * 3, -1))
    chw = P.blend_heatmap(np.stack([IMG] * 3).astype(np.float32) / 255, np.ones((2, 2)), alpha_by_value=False)
    assert chw.shape == (40, 64, 3)


def test_plot_functions_reject_bad_input():
    with pytest.raises(M.MetricInputError):
        P.plot_confusion_matrix([[1, 2, 3]])
    with pytest.raises(M.MetricInputError):
        P.plot_roc(Y3, P3, ["only two", "names"])
    with pytest.raises(M.MetricInputError):
        P.plot_bar({})
