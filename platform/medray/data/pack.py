"""``medray data pack``: images + labels into large Parquet shards.

Millions of small objects on S3 mean millions of GETs (each ~10-50 ms of latency); a few hundred
shards of ~128-256 MB are read in large sequential requests instead. Each shard keeps every manifest
column (so it is still a manifest of the same task, with the same metadata) plus ``image_bytes`` (the
encoded file, or a re-encoded smaller JPEG/PNG when ``image_size`` is given). Training pipelines detect
the column and decode from it instead of fetching ``image``.

Shards are written one at a time (streaming the manifest; memory stays at about one shard), each
atomically, then a ``_index.json`` listing shards, rows and sha256 is written last.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medray import storage
from medray.data import imageio, manifest


def _encode(data: bytes, name: str, image_size: int | None) -> bytes:
    if image_size is None:
        return data
    arr = imageio.decode(data, name, mode="keep", target=image_size)
    h, w = arr.shape[:2]
    s = image_size / min(h, w)
    if s < 1:
        from PIL import Image

        im = Image.fromarray(arr)
        arr = __import__("numpy").asarray(im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))
    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype.name == "uint8":
        return imageio.encode_jpeg(arr, quality=95)
    return imageio.encode_png(arr)


def pack_manifest(uri: str, out: str, target_mb: float = 192, image_size: int | None = None,
                  row_group_rows: int | None = None, s3: Any = None) -> dict[str, Any]:
    """Pack a manifest into shards under ``out``; returns the index (shards, rows, checksums).

    Args:
        uri: the manifest.
        out: folder URI for ``shard-00000.parquet`` ... and ``_index.json``.
        target_mb: close a shard when its encoded images reach this size.
        image_size: if set, re-encode images so the shorter side is at most this (smaller shards,
            faster decode; keep it >= the training input size).
    """
    inf = manifest.info(uri, s3)
    src = manifest._parquet_file(uri, s3)
    schema = src.schema_arrow.append(pa.field("image_bytes", pa.binary()))
    schema = schema.with_metadata(src.schema_arrow.metadata)
    target = int(target_mb * 1024 * 1024)
    shards: list[dict[str, Any]] = []
    buf: list[pa.RecordBatch] = []
    size = 0
    rows_done = 0

    def flush() -> None:
        nonlocal buf, size
        if not buf:
            return
        table = pa.Table.from_batches(buf, schema=schema)
        with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
            # one row group per ~64 MB keeps readers parallel without tiny reads
            rg = row_group_rows or max(1, int(len(table) * min(1.0, (64 << 20) / max(1, size))))
            pq.write_table(table, tmp.name, row_group_size=rg, compression="none")
            name = f"shard-{len(shards):05d}.parquet"
            art = storage.upload_file(tmp.name, storage.join(out, name), s3)
        shards.append({"file": name, "rows": len(table), "bytes": art.size, "sha256": art.sha256})
        print(f"[medray] packed {name}: {len(table)} rows, {art.size / 1e6:.1f} MB", file=sys.stderr, flush=True)
        buf, size = [], 0

    for batch in manifest.iter_batches(uri, batch_size=16, s3=s3):  # shard boundaries every 16 rows
        blobs = []
        for img in batch.column("image").to_pylist():
            try:
                data = storage.read_bytes(img, s3)
            except FileNotFoundError:
                from medray.errors import MissingFileError

                raise MissingFileError(img, "file not found (run `medray data validate` first)") from None
            blobs.append(_encode(data, img, image_size))
        rb = pa.RecordBatch.from_arrays(list(batch.columns) + [pa.array(blobs, pa.binary())], schema=schema)
        buf.append(rb)
        size += sum(len(b) for b in blobs)
        rows_done += len(blobs)
        if size >= target:
            flush()
    flush()
    index = {"source": uri, "task": inf.task, "classes": inf.classes, "rows": rows_done, "shards": shards,
             "image_size": image_size}
    art = storage.write_json(storage.join(out, "_index.json"), index, s3)
    return {**index, "out": out, "index_sha256": art.sha256}

