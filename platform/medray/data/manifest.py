"""Manifests: one Parquet table per data set, one schema per task.

Every row describes one image::

    image       string   URI of the image (absolute local path, s3://..., memory://...)
    patient_id  string   patient (or subject) identifier; splits are by patient
    eye         string   "left" | "right" | "unknown"
    width       int32    pixels, after EXIF orientation
    height      int32
    split       string   "train" | "val" | "test"
    dataset     string   where the row came from (e.g. "odir", "duke_dme", "synth_skin")

plus the task's labels (see :data:`TASKS`). The class list of a task (classes of a classifier, the
structure map of an OCT segmentation, ROP stages...) is stored in the Parquet schema metadata under
``medray`` as JSON, together with the task name, so a manifest is self-describing::

    {"task": "oct_seg", "classes": ["background", "fluid"], "version": 1}

Manifests are written atomically and read in streaming batches (:func:`iter_batches`): nothing here
needs the whole table in memory, so a manifest of millions of rows is fine.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from medray import storage
from medray.errors import ManifestError

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")
EYES = ("left", "right", "unknown")

COMMON_FIELDS = [
    pa.field("image", pa.string(), nullable=False),
    pa.field("patient_id", pa.string(), nullable=False),
    pa.field("eye", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
]

BOX_TYPE = pa.struct(
    [
        pa.field("x0", pa.float32()),
        pa.field("y0", pa.float32()),
        pa.field("x1", pa.float32()),
        pa.field("y1", pa.float32()),
        pa.field("label", pa.int32()),
    ]
)


@dataclass(frozen=True)
class Task:
    """A manifest schema: the task's label columns and how to check a row's labels."""

    name: str
    fields: list[pa.Field]
    description: str
    # columns that hold URIs of extra files (checked for existence/decoding by `validate`)
    file_columns: tuple[str, ...] = ()
    # label_check(row, classes, meta) -> reasons; meta is the manifest's medray metadata
    label_check: Callable[..., list[str]] | None = field(default=None, compare=False)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(COMMON_FIELDS + self.fields)

    @property
    def columns(self) -> list[str]:
        return [f.name for f in COMMON_FIELDS + self.fields]


def _in_classes(value: Any, classes: list[str], name: str) -> list[str]:
    if value is None:
        return []
    if not classes:
        return [] if value >= 0 else [f"{name}={value} is negative"]
    if not 0 <= int(value) < len(classes):
        return [f"{name}={value} out of range [0, {len(classes) - 1}] ({len(classes)} classes)"]
    return []


def _check_age(row: dict[str, Any], classes: list[str], meta: dict[str, Any] | None = None) -> list[str]:
    out = []
    age = row.get("age")
    if age is not None and not (0 <= age <= 130):
        out.append(f"age={age:g} out of range [0, 130]")
    d = row.get("disease")
    if d is not None and d not in (0, 1):
        out.append(f"disease={d} not 0/1")
    return out


def _check_classify(row: dict[str, Any], classes: list[str], meta: dict[str, Any] | None = None) -> list[str]:
    out = _in_classes(row.get("label"), classes, "label")
    multi = row.get("labels")
    if multi is not None:
        # the multi-hot may name its own label set (e.g. ODIR's 8 patient-level labels)
        names = (meta or {}).get("labels_classes") or classes
        if names and len(multi) != len(names):
            out.append(f"labels has {len(multi)} entries, expected {len(names)}")
        if any(v not in (0, 1) for v in multi):
            out.append("labels must be 0/1")
    return out


def _check_oct(row: dict[str, Any], classes: list[str], meta: dict[str, Any] | None = None) -> list[str]:
    out = []
    for k in ("axial_um", "lateral_um"):
        v = row.get(k)
        if v is not None and not v > 0:
            out.append(f"{k}={v} must be > 0")
    return out


def _check_skin(row: dict[str, Any], classes: list[str], meta: dict[str, Any] | None = None) -> list[str]:
    out = _in_classes(row.get("label"), classes, "label")
    w, h = row.get("width") or 0, row.get("height") or 0
    for i, b in enumerate(row.get("boxes") or []):
        if not (0 <= b["x0"] < b["x1"] <= w and 0 <= b["y0"] < b["y1"] <= h):
            out.append(f"boxes[{i}]=({b['x0']:g},{b['y0']:g},{b['x1']:g},{b['y1']:g}) not inside {w}x{h}")
        out += _in_classes(b.get("label"), classes, f"boxes[{i}].label")
    return out


def _check_rop(row: dict[str, Any], classes: list[str], meta: dict[str, Any] | None = None) -> list[str]:
    return _in_classes(row.get("stage"), classes, "stage")


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "fundus_age",
            [
                pa.field("age", pa.float32()),  # years; null = unknown
                pa.field("age_flag", pa.string()),  # e.g. "implausible", "approximate"; null = ok
                pa.field("sex", pa.string()),
                pa.field("disease", pa.int8()),  # aging-related fundus disease 0/1; null = unknown
            ],
            "colour fundus photo with chronological age (+ optional disease flag)",
            label_check=_check_age,
        ),
        Task(
            "fundus_disease",
            [
                pa.field("label", pa.int32()),  # index into classes (binary or multi-class)
                pa.field("labels", pa.list_(pa.int8())),  # optional multi-hot over classes
            ],
            "fundus photo with disease class (binary, multi-class or multi-label)",
            label_check=_check_classify,
        ),
        Task(
            "oct_seg",
            [
                pa.field("mask", pa.string()),  # URI of a single-channel class-id PNG; null = unlabelled
                pa.field("axial_um", pa.float32()),  # micrometres per pixel along depth (height)
                pa.field("lateral_um", pa.float32()),  # micrometres per pixel along width
                pa.field("scan_mode", pa.string()),  # "line", "circle", ...
            ],
            "OCT B-scan with a class-id mask (classes = the structure map)",
            file_columns=("mask",),
            label_check=_check_oct,
        ),
        Task(
            "skin",
            [
                pa.field("label", pa.int32()),  # null = unlabelled
                pa.field("boxes", pa.list_(BOX_TYPE)),  # lesion boxes in pixels; null = none given
                pa.field("label_quality", pa.string()),  # "clean" | "noisy"
            ],
            "skin photo with disease class and optional lesion boxes",
            label_check=_check_skin,
        ),
        Task(
            "rop",
            [pa.field("stage", pa.int32())],  # null = unlabelled
            "infant fundus photo with ROP stage (null = unlabelled)",
            label_check=_check_rop,
        ),
    ]
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ManifestError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None


# --------------------------------------------------------------------------------------------
# Splits


def patient_split(patient_id: str, seed: int = 0, val: float = 0.15, test: float = 0.15,
                  dataset: str = "") -> str:
    """Deterministic split of a patient: a hash of (seed, dataset, patient) in [0, 1).

    Stable (the same patient lands in the same split whatever else is in the set), reproducible,
    needs no global list of patients, and keeps both eyes of a patient together.
    """
    h = hashlib.sha256(f"{seed}:{dataset}:{patient_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


def balanced_patient_splits(patients: Iterable[str], seed: int = 0, val: float = 0.15, test: float = 0.15,
                            dataset: str = "") -> dict[str, str]:
    """Split a (small) set of patients so every split gets its share (at least one patient each
    where there are >= 3): patients are ordered by their seeded hash and cut at the fractions.
    Use for tiny sample sets where independent hashing could leave a split empty."""
    ps = sorted(set(patients), key=lambda p: hashlib.sha256(f"{seed}:{dataset}:{p}".encode()).digest())
    n = len(ps)
    n_test = max(1, round(n * test)) if n >= 3 and test > 0 else 0
    n_val = max(1, round(n * val)) if n >= 3 and val > 0 else 0
    out = {}
    for i, p in enumerate(ps):
        out[p] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


# --------------------------------------------------------------------------------------------
# Writing


def _meta(task: str, classes: list[str] | None, extra: dict[str, Any] | None) -> dict[bytes, bytes]:
    m = {"task": task, "classes": list(classes or []), "version": SCHEMA_VERSION}
    if extra:
        m.update(extra)
    return {b"medray": json.dumps(m).encode()}


def to_table(rows: list[dict[str, Any]] | pa.Table, task: str, classes: list[str] | None = None,
             extra_meta: dict[str, Any] | None = None) -> pa.Table:
    """Rows (dicts) or a table -> a table with exactly the task's schema (missing optional label
    columns filled with nulls; unknown columns are an error)."""
    t = get_task(task)
    schema = t.schema
    if isinstance(rows, pa.Table):
        cols = {n: rows.column(n) for n in rows.column_names}
        n = rows.num_rows
    else:
        cols_l: dict[str, list] = {f.name: [] for f in schema}
        for i, r in enumerate(rows):
            extra = set(r) - set(cols_l)
            if extra:
                raise ManifestError(f"row {i}: unknown column(s) {sorted(extra)} for task {task!r}")
            for name in cols_l:
                cols_l[name].append(r.get(name))
        cols = cols_l  # type: ignore[assignment]
        n = len(rows)
    unknown = set(cols) - {f.name for f in schema}
    if unknown:
        raise ManifestError(f"unknown column(s) {sorted(unknown)} for task {task!r}")
    arrays = []
    for f in schema:
        if f.name in cols:
            try:
                arrays.append(pa.array(cols[f.name], type=f.type) if not isinstance(cols[f.name], (pa.Array, pa.ChunkedArray))
                              else cols[f.name].cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
                raise ManifestError(f"column {f.name!r}: {e}") from None
        elif f.nullable:
            arrays.append(pa.nulls(n, f.type))
        else:
            raise ManifestError(f"missing required column {f.name!r} for task {task!r}")
    for f, a in zip(schema, arrays):
        if not f.nullable and a.null_count:
            raise ManifestError(f"column {f.name!r} has {a.null_count} null value(s)")
    table = pa.Table.from_arrays(arrays, schema=schema)
    return table.replace_schema_metadata(_meta(task, classes, extra_meta))


def write_manifest(rows: list[dict[str, Any]] | pa.Table, uri: str, task: str,
                   classes: list[str] | None = None, extra_meta: dict[str, Any] | None = None,
                   s3: Any = None, row_group_size: int = 65536) -> storage.Artifact:
    """Write a manifest atomically; returns the artifact (uri, sha256, size)."""
    table = to_table(rows, task, classes, extra_meta)
    with ManifestWriter(uri, task, classes, extra_meta, s3=s3, row_group_size=row_group_size) as w:
        w.write_table(table)
    assert w.artifact is not None
    return w.artifact


class ManifestWriter:
    """Streaming writer for big manifests: rows are appended in batches to a local temporary Parquet
    file, which is moved/uploaded atomically to ``uri`` on close (nothing is published on error)."""

    def __init__(self, uri: str, task: str, classes: list[str] | None = None,
                 extra_meta: dict[str, Any] | None = None, s3: Any = None, row_group_size: int = 65536):
        self.uri, self.task, self.classes, self.extra, self.s3 = str(uri), task, classes, extra_meta, s3
        self.schema = get_task(task).schema.with_metadata(_meta(task, classes, extra_meta))
        self.row_group_size = row_group_size
        fd, self._tmp = tempfile.mkstemp(suffix=".parquet.tmp")
        os.close(fd)
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="zstd")
        self.num_rows = 0
        self.artifact: storage.Artifact | None = None

    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.write_table(to_table(rows, self.task, self.classes, self.extra))

    def write_table(self, table: pa.Table) -> None:
        table = table.replace_schema_metadata(self.schema.metadata)
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self.num_rows += table.num_rows

    def close(self, publish: bool = True) -> None:
        self._writer.close()
        try:
            if publish:
                self.artifact = storage.upload_file(self._tmp, self.uri, self.s3)
        finally:
            os.unlink(self._tmp)

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(publish=exc_type is None)


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class ManifestInfo:
    uri: str
    task: str
    classes: list[str]
    num_rows: int
    meta: dict[str, Any]


def _parquet_file(uri: str, s3: Any = None) -> pq.ParquetFile:
    fs, path = storage.pyarrow_filesystem(uri, s3)
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except FileNotFoundError:
        raise ManifestError(f"{uri}: manifest not found") from None
    except (pa.ArrowInvalid, OSError) as e:
        if "not found" in str(e).lower() or "no such file" in str(e).lower():
            raise ManifestError(f"{uri}: manifest not found") from None
        raise ManifestError(f"{uri}: not a Parquet manifest: {e}") from None


def info(uri: str, s3: Any = None) -> ManifestInfo:
    """Task, classes and row count from the footer only."""
    pf = _parquet_file(uri, s3)
    raw = (pf.schema_arrow.metadata or {}).get(b"medray")
    if raw is None:
        raise ManifestError(f"{uri}: no medray metadata (not written by medray?)")
    meta = json.loads(raw)
    return ManifestInfo(uri=str(uri), task=meta["task"], classes=list(meta.get("classes", [])),
                        num_rows=pf.metadata.num_rows, meta=meta)


def iter_batches(uri: str, batch_size: int = 4096, columns: list[str] | None = None,
                 s3: Any = None) -> Iterator[pa.RecordBatch]:
    pf = _parquet_file(uri, s3)
    yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def read_manifest(uri: str, s3: Any = None, columns: list[str] | None = None) -> pa.Table:
    """The whole table (small manifests, tests, reports). Pipelines use Ray Data instead."""
    pf = _parquet_file(uri, s3)
    return pf.read(columns=columns)


def summarize(uri: str, s3: Any = None) -> dict[str, Any]:
    """Counts per split (and per class where the task has one), streaming."""
    inf = info(uri, s3)
    label_col = {"fundus_disease": "label", "skin": "label", "rop": "stage"}.get(inf.task)
    cols = ["split", "patient_id"] + ([label_col] if label_col else []) + (["age"] if inf.task == "fundus_age" else [])
    per_split: dict[str, int] = {}
    per_class: dict[str, int] = {}
    patients: set[str] = set()
    ages: list[float] = []
    for b in iter_batches(uri, columns=cols, s3=s3):
        d = b.to_pydict()
        for s in d["split"]:
            per_split[s] = per_split.get(s, 0) + 1
        patients.update(d["patient_id"])
        if label_col:
            for v in d[label_col]:
                k = "unlabelled" if v is None else (inf.classes[v] if 0 <= v < len(inf.classes) else str(v))
                per_class[k] = per_class.get(k, 0) + 1
        if inf.task == "fundus_age":
            ages += [a for a in d["age"] if a is not None]
    out: dict[str, Any] = {"uri": inf.uri, "task": inf.task, "rows": inf.num_rows, "patients": len(patients),
                           "splits": dict(sorted(per_split.items())), "classes": inf.classes}
    if per_class:
        out["per_class"] = per_class
    if ages:
        out["age"] = {"min": min(ages), "max": max(ages), "mean": round(sum(ages) / len(ages), 1)}
    return out
