"""``medray data validate``: check every row of a manifest before spending GPU hours on it.

For each row (streamed in batches; the table is never held in memory):

* the image exists, is not empty and decodes completely (a reduced-scale JPEG decode keeps big fundus
  photos fast, and still reads the whole entropy-coded stream, so truncation is detected);
* its size (after EXIF orientation) equals the row's ``width``/``height``;
* the task's file columns (e.g. the OCT ``mask``) exist and decode; a mask is single-channel, its
  class ids lie inside the manifest's class map and its size equals the image's;
* the common fields hold (split, eye, positive width/height) and the task's label checks
  (:attr:`medray.data.manifest.Task.label_check`) pass.

Rows are checked in parallel by a thread pool (decoding releases the GIL). Files are only read.
The :class:`Report` lists every problem as ``(row, file, reason)``; a row with several problems is
listed once per problem and counted once.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

import numpy as np

from medray.data import imageio, manifest
from medray.errors import (
    CorruptImageError,
    DecompressionBombError,
    EmptyFileError,
    ImageDecodeError,
    ManifestError,
    MedrayError,
    MissingFileError,
    TruncatedImageError,
    UnreadableFileError,
    UnsupportedImageError,
)

# Decode JPEGs at a reduced DCT scale whose shorter side is >= this: 1/8 of the pixels of a 12 MP
# fundus photo, yet every byte of the stream is still read and entropy-decoded.
VALIDATE_TARGET = 64
BATCH_ROWS = 1024
PROGRESS_MIN_ROWS = 2000  # show progress (stderr) for manifests at least this big
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class Problem:
    """One problem of one row. ``row`` is the 0-based index in the manifest."""

    row: int
    file: str
    reason: str


@dataclass
class Report:
    uri: str
    task: str
    classes: list[str]
    total_rows: int  # rows in the manifest
    rows: int = 0  # rows checked (< total_rows with --limit)
    bad: list[Problem] = field(default_factory=list)  # sorted by row
    seconds: float = 0.0

    @property
    def bad_rows(self) -> int:
        """Rows with at least one problem."""
        return len({p.row for p in self.bad})

    @property
    def ok(self) -> bool:
        return not self.bad

    def by_row(self) -> dict[int, list[Problem]]:
        out: dict[int, list[Problem]] = {}
        for p in self.bad:
            out.setdefault(p.row, []).append(p)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "task": self.task, "classes": self.classes, "total_rows": self.total_rows,
                "rows": self.rows, "bad_rows": self.bad_rows, "seconds": round(self.seconds, 3),
                "bad": [{"row": p.row, "file": p.file, "reason": p.reason} for p in self.bad]}


# --------------------------------------------------------------------------------------------
# Per-row checks


_KIND = [  # most specific first
    (MissingFileError, "missing file"),
    (EmptyFileError, "empty file"),
    (TruncatedImageError, "truncated"),
    (DecompressionBombError, "too many pixels"),
    (UnreadableFileError, "unreadable file"),
    (CorruptImageError, "corrupt"),
    (UnsupportedImageError, "not a decodable image"),
]


def _describe(what: str, e: ImageDecodeError) -> str:
    kind = next((k for cls, k in _KIND if isinstance(e, cls)), "cannot decode")
    if kind.split()[0] in e.reason.lower():  # "truncated jpeg ..." says it already
        return f"{what}: {e.reason}"
    return f"{what}: {kind}: {e.reason}"


def _fmt_size(w: int, h: int) -> str:
    return f"{w}x{h}"


def _check_image(uri: str, row: dict[str, Any], s3: Any, max_pixels: int) -> tuple[list[str], tuple[int, int] | None]:
    """Problems of the row's image, and its (width, height) when it could be read."""
    try:
        data = imageio.read_file(uri, s3=s3)
        w, h = imageio.image_size(data, uri, max_pixels=max_pixels)
        arr = imageio.decode(data, uri, mode="keep", target=VALIDATE_TARGET, max_pixels=max_pixels)
    except ImageDecodeError as e:
        return [_describe("image", e)], None
    out = []
    if arr.ndim < 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        out.append(f"image: decoded to an empty array {arr.shape}")
    rw, rh = row.get("width"), row.get("height")
    if (rw, rh) != (w, h):
        out.append(f"image size {_fmt_size(w, h)} != manifest width x height {rw}x{rh}")
    return out, (w, h)


