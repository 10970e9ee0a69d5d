"""Generated data sets for controlled cases: ``medray data synth KIND --n N --out URI``.

Where no real labelled data exists, tests and quick runs use generated sets. Each kind writes REAL
image files (PNG/JPEG) and a Parquet manifest of its task (:mod:`medray.data.manifest`):

================  ===========  ============================================================
 kind             task         what (see each module's docstring)
================  ===========  ============================================================
 ``skin``         skin         skin photos, 1-3 lesions of K long-tailed classes, boxes,
                               box/clean/noisy parts (:mod:`.skin`)
 ``rop``          rop          infant fundus photos, ROP stages 0..3 (up to 5) (:mod:`.rop`)
 ``oct``          oct_seg      OCT B-scans + 14-structure class-id masks, several widths,
                               volumes of neighbouring scans per eye (:mod:`.oct`)
 ``fundus_age``   fundus_age   adult fundus photos whose age is a known function of visible
                               features, with an aging-disease flag (:mod:`.fundus_age`)
 ``fundus_        fundus_      fundus photos labelled gradable / ungradable (blur, dark,
 quality``        disease      glare, occlusion, off-centre defects) (:mod:`.fundus_quality`)
================  ===========  ============================================================

Layout: the manifest goes to ``out``; the files go beside it under ``<out without .parquet>_files/``
in folders of 1000 (``00000/00000042.png``, masks ``00000042_mask.png``), all written through
:mod:`medray.storage`, so ``s3://`` and ``memory://`` work like local paths. Re-running into the same
``out`` overwrites files of the same names (it does not delete files of a previous, larger run).

Determinism: the same kind, ``n``, seed and options give bit-identical files and manifest (same
sha256), whatever ``workers``/``chunk_size``: every row is rendered from its own random streams
(``_common.rng_for``), rows are written in order, and row groups have a fixed size. The generator's
seed, ``n`` and resolved options are stored in the manifest's metadata under ``synth``, so anything
about a row can be recomputed later (:func:`sample`, :func:`medray.data.synth.skin.true_labels`).

Scale: rows are produced in chunks of ``chunk_size`` (each chunk a pure function of its index range,
so chunks can run in separate processes: ``workers``) and streamed to a
:class:`~medray.data.manifest.ManifestWriter` in fixed batches; memory does not grow with ``n``.
Splits are by patient (:func:`medray.data.manifest.patient_split` with the seed).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Iterator

from medray import storage
from medray.data import manifest
from medray.data.synth import fundus_age, fundus_quality, oct, rop, skin
from medray.data.synth._common import Item, SynthKind, Tally
from medray.errors import ConfigError

__all__ = ["GENERATORS", "GENERATOR_VERSION", "files_root", "sample", "synth", "SynthKind"]

GENERATOR_VERSION = 1
FILES_PER_DIR = 1000
ROWS_PER_BATCH = 4096  # rows per manifest write (fixed, so the bytes do not depend on chunking)
AUTO_PARALLEL_MIN_ROWS = 2048  # below this, workers=None renders in this process

GENERATORS: dict[str, SynthKind] = {
    g.name: g for g in (skin.GENERATOR, rop.GENERATOR, oct.GENERATOR, fundus_age.GENERATOR,
                        fundus_quality.GENERATOR)
}


def _generator(kind: str) -> SynthKind:
    try:
        return GENERATORS[kind]
    except KeyError:
        raise ConfigError(f"synth: unknown kind {kind!r}; known: {', '.join(GENERATORS)}") from None


def files_root(out: str) -> str:
    """Folder/prefix of a generated set's files: ``<out without .parquet>_files``."""
    out = storage.to_uri(out)
    base = out[: -len(".parquet")] if out.endswith(".parquet") else out
    return base + "_files"


def file_uri(root: str, index: int, column: str, suffix: str) -> str:
    name = f"{index:08d}{'' if column == 'image' else '_' + column}{suffix}"
    return storage.join(root, f"{index // FILES_PER_DIR:05d}", name)


def resolve_options(kind: str, size: int | None = None, **options: Any) -> dict[str, Any]:
    """The complete, validated options of ``kind`` (``size`` included where it applies)."""
    gen = _generator(kind)
    if size is not None:
        options["size"] = size
    return gen.resolve(options)


def sample(kind: str, index: int, *, seed: int = 0, size: int | None = None, n: int | None = None,
           **options: Any) -> Any:
    """Row ``index`` of the set ``synth(kind, n, ..., seed=seed, size=size, **options)`` would write,
    rendered in memory, with everything known about it (true label, boxes, geometry, mask...).
    ``n`` matters only for ``skin`` (which part a row belongs to)."""
    gen = _generator(kind)
    return gen.sample(int(seed), int(index), resolve_options(kind, size, **options), n)


