"""Self-contained HTML evaluation reports (one file, opens offline) plus ``metrics.json``.

:func:`write_report` writes two objects into ``out_dir`` (a local folder or any fsspec URI such as
``s3://bucket/run/eval``), each atomically through :mod:`medray.storage` (temporary name + rename
locally, a single PUT on S3):

* ``metrics.json`` -- the top-level ``metrics`` at the top level (``json.load(f)["accuracy"]``),
  ``"sections": {key: metrics}`` for sections that carry metrics, and ``"report"``: title, subtitle,
  model, data, date, generator. Strict JSON (NaN written as ``null``);
* ``report.html`` -- header (title, model, data, date), contents, one block per section (metrics
  table, extra tables, figures with numbered captions, notes), and a "for research use only" footer.
  Images are embedded as base64 ``data:`` URIs and the CSS is inline: no scripts, no external links,
  no network access when opened.

Two ways to fill it, combinable: top-level ``metrics=`` plus ``images=`` (a "Metrics" and a "Figures"
block), and/or ``sections`` -- :class:`Section` objects (or dicts with the same fields). A ``metrics``
mapping is rendered generically: nested mappings of scalars become dotted rows (``macro > f1``), a mapping of
mappings (``per_class``) becomes its own table, a square list of lists (``confusion_matrix``) a matrix
table, long arrays are named as "in metrics.json only". The helpers :func:`classification_section`,
:func:`regression_section` and :func:`segmentation_section` build complete sections (metrics and the
standard plots) from raw predictions.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medray import __version__, storage
from medray.evaluation import metrics as _m

__all__ = [
    "Plot",
    "Table",
    "Section",
    "RESEARCH_USE_NOTICE",
    "render_html",
    "build_metrics_document",
    "write_report",
    "classification_section",
    "regression_section",
    "segmentation_section",
]

#: Footer printed on every report.
RESEARCH_USE_NOTICE = (
    "For research use only. Not a medical device; not for use in diagnosis or treatment decisions."
)

_INLINE_LIST_MAX = 8
_MATRIX_MAX = 30


@dataclass
class Plot:
    """A figure of a section.

    Attributes:
        png: PNG (or JPEG) bytes, or the path/URI of such a file (read when the report is rendered).
        caption: Caption under the figure ("Figure N." is prefixed).
        alt: Alternative text; defaults to the caption.
        name: Optional file name it was saved under (e.g. ``roc.png``), shown with the caption.
    """

    png: bytes | str
    caption: str = ""
    alt: str | None = None
    name: str | None = None


@dataclass
class Table:
    """An explicit table (leaderboard, per-age summary, ...).

    Attributes:
        columns: Column headers.
        rows: Rows of cells (numbers are formatted, ``None``/NaN shown as "n/a").
        caption: Caption above the table.
    """

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""


@dataclass
class Section:
    """One block of the report.

    Attributes:
        title: Heading.
        metrics: Metrics shown as tables and stored under ``sections[key]`` in ``metrics.json``.
        tables: Extra tables.
        plots: Figures: :class:`Plot`, PNG bytes, ``(png, caption)`` or ``(name, png, caption)`` tuples,
            or dicts with :class:`Plot`'s fields.
        notes: Free text (paragraphs separated by blank lines) or a list of bullet points.
        key: Key in ``metrics.json``; default: the title in snake_case.
    """

    title: str
    metrics: Mapping[str, Any] | None = None
    tables: Sequence[Table] = field(default_factory=list)
    plots: Sequence[Any] = field(default_factory=list)
    notes: str | Sequence[str] | None = None
    key: str | None = None

    @classmethod
    def coerce(cls, obj: Section | Mapping[str, Any]) -> Section:
        """A :class:`Section` from itself or from a dict with the same field names."""
        if isinstance(obj, Section):
            return obj
        if isinstance(obj, Mapping):
            unknown = set(obj) - {"title", "metrics", "tables", "plots", "notes", "key"}
            if unknown:
                raise ValueError(f"section has unknown fields {sorted(unknown)}")
            if "title" not in obj:
                raise ValueError("section needs a 'title'")
            tables = [t if isinstance(t, Table) else Table(**t) for t in obj.get("tables") or []]
            return cls(title=str(obj["title"]), metrics=obj.get("metrics"), tables=tables,
                       plots=list(obj.get("plots") or []), notes=obj.get("notes"), key=obj.get("key"))
        raise TypeError(f"a section must be a Section or a dict, got {type(obj).__name__}")


# --------------------------------------------------------------------------------------------------
# formatting helpers
# --------------------------------------------------------------------------------------------------


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _is_scalar(v: Any) -> bool:
    if v is None or isinstance(v, (str, bool, int, float)):
        return True
    return hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0


def _fmt(v: Any) -> str:
    """HTML for one cell: numbers to 4 significant digits, None/NaN as a marked "n/a"."""
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "<span class='na' title='undefined for this data (e.g. a class absent)'>n/a</span>"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        if v == round(v) and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.4g}"
    return _esc(v)


def _label(key: str) -> str:
    return _esc(key.replace("_", " ").replace(".", " \u203a "))


def _slug(text: str) -> str:
    s = re.sub(r"[^0-9a-zA-Z]+", "_", text.strip().lower()).strip("_")
    return s or "section"


def _is_matrix(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple))
        and len(v) > 0
        and all(isinstance(r, (list, tuple)) and len(r) == len(v) for r in v)
        and all(_is_scalar(x) and not isinstance(x, str) for r in v for x in r)
    )


def _is_records(v: Any) -> bool:
    return isinstance(v, Mapping) and len(v) > 0 and all(isinstance(r, Mapping) for r in v.values())


def _table_html(columns: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "",
                cls: str = "", row_headers: bool = False) -> str:
    """A table. Cells in ``rows`` are already HTML; ``columns`` and ``caption`` are escaped here.

    The first cell of each row is a key cell (``class='k'``), or a ``<th>`` when ``row_headers``.
    """
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = []
    for r in rows:
        first = f"<th scope='row'>{r[0]}</th>" if row_headers else f"<td class='k'>{r[0]}</td>"
        body.append("<tr>" + first + "".join(f"<td>{c}</td>" for c in r[1:]) + "</tr>")
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f"<table class='{cls}'>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _metrics_html(metrics: Mapping[str, Any], class_names: Sequence[str] | None = None) -> str:
    """Render a metrics mapping as a key/value table plus sub-tables (records, matrices)."""
    metrics = _m.to_jsonable(metrics)
    names = metrics.get("class_names") if isinstance(metrics.get("class_names"), list) else None
    names = names or (list(class_names) if class_names is not None else None)
    scalars: list[tuple[str, str]] = []
    extra: list[str] = []
    in_json_only: list[str] = []

    def cell(v: Any) -> str:
        return _fmt(v) if _is_scalar(v) else _esc(json.dumps(v))

    def walk(prefix: str, v: Any) -> None:
        if _is_records(v):
            cols: list[str] = []
            for rec in v.values():
                cols += [k for k in rec if k not in cols]
            rows = [[_esc(name)] + [cell(rec.get(c)) for c in cols] for name, rec in v.items()]
            extra.append(_table_html([""] + [c.replace("_", " ") for c in cols], rows,
                                     prefix.replace("_", " ").replace(".", " \u203a "), "records"))
        elif isinstance(v, Mapping):
            for k, sub in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), sub)
        elif _is_matrix(v):
            n = len(v)
            if n > _MATRIX_MAX:
                in_json_only.append(prefix)
                return
            labels = [str(x) for x in (names if names is not None and len(names) == n else range(n))]
            rows = [[_esc(labels[i])] + [_fmt(x) for x in r] for i, r in enumerate(v)]
            extra.append(_table_html(["true \\ predicted"] + labels, rows,
                                     prefix.replace("_", " ") + " (rows: true class, columns: predicted)",
                                     "matrix", row_headers=True))
        elif isinstance(v, (list, tuple)):
            if len(v) <= _INLINE_LIST_MAX and all(_is_scalar(x) for x in v):
                scalars.append((prefix, ", ".join(_fmt(x) for x in v) if v else "(empty)"))
            else:
                in_json_only.append(prefix)
        else:
            scalars.append((prefix, _fmt(v)))

    for k, v in metrics.items():
        walk(str(k), v)
    out = []
    if scalars:
        out.append(_table_html(["metric", "value"], [[_label(k), v] for k, v in scalars], "", "kv"))
    out.extend(extra)
    if in_json_only:
        out.append("<p class='json-only'>Arrays in metrics.json only: "
                   + ", ".join(_label(k) for k in in_json_only) + ".</p>")
    return "\n".join(out)


def _notes_html(notes: str | Sequence[str] | None) -> str:
    if not notes:
        return ""
    if isinstance(notes, str):
        paras = [p.strip() for p in re.split(r"\n\s*\n", notes) if p.strip()]
        return "".join(f"<p>{_esc(p).replace(chr(10), '<br>')}</p>" for p in paras)
    return "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"


def _image_data_uri(png: bytes | str, s3: Any = None) -> str:
    data = storage.read_bytes(png, s3) if isinstance(png, str) else bytes(png)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        mime = "image/png"
    elif data[:3] == b"\xff\xd8\xff":
        mime = "image/jpeg"
    else:
        raise ValueError("plot is not a PNG or JPEG image")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _plot(obj: Any) -> Plot:
    if isinstance(obj, Plot):
        return obj
    if isinstance(obj, (bytes, bytearray, str)):
        return Plot(bytes(obj) if not isinstance(obj, str) else obj)
    if isinstance(obj, tuple) and len(obj) == 3:
        name, png, caption = obj
        return Plot(png=png if isinstance(png, str) else bytes(png), caption=str(caption), name=str(name))
    if isinstance(obj, tuple) and len(obj) in (1, 2):
        return Plot(*obj)
    if isinstance(obj, Mapping):
        return Plot(**obj)
    raise TypeError(
        f"a plot must be a Plot, PNG bytes, a (png, caption) tuple or a dict; got {type(obj).__name__}"
    )


def _meta_html(v: Any) -> str:
    if isinstance(v, Mapping):
        return "; ".join(f"{_esc(k)}: {_esc(x)}" for k, x in v.items())
    return _esc(v)


def _date_str(date: Any) -> str:
    if date is None:
        return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(date, _dt.datetime):
        return date.strftime("%Y-%m-%d %H:%M %Z").strip()
    if isinstance(date, _dt.date):
        return date.isoformat()
    return str(date)


_CSS = """
:root { --fg:#1b1b1b; --muted:#5a5a5a; --line:#d9d9d9; --accent:#0072B2; --bg-alt:#f5f7fa; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1120px; padding: 24px 28px 48px; line-height: 1.45; background: #fff; }
header { border-bottom: 3px solid var(--accent); padding-bottom: 12px; margin-bottom: 18px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
.subtitle { margin: 0 0 10px; color: var(--muted); }
h2 { font-size: 1.3em; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; }
dl.meta dt { color: var(--muted); font-weight: 600; } dl.meta dd { margin: 0; }
nav ol { margin: 6px 0 0; padding-left: 22px; } nav a { color: var(--accent); text-decoration: none; }
table { border-collapse: collapse; margin: 10px 0 16px; font-size: 0.92em; }
caption { text-align: left; font-weight: 600; padding: 4px 0; color: var(--muted); }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: right; vertical-align: top; }
th { background: var(--bg-alt); font-weight: 600; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) td { background: #fafbfc; }
table.kv td:first-child { color: var(--muted); }
table.matrix td { text-align: center; min-width: 3em; }
.na { color: #999; font-style: italic; }
.json-only { font-size: 0.85em; color: var(--muted); }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 18px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 10px; background: #fff;
         break-inside: avoid; page-break-inside: avoid; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: 0.9em; color: var(--muted); margin-top: 6px; }
.notes { background: var(--bg-alt); border-left: 4px solid var(--accent); padding: 4px 14px; margin: 12px 0; }
footer { margin-top: 40px; padding-top: 10px; border-top: 1px solid var(--line); color: var(--muted);
         font-size: 0.88em; }
footer strong { color: #a3320b; }
@media print { body { max-width: none; padding: 0; } nav { display: none; } h2 { break-after: avoid; } }
"""


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def _unique_keys(sections: Sequence[Section]) -> list[str]:
    keys: list[str] = []
    for s in sections:
        base = s.key or _slug(s.title)
        k, i = base, 2
        while k in keys:
            k, i = f"{base}_{i}", i + 1
        keys.append(k)
    return keys


def _normalise(
    sections: Sequence[Section | Mapping[str, Any]] | Mapping[str, Any] | None,
    metrics: Mapping[str, Any] | None,
) -> tuple[list[Section], Mapping[str, Any] | None]:
    """``(sections, top-level metrics)``; a mapping passed as ``sections`` is the top-level metrics."""
    if isinstance(sections, Mapping):
        if metrics is not None:
            raise ValueError("pass the top-level metrics either as `sections` (a mapping) or as `metrics=`")
        metrics, sections = sections, None
    if isinstance(sections, (str, bytes)):
        raise TypeError("sections must be a sequence of Section objects or dicts")
    return [Section.coerce(s) for s in sections or []], metrics


def build_metrics_document(
    title: str,
    sections: Sequence[Section | Mapping[str, Any]] | Mapping[str, Any] | None = None,
    *,
    metrics: Mapping[str, Any] | None = None,
    subtitle: str | None = None,
    model: Any = None,
    data: Any = None,
    date: Any = None,
) -> dict[str, Any]:
    """The ``metrics.json`` document (JSON-able; NaN -> ``None``).

    Returns:
        The top-level ``metrics`` keys, plus ``"sections": {key: metrics}`` (sections with metrics
        only; omitted when none) and ``"report": {"title", "subtitle", "model", "data", "date",
        "generator"}``.

    Raises:
        ValueError: When the top-level metrics themselves use the key ``"report"`` or ``"sections"``.
    """
    secs, top = _normalise(sections, metrics)
    doc: dict[str, Any] = dict(_m.to_jsonable(dict(top or {})))
    clash = {"report", "sections"} & set(doc)
    if clash:
        raise ValueError(f"top-level metrics may not use the reserved keys {sorted(clash)}")
    with_metrics = {k: dict(s.metrics) for k, s in zip(_unique_keys(secs), secs) if s.metrics}
    if with_metrics:
        doc["sections"] = _m.to_jsonable(with_metrics)
    doc["report"] = _m.to_jsonable({
        "title": title,
        "subtitle": subtitle,
        "model": model,
        "data": data,
        "date": _date_str(date),
        "generator": f"medray {__version__}",
    })
    return doc


def render_html(
    title: str,
    sections: Sequence[Section | Mapping[str, Any]] | Mapping[str, Any] | None = None,
    *,
    metrics: Mapping[str, Any] | None = None,
    images: Sequence[Any] | None = None,
    classes: Sequence[str] | None = None,
    subtitle: str | None = None,
    model: Any = None,
    data: Any = None,
    date: Any = None,
    notes: str | Sequence[str] | None = None,
    s3: Any = None,
) -> str:
    """The report as one self-contained HTML string (see :func:`write_report` for the arguments)."""
    secs, top = _normalise(sections, metrics)
    lead: list[Section] = []
    if top:
        lead.append(Section(title="Metrics", metrics=top, key="metrics"))
    if images:
        lead.append(Section(title="Figures", plots=list(images), key="figures"))
    secs = lead + secs
    keys = _unique_keys(secs)
    when = _date_str(date)
    meta = [("Model", model), ("Data", data), ("Date", when)]
    meta_html = "".join(f"<dt>{k}</dt><dd>{_meta_html(v)}</dd>" for k, v in meta if v not in (None, ""))
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<meta name='generator' content='medray {_esc(__version__)}'>",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{_esc(title)}</h1>"
        + (f"<p class='subtitle'>{_esc(subtitle)}</p>" if subtitle else "")
        + f"<dl class='meta'>{meta_html}</dl></header>",
    ]
    if notes:
        parts.append(f"<div class='notes'>{_notes_html(notes)}</div>")
    if len(secs) > 1:
        toc = "".join(f"<li><a href='#{_esc(k)}'>{_esc(s.title)}</a></li>" for k, s in zip(keys, secs))
        parts.append(f"<nav><strong>Contents</strong><ol>{toc}</ol></nav>")
    fig_no = 0
    for key, s in zip(keys, secs):
        parts.append(f"<section id='{_esc(key)}'><h2>{_esc(s.title)}</h2>")
        if s.metrics:
            parts.append(_metrics_html(s.metrics, classes))
        for t in s.tables:
            t = t if isinstance(t, Table) else Table(**t)
            rows = [[_fmt(c) if _is_scalar(c) else _esc(json.dumps(_m.to_jsonable(c))) for c in r] for r in t.rows]
            parts.append(_table_html(list(t.columns), rows, t.caption, "records"))
        if s.plots:
            parts.append("<div class='figures'>")
            for p in map(_plot, s.plots):
                fig_no += 1
                cap = f"Figure {fig_no}." + (f" {p.caption}" if p.caption else "")
                cap += f" ({p.name})" if p.name else ""
                parts.append(f"<figure><img src='{_image_data_uri(p.png, s3)}' alt='{_esc(p.alt or p.caption)}'>"
                             f"<figcaption>{_esc(cap)}</figcaption></figure>")
            parts.append("</div>")
        if s.notes:
            parts.append(f"<div class='notes'>{_notes_html(s.notes)}</div>")
        parts.append("</section>")
    parts.append(
        f"<footer><p><strong>{_esc(RESEARCH_USE_NOTICE)}</strong></p>"
        f"<p>Generated by medray {_esc(__version__)} on {_esc(when)}. Undefined values (for example the "
        "recall of a class absent from the data) are shown as n/a and stored as null in metrics.json."
        "</p></footer></body></html>"
    )
    return "\n".join(parts)


def write_report(
    out_dir: str,
    title: str,
    sections: Sequence[Section | Mapping[str, Any]] | Mapping[str, Any] | None = None,
    *,
    metrics: Mapping[str, Any] | None = None,
    images: Sequence[Any] | None = None,
    classes: Sequence[str] | None = None,
    subtitle: str | None = None,
    model: Any = None,
    data: Any = None,
    date: Any = None,
    notes: str | Sequence[str] | None = None,
    s3: Any = None,
    html_name: str = "report.html",
    json_name: str = "metrics.json",
) -> str:
    """Write ``report.html`` (self-contained) and ``metrics.json`` into ``out_dir``.

    Args:
        out_dir: Local folder or fsspec URI (``s3://...``, ``memory://...``); created as needed.
        title: Report title.
        sections: :class:`Section` objects or dicts with the same fields, in display order. A mapping
            here is taken as the top-level ``metrics`` instead.
        metrics: Top-level metrics (e.g. a ``classification_report``): shown first, and stored at the
            top level of ``metrics.json``.
        images: Top-level figures, shown after the metrics: :class:`Plot`, PNG bytes,
            ``(png, caption)`` or ``(file_name, png, caption)``.
        classes: Class names used to label matrices when the metrics carry no ``class_names``.
        subtitle: One line under the title (task, data set, split...).
        model: Model description for the header: a string or a mapping (name, version, checkpoint...).
        data: Data description for the header: a string or a mapping (manifest, split, n...).
        date: Date shown and stored; default now (UTC). A ``datetime``/``date`` or a string.
        notes: Free text shown under the header (paragraphs separated by blank lines, or a list).
        s3: Optional S3 options for :mod:`medray.storage`.
        html_name: File name of the HTML report.
        json_name: File name of the metrics document.

    Returns:
        The URI (local: absolute path) of ``report.html``; ``metrics.json`` is next to it. The JSON is
        written first, so a present ``report.html`` always has its metrics beside it; each write is
        atomic (temporary name + ``os.replace`` locally, one PUT on S3).
    """
    when = _date_str(date)
    doc = build_metrics_document(title, sections, metrics=metrics, subtitle=subtitle, model=model, data=data,
                                 date=when)
    page = render_html(title, sections, metrics=metrics, images=images, classes=classes, subtitle=subtitle,
                       model=model, data=data, date=when, notes=notes, s3=s3)
    out_dir = storage.to_uri(out_dir)
    storage.makedirs(out_dir, s3)
    storage.write_text(storage.join(out_dir, json_name),
                       json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n", s3)
    return storage.write_text(storage.join(out_dir, html_name), page, s3).uri


# --------------------------------------------------------------------------------------------------
# ready-made sections
# --------------------------------------------------------------------------------------------------


def classification_section(
    title: str,
    y_true: Any,
    probs: Any,
    class_names: Sequence[str] | None = None,
    *,
    threshold: float = 0.5,
    n_bins: int = 10,
    notes: str | Sequence[str] | None = None,
    key: str | None = None,
) -> Section:
    """A section with :func:`~medray.evaluation.metrics.classification_report` and its plots.

    Plots: ROC, precision-recall, confusion matrix (counts and row-normalised) and, when the scores
    are probabilities, the reliability diagram.
    """
    from medray.evaluation import plots

    rep = _m.classification_report(y_true, probs, class_names, threshold=threshold, n_bins=n_bins)
    names = rep["class_names"]
    binary = rep["n_classes"] == 2
    figs = [
        Plot(plots.plot_roc(y_true, probs, names, threshold=threshold if binary else None),
             "ROC curve" + (f" ({names[1]} positive; dot = threshold {threshold:g})" if binary
                            else ", one-vs-rest per class")),
        Plot(plots.plot_pr(y_true, probs, names), "Precision-recall curve"),
        Plot(plots.plot_confusion_matrix(rep["confusion_matrix"], names),
             "Confusion matrix: counts and row-normalised (rows = true class)"),
    ]
    if rep["calibration"] is not None:
        figs.append(Plot(plots.plot_reliability(y_true, probs, n_bins=n_bins, positive_name=names[1] if binary
                                                else "positive class"),
                         f"Reliability diagram ({rep['calibration']['kind'].replace('_', '-')} calibration)"))
    return Section(title=title, metrics=rep, plots=figs, notes=notes, key=key)


def regression_section(
    title: str,
    y_true: Any,
    y_pred: Any,
    *,
    groups: Any = None,
    quantity: str = "value",
    units: str = "",
    notes: str | Sequence[str] | None = None,
    key: str | None = None,
) -> Section:
    """A section with :func:`~medray.evaluation.metrics.regression_report`, a scatter and an error histogram.

    Args:
        title: Heading.
        y_true: True values.
        y_pred: Predictions.
        groups: Optional group label per sample; metrics are also given per group and the plots
            are split by group.
        quantity: What is measured, for axis labels (e.g. "age").
        units: Units for axis labels (e.g. "years").
        notes: Free text.
        key: Key in ``metrics.json``.
    """
    import numpy as np

    from medray.evaluation import plots

    rep: dict[str, Any] = dict(_m.regression_report(y_true, y_pred))
    t, p = _m._pair(y_true, y_pred)
    u = f" ({units})" if units else ""
    err_groups: Any = p - t
    if groups is not None:
        g = np.asarray(_m._to_numpy(groups)).reshape(-1)
        if len(g) != len(t):
            raise _m.MetricInputError(f"groups has {len(g)} labels but there are {len(t)} values")
        keys = sorted(set(g.tolist()), key=str)
        rep["groups"] = {str(k): _m.regression_report(t[g == k], p[g == k]) for k in keys}
        err_groups = {str(k): (p - t)[g == k] for k in keys}
    figs = [
        Plot(plots.plot_scatter(t, p, groups=groups, xlabel=f"True {quantity}{u}",
                                ylabel=f"Predicted {quantity}{u}"),
             f"Predicted vs true {quantity}; dashed: identity"),
        Plot(plots.plot_histogram(err_groups, xlabel=f"Error (predicted - true){u}", density=groups is not None,
                                  title="Error distribution", vlines={"zero error": 0.0}),
             "Distribution of the error (predicted minus true)"),
    ]
    return Section(title=title, metrics=rep, plots=figs, notes=notes, key=key)


def segmentation_section(
    title: str,
    result: _m.SegmentationMeter | Mapping[str, Any],
    *,
    examples: Sequence[Any] | None = None,
    example_titles: Sequence[str] | None = None,
    notes: str | Sequence[str] | None = None,
    key: str | None = None,
) -> Section:
    """A section from a :class:`~medray.evaluation.metrics.SegmentationMeter` (or its ``compute()``).

    Plots: per-class IoU bars (mean IoU in the title) and the pixel confusion matrix; optional
    ``examples`` (image arrays, e.g. :func:`~medray.evaluation.plots.blend_mask` outputs) as a grid.
    """
    from medray.evaluation import plots

    rep = result.compute() if isinstance(result, _m.SegmentationMeter) else dict(result)
    names = rep["class_names"]
    iou = {n: rep["per_class"][n]["iou"] for n in names}
    shown = {n: v for n, v in iou.items() if v is not None}
    mean = rep.get("mean_iou")
    mean_s = "n/a" if mean is None else f"{mean:.3f}"
    figs = [
        Plot(plots.plot_bar(shown or iou, ylabel="IoU", limits=(0, 1),
                            title=f"Per-class IoU (mean IoU = {mean_s})"),
             "Per-class IoU; classes absent from both truth and prediction (and the ignored class) omitted"),
        Plot(plots.plot_confusion_matrix(rep["confusion_matrix"], names, normalize="row",
                                         title="Pixel confusion (row-normalised)"),
             "Pixel confusion matrix, each true class normalised to 100 %"),
    ]
    if examples:
        figs.append(Plot(plots.image_grid(list(examples), example_titles,
                                          legend=plots.class_legend(names)), "Examples"))
    return Section(title=title, metrics=rep, plots=figs, notes=notes, key=key)