def _check_file(uri: str, col: str, s3: Any, max_pixels: int) -> list[str]:
    """A file column that is not a mask: it exists and decodes."""
    try:
        imageio.decode(imageio.read_file(uri, s3=s3), uri, mode="keep", target=VALIDATE_TARGET,
                       max_pixels=max_pixels)
    except ImageDecodeError as e:
        return [_describe(col, e)]
    return []


def _check_mask(uri: str, col: str, classes: list[str], size: tuple[int, int] | None, s3: Any,
                max_pixels: int) -> list[str]:
    try:
        mask = imageio.read_mask(uri, s3=s3, max_pixels=max_pixels)
    except ImageDecodeError as e:
        return [_describe(col, e)]
    out = []
    mh, mw = mask.shape[:2]
    if size is not None and (mw, mh) != size:
        out.append(f"{col} size {_fmt_size(mw, mh)} != image size {_fmt_size(*size)}")
    if classes:
        ids = np.unique(mask)
        bad = ids[(ids < 0) | (ids >= len(classes))]
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
            out.append(f"{col} has class id(s) {shown} outside the class map "
                       f"[0, {len(classes) - 1}] ({len(classes)} classes)")
    return out


def _check_common(row: dict[str, Any]) -> list[str]:
    out = []
    if row.get("split") not in manifest.SPLITS:
        out.append(f"split={row.get('split')!r} not one of {', '.join(manifest.SPLITS)}")
    if row.get("eye") not in manifest.EYES:
        out.append(f"eye={row.get('eye')!r} not one of {', '.join(manifest.EYES)}")
    for k in ("width", "height"):
        v = row.get(k)
        if v is None or v <= 0:
            out.append(f"{k}={v} must be > 0")
    if not row.get("patient_id"):
        out.append("patient_id is empty")
    return out


def check_row(index: int, row: dict[str, Any], task: manifest.Task, classes: list[str], s3: Any = None,
              max_pixels: int = imageio.DEFAULT_MAX_PIXELS, meta: dict[str, Any] | None = None) -> list[Problem]:
    """Every problem of one manifest row (empty when the row is fine)."""
    image = row.get("image")
    problems: list[Problem] = []

    def add(file: str | None, reasons: list[str]) -> None:
        problems.extend(Problem(index, str(file or ""), r) for r in reasons)

    try:
        add(image, _check_common(row))
        size = None
        if not image:
            add(image, ["image URI is empty"])
        else:
            reasons, size = _check_image(str(image), row, s3, max_pixels)
            add(image, reasons)
        for col in task.file_columns:
            uri = row.get(col)
            if uri is None:
                continue  # optional (e.g. an unlabelled OCT scan)
            if not uri:
                add(image, [f"{col} URI is empty"])
                continue
            if "mask" in col:  # class-id map: single channel, ids in the class map, image-sized
                add(uri, _check_mask(str(uri), col, classes, size, s3, max_pixels))
            else:
                add(uri, _check_file(str(uri), col, s3, max_pixels))
        if task.label_check is not None:
            try:
                add(image, task.label_check(row, classes, meta))
            except Exception as e:  # noqa: BLE001 - a malformed value must not stop the run
                add(image, [f"labels: check failed: {type(e).__name__}: {e}"])
    except Exception as e:  # noqa: BLE001 - one odd row never aborts validation of the others
        add(image, [f"unexpected error: {type(e).__name__}: {e}"])
    return problems


# --------------------------------------------------------------------------------------------
# The run


