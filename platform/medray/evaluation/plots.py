"""Evaluation plots as PNG bytes (matplotlib, Agg backend forced at import; no display needed).

Every ``plot_*`` function returns the PNG bytes and, when ``path`` is given, also writes them there
atomically through :mod:`medray.storage` (a local path or any fsspec URI such as ``s3://``). Figures
are built on :class:`matplotlib.figure.Figure` objects, never the global ``pyplot`` state, so the
functions are safe to call from threads (Serve replicas) and leak no open figures.

Colours are colour-blind safe: lines and groups use the Okabe-Ito palette (after 8 series the line
style changes as well), class masks use Okabe-Ito followed by Paul Tol's "muted" set (16 colours,
then repeated), matrices and heatmaps use perceptually uniform maps ("Blues", "viridis").

The image helpers work on numpy arrays: ``H x W`` (grey), ``H x W x 3|4`` or ``3 x H x W`` (tensor
layout); uint8, uint16, bool or float (floats outside ``[0, 1]`` are min-max scaled for display).
:func:`overlay_mask` and :func:`overlay_heatmap` keep the image's native resolution (what serving
returns); :func:`image_grid` makes an annotated figure of several images with titles and a legend.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

import matplotlib

matplotlib.use("Agg", force=True)

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from medray import storage  # noqa: E402
from medray.evaluation import metrics as _m  # noqa: E402

__all__ = [
    "OKABE_ITO",
    "CLASS_COLORS",
    "DPI",
    "style",
    "new_figure",
    "figure_png",
    "series_style",
    "class_colors",
    "class_legend",
    "plot_roc",
    "plot_pr",
    "plot_confusion_matrix",
    "plot_reliability",
    "plot_scatter",
    "plot_histogram",
    "plot_bar",
    "plot_curves",
    "blend_mask",
    "blend_heatmap",
    "encode_png",
    "overlay_mask",
    "overlay_heatmap",
    "image_grid",
]

#: Okabe & Ito (2008) colour-blind-safe qualitative palette, ordered for lines (blue first).
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)

#: Class-mask colours, index = class id. Index 0 (background) is drawn transparent by the overlays;
#: 1..16 are Okabe-Ito (no black) followed by Paul Tol's "muted" set, enough for the 14 OCT layers.
CLASS_COLORS: tuple[str, ...] = (
    "#000000",
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499",
)

_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

#: Resolution of every figure (pixels per inch).
DPI = 120

_RC = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.framealpha": 0.9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.cmap": "viridis",
}

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Context manager applying medray's plot style (font sizes, light grid, no top/right spines)."""
    with matplotlib.rc_context(_RC):
        yield


