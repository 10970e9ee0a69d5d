"""Metrics for classification, regression and segmentation (pure numpy, float64).

Conventions used throughout
---------------------------
* Class ids are integers ``0..C-1``. Classification scores are either an ``N x C`` array (one column
  per class; ``C == 2`` is binary with column 1 the positive class) or a 1-D array of positive-class
  scores (binary). Rows need not sum to 1 for the ranking metrics (ROC/AUC, PR/AP), so logits work
  there; calibration needs probabilities in ``[0, 1]``.
* Predicted labels from scores (:func:`predict_labels`): binary -> ``score >= threshold`` (default
  0.5) is class 1; multi-class -> argmax (the first maximum on ties).
* A confusion matrix has the TRUE class in rows and the PREDICTED class in columns.
* Inputs may be numpy arrays, lists, or CPU tensors (anything with ``.detach().cpu().numpy()``).

Edge cases (one rule everywhere)
--------------------------------
* **Invalid input raises** :class:`MetricInputError` (a ``ValueError``): empty input, mismatched
  lengths, wrong dimensions, non-finite values, labels outside ``0..C-1``, probabilities outside
  ``[0, 1]`` where probabilities are required.
* **Undefined-but-valid returns NaN**: any 0/0 -- recall/sensitivity or AUC/AP of a class absent from
  ``y_true``; precision of a class never predicted; specificity without negatives; Pearson/Spearman of
  a constant series (or fewer than 2 points); kappa when both raters are constant and agree; IoU/Dice
  of a class absent from both truth and prediction; empty calibration bins.
* **Averages skip NaN**: macro precision/recall/F1/AUC/AP, balanced accuracy and mean IoU/Dice are the
  mean over the classes whose value is defined; they are NaN only when no class is defined.
* The ``*_report`` functions and ``Meter.compute()`` return JSON-able dicts (Python ``int``/``float``/
  ``list``) with NaN written as ``None``; everything else returns numpy values with NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from scipy.stats import rankdata

from medray.errors import MedrayError

__all__ = [
    "MetricInputError",
    "to_jsonable",
    "predict_labels",
    "confusion_matrix",
    "accuracy",
    "balanced_accuracy",
    "precision_recall_f1",
    "roc_curve",
    "roc_auc",
    "roc_auc_ovr",
    "precision_recall_curve",
    "average_precision",
    "average_precision_ovr",
    "calibration",
    "cohen_kappa",
    "sensitivity_specificity",
    "downsample_curve",
    "classification_report",
    "ClassificationMeter",
    "mae",
    "rmse",
    "bias",
    "pearson_r",
    "spearman_rho",
    "regression_report",
    "segmentation_confusion",
    "iou_dice_from_confusion",
    "segmentation_report_from_confusion",
    "segmentation_report",
    "SegmentationMeter",
]


class MetricInputError(MedrayError, ValueError):
    """Input a metric cannot be computed from (empty, mismatched, out of range, non-finite)."""


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    """Array view of ``x``; tensors are detached and moved to the CPU without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(y: Any, name: str = "y_true", n_classes: int | None = None) -> np.ndarray:
    """1-D int64 class ids, validated against ``n_classes`` when given."""
    a = _to_numpy(y)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise MetricInputError(f"{name}: expected a 1-D array of class ids, got shape {a.shape}")
    if a.size == 0:
        raise MetricInputError(f"{name}: empty input")
    if a.dtype == bool:
        a = a.astype(np.int64)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise MetricInputError(f"{name}: class ids must be finite integers")
        a = a.astype(np.int64)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.int64, copy=False)
    else:
        raise MetricInputError(f"{name}: class ids must be integers, got dtype {a.dtype}")
    if a.min() < 0 or (n_classes is not None and a.max() >= n_classes):
        hi = "" if n_classes is None else f"..{n_classes - 1}"
        raise MetricInputError(f"{name}: class ids must be in 0{hi}; found {a.min()}..{a.max()}")
    return a


def _floats(x: Any, name: str, ndim: int | tuple[int, ...] = 1) -> np.ndarray:
    a = _to_numpy(x).astype(np.float64, copy=False)
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if a.ndim not in dims:
        raise MetricInputError(f"{name}: expected {' or '.join(f'{d}-D' for d in dims)}, got shape {a.shape}")
    if a.size == 0:
        raise MetricInputError(f"{name}: empty input")
    if not np.all(np.isfinite(a)):
        raise MetricInputError(f"{name}: contains NaN or infinite values")
    return a


def _scores(probs: Any) -> tuple[np.ndarray, bool]:
    """``(P, was_1d)``: an ``N x C`` float64 score matrix; a 1-D score ``s`` becomes ``[1 - s, s]``."""
    p = _floats(probs, "probs", (1, 2))
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 1:
        return np.stack([1.0 - p, p], axis=1), True
    if p.shape[1] < 2:
        raise MetricInputError(f"probs: need at least 2 columns, got shape {p.shape}")
    return p, False


