"""ODIR-5K colour fundus photos (Peking University ODIR 2019 challenge; Li et al., Bench 2020).

Two label sheets are understood (CSV, UTF-8; column names are matched case-insensitively, except
the one-letter labels N D G C A H M O: the per-image sheet also has w/h for width/height):

* the per-image ``labels.csv`` of the ``fundus_odir`` sample: one row per image with ``file`` (path
  relative to SRC), ``ID``, ``age``, ``sex``, ``keywords`` (that eye's diagnostic keywords) and the
  eight patient-level labels ``N D G C A H M O``;
* the official training sheet (``ODIR-5K_Training_Annotations(Updated)_V2.xlsx`` saved as CSV, or the
  .xlsx itself when openpyxl is installed): one row per patient with ``ID, Patient Age, Patient Sex,
  Left-Fundus, Right-Fundus, Left-Diagnostic Keywords, Right-Diagnostic Keywords, N ... O``. Images
  are found by file name anywhere under SRC; sheet rows whose image is not there are skipped (one
  warning with the count), so a sheet can describe a subset folder.

Quirks handled:

* ``N ... O`` are per PATIENT, not per eye (1023_left has "normal fundus" but O=1 from the right eye).
  The binary label of an image therefore comes from THAT EYE's keywords: "normal fundus" -> 0
  (normal), anything else -> 1 (abnormal); the eight patient labels are kept as the multi-hot
  ``labels`` column. Image-quality notes ("lens dust", "image offset", "low image quality", "optic
  disk photographically invisible") are not diseases and are ignored for the label; images marked
  "no fundus image"/"anterior segment image", or with only quality notes, get a null label.
* Keywords are separated by ',' or the full-width '，' (e.g. ID 2).
* The folder an image sits in (``images/<class>/``) is the sample author's pick, not a label
  (1447_right sits in glaucoma/ but its keyword is "normal fundus"); it is ignored.
* Patient Age 1 for ID 1563 is a known bad value: such ages are kept but flagged
  ``age_flag="implausible"`` (:data:`KNOWN_BAD_AGE_IDS`, or any age outside
  :data:`PLAUSIBLE_AGE`).
* Patient id = ID; the eye comes from the file name (``<ID>_left.jpg``).
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any, Iterator

from medray import storage
from medray.data.sources._common import (
    IMAGE_SUFFIXES,
    IngestContext,
    Ingester,
    SourceError,
    eye_from_stem,
    normalize_eye,
    normalize_sex,
    stem_of,
)

CLASSES = ["normal", "abnormal"]
LABEL_COLUMNS = ["N", "D", "G", "C", "A", "H", "M", "O"]
LABEL_NAMES = ["normal", "diabetes", "glaucoma", "cataract", "amd", "hypertension", "myopia", "other"]
NORMAL = "normal fundus"
#: image-quality notes that say nothing about disease
QUALITY_NOTES = {"lens dust", "image offset", "low image quality", "optic disk photographically invisible"}
#: keywords meaning the image is not a usable fundus photo
NOT_FUNDUS = {"no fundus image", "anterior segment image"}
#: IDs whose Patient Age is a known bad value in the official sheet
KNOWN_BAD_AGE_IDS = {"1563"}
#: ages outside this range (years) are flagged implausible for an ODIR screening photo
PLAUSIBLE_AGE = (5.0, 110.0)
_SPLIT_KEYWORDS = re.compile(r"[,，、;；]")


def split_keywords(text: Any) -> list[str]:
    """Diagnostic keywords of one eye; ',' and the full-width '，' both separate them."""
    if text is None:
        return []
    return [k.strip().lower() for k in _SPLIT_KEYWORDS.split(str(text)) if k.strip()]


def eye_abnormal(keywords: list[str]) -> int | None:
    """0 if the eye's keywords say "normal fundus" (quality notes aside), 1 otherwise, None when the
    keywords carry no diagnosis (not a fundus image, or quality notes only)."""
    if any(k in NOT_FUNDUS for k in keywords):
        return None
    diagnostic = [k for k in keywords if k not in QUALITY_NOTES]
    if not diagnostic:
        return None
    return 0 if all(k == NORMAL for k in diagnostic) else 1


def age_flag(pid: str, age: float | None) -> str | None:
    if age is None:
        return None
    if pid in KNOWN_BAD_AGE_IDS or not PLAUSIBLE_AGE[0] <= age <= PLAUSIBLE_AGE[1]:
        return "implausible"
    return None


def _float(v: Any) -> float | None:
    try:
        f = float(str(v).strip())
    except (TypeError, ValueError):
        return None
    return f if f == f else None


def _id(v: Any) -> str:
    s = str(v).strip()
    return s[:-2] if s.endswith(".0") and s[:-2].isdigit() else s


def _normalize_keys(row: dict[Any, Any]) -> dict[str, str]:
    """Column names lower-cased, except the one-letter label columns N D G C A H M O, which keep
    their case: the per-image sheet also has ``w``/``h`` (width/height), and ``h`` is not ``H``."""
    out: dict[str, str] = {}
    for k, v in row.items():
        k = str(k or "").strip()
        key = k if k in LABEL_COLUMNS else k.lower()
        out[key] = str(v if v is not None else "").strip()
    return out


def _bit(v: Any, where: str) -> int:
    f = _float(v)
    if f not in (0.0, 1.0):
        raise SourceError(f"{where}: label value {v!r} is not 0/1")
    return int(f)


class OdirIngester(Ingester):
    kind = "odir"
    default_task = "fundus_disease"
    tasks = ("fundus_disease", "fundus_age")
    description = "ODIR images + labels.csv (per image) or the official sheet (CSV/xlsx)"

    def __init__(self) -> None:
        self.sheet: str | None = None
        self.sheet_form: str | None = None

    # ---------------------------------------------------------------- the sheet

    def _find_sheet(self, ctx: IngestContext) -> tuple[str, list[dict[str, str]]]:
        if not ctx.is_dir(ctx.src):
            raise SourceError(f"{ctx.src}: expected the ODIR folder (images + labels.csv)")
        preferred = storage.join(ctx.src, "labels.csv")
        children = ctx.list_dir(ctx.src)
        csvs = ([preferred] if preferred in children else []) + sorted(
            c for c in children if c.lower().endswith(".csv") and c != preferred)
        for uri in csvs:
            rows = self._read_csv(ctx, uri)
            if rows and self._form(rows[0]) is not None:
                return uri, rows
        xlsx = [c for c in children if c.lower().endswith(".xlsx")]
        if xlsx:
            return xlsx[0], self._read_xlsx(ctx, xlsx[0])
        raise SourceError(f"{ctx.src}: no ODIR label sheet found (labels.csv with file, ID, keywords, "
                          f"{' '.join(LABEL_COLUMNS)}; or the official sheet saved as CSV)")

    @staticmethod
    def _read_csv(ctx: IngestContext, uri: str) -> list[dict[str, str]]:
        reader = csv.DictReader(io.StringIO(ctx.read_text(uri)))
        return [_normalize_keys(r) for r in reader]

    @staticmethod
    def _read_xlsx(ctx: IngestContext, uri: str) -> list[dict[str, str]]:
        try:
            import openpyxl  # noqa: F401
            import pandas as pd
        except ImportError:
            raise SourceError(f"{uri}: reading .xlsx needs openpyxl; save the sheet as CSV next to it "
                              "or pip install openpyxl") from None
        df = pd.read_excel(io.BytesIO(ctx.read(uri)), dtype=str).fillna("")
        return [_normalize_keys(r) for r in df.to_dict("records")]

    @staticmethod
    def _form(row: dict[str, str]) -> str | None:
        cols = set(row)
        labels = set(LABEL_COLUMNS)
        if {"file", "id", "keywords"} | labels <= cols:
            return "per_image"
        if {"id", "left-fundus", "right-fundus", "left-diagnostic keywords",
                "right-diagnostic keywords"} | labels <= cols:
            return "official"
        return None

    def _records(self, ctx: IngestContext) -> Iterator[dict[str, Any]]:
        """Per-image records from either sheet form (missing images: error / skipped, see module)."""
        self.sheet, rows = self._find_sheet(ctx)
        self.sheet_form = self._form(rows[0])
        base = storage.parent(self.sheet)
        if self.sheet_form == "per_image":
            for i, r in enumerate(rows, start=2):
                yield {"uri": ctx.resolve(base, r["file"]), "id": _id(r["id"]), "eye": r.get("eye"),
                       "age": r.get("age"), "sex": r.get("sex"), "keywords": r["keywords"],
                       "labels": r, "where": f"{self.sheet}:{i}"}
            return
        index: dict[str, str] = {}
        for uri in ctx.list_files(ctx.src, IMAGE_SUFFIXES):
            index.setdefault(storage.basename(uri), uri)
        missing = 0
        for i, r in enumerate(rows, start=2):
            for side in ("left", "right"):
                name = r[f"{side}-fundus"]
                if not name:
                    continue
                uri = index.get(name)
                if uri is None:
                    missing += 1
                    continue
                yield {"uri": uri, "id": _id(r["id"]), "eye": side, "age": r.get("patient age"),
                       "sex": r.get("patient sex"), "keywords": r[f"{side}-diagnostic keywords"],
                       "labels": r, "where": f"{self.sheet}:{i}"}
        if missing:
            ctx.warn(f"{self.sheet}: {missing} image(s) named in the sheet are not under {ctx.src}; skipped")

    # ---------------------------------------------------------------- rows

    def rows(self, ctx: IngestContext) -> Iterator[dict[str, Any]]:
        for rec in self._records(ctx):
            uri, pid = rec["uri"], rec["id"]
            if not pid:
                raise SourceError(f"{rec['where']}: empty ID")
            parsed = eye_from_stem(stem_of(uri))
            if parsed is not None:
                name_id, eye = parsed
                if name_id != pid:
                    ctx.warn(f"{uri}: file name says patient {name_id} but the sheet says ID {pid}; "
                             "using the sheet's ID")
                hint = normalize_eye(rec["eye"])
                if hint != "unknown" and hint != eye:
                    ctx.warn(f"{uri}: file name says {eye} eye, the sheet says {hint}; using the file name")
            else:
                eye = normalize_eye(rec["eye"])
            keywords = split_keywords(rec["keywords"])
            abnormal = eye_abnormal(keywords)
            if abnormal is None:
                ctx.warn(f"{uri}: keywords {rec['keywords']!r} carry no diagnosis; label left null")
            ref = ctx.image(uri)
            row: dict[str, Any] = {"image": ref.uri, "patient_id": pid, "eye": eye,
                                   "width": ref.width, "height": ref.height}
            if ctx.task == "fundus_disease":
                row["label"] = abnormal
                row["labels"] = [_bit(rec["labels"][c], rec["where"]) for c in LABEL_COLUMNS]
            else:
                age = _float(rec["age"])
                flag = age_flag(pid, age)
                if flag:
                    ctx.warn(f"{uri}: patient {pid} age {age:g} flagged {flag}")
                row.update(age=age, age_flag=flag, sex=normalize_sex(rec["sex"]), disease=abnormal)
            yield row

    def classes(self, task: str) -> list[str]:
        return list(CLASSES) if task == "fundus_disease" else []

    def extra_meta(self, task: str, ctx: IngestContext) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "sheet": self.sheet,
            "sheet_form": self.sheet_form,
            "label_rule": "abnormal = that eye's keywords other than 'normal fundus' (quality notes "
                          "ignored; ',' and '，' separate keywords)",
            "citation": "Li et al., Bench 2020, LNCS 12614, pp. 177-193 (2021)",
        }
        if task == "fundus_disease":
            meta.update(labels_classes=LABEL_COLUMNS, labels_names=LABEL_NAMES, labels_level="patient")
        else:
            meta.update(age_flag_rule=f"implausible: IDs {sorted(KNOWN_BAD_AGE_IDS)} or age outside "
                                      f"{PLAUSIBLE_AGE[0]:g}-{PLAUSIBLE_AGE[1]:g}",
                        disease_rule="1 if the eye's keywords are not 'normal fundus'")
        return meta
