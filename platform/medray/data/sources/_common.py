"""What every ingester shares: the source context, file access, the two-pass driver and the summary.

An ingester (one module per public layout) only knows its source: it yields one manifest row per
image (without ``split``) and says which task, classes and extra metadata the manifest gets. The
driver here does the rest, the same way for every kind:

1. Pass 1 streams the ingester's rows into a local temporary Parquet spool in batches (nothing the
   size of the data set is held in memory) and collects the set of patient ids.
2. The patients are split with :func:`medray.data.manifest.balanced_patient_splits` (seeded, by
   patient, so both eyes / all B-scans of a patient land in one split).
3. Pass 2 streams the spool into :class:`medray.data.manifest.ManifestWriter` with the split filled
   in, which publishes the manifest atomically at the end (nothing is published on error).

Files an ingester derives (class-id masks, rendered B-scans, lesion sidecars) and, with
``copy_images``, copies of the source images go into a folder beside the manifest,
``<manifest without .parquet>_files/``, written through :mod:`medray.storage`, so an ``s3://``
manifest yields a self-contained data set on S3.

Rows may carry private keys starting with ``_`` (for example ``_present``: the class ids a mask
contains); the driver uses them for the summary and drops them before writing.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from medray import storage
from medray.data import imageio, manifest
from medray.errors import ImageDecodeError, ManifestError, MedrayError, MissingFileError, StorageError

#: Bytes read to find an image's size from its header (JPEG/PNG/DICOM headers sit well inside this;
#: a file whose header lies further in, e.g. a TIFF with its IFD at the end, is read whole).
HEADER_BYTES = 1 << 20
#: Rows per batch written to the spool and the manifest.
BATCH_ROWS = 1024
#: Warnings listed in the summary (all of them go to the report file beside the manifest).
MAX_WARNINGS_IN_SUMMARY = 50

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")


class SourceError(MedrayError):
    """A source folder or file is missing, malformed, or does not fit the chosen kind."""


def one_line(text: str) -> str:
    """Collapse whitespace so a message (e.g. a codec's multi-line error) fits on one line."""
    return re.sub(r"\s+", " ", str(text)).strip()


@dataclass(frozen=True)
class ImageRef:
    """Where a row's image lives (after an optional copy) and its size from the header."""

    uri: str
    width: int
    height: int


@dataclass
class IngestContext:
    """Everything an ingester needs to know about the run, plus the helpers that enforce the
    common rules (sizes from headers, optional copies, derived files beside the manifest).

    Attributes:
        kind: the ingester's kind (also the manifest's ``dataset`` column).
        src: canonical URI of the source (absolute local path or ``s3://...``).
        out: canonical URI of the manifest to write.
        task: the manifest task.
        files_dir: folder beside the manifest for derived files and copies.
        copy_images: copy every image (and source mask) into ``files_dir`` and point rows there.
        s3: S3 options (``storage.s3`` config section or dict); None = environment.
        warnings: messages for the summary/report (one line each).
    """

    kind: str
    src: str
    out: str
    task: str
    files_dir: str
    copy_images: bool = False
    s3: Any = None
    warnings: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ messages

    def warn(self, message: str) -> None:
        """Record a warning (kept on one line)."""
        self.warnings.append(one_line(message))

    # ------------------------------------------------------------------ reading sources

    def read(self, uri: str) -> bytes:
        """All bytes of a source file; a missing file is a MissingFileError naming it."""
        try:
            return storage.read_bytes(uri, self.s3)
        except FileNotFoundError:
            raise MissingFileError(uri, "file not found") from None
        except IsADirectoryError:
            raise MissingFileError(uri, "is a folder, not a file") from None
        except OSError as e:
            raise StorageError(f"{uri}: cannot read: {one_line(str(e))}") from None

    def read_text(self, uri: str) -> str:
        """A source text file (UTF-8, BOM tolerated; latin-1 as a fallback for old exports)."""
        data = self.read(uri)
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            return data.decode("latin-1")

    def read_head(self, uri: str, n: int = HEADER_BYTES) -> bytes:
        """The first ``n`` bytes of a source file."""
        return self._read_head(uri, n)[0]

    def _read_head(self, uri: str, n: int = HEADER_BYTES) -> tuple[bytes, bool]:
        """The first ``n`` bytes of a file and whether that is the whole file."""
        try:
            with storage.open_read(uri, self.s3) as f:
                head = f.read(n)
                complete = len(head) < n or not f.read(1)
        except FileNotFoundError:
            raise MissingFileError(uri, "file not found") from None
        except IsADirectoryError:
            raise MissingFileError(uri, "is a folder, not a file") from None
        except OSError as e:
            raise StorageError(f"{uri}: cannot read: {one_line(str(e))}") from None
        return head, complete

    def exists(self, uri: str) -> bool:
        return storage.exists(uri, self.s3)

    def list_files(self, uri: str, suffixes: tuple[str, ...] = ()) -> Iterator[str]:
        """Files under a folder (recursively, sorted), as URIs."""
        return storage.iter_files(uri, suffixes, self.s3)

    def list_dir(self, uri: str) -> list[str]:
        """Immediate children of a folder, as URIs."""
        return storage.listdir(uri, self.s3)

    def is_dir(self, uri: str) -> bool:
        fs, path = storage.filesystem(uri, self.s3)
        try:
            return bool(fs.isdir(path))
        except OSError:
            return False

    def resolve(self, base: str, path: str) -> str:
        """``path`` as a URI: absolute paths/URIs as they are, relative ones against ``base``."""
        path = str(path).strip()
        if "://" in path or os.path.isabs(path):
            return storage.to_uri(path)
        return storage.join(base, path)

    def rel(self, uri: str, base: str | None = None) -> str:
        """A path relative to ``base`` (default: the source), used to name copies. Files outside
        the base get a short hash prefix so two files of the same name never collide."""
        base = (base or self.src).rstrip("/")
        uri = str(uri)
        if uri.startswith(base + "/"):
            return uri[len(base) + 1 :]
        digest = hashlib.sha256(uri.encode()).hexdigest()[:10]
        return f"external/{digest}/{storage.basename(uri)}"

    # ------------------------------------------------------------------ images and derived files

    def image(self, uri: str, *, rel: str | None = None, verify: bool = False) -> ImageRef:
        """Size an image from its header and, with ``copy_images``, copy it beside the manifest.

        The file is read once: only its header unless it must be copied or ``verify`` is set
        (DICOM: a readable header does not mean an installed codec can decode the pixels), in
        which case the whole file is read and, for ``verify``, decoded once.

        Raises:
            ImageDecodeError (MissingFileError, UnsupportedImageError, ...): naming the file.
        """
        if not (self.copy_images or verify):
            head, complete = self._read_head(uri)
            try:
                w, h = imageio.image_size(head, uri)
            except ImageDecodeError:
                if complete:
                    raise
                w, h = imageio.image_size(self.read(uri), uri)  # header beyond the first MiB
            return ImageRef(storage.to_uri(uri), int(w), int(h))
        return self.image_from_bytes(uri, self.read(uri), rel=rel, verify=verify)

    def image_from_bytes(self, uri: str, data: bytes, *, rel: str | None = None,
                         verify: bool = False) -> ImageRef:
        """As :meth:`image`, for a file the caller has already read whole."""
        w, h = imageio.image_size(data, uri)
        if verify:
            imageio.decode(data, uri, mode="keep")
        out_uri = storage.to_uri(uri)
        if self.copy_images:
            out_uri = self.write_file(f"images/{rel or self.rel(uri)}", data)
        return ImageRef(out_uri, int(w), int(h))

    def source_file(self, uri: str, *, rel: str | None = None) -> str:
        """A non-image file a row points at (a source mask): copied with ``copy_images``."""
        if not self.copy_images:
            if not self.exists(uri):
                raise MissingFileError(uri, "file not found")
            return storage.to_uri(uri)
        return self.write_file(f"masks/{rel or self.rel(uri)}", self.read(uri))

    def write_file(self, rel: str, data: bytes) -> str:
        """Write a derived file beside the manifest (atomic, any storage); returns its URI."""
        uri = storage.join(self.files_dir, rel)
        storage.write_bytes(uri, data, self.s3)
        return uri

    def write_png(self, rel: str, arr: np.ndarray) -> str:
        """Write an array as a PNG beside the manifest; returns its URI."""
        return self.write_file(rel, imageio.encode_png(np.ascontiguousarray(arr)))


# ---------------------------------------------------------------------------------------------
# Ingester protocol


class Ingester:
    """Base class of one public layout. Subclasses set the class attributes and implement
    :meth:`rows`; :meth:`classes` and :meth:`extra_meta` are read after the rows have been
    produced, so they may depend on what was found."""

    kind: str = ""
    default_task: str = ""
    tasks: tuple[str, ...] = ()
    description: str = ""
    #: the source is a file (csv) rather than a folder
    src_is_file: bool = False

    def check_task(self, task: str | None, src: str = "", s3: Any = None) -> str:
        """The task to write (``task`` or the kind's default); SourceError if the kind cannot."""
        task = task or self.default_task
        if task not in self.tasks:
            raise SourceError(f"kind {self.kind!r} does not produce task {task!r}; "
                              f"it produces: {', '.join(self.tasks)}")
        return task

    def rows(self, ctx: IngestContext) -> Iterator[dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def classes(self, task: str) -> list[str]:
        return []

    def extra_meta(self, task: str, ctx: IngestContext) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------------------------
# The driver


def manifest_files_dir(out: str) -> str:
    """``<out without .parquet>_files``: the folder for derived files and copies."""
    base = out[: -len(".parquet")] if out.endswith(".parquet") else out
    return f"{base}_files"


def _strip_private(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


class _Stats:
    """Counts for the summary, accumulated while pass 2 streams the rows."""

    def __init__(self, task: str, classes: list[str]):
        self.task, self.classes = task, classes
        self.splits: Counter[str] = Counter()
        self.per_class: Counter[str] = Counter()
        self.flags: Counter[str] = Counter()
        self.ages: list[float] = []

    def _name(self, v: int | None) -> str:
        if v is None:
            return "unlabelled"
        return self.classes[v] if 0 <= v < len(self.classes) else str(v)

    def add(self, table: pa.Table) -> None:
        d = table.to_pydict()
        self.splits.update(d["split"])
        if self.task in ("fundus_disease", "skin"):
            self.per_class.update(self._name(v) for v in d["label"])
        elif self.task == "rop":
            self.per_class.update(self._name(v) for v in d["stage"])
        elif self.task == "fundus_age":
            self.per_class.update({None: "disease_unknown", 0: "no_disease", 1: "disease"}.get(v, str(v))
                                  for v in d["disease"])
            self.flags.update(f for f in d["age_flag"] if f)
            self.ages += [a for a in d["age"] if a is not None]


def run(ingester: Ingester, src: str, out: str, *, task: str | None = None, seed: int = 0,
        copy_images: bool = False, s3: Any = None) -> dict[str, Any]:
    """Ingest ``src`` with ``ingester`` into the manifest ``out``; returns the summary dict."""
    src_uri = storage.to_uri(str(src)).rstrip("/") or "/"
    out_uri = storage.to_uri(str(out))
    if not storage.exists(src_uri, s3):
        raise SourceError(f"{src_uri}: source not found (kind {ingester.kind!r} expects "
                          f"{'a file' if ingester.src_is_file else 'a folder'}: {ingester.description})")
    task = ingester.check_task(task, src_uri, s3)
    ctx = IngestContext(kind=ingester.kind, src=src_uri, out=out_uri, task=task,
                        files_dir=manifest_files_dir(out_uri), copy_images=copy_images, s3=s3)
    schema = manifest.get_task(task).schema

    fd, spool_path = tempfile.mkstemp(suffix=".spool.parquet")
    os.close(fd)
    try:
        # ---- pass 1: rows -> spool, patients, preset splits
        patients: set[str] = set()
        preset: dict[str, str] = {}
        present: Counter[int] = Counter()
        unlabelled_masks = 0
        n_rows = 0
        batch: list[dict[str, Any]] = []
        writer = pq.ParquetWriter(spool_path, schema)
        try:
            for row in ingester.rows(ctx):
                row.setdefault("dataset", ingester.kind)
                for c in row.get("_present") or ():
                    present[int(c)] += 1
                if task == "oct_seg" and row.get("mask") is None:
                    unlabelled_masks += 1
                pid = str(row["patient_id"])
                patients.add(pid)
                split = row.get("split")
                if split:
                    if split not in manifest.SPLITS:
                        raise SourceError(f"{row['image']}: split {split!r} is not one of {manifest.SPLITS}")
                    if preset.setdefault(pid, split) != split:
                        raise SourceError(f"patient {pid!r} is in two splits ({preset[pid]} and {split}); "
                                          "splits must be by patient")
                elif preset:
                    raise SourceError(f"{row['image']}: no split while other rows have one")
                row["split"] = split or "train"  # placeholder, replaced in pass 2
                batch.append(_strip_private(row))
                n_rows += 1
                if len(batch) >= BATCH_ROWS:
                    writer.write_table(manifest.to_table(batch, task))
                    batch = []
            if batch:
                writer.write_table(manifest.to_table(batch, task))
        finally:
            writer.close()
        if n_rows == 0:
            raise SourceError(f"{src_uri}: no images found for kind {ingester.kind!r} "
                              f"({ingester.description})")
        if preset and len(preset) != len(patients):
            raise SourceError("some patients have a split and others do not")

        # ---- splits by patient
        splits = preset or manifest.balanced_patient_splits(patients, seed=seed, dataset=ingester.kind)

        # ---- pass 2: spool -> manifest (atomic publish on close)
        classes = ingester.classes(task)
        extra = {"kind": ingester.kind, "source": src_uri, "seed": seed, "copy_images": copy_images,
                 "files": ctx.files_dir, **ingester.extra_meta(task, ctx)}
        stats = _Stats(task, classes)
        with manifest.ManifestWriter(out_uri, task, classes, extra, s3=s3) as w:
            for rb in pq.ParquetFile(spool_path).iter_batches(batch_size=BATCH_ROWS):
                t = pa.Table.from_batches([rb])
                pids = t.column("patient_id").to_pylist()
                t = t.set_column(t.schema.get_field_index("split"), schema.field("split"),
                                 pa.array([splits[p] for p in pids], pa.string()))
                w.write_table(t)
                stats.add(t)
        art = w.artifact
        assert art is not None
    finally:
        if os.path.exists(spool_path):
            os.unlink(spool_path)

    summary: dict[str, Any] = {
        "manifest": art.uri,
        "kind": ingester.kind,
        "task": task,
        "rows": n_rows,
        "patients": len(patients),
        "splits": {s: stats.splits.get(s, 0) for s in manifest.SPLITS},
        "classes": classes,
    }
    if task == "oct_seg":
        per = {classes[c] if c < len(classes) else str(c): n for c, n in sorted(present.items())}
        if unlabelled_masks:
            per["unlabelled"] = unlabelled_masks
        summary["per_class"] = per  # images in which each class occurs
    elif stats.per_class:
        summary["per_class"] = dict(sorted(stats.per_class.items()))
    if stats.ages:
        summary["age"] = {"min": min(stats.ages), "max": max(stats.ages),
                          "mean": round(sum(stats.ages) / len(stats.ages), 1)}
    if stats.flags:
        summary["flagged"] = dict(stats.flags)
    summary["sha256"] = art.sha256
    summary["bytes"] = art.size
    summary["files"] = ctx.files_dir
    summary["warnings"] = ctx.warnings[:MAX_WARNINGS_IN_SUMMARY]
    if len(ctx.warnings) > MAX_WARNINGS_IN_SUMMARY:
        summary["warnings"].append(f"... and {len(ctx.warnings) - MAX_WARNINGS_IN_SUMMARY} more "
                                   "(see the report)")
    report = ctx.write_file("ingest_report.json", _json_bytes({**summary, "warnings": ctx.warnings}))
    summary["report"] = report
    return summary


def _json_bytes(obj: Any) -> bytes:
    import json

    return (json.dumps(obj, indent=2, default=str) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# Small shared parsers


_EYES = {"left": "left", "l": "left", "os": "left", "right": "right", "r": "right", "od": "right"}


def normalize_eye(value: Any) -> str:
    """``left``/``right``/``unknown`` from the usual spellings (L, R, OS, OD, Left, right ...)."""
    if value is None:
        return "unknown"
    return _EYES.get(str(value).strip().lower(), "unknown")


_STEM_EYE = re.compile(r"^(?P<pid>.+?)[_\-. ](?P<eye>left|right|od|os)$", re.IGNORECASE)


def eye_from_stem(stem: str) -> tuple[str, str] | None:
    """``("1023", "right")`` for ``1023_right``; None when the name carries no eye."""
    m = _STEM_EYE.match(stem)
    if not m:
        return None
    return m.group("pid"), normalize_eye(m.group("eye"))


def normalize_sex(value: Any) -> str | None:
    """``female``/``male``; None when unknown."""
    if value is None:
        return None
    v = str(value).strip().lower()
    return {"f": "female", "female": "female", "w": "female", "m": "male", "male": "male"}.get(v)


def stem_of(uri: str) -> str:
    name = storage.basename(uri)
    return name.rsplit(".", 1)[0] if "." in name else name


def sorted_unique(values: Iterable[str]) -> list[str]:
    return sorted(set(values))


def check_columns(found: Iterable[str], allowed: Iterable[str], where: str) -> None:
    """Raise naming the first column that is not allowed."""
    allowed = set(allowed)
    for c in found:
        if c not in allowed:
            raise ManifestError(f"{where}: unknown column {c!r} (allowed: {', '.join(sorted(allowed))})")