def _prepare(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """Validated ``(y, P, was_1d)`` with ``len(y) == len(P)`` and ``y < C``."""
    p, was_1d = _scores(probs)
    y = _labels(y_true, "y_true", p.shape[1])
    if len(y) != len(p):
        raise MetricInputError(f"y_true has {len(y)} samples but probs has {len(p)}")
    return y, p, was_1d


def _binary(y_true: Any, scores: Any, pos_label: int) -> tuple[np.ndarray, np.ndarray]:
    """``(is_positive bool array, scores float64)`` for the binary curve functions."""
    y = _labels(y_true, "y_true")
    s = _floats(scores, "scores", 1)
    if len(y) != len(s):
        raise MetricInputError(f"y_true has {len(y)} samples but scores has {len(s)}")
    return y == pos_label, s


def _div(num: Any, den: Any) -> np.ndarray:
    """Elementwise ``num / den`` in float64 with 0/0 (and x/0) -> NaN, without warnings."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    ok = ~np.isnan(a)
    return float(a[ok].mean()) if ok.any() else math.nan


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays and tuples to JSON types; NaN and +-inf become ``None``.

    Args:
        obj: Any nesting of dicts, lists, tuples, numpy arrays/scalars and Python scalars.

    Returns:
        The same structure made of ``dict``/``list``/``str``/``int``/``float``/``bool``/``None``,
        safe for ``json.dumps(..., allow_nan=False)``. Dict keys become strings.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


# --------------------------------------------------------------------------------------------------
# classification: labels
# --------------------------------------------------------------------------------------------------


def predict_labels(probs: Any, threshold: float | None = 0.5) -> np.ndarray:
    """Hard class ids from scores.

    Args:
        probs: ``N x C`` scores or 1-D positive-class scores.
        threshold: Binary only (1-D or ``C == 2``): class 1 when ``score >= threshold``. ``None`` uses
            the argmax for binary too. Ignored for ``C > 2``.

    Returns:
        int64 array of shape ``(N,)``.
    """
    p, _ = _scores(probs)
    if p.shape[1] == 2 and threshold is not None:
        return (p[:, 1] >= threshold).astype(np.int64)
    return np.argmax(p, axis=1).astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int | None = None) -> np.ndarray:
    """Confusion matrix ``M[i, j]`` = number of samples of true class ``i`` predicted as ``j``.

    Args:
        y_true: True class ids, shape ``(N,)``.
        y_pred: Predicted class ids, shape ``(N,)``.
        n_classes: Number of classes ``C``; default ``max(y_true, y_pred) + 1``.

    Returns:
        int64 array ``C x C``.
    """
    yt = _labels(y_true, "y_true", n_classes)
    yp = _labels(y_pred, "y_pred", n_classes)
    if len(yt) != len(yp):
        raise MetricInputError(f"y_true has {len(yt)} samples but y_pred has {len(yp)}")
    c = int(n_classes) if n_classes is not None else int(max(yt.max(), yp.max())) + 1
    return np.bincount(yt * c + yp, minlength=c * c).reshape(c, c).astype(np.int64)


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of samples with ``y_pred == y_true``."""
    cm = confusion_matrix(y_true, y_pred)
    return float(np.trace(cm) / cm.sum())


def balanced_accuracy(y_true: Any, y_pred: Any, n_classes: int | None = None) -> float:
    """Mean per-class recall over the classes PRESENT in ``y_true``.

    ``(1/|K|) * sum_{k in K} TP_k / (TP_k + FN_k)`` with ``K`` the classes that occur in ``y_true``
    (a class absent from ``y_true`` has undefined recall and is skipped; predictions of it still
    count as errors for the true class).
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    return _nanmean(_div(np.diag(cm), cm.sum(axis=1)))


def precision_recall_f1(y_true: Any, y_pred: Any, n_classes: int | None = None) -> dict[str, np.ndarray]:
    """Per-class precision, recall, specificity, F1 and support.

    Per class ``k`` (one-vs-rest counts TP, FP, FN, TN from the confusion matrix):
    ``precision = TP/(TP+FP)`` (NaN if ``k`` is never predicted), ``recall = TP/(TP+FN)`` (NaN if
    ``k`` is absent from ``y_true``), ``specificity = TN/(TN+FP)``, ``F1 = 2TP/(2TP+FP+FN)`` (the
    harmonic mean of precision and recall where both exist; 0 when ``k`` is in one of truth and
    prediction but never correct; NaN only when ``k`` is in neither).

    Returns:
        ``{"precision", "recall", "specificity", "f1", "support"}``: arrays of shape ``(C,)``;
        ``support`` (int64) is the number of true samples per class.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    return {
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "support": cm.sum(axis=1).astype(np.int64),
    }


def cohen_kappa(
    y_true: Any,
    y_pred: Any,
    n_classes: int | None = None,
    weights: Literal["quadratic", "linear"] | None = "quadratic",
) -> float:
    """Cohen's kappa, by default quadratic-weighted (for ordinal stages such as ROP 0..3).

    With observed confusion ``O`` (``C x C``), expected ``E_ij = (row_i * col_j) / N`` and disagreement
    weights ``w_ij = ((i - j) / (C - 1))**2`` (quadratic), ``|i - j| / (C - 1)`` (linear) or
    ``1[i != j]`` (unweighted)::

        kappa = 1 - sum(w * O) / sum(w * E)

    Class ids are taken as ordered stages ``0 < 1 < ... < C-1``.

    Returns:
        kappa in ``[-1, 1]``; NaN when ``sum(w * E) == 0`` (both raters constant on the same class).
    """
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    c = cm.shape[0]
    if c < 2:
        return math.nan
    i, j = np.indices((c, c))
    if weights == "quadratic":
        w = ((i - j) / (c - 1)) ** 2
    elif weights == "linear":
        w = np.abs(i - j) / (c - 1)
    elif weights is None:
        w = (i != j).astype(np.float64)
    else:
        raise MetricInputError(f"weights must be 'quadratic', 'linear' or None, got {weights!r}")
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / cm.sum()
    den = float((w * expected).sum())
    if den == 0.0:
        return math.nan
    return float(1.0 - (w * cm).sum() / den)


def sensitivity_specificity(
    y_true: Any, scores: Any, threshold: float = 0.5, pos_label: int = 1
) -> dict[str, float]:
    """Operating point of a binary test: positive when ``score >= threshold``.

    ``sensitivity = TP/(TP+FN)``, ``specificity = TN/(TN+FP)``, ``ppv = TP/(TP+FP)``,
    ``npv = TN/(TN+FN)``; each NaN when its denominator is 0.

    Args:
        y_true: Class ids; ``pos_label`` is the positive (diseased) class, every other id negative.
        scores: 1-D score for the positive class (e.g. ``probs[:, k]``).
        threshold: Decision threshold.
        pos_label: The positive class id.

    Returns:
        ``{"threshold", "sensitivity", "specificity", "ppv", "npv", "tp", "fp", "tn", "fn"}``.
    """
    pos, s = _binary(y_true, scores, pos_label)
    called = s >= threshold
    tp = int(np.sum(called & pos))
    fp = int(np.sum(called & ~pos))
    fn = int(np.sum(~called & pos))
    tn = int(np.sum(~called & ~pos))
    return {
        "threshold": float(threshold),
        "sensitivity": float(_div(tp, tp + fn)),
        "specificity": float(_div(tn, tn + fp)),
        "ppv": float(_div(tp, tp + fp)),
        "npv": float(_div(tn, tn + fn)),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


# --------------------------------------------------------------------------------------------------
# classification: ranking curves
# --------------------------------------------------------------------------------------------------


def _threshold_counts(pos: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative ``(tp, fp, thresholds)`` at each distinct score, thresholds descending.

    Samples with equal scores enter together (one step), which is what makes the trapezoidal area
    under the ROC curve equal to the Mann-Whitney statistic with ties counted 1/2.
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    pos_sorted = pos[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tp = np.cumsum(pos_sorted, dtype=np.float64)[last_of_group]
    fp = (last_of_group + 1).astype(np.float64) - tp
    return tp, fp, s_sorted[last_of_group]


def roc_curve(y_true: Any, scores: Any, pos_label: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic of a binary score.

    One point per distinct score ``t`` (descending): ``tpr = TP(t)/P``, ``fpr = FP(t)/N`` counting
    ``score >= t`` as positive, preceded by ``(0, 0)`` at threshold ``+inf``. Tied scores give one
    diagonal step.

    Args:
        y_true: Class ids; ``pos_label`` is positive, all others negative.
        scores: 1-D scores, higher = more likely positive.
        pos_label: The positive class id.

    Returns:
        ``(fpr, tpr, thresholds)``, each of length ``n_distinct + 1``; ``tpr`` is all NaN without
        positives, ``fpr`` all NaN without negatives.
    """
    pos, s = _binary(y_true, scores, pos_label)
    tp, fp, thr = _threshold_counts(pos, s)
    tp = np.r_[0.0, tp]
    fp = np.r_[0.0, fp]
    return _div(fp, fp[-1]), _div(tp, tp[-1]), np.r_[np.inf, thr]


def roc_auc(y_true: Any, scores: Any, pos_label: int = 1) -> float:
    """Area under the ROC curve, computed exactly as the Mann-Whitney statistic.

    ``AUC = (R_pos - P(P+1)/2) / (P * N)`` with ``R_pos`` the sum of the positives' ranks among all
    scores (ties get their average rank). Equivalently the probability that a random positive scores
    above a random negative, ties counting 1/2; equal to the trapezoidal area of :func:`roc_curve`.

    Returns:
        AUC in ``[0, 1]``; NaN when ``y_true`` has no positives or no negatives.
    """
    pos, s = _binary(y_true, scores, pos_label)
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s, method="average")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(y_true: Any, probs: Any) -> tuple[np.ndarray, float]:
    """One-vs-rest AUC per class and their unweighted (macro) mean.

    Class ``k``'s AUC is :func:`roc_auc` of ``probs[:, k]`` with class ``k`` positive. For binary input
    the two per-class values are equal and the macro is that value.

    Returns:
        ``(per_class (C,), macro)``; classes absent from ``y_true`` (or equal to all of it) are NaN
        and skipped by the macro mean.
    """
    y, p, _ = _prepare(y_true, probs)
    per = np.array([roc_auc(y, p[:, k], pos_label=k) for k in range(p.shape[1])])
    return per, _nanmean(per)


def precision_recall_curve(
    y_true: Any, scores: Any, pos_label: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve of a binary score, in order of increasing recall.

    One point per distinct score ``t`` (descending): ``precision = TP/(TP+FP)``, ``recall = TP/P``,
    preceded by the conventional start ``(recall 0, precision 1)`` at threshold ``+inf``.

    Returns:
        ``(precision, recall, thresholds)``, each of length ``n_distinct + 1``; recall is NaN
        without positives.
    """
    pos, s = _binary(y_true, scores, pos_label)
    tp, fp, thr = _threshold_counts(pos, s)
    precision = np.r_[1.0, tp / (tp + fp)]
    recall = np.r_[0.0, _div(tp, tp[-1])]
    return precision, recall, np.r_[np.inf, thr]


def average_precision(y_true: Any, scores: Any, pos_label: int = 1) -> float:
    """Average precision: the step-wise area under the PR curve, without interpolation.

    ``AP = sum_k (R_k - R_{k-1}) * P_k`` over the distinct thresholds in descending order, with
    ``R_0 = 0`` (the definition of scikit-learn's ``average_precision_score``). Tied scores enter as
    one step.

    Returns:
        AP in ``[0, 1]``; NaN when ``y_true`` has no positives.
    """
    precision, recall, _ = precision_recall_curve(y_true, scores, pos_label)
    if np.isnan(recall[-1]):
        return math.nan
    return float(np.sum(np.diff(recall) * precision[1:]))


def average_precision_ovr(y_true: Any, probs: Any) -> tuple[np.ndarray, float]:
    """One-vs-rest average precision per class and the macro mean (NaN classes skipped)."""
    y, p, _ = _prepare(y_true, probs)
    per = np.array([average_precision(y, p[:, k], pos_label=k) for k in range(p.shape[1])])
    return per, _nanmean(per)


def downsample_curve(x: Any, y: Any, max_points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` evenly spaced points of a curve, always keeping the first and last.

    Args:
        x: Curve abscissae (e.g. FPR).
        y: Curve ordinates (e.g. TPR), same length.
        max_points: Upper bound on the number of points kept (>= 2).

    Returns:
        ``(x, y)`` subsampled, order preserved.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if max_points < 2:
        raise MetricInputError("max_points must be >= 2")
    if len(x) <= max_points:
        return x, y
    idx = np.unique(np.round(np.linspace(0, len(x) - 1, max_points)).astype(np.int64))
    return x[idx], y[idx]


# --------------------------------------------------------------------------------------------------
# classification: calibration
# --------------------------------------------------------------------------------------------------


def calibration(
    y_true: Any,
    probs: Any,
    n_bins: int = 10,
    kind: Literal["auto", "positive", "top_label"] = "auto",
) -> dict[str, Any]:
    """Reliability bins and expected calibration error (ECE).

    Per sample a confidence ``c_i`` and an outcome ``o_i`` in {0, 1}:

    * ``"positive"`` (binary): ``c_i`` = predicted probability of class 1, ``o_i = 1[y_i == 1]``;
      the diagram then reads "of the cases given ~30 %, how many were positive?".
    * ``"top_label"``: ``c_i = max_k p_ik``, ``o_i = 1[argmax_k p_ik == y_i]`` (Guo et al. 2017).
    * ``"auto"``: ``"positive"`` for binary input, ``"top_label"`` for ``C > 2``.

    ``[0, 1]`` is split into ``n_bins`` equal-width bins, left-closed ``[lo, hi)`` except the last,
    which also holds 1.0. For bin ``b`` with ``n_b`` samples, ``conf_b`` = mean ``c_i`` and ``acc_b`` =
    mean ``o_i``::

        ECE = sum_b (n_b / N) * |acc_b - conf_b|        MCE = max_b |acc_b - conf_b|  (non-empty b)

    Returns:
        ``{"kind", "n_bins", "edges" (n_bins+1,), "confidence" (n_bins,), "accuracy" (n_bins,),
        "count" (n_bins,), "ece", "mce"}``; an empty bin has NaN confidence and accuracy.

    Raises:
        MetricInputError: When a score is outside ``[0, 1]`` (calibration needs probabilities).
    """
    y, p, _ = _prepare(y_true, probs)
    if n_bins < 1:
        raise MetricInputError("n_bins must be >= 1")
    if p.min() < 0.0 or p.max() > 1.0:
        raise MetricInputError("calibration needs probabilities in [0, 1]; got scores outside it")
    binary = p.shape[1] == 2
    if kind == "auto":
        kind = "positive" if binary else "top_label"
    if kind == "positive":
        if not binary:
            raise MetricInputError("kind='positive' needs binary input (C == 2)")
        conf = p[:, 1]
        outcome = (y == 1).astype(np.float64)
    elif kind == "top_label":
        conf = p.max(axis=1)
        outcome = (np.argmax(p, axis=1) == y).astype(np.float64)
    else:
        raise MetricInputError(f"kind must be 'auto', 'positive' or 'top_label', got {kind!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], conf, side="right")
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    conf_b = _div(np.bincount(idx, weights=conf, minlength=n_bins), count)
    acc_b = _div(np.bincount(idx, weights=outcome, minlength=n_bins), count)
    gap = np.abs(acc_b - conf_b)
    nonempty = count > 0
    ece = float(np.sum(count[nonempty] * gap[nonempty]) / len(y))
    return {
        "kind": kind,
        "n_bins": int(n_bins),
        "edges": edges,
        "confidence": conf_b,
        "accuracy": acc_b,
        "count": count,
        "ece": ece,
        "mce": float(gap[nonempty].max()),
    }


# --------------------------------------------------------------------------------------------------
# classification: report and meter
# --------------------------------------------------------------------------------------------------


def classification_report(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str] | None = None,
    *,
    threshold: float = 0.5,
    n_bins: int = 10,
    curve_points: int = 0,
) -> dict[str, Any]:
    """Every classification metric in one JSON-able dict.

    Args:
        y_true: True class ids ``(N,)``.
        probs: ``N x C`` probabilities/scores, or 1-D positive-class scores (binary).
        class_names: ``C`` display names; default ``"0".."C-1"``.
        threshold: Binary decision threshold on the positive-class score (see :func:`predict_labels`).
        n_bins: Calibration bins.
        curve_points: 0 (default) leaves the ROC/PR curves out; ``> 0`` adds them under ``"curves"``
            downsampled to at most that many points per curve.

    Returns:
        A dict with ``n``, ``n_classes``, ``class_names``, ``threshold`` (binary) or ``None``,
        ``accuracy``, ``balanced_accuracy``, ``kappa`` (unweighted), ``kappa_quadratic``,
        ``confusion_matrix`` (rows true, columns predicted), ``per_class`` ({name: {support, precision,
        recall, specificity, f1, auc, average_precision}}), ``macro`` ({precision, recall, f1, auc,
        average_precision}), ``binary`` (binary only: auc, average_precision, prevalence and the
        :func:`sensitivity_specificity` operating point), ``calibration`` ({kind, n_bins, ece, mce,
        bins: {edges, confidence, accuracy, count}}, or ``None`` when the scores are not
        probabilities in ``[0, 1]``) and optionally ``curves``. NaN is written as ``None``.
    """
    y, p, _ = _prepare(y_true, probs)
    c = p.shape[1]
    names = [str(n) for n in class_names] if class_names is not None else [str(k) for k in range(c)]
    if len(names) != c:
        raise MetricInputError(f"class_names has {len(names)} names but probs has {c} classes")
    binary = c == 2
    y_pred = predict_labels(p, threshold if binary else None)
    cm = confusion_matrix(y, y_pred, c)
    prf = precision_recall_f1(y, y_pred, c)
    auc, auc_macro = roc_auc_ovr(y, p)
    ap, ap_macro = average_precision_ovr(y, p)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "n_classes": c,
        "class_names": names,
        "threshold": float(threshold) if binary else None,
        "accuracy": float(np.trace(cm) / cm.sum()),
        "balanced_accuracy": _nanmean(prf["recall"]),
        "kappa": cohen_kappa(y, y_pred, c, weights=None),
        "kappa_quadratic": cohen_kappa(y, y_pred, c, weights="quadratic"),
        "confusion_matrix": cm,
        "per_class": {
            names[k]: {
                "support": int(prf["support"][k]),
                "precision": prf["precision"][k],
                "recall": prf["recall"][k],
                "specificity": prf["specificity"][k],
                "f1": prf["f1"][k],
                "auc": auc[k],
                "average_precision": ap[k],
            }
            for k in range(c)
        },
        "macro": {
            "precision": _nanmean(prf["precision"]),
            "recall": _nanmean(prf["recall"]),
            "f1": _nanmean(prf["f1"]),
            "auc": auc_macro,
            "average_precision": ap_macro,
        },
    }
    if binary:
        out["binary"] = {
            "auc": auc[1],
            "average_precision": ap[1],
            "prevalence": float(np.mean(y == 1)),
            **sensitivity_specificity(y, p[:, 1], threshold=threshold, pos_label=1),
        }
    if p.min() >= 0.0 and p.max() <= 1.0:
        cal = calibration(y, p, n_bins=n_bins)
        out["calibration"] = {
            "kind": cal["kind"],
            "n_bins": cal["n_bins"],
            "ece": cal["ece"],
            "mce": cal["mce"],
            "bins": {k: cal[k] for k in ("edges", "confidence", "accuracy", "count")},
        }
    else:
        out["calibration"] = None
    if curve_points > 0:
        curves: dict[str, Any] = {}
        for k in range(1, 2) if binary else range(c):
            fpr, tpr, _ = roc_curve(y, p[:, k], pos_label=k)
            prec, rec, _ = precision_recall_curve(y, p[:, k], pos_label=k)
            fpr, tpr = downsample_curve(fpr, tpr, curve_points)
            rec, prec = downsample_curve(rec, prec, curve_points)
            curves[names[k]] = {"roc": {"fpr": fpr, "tpr": tpr}, "pr": {"recall": rec, "precision": prec}}
        out["curves"] = curves
    return to_jsonable(out)


class ClassificationMeter:
    """Accumulates labels and scores over batches, then computes :func:`classification_report`.

    ``N x C`` floats are small (a million 4-class samples is 32 MB), so batches are kept and
    concatenated; use :meth:`merge` to combine meters from several workers.

    Example:
        >>> meter = ClassificationMeter(class_names=["normal", "disease"])
        >>> for y, p in batches:  # doctest: +SKIP
        ...     meter.update(y, p)
        >>> meter.compute()["binary"]["auc"]  # doctest: +SKIP
    """

    def __init__(self, class_names: Sequence[str] | None = None) -> None:
        """Create an empty meter.

        Args:
            class_names: Passed to :func:`classification_report` by :meth:`compute`.
        """
        self.class_names = list(class_names) if class_names is not None else None
        self._y: list[np.ndarray] = []
        self._p: list[np.ndarray] = []

    def update(self, y_true: Any, probs: Any) -> None:
        """Add one batch: ``y_true`` ``(B,)`` and ``probs`` ``B x C`` or ``(B,)`` (same C every batch)."""
        y, p, _ = _prepare(y_true, probs)
        if self._p and p.shape[1] != self._p[0].shape[1]:
            raise MetricInputError(f"batch has {p.shape[1]} classes, earlier batches {self._p[0].shape[1]}")
        self._y.append(y)
        self._p.append(p)

    def merge(self, other: ClassificationMeter) -> None:
        """Append everything ``other`` has accumulated (e.g. from another worker)."""
        for y, p in zip(other._y, other._p):
            self.update(y, p)

    def reset(self) -> None:
        """Forget all batches."""
        self._y.clear()
        self._p.clear()

    def __len__(self) -> int:
        """Number of samples accumulated."""
        return int(sum(len(y) for y in self._y))

    @property
    def y_true(self) -> np.ndarray:
        """All labels so far, ``(N,)`` int64."""
        if not self._y:
            raise MetricInputError("ClassificationMeter: no batches")
        return np.concatenate(self._y)

    @property
    def probs(self) -> np.ndarray:
        """All scores so far, ``N x C`` (1-D positive-class scores ``s`` are stored as ``[1 - s, s]``)."""
        if not self._p:
            raise MetricInputError("ClassificationMeter: no batches")
        return np.concatenate(self._p)

    def compute(self, **kwargs: Any) -> dict[str, Any]:
        """:func:`classification_report` of everything accumulated (keyword arguments forwarded).

        Raises:
            MetricInputError: When no batch was added.
        """
        return classification_report(self.y_true, self.probs, self.class_names, **kwargs)


# --------------------------------------------------------------------------------------------------
# regression
# --------------------------------------------------------------------------------------------------


def _pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = _floats(y_true, "y_true", 1)
    p = _floats(y_pred, "y_pred", 1)
    if len(t) != len(p):
        raise MetricInputError(f"y_true has {len(t)} values but y_pred has {len(p)}")
    return t, p


def mae(y_true: Any, y_pred: Any) -> float:
    """Mean absolute error ``mean(|y_pred - y_true|)``."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(p - t)))


def rmse(y_true: Any, y_pred: Any) -> float:
    """Root mean squared error ``sqrt(mean((y_pred - y_true)**2))``."""
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def bias(y_true: Any, y_pred: Any) -> float:
    """Mean error ``mean(y_pred - y_true)``: positive = over-estimation (e.g. retinal age gap > 0)."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(p - t))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return math.nan
    da = a - a.mean()
    db = b - b.mean()
    den = math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db)))
    if den == 0.0:
        return math.nan
    return float(np.clip(np.dot(da, db) / den, -1.0, 1.0))


def pearson_r(y_true: Any, y_pred: Any) -> float:
    """Pearson correlation ``sum(dx dy) / sqrt(sum(dx^2) sum(dy^2))`` (``dx = x - mean(x)``).

    Returns:
        r in ``[-1, 1]``; NaN when either series is constant or has fewer than 2 values.
    """
    return _pearson(*_pair(y_true, y_pred))


def spearman_rho(y_true: Any, y_pred: Any) -> float:
    """Spearman rank correlation: Pearson r of the ranks, ties given their average rank.

    Returns:
        rho in ``[-1, 1]``; NaN when either series is constant or has fewer than 2 values.
    """
    t, p = _pair(y_true, y_pred)
    return _pearson(rankdata(t, method="average"), rankdata(p, method="average"))


def regression_report(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """``{"n", "mae", "rmse", "bias", "pearson_r", "spearman_rho"}`` as a JSON-able dict (NaN -> None)."""
    t, p = _pair(y_true, y_pred)
    return to_jsonable(
        {
            "n": len(t),
            "mae": mae(t, p),
            "rmse": rmse(t, p),
            "bias": bias(t, p),
            "pearson_r": pearson_r(t, p),
            "spearman_rho": spearman_rho(t, p),
        }
    )


# --------------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------------


def _mask(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x)
    if a.dtype == bool:
        a = a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise MetricInputError(f"{name}: masks must hold integer class ids, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False).ravel()


def segmentation_confusion(
    pred: Any, true: Any, n_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Pixel confusion matrix ``M[i, j]`` = pixels of true class ``i`` predicted as ``j``.

    Args:
        pred: Predicted class-id mask(s), any shape (e.g. ``H x W`` or ``B x H x W``).
        true: True class-id mask(s), same shape as ``pred``.
        n_classes: Number of classes ``C``.
        ignore_index: Pixels whose TRUE value equals it are skipped (padding, unlabelled). It may lie
            outside ``0..C-1`` (e.g. 255, -1) or be a class id (e.g. 0 = unlabelled); see
            :func:`iou_dice_from_confusion` for how a class id is then treated.

    Returns:
        int64 array ``C x C`` (all zeros when every pixel is ignored; reports then raise).

    Raises:
        MetricInputError: Shape mismatch, non-integer masks, or (non-ignored) values outside ``0..C-1``.
    """
    p_arr = _to_numpy(pred)
    t_arr = _to_numpy(true)
    if p_arr.shape != t_arr.shape:
        raise MetricInputError(f"pred shape {p_arr.shape} != true shape {t_arr.shape}")
    p = _mask(p_arr, "pred")
    t = _mask(t_arr, "true")
    if ignore_index is not None:
        keep = t != ignore_index
        p = p[keep]
        t = t[keep]
    c = int(n_classes)
    if t.size:
        if t.min() < 0 or t.max() >= c:
            raise MetricInputError(
                f"true: class ids must be in 0..{c - 1} (or ignore_index); found {t.min()}..{t.max()}"
            )
        if p.min() < 0 or p.max() >= c:
            raise MetricInputError(f"pred: class ids must be in 0..{c - 1}; found {p.min()}..{p.max()}")
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def iou_dice_from_confusion(
    cm: Any, ignore_index: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU and Dice from a pixel confusion matrix.

    ``IoU_k = TP/(TP+FP+FN)``, ``Dice_k = 2TP/(2TP+FP+FN)``. A class absent from both truth and
    prediction has ``TP+FP+FN == 0`` and gets NaN (neither a free 1 nor a 0); a class predicted but
    absent from the truth gets 0 (its false positives are penalised). If ``ignore_index`` is a class id
    ``0..C-1``, that class is not scored: NaN. (Its pixels in the truth were already skipped by
    :func:`segmentation_confusion`; predicting it on a scored pixel still counts as a miss for the
    pixel's true class.)

    Returns:
        ``(iou, dice)``, float64 arrays of shape ``(C,)``.
    """
    m = np.asarray(cm, dtype=np.float64)
    tp = np.diag(m)
    fp = m.sum(axis=0) - tp
    fn = m.sum(axis=1) - tp
    iou = _div(tp, tp + fp + fn)
    dice = _div(2 * tp, 2 * tp + fp + fn)
    if ignore_index is not None and 0 <= ignore_index < len(tp):
        iou[ignore_index] = np.nan
        dice[ignore_index] = np.nan
    return iou, dice


def segmentation_report_from_confusion(
    cm: Any, class_names: Sequence[str] | None = None, ignore_index: int | None = None
) -> dict[str, Any]:
    """Segmentation metrics from an accumulated pixel confusion matrix (JSON-able, NaN -> None).

    ``mean_iou``/``mean_dice`` average over the classes present in the truth or the prediction
    (absent classes are NaN and skipped; an ``ignore_index`` class is never included).
    ``pixel_accuracy = trace / total`` over scored pixels; ``frequency_weighted_iou`` weights each
    class's IoU by its share of true pixels.

    Returns:
        ``{"n_pixels", "n_classes", "class_names", "ignore_index", "pixel_accuracy", "mean_iou",
        "mean_dice", "frequency_weighted_iou", "classes_scored", "per_class": {name: {iou, dice,
        precision, recall, true_pixels, pred_pixels}}, "confusion_matrix"}``.

    Raises:
        MetricInputError: When the matrix is not square or counts no pixel at all.
    """
    m = np.asarray(cm, dtype=np.int64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise MetricInputError(f"confusion matrix must be square C x C, got shape {m.shape}")
    if m.sum() == 0:
        raise MetricInputError("segmentation: no scored pixels (empty masks, or every pixel ignored)")
    c = m.shape[0]
    names = [str(n) for n in class_names] if class_names is not None else [str(k) for k in range(c)]
    if len(names) != c:
        raise MetricInputError(f"class_names has {len(names)} names but there are {c} classes")
    iou, dice = iou_dice_from_confusion(m, ignore_index)
    tp = np.diag(m).astype(np.float64)
    true_px = m.sum(axis=1)
    pred_px = m.sum(axis=0)
    total = int(m.sum())
    scored = ~np.isnan(iou)
    freq = _div(true_px, total)
    fw = float(np.sum(freq[scored] * iou[scored])) if total and scored.any() else math.nan
    return to_jsonable(
        {
            "n_pixels": total,
            "n_classes": c,
            "class_names": names,
            "ignore_index": ignore_index,
            "pixel_accuracy": float(_div(np.trace(m), total)),
            "mean_iou": _nanmean(iou),
            "mean_dice": _nanmean(dice),
            "frequency_weighted_iou": fw,
            "classes_scored": int(scored.sum()),
            "per_class": {
                names[k]: {
                    "iou": iou[k],
                    "dice": dice[k],
                    "precision": float(_div(tp[k], pred_px[k])),
                    "recall": float(_div(tp[k], true_px[k])),
                    "true_pixels": int(true_px[k]),
                    "pred_pixels": int(pred_px[k]),
                }
                for k in range(c)
            },
            "confusion_matrix": m,
        }
    )


def segmentation_report(
    pred: Any,
    true: Any,
    n_classes: int,
    ignore_index: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One-shot :func:`segmentation_report_from_confusion` of masks held in memory.

    For a large validation set use :class:`SegmentationMeter` (same result, streamed).
    """
    cm = segmentation_confusion(pred, true, n_classes, ignore_index)
    return segmentation_report_from_confusion(cm, class_names, ignore_index)


class SegmentationMeter:
    """Streaming segmentation metrics: only a ``C x C`` int64 confusion matrix is kept.

    ``update`` any number of batches of any shape; ``compute`` equals :func:`segmentation_report` of
    all the masks at once (mean IoU over the union of the data, not a mean of per-batch IoUs). Meters of
    several workers combine with :meth:`merge`.

    Example:
        >>> meter = SegmentationMeter(n_classes=15, ignore_index=255)
        >>> for pred, true in batches:  # doctest: +SKIP
        ...     meter.update(pred, true)
        >>> meter.compute()["mean_iou"]  # doctest: +SKIP
    """

    def __init__(
        self,
        n_classes: int,
        ignore_index: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        """Create an empty meter.

        Args:
            n_classes: Number of classes ``C``.
            ignore_index: True-mask value whose pixels are skipped (see :func:`segmentation_confusion`).
            class_names: Display names for :meth:`compute`.
        """
        if n_classes < 1:
            raise MetricInputError("n_classes must be >= 1")
        self.n_classes = int(n_classes)
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.confusion = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)

    def update(self, pred: Any, true: Any) -> None:
        """Add a batch of predicted and true masks (same shape)."""
        self.confusion += segmentation_confusion(pred, true, self.n_classes, self.ignore_index)

    def merge(self, other: SegmentationMeter) -> None:
        """Add another meter's counts (same ``n_classes``)."""
        if other.n_classes != self.n_classes:
            raise MetricInputError(f"cannot merge meters with {other.n_classes} and {self.n_classes} classes")
        self.confusion += other.confusion

    def reset(self) -> None:
        """Zero the counts."""
        self.confusion[:] = 0

    def iou(self) -> np.ndarray:
        """Per-class IoU so far, ``(C,)`` with NaN for absent/ignored classes."""
        return iou_dice_from_confusion(self.confusion, self.ignore_index)[0]

    def dice(self) -> np.ndarray:
        """Per-class Dice so far, ``(C,)`` with NaN for absent/ignored classes."""
        return iou_dice_from_confusion(self.confusion, self.ignore_index)[1]

    def compute(self) -> dict[str, Any]:
        """:func:`segmentation_report_from_confusion` of the counts so far.

        Raises:
            MetricInputError: When no pixel has been scored yet.
        """
        return segmentation_report_from_confusion(self.confusion, self.class_names, self.ignore_index)