def _styled(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with style():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(figsize: tuple[float, float] = (6.0, 4.5), **subplots: Any) -> Figure:
    """A standalone Agg figure (not registered with pyplot) with constrained layout.

    Args:
        figsize: Width and height in inches (pixels = inches x :data:`DPI`).
        **subplots: If given (e.g. ``nrows=1, ncols=2``), passed to ``fig.subplots`` for later use.

    Returns:
        The figure; call :func:`figure_png` to render it. Use inside :func:`style` for house style.
    """
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if subplots:
        fig.subplots(**subplots)
    return fig


def figure_png(fig: Figure, path: str | None = None, s3: Any = None) -> bytes:
    """Render ``fig`` to PNG bytes; also write them to ``path`` (local or URI, atomic) when given."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    data = buf.getvalue()
    if path is not None:
        storage.write_bytes(path, data, s3)
    return data


def series_style(i: int) -> dict[str, Any]:
    """``{"color", "linestyle"}`` of the ``i``-th series: Okabe-Ito colours, then new line styles."""
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "linestyle": _LINESTYLES[(i // len(OKABE_ITO)) % 4]}


def class_colors(n_classes: int) -> np.ndarray:
    """``n_classes x 3`` uint8 RGB colours for class ids (index 0 = background, cycled after 16)."""
    n_fg = len(CLASS_COLORS) - 1
    cols = [CLASS_COLORS[0] if k == 0 else CLASS_COLORS[1 + (k - 1) % n_fg] for k in range(n_classes)]
    return np.array([[round(255 * v) for v in to_rgb(c)] for c in cols], dtype=np.uint8).reshape(-1, 3)


def class_legend(class_names: Sequence[str], background: int | None = 0) -> dict[str, str]:
    """``{name: hex colour}`` matching :func:`blend_mask`, for :func:`image_grid`'s ``legend``.

    Args:
        class_names: Names indexed by class id.
        background: Class id left out of the legend (drawn transparent); ``None`` keeps all.
    """
    cols = class_colors(len(class_names))
    return {
        str(n): "#%02x%02x%02x" % tuple(int(v) for v in cols[k])
        for k, n in enumerate(class_names)
        if k != background
    }


def _names(class_names: Sequence[str] | None, c: int) -> list[str]:
    names = [str(n) for n in class_names] if class_names is not None else [f"class {k}" for k in range(c)]
    if len(names) != c:
        raise _m.MetricInputError(f"class_names has {len(names)} names but there are {c} classes")
    return names


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


# --------------------------------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------------------------------


@_styled
def plot_roc(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str] | None = None,
    *,
    title: str = "ROC curve",
    threshold: float | None = None,
    path: str | None = None,
    s3: Any = None,
) -> bytes:
    """ROC curve(s) with the AUC in the legend.

    Binary input (1-D scores or ``C == 2``) draws the positive class; multi-class draws one
    one-vs-rest curve per class and gives the macro AUC in the title. A class absent from ``y_true``
    is listed as "AUC n/a" without a curve.

    Args:
        y_true: True class ids ``(N,)``.
        probs: ``N x C`` scores or 1-D positive-class scores.
        class_names: Display names per class.
        title: Figure title.
        threshold: Binary only: mark the operating point ``score >= threshold``.
        path: Optional local path or URI to write the PNG to.
        s3: Optional S3 options for :mod:`medray.storage`.

    Returns:
        PNG bytes.
    """
    y, p, _ = _m._prepare(y_true, probs)
    c = p.shape[1]
    names = _names(class_names, c)
    fig = new_figure((5.6, 5.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance (AUC = 0.5)")
    classes = [1] if c == 2 else list(range(c))
    aucs = []
    for i, k in enumerate(classes):
        auc = _m.roc_auc(y, p[:, k], pos_label=k)
        aucs.append(auc)
        label = f"{names[k]} (AUC = {_fmt(auc)})"
        if math.isnan(auc):
            ax.plot([], [], label=label + " - absent", **series_style(i))
            continue
        fpr, tpr, _ = _m.roc_curve(y, p[:, k], pos_label=k)
        ax.plot(fpr, tpr, linewidth=1.8, label=label, drawstyle="default", **series_style(i))
    if threshold is not None and c == 2:
        op = _m.sensitivity_specificity(y, p[:, 1], threshold=threshold)
        if not (math.isnan(op["sensitivity"]) or math.isnan(op["specificity"])):
            ax.plot(1 - op["specificity"], op["sensitivity"], "o", color="#D55E00", markersize=7,
                    label=f"threshold {threshold:g}: sens {op['sensitivity']:.2f}, spec {op['specificity']:.2f}")
    if c > 2:
        title = f"{title} (one-vs-rest, macro AUC = {_fmt(_m._nanmean(np.array(aucs)))})"
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", title=title,
           xlabel="False positive rate (1 - specificity)", ylabel="True positive rate (sensitivity)")
    ax.legend(loc="lower right")
    return figure_png(fig, path, s3)


@_styled
def plot_pr(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str] | None = None,
    *,
    title: str = "Precision-recall curve",
    path: str | None = None,
    s3: Any = None,
) -> bytes:
    """Precision-recall curve(s) with the average precision (AP) in the legend.

    Binary input draws the positive class and the prevalence (a no-skill classifier's precision) as a
    dashed line; multi-class draws one one-vs-rest curve per class and the macro AP in the title.

    Args:
        y_true: True class ids ``(N,)``.
        probs: ``N x C`` scores or 1-D positive-class scores.
        class_names: Display names per class.
        title: Figure title.
        path: Optional local path or URI to write the PNG to.
        s3: Optional S3 options for :mod:`medray.storage`.

    Returns:
        PNG bytes.
    """
    y, p, _ = _m._prepare(y_true, probs)
    c = p.shape[1]
    names = _names(class_names, c)
    fig = new_figure((5.6, 5.2))
    ax = fig.add_subplot()
    classes = [1] if c == 2 else list(range(c))
    aps = []
    for i, k in enumerate(classes):
        ap = _m.average_precision(y, p[:, k], pos_label=k)
        aps.append(ap)
        label = f"{names[k]} (AP = {_fmt(ap)})"
        if math.isnan(ap):
            ax.plot([], [], label=label + " - absent", **series_style(i))
            continue
        prec, rec, _ = _m.precision_recall_curve(y, p[:, k], pos_label=k)
        ax.plot(rec, prec, linewidth=1.8, drawstyle="steps-post", label=label, **series_style(i))
    if c == 2:
        prev = float(np.mean(y == 1))
        ax.axhline(prev, color="0.6", linestyle="--", linewidth=1, label=f"no skill (prevalence = {prev:.3f})")
    else:
        title = f"{title} (one-vs-rest, macro AP = {_fmt(_m._nanmean(np.array(aps)))})"
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.03), aspect="equal", title=title,
           xlabel="Recall (sensitivity)", ylabel="Precision (PPV)")
    ax.legend(loc="lower left")
    return figure_png(fig, path, s3)


def _matrix_panel(ax: Any, m: np.ndarray, names: list[str], fmt: Callable[[float], str], title: str,
                  vmax: float | None) -> Any:
    c = m.shape[0]
    shown = np.ma.masked_invalid(m)
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
    ax.grid(False)
    ax.set_xticks(range(c), names, rotation=45 if c > 3 or max(map(len, names)) > 6 else 0, ha="right"
                  if c > 3 or max(map(len, names)) > 6 else "center")
    ax.set_yticks(range(c), names)
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    if c <= 20:
        hi = np.nanmax(m) if np.isfinite(m).any() else 0
        for i in range(c):
            for j in range(c):
                v = m[i, j]
                txt = "-" if not np.isfinite(v) else fmt(v)
                dark = np.isfinite(v) and hi > 0 and v > 0.55 * (vmax if vmax is not None else hi)
                ax.text(j, i, txt, ha="center", va="center", fontsize=8 if c > 8 else 9,
                        color="white" if dark else "black")
    return im


@_styled
def plot_confusion_matrix(
    cm: Any,
    class_names: Sequence[str] | None = None,
    *,
    normalize: Literal["both", "counts", "row"] = "both",
    title: str = "Confusion matrix",
    path: str | None = None,
    s3: Any = None,
) -> bytes:
    """Confusion matrix heatmap: counts and/or row-normalised (each true class sums to 100 %).

    Args:
        cm: ``C x C`` counts, rows = true class, columns = predicted (e.g.
            :func:`medray.evaluation.metrics.confusion_matrix` or a report's ``"confusion_matrix"``).
        class_names: Display names per class.
        normalize: ``"both"`` (two panels side by side), ``"counts"`` or ``"row"``.
        title: Figure title.
        path: Optional local path or URI to write the PNG to.
        s3: Optional S3 options for :mod:`medray.storage`.

    Returns:
        PNG bytes. Cells are annotated when ``C <= 20``; a true class with no samples shows "-".
    """
    m = np.asarray(cm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise _m.MetricInputError(f"cm must be a square C x C matrix, got shape {m.shape}")
    if normalize not in ("both", "counts", "row"):
        raise _m.MetricInputError(f"normalize must be 'both', 'counts' or 'row', got {normalize!r}")
    c = m.shape[0]
    names = _names(class_names, c)
    panels = ["counts", "row"] if normalize == "both" else [normalize]
    side = max(3.8, 0.45 * c + 2.2)
    fig = new_figure((side * len(panels) + 0.6 * len(panels), side))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, kind in zip(axes, panels):
        if kind == "counts":
            im = _matrix_panel(ax, m, names, lambda v: f"{int(v)}", "Counts", None)
            fig.colorbar(im, ax=ax, shrink=0.8, label="samples")
        else:
            rows = _m._div(m, m.sum(axis=1, keepdims=True))
            im = _matrix_panel(ax, rows * 100, names, lambda v: f"{v:.0f}%", "Row-normalised (recall)", 100)
            fig.colorbar(im, ax=ax, shrink=0.8, label="% of true class")
    fig.suptitle(title)
    return figure_png(fig, path, s3)


@_styled
def plot_reliability(
    y_true: Any,
    probs: Any,
    *,
    n_bins: int = 10,
    kind: Literal["auto", "positive", "top_label"] = "auto",
    positive_name: str = "positive class",
    title: str = "Reliability diagram",
    path: str | None = None,
    s3: Any = None,
) -> bytes:
    """Reliability diagram with ECE: observed frequency per confidence bin against the diagonal.

    The upper panel shows each bin's observed frequency (bars) and mean confidence (markers); the
    lower panel the number of samples per bin. See :func:`medray.evaluation.metrics.calibration` for
    the binning and ``kind``.

    Args:
        y_true: True class ids ``(N,)``.
        probs: ``N x C`` probabilities or 1-D positive-class probabilities, in ``[0, 1]``.
        n_bins: Equal-width bins on ``[0, 1]``.
        kind: ``"auto"``, ``"positive"`` (binary) or ``"top_label"``.
        positive_name: Name of class 1 for the axis label (binary ``"positive"`` kind).
        title: Figure title (the ECE is appended).
        path: Optional local path or URI to write the PNG to.
        s3: Optional S3 options for :mod:`medray.storage`.

    Returns:
        PNG bytes.
    """
    cal = _m.calibration(y_true, probs, n_bins=n_bins, kind=kind)
    edges = cal["edges"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    fig = new_figure((5.6, 6.0))
    ax, axh = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ok = cal["count"] > 0
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="perfect calibration")
    ax.bar(centers[ok], cal["accuracy"][ok], width=width[ok] * 0.9, color=OKABE_ITO[0], alpha=0.75,
           edgecolor="white", label="observed")
    ax.plot(cal["confidence"][ok], cal["accuracy"][ok], "D-", color=OKABE_ITO[1], markersize=5, linewidth=1.2,
            label="observed at mean predicted")
    if cal["kind"] == "positive":
        xlabel, ylabel = f"Predicted probability of {positive_name}", f"Observed fraction {positive_name}"
    else:
        xlabel, ylabel = "Confidence (top-class probability)", "Accuracy"
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel=ylabel,
           title=f"{title} (ECE = {cal['ece']:.3f}, {int(cal['count'].sum())} samples)")
    ax.legend(loc="upper left")
    axh.bar(centers, cal["count"], width=width * 0.9, color="0.55")
    axh.set(xlabel=xlabel, ylabel="samples")
    return figure_png(fig, path, s3)


# --------------------------------------------------------------------------------------------------
# regression and distributions
# --------------------------------------------------------------------------------------------------


@_styled
def plot_scatter(
    y_true: Any,
    y_pred: Any,
    *,
    groups: Any = None,
    xlabel: str = "True",
    ylabel: str = "Predicted",
    title: str = "Predicted vs true",
    annotate: bool = True,
    path: str | None = None,
    s3: Any = None,
) -> bytes:
    """Predicted-vs-true scatter with the identity line (e.g. retinal age vs chronological age).

    Args:
        y_true: True values ``(N,)``.
        y_pred: Predicted values ``(N,)``.
        groups: Optional ``(N,)`` group labels (e.g. ``"dy = 0"`` / ``"dy > 0"``): one colour and
            marker per group, in sorted order, with a legend.
        xlabel: X axis label (include units, e.g. "Chronological age (years)").
        ylabel: Y axis label.
        title: Figure title.
        annotate: Print n, MAE, bias and Pearson r in the corner.
        path: Optional local path or URI to write the PNG to.
        s3: Optional S3 options for :mod:`medray.storage`.

    Returns:
        PNG bytes. Large N is drawn with small translucent, rasterised markers.
    """
    t, p = _m._pair(y_true, y_pred)
    n = len(t)
    size = float(np.clip(60.0 / math.sqrt(max(n, 1) / 50.0), 2.0, 36.0))
    alpha = float(np.clip(1.5 / math.log10(n + 10), 0.15, 0.85))
    fig = new_figure((5.6, 5.4))
    ax = fig.add_subplot()
    lo = float(min(t.min(), p.min()))
    hi = float(max(t.max(), p.max()))
    pad = 0.03 * (hi - lo) if hi > lo else 1.0
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="0.4", linestyle="--", linewidth=1, label="identity (y = x)")
    if groups is None:
        ax.scatter(t, p, s=size, alpha=alpha, color=OKABE_ITO[0], edgecolors="none", rasterized=True)
    else:
        g = np.asarray(_m._to_numpy(groups)).reshape(-1)
        if len(g) != n:
            raise _m.MetricInputError(f"groups has {len(g)} labels but there are {n} points")
        for i, key in enumerate(sorted(set(g.tolist()), key=str)):
            sel = g == key
            ax.scatter(t[sel], p[sel], s=size, alpha=alpha, color=OKABE_ITO[i % 8], edgecolors="none",
                       marker=_MARKERS[i % len(_MARKERS)], rasterized=True, label=f"{key} (n={int(sel.sum())})")
    if annotate:
        txt = (f"n = {n}\nMAE = {_m.mae(t, p):.3g}\nbias = {_m.bias(t, p):+.3g}\n"
               f"Pearson r = {_fmt(_m.pearson_r(t, p))}")
        ax.text(0.03, 0.97, txt, transform=ax.transAxes, va="top", ha="left", fontsize=9,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85, "edgecolor": "0.8"})
    ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(loc="lower right")
    return figure_png(fig, path, s3)


@_styled
def plot_histogram(
    values: Any,
    *,
    bins: int | Sequence[float] = 30,
    density: bool = False,
    xlabel: str = "value",
    ylabel: str | None = None,
    title: str = "Histogram",
    vlines: Mapping[str, float] | None = None,
    path: str | None = None,
    s3: Any = None,
) -> bytes:
    """Histogram of one array, or overlaid histograms of several groups on shared bin edges.

    Args:
        values: A 1-D array, or ``{group name: 1-D array}`` (e.g. age gap for ``dy = 0`` vs ``dy > 0``).
            NaN values are dropped (the legend gives each group's n).
        bins: Number of bins over the joint range, or explicit edges.
        density: Normalise each group to unit area (compare groups of different sizes).
        xlabel: X axis label.
        ylabel: Y axis label; default "count" or "density".
        title: Figure title.
        vlines: Optional ``{label: x}`` vertical reference lines (thresholds, means).
        path: Optional local path or URI to write the PNG to.
        s3: Optional S3 options for :mod:`medray.storage`.

    Returns:
        PNG bytes.
    """
    groups = dict(values) if isinstance(values, Mapping) else {"": values}
    if not groups:
        raise _m.MetricInputError("plot_histogram: no groups")
    data = {}
    for k, v in groups.items():
        a = np.asarray(_m._to_numpy(v), dtype=np.float64).reshape(-1)
        data[str(k)] = a[np.isfinite(a)]
    allv = np.concatenate(list(data.values()))
    if allv.size == 0:
        raise _m.MetricInputError("plot_histogram: no finite values")
    if isinstance(bins, int):
        lo, hi = float(allv.min()), float(allv.max())
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    else:
        edges = np.asarray(bins, dtype=np.float64)
    fig = new_figure((6.4, 4.4))
    ax = fig.add_subplot()
    overlaid = len(data) > 1
    for i, (name, a) in enumerate(data.items()):
        col = OKABE_ITO[i % 8]
        label = f"{name} (n={a.size})" if name else f"n = {a.size}"
        if a.size == 0:
            ax.plot([], [], color=col, label=label)
            continue
        ax.hist(a, bins=edges, density=density, color=col, alpha=0.45 if overlaid else 0.8,
                edgecolor="white" if not overlaid else None, label=label)
        if overlaid:
            ax.hist(a, bins=edges, density=density, histtype="step", color=col, linewidth=1.5,
                    linestyle=_LINESTYLES[(i // 8) % 4])
    for j, (label, x) in enumerate((vlines or {}).items()):
        ax.axvline(float(x), color=OKABE_ITO[(j + 3) % 8], linestyle=_LINESTYLES[1 + j % 3], linewidth=1.5,
                   label=f"{label} = {float(x):.3g}")
    ax.set(xlabel=xlabel, ylabel=ylabel or ("density" if density else "count"), title=title)
    ax.legend(loc="best")
    return figure_png(fig, path, s3)


@_styled
def plot_bar(
    values: Mapping[str, Any],
    *,
    errors: Mapping[str, float] | None = None,
    ylabel: str = "value",
    title: str = "",
    sort: Literal["ascending", "descending"] | None = None,
    horizontal: bool | None = None,
    highlight: str | None = None,
    value_format: str = "{:.3f}",
    limits: tuple[float, float] | None = None,
    path: str | None = None,
    s3: Any = None,
) -> bytes:
    """Bar chart of named values (per-class IoU, a leaderboard of candidate models, ...).

    Args:
        values: ``{name: value}``; ``None``/NaN values are shown as "n/a" without a bar.
        errors: Optional ``{name: half-width}`` error bars.
        ylabel: Value axis label.
        title: Figure title.
        sort: Order bars by value (``None`` keeps the mapping's order).
        horizontal: Horizontal bars; default when there are more than 8 bars or long names.
        highlight: Name of a bar drawn in a contrasting colour (e.g. the selected model).
        value_format: Format of the value printed at each bar's end.
        limits: Value axis limits, e.g. ``(0, 1)`` for IoU.
        path: Optional local path or URI to write the PNG to.
        s3: Optional S3 options for :mod:`medray.storage`.

    Returns:
        PNG bytes.
    """
    items = [(str(k), math.nan if v is None else float(v)) for k, v in values.items()]
    if not items:
        raise _m.MetricInputError("plot_bar: no values")
    if sort is not None:
        items.sort(key=lambda kv: (math.isnan(kv[1]), kv[1] if sort == "ascending" else -kv[1]))
    names = [k for k, _ in items]
    vals = np.array([v for _, v in items])
    err = None if errors is None else np.array([float(errors.get(k, 0.0) or 0.0) for k in names])
    if horizontal is None:
        horizontal = len(items) > 8 or max(map(len, names)) > 12
    colors = [OKABE_ITO[3] if k == highlight else OKABE_ITO[0] for k in names]
    n = len(items)
    fig = new_figure((6.4, max(3.0, 0.32 * n + 1.4)) if horizontal else (max(5.0, 0.55 * n + 2.0), 4.4))
    ax = fig.add_subplot()
    pos = np.arange(n)
    plotted = np.nan_to_num(vals, nan=0.0)
    if horizontal:
        ax.barh(pos, plotted, xerr=err, color=colors, alpha=0.85, capsize=3)
        ax.set_yticks(pos, names)
        ax.invert_yaxis()
        ax.set(xlabel=ylabel, title=title)
        ax.grid(axis="y", visible=False)
        if limits is not None:
            ax.set_xlim(limits)
    else:
        ax.bar(pos, plotted, yerr=err, color=colors, alpha=0.85, capsize=3)
        ax.set_xticks(pos, names, rotation=30 if max(map(len, names)) > 6 else 0,
                      ha="right" if max(map(len, names)) > 6 else "center")
        ax.set(ylabel=ylabel, title=title)
        ax.grid(axis="x", visible=False)
        if limits is not None:
            ax.set_ylim(limits)
    for i, v in enumerate(vals):
        label = "n/a" if math.isnan(v) else value_format.format(v)
        if horizontal:
            ax.annotate(label, (0 if math.isnan(v) else v, i), xytext=(3, 0), textcoords="offset points",
                        va="center", ha="left", fontsize=8)
        else:
            ax.annotate(label, (i, 0 if math.isnan(v) else v), xytext=(0, 3), textcoords="offset points",
                        va="bottom", ha="center", fontsize=8)
    if highlight is not None and highlight in names:
        ax.legend(handles=[Patch(color=OKABE_ITO[3], label=highlight)], loc="best")
    return figure_png(fig, path, s3)


def _series_xy(v: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(v, tuple) and len(v) == 2:
        x = np.asarray(_m._to_numpy(v[0]), dtype=np.float64).reshape(-1)
        y = np.asarray(_m._to_numpy(v[1]), dtype=np.float64).reshape(-1)
        if len(x) != len(y):
            raise _m.MetricInputError(f"series x has {len(x)} values but y has {len(y)}")
        return x, y
    y = np.array([math.nan if e is None else float(e) for e in np.asarray(_m._to_numpy(v), dtype=object)
                  .reshape(-1)], dtype=np.float64)
    return np.arange(1, len(y) + 1, dtype=np.float64), y


@_styled
def plot_curves(
    series: Mapping[str, Any],
    *,
    xlabel: str = "epoch",
    ylabel: str = "value",
    title: str = "Training curves",
    mark_best: Literal["min", "max"] | Mapping[str, Literal["min", "max"]] | None = None,
    logy: bool = False,
    path: str | None = None,
    s3: Any = None,
) -> bytes:
    """Line chart of several series against the epoch (or step): training curves.

    Args:
        series: ``{name: y values}`` (x = 1, 2, ...) or ``{name: (x, y)}``; ``None``/NaN leave gaps.
            A mapping of mappings, ``{panel: {name: ...}}`` (e.g. ``{"loss": {...}, "mean IoU":
            {...}}``), draws one panel per key side by side, each panel's key as its y label.
        xlabel: X axis label.
        ylabel: Y axis label (single panel).
        title: Figure title.
        mark_best: ``"min"``/``"max"`` marks each series' best point (e.g. the selected epoch); a
            mapping gives it per panel.
        logy: Logarithmic y axis (losses).
        path: Optional local path or URI to write the PNG to.
        s3: Optional S3 options for :mod:`medray.storage`.

    Returns:
        PNG bytes.
    """
    if not series:
        raise _m.MetricInputError("plot_curves: no series")
    nested = all(isinstance(v, Mapping) for v in series.values())
    panels: dict[str, Mapping[str, Any]] = {str(k): v for k, v in series.items()} if nested else {ylabel: series}
    fig = new_figure((5.4 * len(panels) + 0.4, 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, ser) in zip(axes, panels.items()):
        best = mark_best.get(panel) if isinstance(mark_best, Mapping) else mark_best
        for i, (name, v) in enumerate(ser.items()):
            x, y = _series_xy(v)
            st = series_style(i)
            ax.plot(x, y, linewidth=1.6, marker="o" if len(x) <= 30 else None, markersize=3, label=str(name),
                    **st)
            ok = np.isfinite(y)
            if best in ("min", "max") and ok.any():
                yy = np.where(ok, y, np.nan)
                j = int(np.nanargmin(yy) if best == "min" else np.nanargmax(yy))
                ax.plot(x[j], y[j], marker="*", markersize=13, color=st["color"], markeredgecolor="black",
                        linestyle="none")
                ax.annotate(f"{y[j]:.3g} @ {x[j]:g}", (x[j], y[j]), xytext=(4, 6), textcoords="offset points",
                            fontsize=8)
        xs_all = [_series_xy(v)[0] for v in ser.values()]
        if all(np.all(xv == np.round(xv)) for xv in xs_all):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(x=0.06)
        if logy:
            ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel=panel, title=panel if nested else title)
        ax.legend(loc="best")
    if nested:
        fig.suptitle(title)
    return figure_png(fig, path, s3)


# --------------------------------------------------------------------------------------------------
# images: overlays and grids
# --------------------------------------------------------------------------------------------------


def _as_rgb(image: Any) -> np.ndarray:
    """``H x W x 3`` float64 in ``[0, 1]`` from grey/RGB/RGBA/CHW, uint8/uint16/bool/float."""
    a = np.asarray(_m._to_numpy(image))
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise _m.MetricInputError(f"image must be H x W, H x W x 3|4 or 3 x H x W; got shape {a.shape}")
    a = a[:, :, :3]
    if a.dtype == bool:
        return a.astype(np.float64)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 65535.0
    f = a.astype(np.float64)
    f = np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
    if f.min() < 0.0 or f.max() > 1.0:
        lo, hi = float(f.min()), float(f.max())
        f = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
    return f


def _resize_bilinear(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D array to ``shape`` (pixel centres aligned), e.g. a 1/8 heatmap."""
    h, w = a.shape
    hh, ww = shape
    if (h, w) == (hh, ww):
        return a.astype(np.float64)
    ys = np.clip((np.arange(hh) + 0.5) * h / hh - 0.5, 0, h - 1)
    xs = np.clip((np.arange(ww) + 0.5) * w / ww - 0.5, 0, w - 1)
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    a = a.astype(np.float64)
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bot = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


def blend_mask(
    image: Any,
    mask: Any,
    *,
    alpha: float = 0.5,
    n_classes: int | None = None,
    background: int | None = 0,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Image with a class mask painted over it in :data:`CLASS_COLORS` (native resolution).

    ``out = (1 - alpha) * image + alpha * colour[class]`` on every pixel except ``background`` and
    ``ignore_index`` pixels, which keep the image.

    Args:
        image: The image (see the module docstring for accepted layouts).
        mask: ``H x W`` integer class ids, same height and width as the image.
        alpha: Opacity of the class colour, in ``[0, 1]``.
        n_classes: Number of classes (default ``max(mask) + 1``).
        background: Class id left transparent (``None`` paints every class).
        ignore_index: Mask value left transparent (e.g. 255 padding).

    Returns:
        ``H x W x 3`` uint8 RGB.
    """
    img = _as_rgb(image)
    m = np.asarray(_m._to_numpy(mask))
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != img.shape[:2]:
        raise _m.MetricInputError(f"mask shape {m.shape} != image size {img.shape[:2]}")
    if not (np.issubdtype(m.dtype, np.integer) or m.dtype == bool):
        raise _m.MetricInputError(f"mask must hold integer class ids, got dtype {m.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise _m.MetricInputError("alpha must be in [0, 1]")
    m = m.astype(np.int64)
    paint = np.ones(m.shape, dtype=bool)
    if background is not None:
        paint &= m != background
    if ignore_index is not None:
        paint &= m != ignore_index
    if paint.any() and m[paint].min() < 0:
        raise _m.MetricInputError("mask has negative class ids (set ignore_index)")
    c = int(n_classes) if n_classes is not None else int(m[paint].max()) + 1 if paint.any() else 1
    cols = class_colors(max(c, int(m[paint].max()) + 1 if paint.any() else 1)).astype(np.float64) / 255.0
    out = img.copy()
    out[paint] = (1 - alpha) * img[paint] + alpha * cols[m[paint]]
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def blend_heatmap(
    image: Any,
    heat: Any,
    *,
    alpha: float = 0.5,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    alpha_by_value: bool = True,
) -> np.ndarray:
    """Image with a heatmap (saliency, lesion heat, 1/8-resolution foreground prior) over it.

    The heatmap is resized bilinearly to the image size, scaled to ``[0, 1]`` with ``vmin``/``vmax``
    (default its own min/max), coloured with ``cmap`` and blended with opacity ``alpha`` -- times the
    scaled value when ``alpha_by_value`` (so cold regions leave the image visible).

    Args:
        image: The image (see the module docstring).
        heat: 2-D float array, any resolution.
        alpha: Maximum opacity in ``[0, 1]``.
        cmap: A perceptually uniform matplotlib colormap name.
        vmin: Value mapped to the bottom of the colormap.
        vmax: Value mapped to the top.
        alpha_by_value: Scale the opacity by the heat value.

    Returns:
        ``H x W x 3`` uint8 RGB.
    """
    img = _as_rgb(image)
    h = np.asarray(_m._to_numpy(heat), dtype=np.float64)
    if h.ndim == 3 and h.shape[0] == 1:
        h = h[0]
    if h.ndim != 2 or h.size == 0:
        raise _m.MetricInputError(f"heat must be a 2-D array, got shape {h.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise _m.MetricInputError("alpha must be in [0, 1]")
    h = np.nan_to_num(_resize_bilinear(h, img.shape[:2]), nan=0.0)
    lo = float(h.min()) if vmin is None else float(vmin)
    hi = float(h.max()) if vmax is None else float(vmax)
    s = np.clip((h - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(h)
    rgb = colormaps[cmap](s)[:, :, :3]
    a = (alpha * s if alpha_by_value else np.full_like(s, alpha))[:, :, None]
    out = (1 - a) * img + a * rgb
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def encode_png(rgb: Any, path: str | None = None, s3: Any = None) -> bytes:
    """PNG bytes of an ``H x W x 3`` (or grey) image array; also written to ``path`` when given."""
    from PIL import Image

    a = np.asarray(_m._to_numpy(rgb))
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[:, :, :3]
    else:
        a = np.clip(np.round(_as_rgb(a) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a[:, :, :3])).save(buf, format="PNG", optimize=False)
    data = buf.getvalue()
    if path is not None:
        storage.write_bytes(path, data, s3)
    return data


def overlay_mask(
    image: Any,
    mask: Any,
    *,
    alpha: float = 0.5,
    n_classes: int | None = None,
    background: int | None = 0,
    ignore_index: int | None = None,
    path: str | None = None,
    s3: Any = None,
) -> bytes:
    """PNG bytes of :func:`blend_mask` at the image's native resolution (what serving returns)."""
    rgb = blend_mask(image, mask, alpha=alpha, n_classes=n_classes, background=background,
                     ignore_index=ignore_index)
    return encode_png(rgb, path, s3)


def overlay_heatmap(
    image: Any,
    heat: Any,
    *,
    alpha: float = 0.5,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    alpha_by_value: bool = True,
    path: str | None = None,
    s3: Any = None,
) -> bytes:
    """PNG bytes of :func:`blend_heatmap` at the image's native resolution."""
    rgb = blend_heatmap(image, heat, alpha=alpha, cmap=cmap, vmin=vmin, vmax=vmax,
                        alpha_by_value=alpha_by_value)
    return encode_png(rgb, path, s3)


@_styled
def image_grid(
    images: Sequence[Any],
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 4,
    title: str | None = None,
    legend: Mapping[str, str] | None = None,
    cell_size: float = 3.0,
    path: str | None = None,
    s3: Any = None,
) -> bytes:
    """A grid of images (raw, :func:`blend_mask` / :func:`blend_heatmap` outputs) with titles.

    Args:
        images: Image arrays (any accepted layout; they may differ in size).
        titles: One caption per image.
        ncols: Images per row.
        title: Figure title.
        legend: ``{label: colour}`` shown below the grid, e.g. :func:`class_legend` of the class names.
        cell_size: Inches per grid cell.
        path: Optional local path or URI to write the PNG to.
        s3: Optional S3 options for :mod:`medray.storage`.

    Returns:
        PNG bytes.
    """
    if len(images) == 0:
        raise _m.MetricInputError("image_grid: no images")
    if titles is not None and len(titles) != len(images):
        raise _m.MetricInputError(f"{len(titles)} titles for {len(images)} images")
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    rgbs = [_as_rgb(im) for im in images]
    aspect = float(np.clip(np.median([im.shape[0] / im.shape[1] for im in rgbs]), 0.2, 5.0))
    cell_h = cell_size * aspect + (0.3 if titles is not None else 0.0)
    legend_h = 0.3 * math.ceil(len(legend) / 7) + 0.2 if legend else 0.0
    fig = new_figure((cell_size * ncols, cell_h * nrows + legend_h + (0.4 if title else 0.0)))
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < n:
            ax.imshow(rgbs[i], interpolation="antialiased")
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=10)
    if legend:
        handles = [Patch(facecolor=c, edgecolor="0.3", label=str(k)) for k, c in legend.items()]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 7), frameon=False)
    if title:
        fig.suptitle(title)
    return figure_png(fig, path, s3)