def _render_chunk(kind: str, seed: int, start: int, stop: int, n: int, options: dict[str, Any], root: str,
                  s3: Any = None, io_threads: int = 1) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Render rows ``start..stop-1`` and write their files; returns ``(row, stats)`` per row.
    A pure function of its arguments (it runs in worker processes too)."""
    gen = GENERATORS[kind]
    out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    writes: list[tuple[str, bytes]] = []
    for i in range(start, stop):
        it: Item = gen.item(seed, i, options, n)
        row = dict(it.row)
        for col, (suffix, data) in it.files.items():
            uri = file_uri(root, i, col, suffix)
            writes.append((uri, data))
            row[col] = uri
        row["split"] = manifest.patient_split(row["patient_id"], seed=seed, val=options["val"],
                                              test=options["test"], dataset=gen.dataset)
        row["dataset"] = gen.dataset
        out.append((row, it.stats))
        if io_threads <= 1:
            for uri, data in writes:
                storage.write_bytes(uri, data, s3)
            writes.clear()
    if writes:
        with ThreadPoolExecutor(io_threads) as pool:
            list(pool.map(lambda w: storage.write_bytes(w[0], w[1], s3), writes))
    return out


def _chunks(kind: str, seed: int, n: int, options: dict[str, Any], root: str, s3: Any, workers: int,
            chunk_size: int, io_threads: int) -> Iterator[list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Chunk results in row order; with ``workers > 1`` rendered by a process pool, at most
    ``2 * workers`` chunks in flight (so memory stays bounded)."""
    ranges = ((a, min(n, a + chunk_size)) for a in range(0, n, chunk_size))
    if workers <= 1:
        for a, b in ranges:
            yield _render_chunk(kind, seed, a, b, n, options, root, s3, io_threads)
        return
    ctx = multiprocessing.get_context("spawn")  # safe with threads, Ray and CUDA in the parent
    pool: Executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        pending: list[Future] = []
        it = iter(ranges)
        for a, b in it:
            pending.append(pool.submit(_render_chunk, kind, seed, a, b, n, options, root, s3, io_threads))
            if len(pending) >= 2 * workers:
                break
        while pending:
            res = pending.pop(0).result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_render_chunk, kind, seed, nxt[0], nxt[1], n, options, root, s3,
                                           io_threads))
            yield res
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def synth(kind: str, n: int, out: str, *, seed: int = 0, size: int | None = None, s3: Any = None,
          workers: int | None = None, chunk_size: int = 64, **options: Any) -> dict[str, Any]:
    """Generate ``n`` rows of ``kind`` and write the images and the manifest ``out``.

    Args:
        kind: "skin", "rop", "oct" or "fundus_age" (see :data:`GENERATORS`).
        n: number of rows (images).
        out: manifest URI (local path, ``s3://...``, ``memory://...``), normally ``*.parquet``.
        seed: the seed of everything (pixels, labels, splits). Must be >= 0.
        size: image side in pixels for skin/rop/fundus_age (default 256); for oct, the scan height.
        s3: S3 options (``storage.s3`` section of a job) when not taken from the environment.
        workers: processes rendering chunks; None = this process for small sets (< 2048 rows) or
            ``memory://`` output, else up to 8. Does not change the output.
        chunk_size: rows per chunk (unit of parallel work). Does not change the output.
        **options: the kind's options (e.g. ``noise=0.2`` for skin, ``widths=[256]`` for oct);
            an unknown one is an error listing the known ones.

    Returns:
        A JSON-able summary: ``manifest`` (URI), ``task``, ``kind``, ``dataset``, ``rows``,
        ``patients``, ``splits``, ``classes``, ``per_class`` (where the task has classes),
        ``sha256`` and ``bytes`` of the manifest, ``files`` (folder of the images), ``seed``,
        ``options`` and the kind's own entries (skin: ``parts``, ``noise``; oct:
        ``images_with_structure``; fundus_age: ``age``, ``disease``, ``sex``).

    Raises:
        ConfigError: unknown kind or option, or an option out of range.
        StorageError: a file could not be written.
    """
    gen = _generator(kind)
    try:
        n, seed, chunk_size = int(n), int(seed), int(chunk_size)
    except (TypeError, ValueError):
        raise ConfigError(f"synth {kind}: n, seed and chunk_size must be integers") from None
    if n < 1:
        raise ConfigError(f"synth {kind}: n={n} must be >= 1")
    if seed < 0:
        raise ConfigError(f"synth {kind}: seed={seed} must be >= 0")
    if chunk_size < 1:
        raise ConfigError(f"synth {kind}: chunk_size={chunk_size} must be >= 1")
    opts = resolve_options(kind, size, **options)
    out = storage.to_uri(out)
    root = files_root(out)
    proto = storage.protocol_of(out)
    if workers is None:
        workers = 1 if (n < AUTO_PARALLEL_MIN_ROWS or proto == "memory") else min(8, os.cpu_count() or 1)
    if proto == "memory" and workers > 1:
        raise ConfigError("synth: memory:// lives in one process; use workers=1")
    # file writes are I/O bound (each local write is fsynced, each S3 write is a PUT): overlap them
    io_threads = 1 if proto == "memory" else 8
    classes = gen.classes(opts)
    meta = {"synth": {"kind": kind, "seed": seed, "n": n, "options": opts, "version": GENERATOR_VERSION,
                      "files": root}}

    tally = Tally()
    splits: dict[str, int] = {}
    patients = 0
    last_patient = None
    buf: list[dict[str, Any]] = []
    with manifest.ManifestWriter(out, gen.task, classes, meta, s3=s3) as writer:
        for chunk in _chunks(kind, seed, n, opts, root, s3, int(workers), chunk_size, io_threads):
            for row, stats in chunk:
                tally.add(stats)
                splits[row["split"]] = splits.get(row["split"], 0) + 1
                if row["patient_id"] != last_patient:  # patients are contiguous in row order
                    patients += 1
                    last_patient = row["patient_id"]
                buf.append(row)
                if len(buf) == ROWS_PER_BATCH:
                    writer.write_rows(buf)
                    buf = []
        writer.write_rows(buf)
    art = writer.artifact
    assert art is not None

    summary: dict[str, Any] = {
        "manifest": out, "task": gen.task, "kind": kind, "dataset": gen.dataset, "rows": n,
        "patients": patients, "splits": dict(sorted(splits.items())), "classes": classes,
    }
    if classes and "class" in tally.counts:
        summary["per_class"] = {name: tally.count("class", k) for k, name in enumerate(classes)}
    summary.update({"sha256": art.sha256, "bytes": art.size, "files": root, "seed": seed, "options": opts})
    summary.update(gen.summarize(tally, opts))
    return summary
