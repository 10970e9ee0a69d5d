"""A generic CSV of images and labels (kind ``csv``; SRC is the CSV file).

Columns (header row required, UTF-8):

* ``image`` (required): path of the image; relative paths are resolved against the CSV's folder,
  absolute paths and URIs (``s3://...``) are used as they are.
* ``patient_id`` (default: the image's file stem), ``eye`` (left/right/L/R/OD/OS; default unknown),
  ``split`` (train/val/test; optional: when given for every row it is kept, and must be by patient;
  otherwise the usual seeded patient split is made).
* the task's label columns: ``fundus_disease`` label, labels; ``fundus_age`` age, age_flag, sex,
  disease; ``oct_seg`` mask, axial_um, lateral_um, scan_mode; ``skin`` label, label_quality; ``rop``
  stage. ``width``/``height``/``dataset`` are computed, never read.

Any other column is an error naming it (a typo must not silently drop a label). Without ``--task``
the task follows from the columns: ``mask`` -> oct_seg, ``stage`` -> rop, ``age`` -> fundus_age,
otherwise fundus_disease.

Class labels (``label``, ``stage``) may be integers (classes "0".."max") or names (classes = the
sorted distinct names). ``labels`` is a multi-hot list written ``0;1;0`` (or with spaces/commas, or
in brackets). Empty cells are null. ``mask`` paths resolve like ``image`` and are copied with
``--copy-images``.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any, Iterator

from medray import storage
from medray.data.sources._common import (
    IngestContext,
    Ingester,
    SourceError,
    check_columns,
    normalize_eye,
    normalize_sex,
    stem_of,
)

BASE_COLUMNS = ("image", "patient_id", "eye", "split")
TASK_COLUMNS: dict[str, tuple[str, ...]] = {
    "fundus_disease": ("label", "labels"),
    "fundus_age": ("age", "age_flag", "sex", "disease"),
    "oct_seg": ("mask", "axial_um", "lateral_um", "scan_mode"),
    "skin": ("label", "label_quality"),
    "rop": ("stage",),
}
CLASS_COLUMN = {"fundus_disease": "label", "skin": "label", "rop": "stage"}
_EYE_WORDS = {"", "left", "l", "os", "right", "r", "od", "unknown", "u"}


def _header(text: str, where: str) -> list[str]:
    try:
        header = next(csv.reader(io.StringIO(text)))
    except StopIteration:
        raise SourceError(f"{where}: empty CSV (a header row is required)") from None
    return [h.strip() for h in header]


def infer_task(columns: list[str]) -> str:
    cols = set(columns)
    if "mask" in cols:
        return "oct_seg"
    if "stage" in cols:
        return "rop"
    if "age" in cols:
        return "fundus_age"
    return "fundus_disease"


def _num(v: str, where: str, kind: type = float) -> Any:
    v = v.strip()
    if v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        raise SourceError(f"{where}: {v!r} is not a number") from None
    if kind is int:
        if f != int(f):
            raise SourceError(f"{where}: {v!r} is not an integer")
        return int(f)
    return f


def _multi_hot(v: str, where: str) -> list[int] | None:
    v = v.strip().strip("[]")
    if not v:
        return None
    out = []
    for p in re.split(r"[;,\s]+", v):
        if p not in ("0", "1"):
            raise SourceError(f"{where}: labels entry {p!r} is not 0/1")
        out.append(int(p))
    return out


class CsvIngester(Ingester):
    kind = "csv"
    default_task = "fundus_disease"
    tasks = tuple(TASK_COLUMNS)
    description = "a CSV with columns image[, patient_id, eye, split, <task labels>]"
    src_is_file = True

    def __init__(self) -> None:
        self._classes: list[str] = []

    def check_task(self, task: str | None, src: str = "", s3: Any = None) -> str:
        if task is None and src:
            try:
                text = storage.read_text(src, s3)
            except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
                text = ""
            if text:
                task = infer_task(_header(text, src))
        return super().check_task(task, src, s3)

    def rows(self, ctx: IngestContext) -> Iterator[dict[str, Any]]:
        if ctx.is_dir(ctx.src):
            raise SourceError(f"{ctx.src}: kind 'csv' expects a CSV file, not a folder")
        text = ctx.read_text(ctx.src)
        header = _header(text, ctx.src)
        allowed = BASE_COLUMNS + TASK_COLUMNS[ctx.task]
        check_columns(header, allowed, f"{ctx.src} (task {ctx.task})")
        if "image" not in header:
            raise SourceError(f"{ctx.src}: no 'image' column")
        if len(set(header)) != len(header):
            raise SourceError(f"{ctx.src}: duplicate column names in {header}")
        base = storage.parent(ctx.src)
        class_col = CLASS_COLUMN.get(ctx.task)
        mapping = self._class_mapping(text, class_col, ctx.src) if class_col in header else {}

        for i, r in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            where = f"{ctx.src}:{i}"
            if None in r:
                raise SourceError(f"{where}: more cells than header columns")
            r = {k.strip(): (v or "").strip() for k, v in r.items()}
            if not r["image"]:
                raise SourceError(f"{where}: empty image path")
            uri = ctx.resolve(base, r["image"])
            if r.get("eye", "").lower() not in _EYE_WORDS:
                raise SourceError(f"{where}: eye {r['eye']!r} is not left/right/L/R/OS/OD/unknown")
            ref = ctx.image(uri, rel=ctx.rel(uri, base),
                            verify=uri.lower().endswith((".dcm", ".dicom")))
            row: dict[str, Any] = {
                "image": ref.uri,
                "patient_id": r.get("patient_id") or stem_of(uri),
                "eye": normalize_eye(r.get("eye")),
                "width": ref.width,
                "height": ref.height,
            }
            if r.get("split"):
                row["split"] = r["split"].lower()
            row.update(self._labels(ctx, r, mapping, base, where))
            yield row

    def _class_mapping(self, text: str, col: str, where: str) -> dict[str, int]:
        values = {(r.get(col) or "").strip() for r in csv.DictReader(io.StringIO(text))} - {""}
        if not values:
            self._classes = []
            return {}
        if all(re.fullmatch(r"-?\d+(\.0+)?", v) for v in values):
            ints = {v: int(float(v)) for v in values}
            if min(ints.values()) < 0:
                raise SourceError(f"{where}: negative class id in column {col!r}")
            self._classes = [str(k) for k in range(max(ints.values()) + 1)]
            return ints
        if any(re.fullmatch(r"-?\d+(\.0+)?", v) for v in values):
            raise SourceError(f"{where}: column {col!r} mixes class ids and class names")
        self._classes = sorted(values)
        return {v: k for k, v in enumerate(self._classes)}

    def _labels(self, ctx: IngestContext, r: dict[str, str], mapping: dict[str, int], base: str,
                where: str) -> dict[str, Any]:
        task, out = ctx.task, {}
        class_col = CLASS_COLUMN.get(task)
        if class_col and class_col in r:
            out[class_col] = mapping.get(r[class_col]) if r[class_col] else None
        if task == "fundus_disease" and "labels" in r:
            out["labels"] = _multi_hot(r["labels"], where)
        elif task == "fundus_age":
            if "age" in r:
                out["age"] = _num(r["age"], where)
            if "age_flag" in r:
                out["age_flag"] = r["age_flag"] or None
            if "sex" in r:
                out["sex"] = normalize_sex(r["sex"]) if r["sex"] else None
            if "disease" in r:
                d = _num(r["disease"], where, int)
                if d not in (None, 0, 1):
                    raise SourceError(f"{where}: disease {d} is not 0/1")
                out["disease"] = d
        elif task == "oct_seg":
            if r.get("mask"):
                mask_uri = ctx.resolve(base, r["mask"])
                out["mask"] = ctx.source_file(mask_uri, rel=ctx.rel(mask_uri, base))
            for k in ("axial_um", "lateral_um"):
                if k in r:
                    out[k] = _num(r[k], where)
            if r.get("scan_mode"):
                out["scan_mode"] = r["scan_mode"]
        elif task == "skin" and r.get("label_quality"):
            if r["label_quality"] not in ("clean", "noisy"):
                raise SourceError(f"{where}: label_quality {r['label_quality']!r} is not clean/noisy")
            out["label_quality"] = r["label_quality"]
        return out

    def classes(self, task: str) -> list[str]:
        return list(self._classes)

    def extra_meta(self, task: str, ctx: IngestContext) -> dict[str, Any]:
        return {"csv": ctx.src}