def _rows(uri: str, task: manifest.Task, limit: int | None, s3: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    i = 0
    try:
        batches = manifest.iter_batches(uri, batch_size=BATCH_ROWS, columns=task.columns, s3=s3)
        for batch in batches:
            for row in batch.to_pylist():
                if limit is not None and i >= limit:
                    return
                yield i, row
                i += 1
    except ManifestError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow: missing column, corrupt page, lost connection
        raise ManifestError(f"{uri}: cannot read rows (after row {i}): {e}") from None


def _open_check(uri: str, s3: Any) -> None:
    """Clear messages for the usual mistakes before pyarrow sees the file: absent, a folder,
    unreadable, not Parquet at all (e.g. an image or a CSV passed by mistake)."""
    from medray import storage

    try:
        fs, path = storage.filesystem(uri, s3)
        if not fs.exists(path):
            raise ManifestError(f"{uri}: manifest not found")
        if fs.isdir(path):
            raise ManifestError(f"{uri}: is a folder; give the manifest file (.parquet)")
        with fs.open(path, "rb") as f:
            head = f.read(4)
    except ManifestError:
        raise
    except Exception as e:  # noqa: BLE001 - permission, network, bad credentials
        raise ManifestError(f"{uri}: cannot read manifest: {type(e).__name__}: {e}") from None
    if head != b"PAR1":
        what = "an empty file" if not head else f"a file starting with {head!r}"
        raise ManifestError(f"{uri}: not a Parquet manifest ({what})")


def _compatible(got: Any, want: Any) -> bool:
    """Whether a column of type ``got`` holds values a check of type ``want`` understands."""
    import pyarrow as pa

    t = pa.types
    if got == want or t.is_null(got):
        return True
    if t.is_integer(want):
        return t.is_integer(got)
    if t.is_floating(want):
        return t.is_floating(got) or t.is_integer(got)
    if t.is_string(want) or t.is_large_string(want):
        return t.is_string(got) or t.is_large_string(got)
    if t.is_list(want) or t.is_large_list(want):
        return (t.is_list(got) or t.is_large_list(got)) and _compatible(got.value_type, want.value_type)
    if t.is_struct(want):
        return t.is_struct(got) and all(
            got.get_field_index(f.name) >= 0 and _compatible(got.field(f.name).type, f.type) for f in want)
    return False


def _schema_check(uri: str, task: manifest.Task, s3: Any) -> None:
    """The manifest has the task's columns with compatible types (pyarrow would silently skip a
    missing column, and every label check would then pass on nulls)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from medray import storage

    try:
        fs, path = storage.pyarrow_filesystem(uri, s3)
        with fs.open_input_file(path) as f:
            schema = pq.read_schema(f)
    except Exception as e:  # noqa: BLE001
        raise ManifestError(f"{uri}: cannot read the Parquet schema: {e}") from None
    missing = [c for c in task.columns if c not in schema.names]
    if missing:
        raise ManifestError(f"{uri}: missing column(s) {missing} for task {task.name!r}")
    wrong = [f"{f.name}: {schema.field(f.name).type} (expected {f.type})"
             for f in task.schema if not _compatible(schema.field(f.name).type, f.type)]
    if wrong:
        raise ManifestError(f"{uri}: column type(s) do not match task {task.name!r}: {'; '.join(wrong)}")


class _Progress:
    def __init__(self, total: int, stream: IO[str] | None, enabled: bool):
        self.total, self.stream, self.enabled = total, stream or sys.stderr, enabled
        self.t0 = self.last = time.monotonic()

    def update(self, done: int, bad_rows: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        pct = 100.0 * done / self.total if self.total else 100.0
        print(f"validate: {done:,}/{self.total:,} rows ({pct:.0f}%), {bad_rows:,} bad, {rate:,.0f} rows/s",
              file=self.stream, flush=True)


def validate_manifest(uri: str, *, workers: int = 8, limit: int | None = None, s3: Any = None,
                      progress: bool | None = None, progress_stream: IO[str] | None = None,
                      max_pixels: int = imageio.DEFAULT_MAX_PIXELS) -> Report:
    """Check every row (or the first ``limit``) of the manifest at ``uri``; see the module docstring.

    Args:
        workers: threads reading and decoding files in parallel.
        limit: check only the first N rows.
        s3: S3 options (``S3Options`` or dict) for the manifest and the files it names.
        progress: print progress lines to stderr; default: only for manifests of
            ``PROGRESS_MIN_ROWS`` rows or more.

    Raises:
        ManifestError: the manifest is absent, unreadable, not a medray manifest, or of an unknown task.
    """
    uri = str(uri)
    if workers < 1:
        raise MedrayError(f"--workers must be >= 1, got {workers}")
    if limit is not None and limit < 0:
        raise MedrayError(f"--limit must be >= 0, got {limit}")
    t0 = time.monotonic()
    _open_check(uri, s3)
    try:
        inf = manifest.info(uri, s3)
    except ManifestError:
        raise
    except Exception as e:  # noqa: BLE001 - bad JSON metadata, permission, network
        raise ManifestError(f"{uri}: cannot read manifest: {type(e).__name__}: {e}") from None
    task = manifest.get_task(inf.task)
    _schema_check(uri, task, s3)
    to_check = inf.num_rows if limit is None else min(limit, inf.num_rows)
    report = Report(uri=uri, task=inf.task, classes=list(inf.classes), total_rows=inf.num_rows)
    show = progress if progress is not None else to_check >= PROGRESS_MIN_ROWS
    prog = _Progress(to_check, progress_stream, show)

    problems: list[Problem] = []
    bad_rows: set[int] = set()
    done = 0
    max_in_flight = max(4 * workers, 16)  # bounded: memory stays flat whatever the manifest size
    pending: deque[Future] = deque()

    def collect(fut: Future) -> None:
        nonlocal done
        res = fut.result()
        problems.extend(res)
        bad_rows.update(p.row for p in res)
        done += 1

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medray-validate") as pool:
        try:
            for i, row in _rows(uri, task, limit, s3):
                pending.append(pool.submit(check_row, i, row, task, report.classes, s3, max_pixels, inf.meta))
                if len(pending) >= max_in_flight:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        pending.remove(f)
                        collect(f)
                    prog.update(done, len(bad_rows))
            for f in pending:
                collect(f)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    problems.sort(key=lambda p: p.row)  # stable: a row's reasons keep their order
    report.bad = problems
    report.rows = done
    report.seconds = time.monotonic() - t0
    prog.update(done, len(bad_rows), final=True)
    return report


# --------------------------------------------------------------------------------------------
# Output


def summary_line(report: Report) -> str:
    checked = f"{report.rows:,} rows" if report.rows == report.total_rows else \
        f"{report.rows:,} of {report.total_rows:,} rows"
    head = f"{report.uri} ({report.task}): checked {checked} in {report.seconds:.1f} s"
    if report.ok:
        return f"{head}: all OK"
    n = len(report.bad)
    return (f"{head}: {report.bad_rows:,} bad row{'s' if report.bad_rows != 1 else ''} "
            f"({n:,} problem{'s' if n != 1 else ''})")


def format_report(report: Report, max_lines: int | None = 1000) -> str:
    """An aligned ``row | file | reason`` table of the problems (at most ``max_lines`` of them,
    ``None`` = all) followed by a one-line summary."""
    lines: list[str] = []
    if report.bad:
        shown = report.bad if max_lines is None else report.bad[:max_lines]
        rw = max(len("row"), *(len(str(p.row)) for p in shown))
        fw = min(max(len("file"), *(len(p.file) for p in shown)), 100)
        lines.append(f"{'row':>{rw}}  {'file':<{fw}}  reason")
        lines.append(f"{'-' * rw}  {'-' * fw}  {'-' * 6}")
        for p in shown:
            f = p.file if len(p.file) <= fw else "..." + p.file[-(fw - 3):]
            lines.append(f"{p.row:>{rw}}  {f:<{fw}}  {p.reason}")
        if len(shown) < len(report.bad):
            lines.append(f"... {len(report.bad) - len(shown):,} more problem(s) not shown")
        lines.append("")
    lines.append(summary_line(report))
    return "\n".join(lines)
