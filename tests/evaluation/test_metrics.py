"""medray.evaluation.metrics against hand-computed values, brute force and scipy.stats."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from medray.evaluation import metrics as M

# ------------------------------------------------------------------------------------------------
# ranking: ROC / AUC / PR / AP
# ------------------------------------------------------------------------------------------------


def _pairwise_auc(y, s):
    """Brute force: P(score_pos > score_neg) + 0.5 P(equal) over all pairs."""
    pos = [b for a, b in zip(y, s) if a == 1]
    neg = [b for a, b in zip(y, s) if a != 1]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_of_a_known_ranking_is_the_exact_fraction():
    # positives 0.35, 0.8; negatives 0.1, 0.4 -> 3 of 4 pairs ordered correctly
    assert M.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # one tie (0.5 vs 0.5) counts 1/2: (0.5 + 1 + 1 + 1) / 4
    assert M.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == 0.875
    assert M.roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5  # constant scores
    assert M.roc_auc([1, 1, 0], [0.0, 0.1, 0.9]) == 0.0


def test_auc_with_many_ties_equals_pairs_mann_whitney_and_trapezoid():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    s = np.round(rng.random(120) + 0.3 * y, 1)  # heavy ties
    auc = M.roc_auc(y, s)
    assert auc == pytest.approx(_pairwise_auc(y, s), abs=1e-12)
    u = stats.mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert auc == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), abs=1e-12)
    fpr, tpr, thr = M.roc_curve(y, s)
    assert auc == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-12)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert thr[0] == np.inf and np.all(np.diff(thr[1:]) < 0)
    assert len(thr) == len(np.unique(s)) + 1  # one point per distinct score


def test_auc_is_nan_when_a_class_is_missing():
    assert math.isnan(M.roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert math.isnan(M.roc_auc([0, 0], [0.2, 0.5]))
    per, macro = M.roc_auc_ovr([0, 1, 0, 1], np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1],
                                                        [0.6, 0.3, 0.1], [0.3, 0.5, 0.2]]))
    assert math.isnan(per[2])  # class 2 absent from y_true
    assert per[0] == 1.0 and per[1] == 1.0 and macro == 1.0  # macro skips the NaN


def test_ovr_auc_of_binary_scores_matches_positive_class():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = rng.random(60)
    per, macro = M.roc_auc_ovr(y, s)
    assert per[1] == pytest.approx(M.roc_auc(y, s)) and per[0] == pytest.approx(per[1]) and macro == pytest.approx(per[1])


def test_average_precision_hand_values():
    # positives at ranks 1, 3, 4: AP = (1 + 2/3 + 3/4) / 3 = 29/36
    assert M.average_precision([1, 0, 1, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.5]) == pytest.approx(29 / 36)
    # tie at the top: (P=1/2, R=1/2) then (P=2/3, R=1) -> 0.5*0.5 + 0.5*2/3 = 7/12
    assert M.average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(7 / 12)
    assert math.isnan(M.average_precision([0, 0], [0.1, 0.2]))
    prec, rec, thr = M.precision_recall_curve([1, 0, 1], [0.5, 0.5, 0.2])
    np.testing.assert_allclose(prec, [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(rec, [0.0, 0.5, 1.0])


def test_downsample_curve_keeps_ends():
    x = np.linspace(0, 1, 1000)
    xs, ys = M.downsample_curve(x, x**2, 11)
    assert len(xs) == 11 and xs[0] == 0.0 and xs[-1] == 1.0
    np.testing.assert_allclose(ys, xs**2)


# ------------------------------------------------------------------------------------------------
# labels: confusion, accuracy, precision/recall/F1, kappa, operating point
# ------------------------------------------------------------------------------------------------

Y_TRUE = [0, 0, 1, 1, 1, 2]
Y_PRED = [0, 1, 1, 1, 0, 0]  # class 2 never predicted, class 3 in neither


def test_confusion_and_per_class_hand_values():
    cm = M.confusion_matrix(Y_TRUE, Y_PRED, 4)
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert M.accuracy(Y_TRUE, Y_PRED) == 0.5
    # recall 1/2, 2/3, 0 (class 3 absent from y_true: undefined, skipped)
    assert M.balanced_accuracy(Y_TRUE, Y_PRED, 4) == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    r = M.precision_recall_f1(Y_TRUE, Y_PRED, 4)
    np.testing.assert_allclose(r["precision"], [1 / 3, 2 / 3, np.nan, np.nan])
    np.testing.assert_allclose(r["recall"], [1 / 2, 2 / 3, 0.0, np.nan])
    np.testing.assert_allclose(r["f1"], [2 / 5, 2 / 3, 0.0, np.nan])
    np.testing.assert_allclose(r["specificity"], [2 / 4, 2 / 3, 1.0, 1.0])
    np.testing.assert_array_equal(r["support"], [2, 3, 1, 0])


def test_quadratic_kappa_on_a_known_confusion_matrix():
    # cm [[2,1,0],[0,2,1],[0,0,2]]: sum(w*O) = 0.5, sum(w*E) = 20.5/8 -> kappa = 1 - 8/41 = 33/41
    y = [0, 0, 0, 1, 1, 1, 2, 2]
    p = [0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(M.confusion_matrix(y, p), [[2, 1, 0], [0, 2, 1], [0, 0, 2]])
    assert M.cohen_kappa(y, p, 3) == pytest.approx(33 / 41)
    # unweighted on a 2x2: p_o = 3/4, p_e = 1/2 -> 0.5
    assert M.cohen_kappa([0, 0, 1, 1], [0, 1, 1, 1], weights=None) == pytest.approx(0.5)
    # linear weights: explicit formula
    w = np.abs(np.subtract.outer(range(3), range(3))) / 2
    o = M.confusion_matrix(y, p).astype(float)
    e = np.outer(o.sum(1), o.sum(0)) / o.sum()
    assert M.cohen_kappa(y, p, 3, weights="linear") == pytest.approx(1 - (w * o).sum() / (w * e).sum())


def test_kappa_edge_cases():
    assert M.cohen_kappa([0, 1, 2, 2], [0, 1, 2, 2]) == 1.0
    assert M.cohen_kappa([0, 1, 2, 2], [0, 0, 0, 0], 3) == 0.0  # constant rater: chance agreement
    assert math.isnan(M.cohen_kappa([1, 1], [1, 1], 3))  # both constant and agreeing: 0/0
    with pytest.raises(M.MetricInputError):
        M.cohen_kappa([0, 1], [0, 1], weights="cubic")


def test_sensitivity_specificity_at_threshold():
    op = M.sensitivity_specificity([0, 0, 1, 1, 1], [0.2, 0.6, 0.4, 0.7, 0.5], threshold=0.5)
    # called positive: 0.6 (FP), 0.7 (TP), 0.5 (TP, score == threshold counts as positive)
    assert (op["tp"], op["fp"], op["tn"], op["fn"]) == (2, 1, 1, 1)
    assert op["sensitivity"] == pytest.approx(2 / 3) and op["specificity"] == 0.5
    assert op["ppv"] == pytest.approx(2 / 3) and op["npv"] == 0.5
    assert math.isnan(M.sensitivity_specificity([0, 0], [0.1, 0.9])["sensitivity"])


def test_predict_labels_binary_threshold_and_argmax():
    np.testing.assert_array_equal(M.predict_labels([0.2, 0.5, 0.7]), [0, 1, 1])
    np.testing.assert_array_equal(M.predict_labels([0.2, 0.5, 0.7], threshold=0.6), [0, 0, 1])
    np.testing.assert_array_equal(M.predict_labels([[0.1, 0.5, 0.4], [0.6, 0.2, 0.2]]), [1, 0])


# ------------------------------------------------------------------------------------------------
# calibration
# ------------------------------------------------------------------------------------------------


def test_ece_positive_class_constructed_case():
    # 4 cases at 0.25 with 1 positive (gap 0), 4 at 0.75 with 2 positives (gap 0.25) -> ECE 0.125
    p = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0] + [1, 1, 0, 0]
    cal = M.calibration(y, p, n_bins=4)
    assert cal["kind"] == "positive"
    assert cal["ece"] == pytest.approx(0.125) and cal["mce"] == pytest.approx(0.25)
    np.testing.assert_array_equal(cal["count"], [0, 4, 0, 4])  # bins [0,.25) [.25,.5) [.5,.75) [.75,1]
    np.testing.assert_allclose(cal["accuracy"], [np.nan, 0.25, np.nan, 0.5])
    np.testing.assert_allclose(cal["confidence"], [np.nan, 0.25, np.nan, 0.75])


def test_ece_top_label_constructed_case():
    # 5 rows with confidence 0.65, 3 correct (gap 0.05); 5 at 0.9, 4 correct (gap 0.1) -> ECE 0.075
    probs = np.array([[0.65, 0.25, 0.1]] * 5 + [[0.9, 0.05, 0.05]] * 5)
    y = [0, 0, 0, 1, 2] + [0, 0, 0, 0, 1]
    cal = M.calibration(y, probs, n_bins=10)
    assert cal["kind"] == "top_label"
    assert cal["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.1)
    assert cal["count"].sum() == 10 and cal["count"][6] == 5 and cal["count"][9] == 5


def test_calibration_edges_and_errors():
    cal = M.calibration([1, 0, 1], [1.0, 0.0, 1.0], n_bins=5)
    assert cal["count"][0] == 1 and cal["count"][-1] == 2 and cal["ece"] == 0.0
    with pytest.raises(M.MetricInputError, match="probabilities"):
        M.calibration([0, 1], [-0.5, 2.0])


# ------------------------------------------------------------------------------------------------
# report and meter
# ------------------------------------------------------------------------------------------------


def _three_class(n=90, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


def test_classification_report_is_strict_json_and_consistent():
    y, p = _three_class()
    rep = M.classification_report(y, p, ["normal", "stage 1", "stage 2"])
    back = json.loads(json.dumps(rep, allow_nan=False))
    assert back == rep
    assert rep["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    assert rep["per_class"]["stage 1"]["auc"] == pytest.approx(M.roc_auc(y, p[:, 1], pos_label=1))
    assert rep["macro"]["recall"] == pytest.approx(rep["balanced_accuracy"])
    assert rep["kappa_quadratic"] == pytest.approx(M.cohen_kappa(y, p.argmax(1), 3))
    assert rep["calibration"]["ece"] == pytest.approx(M.calibration(y, p)["ece"])
    assert "binary" not in rep and "curves" not in rep and rep["threshold"] is None
    with_curves = M.classification_report(y, p, curve_points=15)
    assert set(with_curves["curves"]) == {"0", "1", "2"}
    assert len(with_curves["curves"]["1"]["roc"]["fpr"]) <= 15


def test_classification_report_absent_class_is_null_and_binary_block():
    y = np.array([0, 0, 1, 1, 0])
    p = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.9, 0.05, 0.05]])
    rep = M.classification_report(y, p)
    assert rep["per_class"]["2"]["recall"] is None and rep["per_class"]["2"]["auc"] is None
    assert rep["per_class"]["2"]["support"] == 0
    s = np.array([0.1, 0.8, 0.7, 0.4, 0.2])
    one_d = M.classification_report(y, s, ["healthy", "disease"])
    two_col = M.classification_report(y, np.stack([1 - s, s], 1), ["healthy", "disease"])
    assert one_d == two_col
    assert one_d["binary"]["auc"] == pytest.approx(M.roc_auc(y, s))
    # positives 0.7 (hit), 0.4 (miss); negatives 0.1, 0.8 (false alarm), 0.2
    assert one_d["binary"]["sensitivity"] == 0.5 and one_d["binary"]["specificity"] == pytest.approx(2 / 3)
    logits = M.classification_report(y, np.stack([-s * 3, s * 3], 1))
    assert logits["calibration"] is None  # scores that are not probabilities


def test_classification_meter_equals_one_shot_and_merges():
    y, p = _three_class(120)
    a, b = M.ClassificationMeter(["a", "b", "c"]), M.ClassificationMeter(["a", "b", "c"])
    for i in range(0, 80, 20):
        a.update(y[i:i + 20], p[i:i + 20])
    b.update(y[80:], p[80:])
    a.merge(b)
    assert len(a) == 120
    assert a.compute() == M.classification_report(y, p, ["a", "b", "c"])
    with pytest.raises(M.MetricInputError, match="classes"):
        a.update([0], [[0.5, 0.5]])
    with pytest.raises(M.MetricInputError, match="no batches"):
        M.ClassificationMeter().compute()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.roc_auc([], []), "empty"),
        (lambda: M.roc_auc([0, 1], [0.1]), "samples"),
        (lambda: M.roc_auc([0, 1], [0.1, np.nan]), "NaN"),
        (lambda: M.classification_report([0, 3], [[0.5, 0.5], [0.5, 0.5]]), "class ids"),
        (lambda: M.classification_report([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["x"]), "class_names"),
        (lambda: M.confusion_matrix([0.5, 1], [0, 1]), "integers"),
        (lambda: M.mae([], []), "empty"),
        (lambda: M.segmentation_confusion(np.zeros((2, 2), int), np.zeros((2, 3), int), 2), "shape"),
        (lambda: M.segmentation_confusion(np.full((2, 2), 5), np.zeros((2, 2), int), 2), "pred"),
        (lambda: M.segmentation_confusion(np.zeros((2, 2)), np.zeros((2, 2), int), 2), "integer"),
    ],
)
def test_invalid_input_raises_a_metric_input_error(call, match):
    with pytest.raises(M.MetricInputError, match=match):
        call()
    assert issubclass(M.MetricInputError, ValueError)


def test_tensor_like_inputs_are_detached_to_numpy():
    class FakeTensor:
        def __init__(self, a):
            self.a = np.asarray(a)

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a

    assert M.roc_auc(FakeTensor([0, 0, 1, 1]), FakeTensor([0.1, 0.4, 0.35, 0.8])) == 0.75


def test_to_jsonable_replaces_nan_and_numpy_types():
    out = M.to_jsonable({"a": np.float32(np.nan), 1: np.arange(2), "b": (np.int64(3), np.inf, True)})
    assert out == {"a": None, "1": [0, 1], "b": [3, None, True]}
    json.dumps(out, allow_nan=False)


# ------------------------------------------------------------------------------------------------
# regression
# ------------------------------------------------------------------------------------------------


def test_regression_hand_values():
    rep = M.regression_report([1, 2, 3, 4], [1, 3, 2, 5])
    assert rep["mae"] == 0.75 and rep["bias"] == 0.25
    assert rep["rmse"] == pytest.approx(math.sqrt(3 / 4))
    assert rep["spearman_rho"] == pytest.approx(0.8)  # d = 0,-1,1,0 -> 1 - 6*2/(4*15)


def test_pearson_and_spearman_with_ties_match_scipy():
    rng = np.random.default_rng(4)
    a = np.round(rng.normal(50, 10, 300))  # ties
    b = np.round(a + rng.normal(0, 6, 300))
    assert M.pearson_r(a, b) == pytest.approx(stats.pearsonr(a, b).statistic, abs=1e-12)
    assert M.spearman_rho(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert M.pearson_r(a, -a) == pytest.approx(-1.0)


def test_correlation_of_a_constant_series_is_nan():
    assert math.isnan(M.pearson_r([1, 2, 3], [5, 5, 5]))
    assert math.isnan(M.spearman_rho([1, 2, 3], [5, 5, 5]))
    assert math.isnan(M.pearson_r([1], [2]))
    assert M.regression_report([1, 2, 3], [5, 5, 5])["pearson_r"] is None


# ------------------------------------------------------------------------------------------------
# segmentation
# ------------------------------------------------------------------------------------------------

TRUE = np.array([[0, 1, 1], [2, 2, 255]])
PRED = np.array([[0, 1, 2], [2, 1, 0]])


def test_iou_dice_hand_values_with_ignore_index():
    cm = M.segmentation_confusion(PRED, TRUE, 3, ignore_index=255)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 1, 1]])  # the 255 pixel is skipped
    iou, dice = M.iou_dice_from_confusion(cm)
    np.testing.assert_allclose(iou, [1.0, 1 / 3, 1 / 3])
    np.testing.assert_allclose(dice, [1.0, 0.5, 0.5])
    rep = M.segmentation_report(PRED, TRUE, 3, ignore_index=255)
    assert rep["mean_iou"] == pytest.approx(5 / 9) and rep["pixel_accuracy"] == pytest.approx(3 / 5)
    assert rep["n_pixels"] == 5


def test_absent_classes_are_skipped_but_false_positives_count():
    rep = M.segmentation_report(PRED, TRUE, 4, ignore_index=255)  # class 3 in neither -> skipped
    assert rep["per_class"]["3"]["iou"] is None and rep["mean_iou"] == pytest.approx(5 / 9)
    assert rep["classes_scored"] == 3
    fp = M.segmentation_report(np.array([[3, 1]]), np.array([[0, 1]]), 4)  # 3 predicted, not true
    assert fp["per_class"]["3"]["iou"] == 0.0 and fp["per_class"]["0"]["iou"] == 0.0
    assert fp["mean_iou"] == pytest.approx((0 + 1 + 0) / 3)


def test_ignore_index_that_is_a_class_id_is_not_scored():
    rep = M.segmentation_report(PRED, np.where(TRUE == 255, 0, TRUE), 3, ignore_index=0)
    assert rep["per_class"]["0"]["iou"] is None
    # scored pixels: (1,1)->1, (1,2)->2, (2,2)->2, (2,1)->1 -> classes 1 and 2 have IoU 1/3
    assert rep["mean_iou"] == pytest.approx(1 / 3)


def test_streaming_meter_equals_one_shot_over_batches_and_workers():
    rng = np.random.default_rng(5)
    true = rng.integers(0, 5, (6, 24, 40))
    pred = np.where(rng.random(true.shape) < 0.6, true, rng.integers(0, 5, true.shape))
    true[:, :3] = 255
    one_shot = M.segmentation_report(pred, true, 5, ignore_index=255, class_names=list("abcde"))
    a = M.SegmentationMeter(5, ignore_index=255, class_names=list("abcde"))
    b = M.SegmentationMeter(5, ignore_index=255, class_names=list("abcde"))
    for i in range(4):
        a.update(pred[i], true[i])
    b.update(pred[4:], true[4:])
    a.merge(b)
    assert a.compute() == one_shot
    np.testing.assert_allclose(a.iou(), [one_shot["per_class"][c]["iou"] for c in "abcde"])
    assert json.loads(json.dumps(one_shot, allow_nan=False)) == one_shot


def test_meter_without_scored_pixels_raises():
    m = M.SegmentationMeter(3, ignore_index=255)
    m.update(np.zeros((2, 2), int), np.full((2, 2), 255))
    with pytest.raises(M.MetricInputError, match="no scored pixels"):
        m.compute()
    with pytest.raises(M.MetricInputError):
        m.merge(M.SegmentationMeter(4))
