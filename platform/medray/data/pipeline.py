"""Ray Data pipelines from manifests: streaming reads, decode + resize in ``map_batches``.

The driver never lists rows: ``ray.data.read_parquet`` streams the manifest (or packed shards), a
split filter is pushed down, and image decoding runs in Ray tasks in parallel over the cluster.

* Deterministic preprocessing (read bytes, reduced-size JPEG decode, resize to the model's input size)
  happens here, BEFORE any ``materialize()``; it is cached in the object store when the decoded set
  fits (``cache``), otherwise it streams again every epoch.
* Random augmentation happens AFTER, on the training workers (:mod:`medray.data.transforms`), so
  every epoch sees new augmentations of the cached images.
* Packed shards (``medray data pack``) carry the encoded bytes in an ``image_bytes`` column: the
  decode step uses them instead of fetching one object per image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from medray import storage
from medray.data import imageio, manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeSpec:
    """How images become model input (stored in the model card as its preprocessing spec)."""

    image_size: int = 224
    mode: str = "RGB"  # "RGB" or "L"
    resize: str = "pad"  # pad | crop | stretch
    max_pixels: int = imageio.DEFAULT_MAX_PIXELS

    def as_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "mode": self.mode, "resize": self.resize}


def decode_batch(batch: dict[str, np.ndarray], spec: DecodeSpec, keep: tuple[str, ...] = (),
                 s3: Any = None) -> dict[str, np.ndarray]:
    """``map_batches`` function: URIs (or packed bytes) -> ``image`` uint8 array (N, H, W, C).

    Rows that fail to decode raise an ImageDecodeError naming the file (run ``medray data validate``
    first to find them all at once).
    """
    n = len(batch["image"]) if "image" in batch else len(batch["image_bytes"])
    c = 3 if spec.mode == "RGB" else 1
    out = np.empty((n, spec.image_size, spec.image_size, c), np.uint8)
    packed = batch.get("image_bytes")
    for i in range(n):
        name = str(batch["image"][i]) if "image" in batch else f"row {i}"
        data = bytes(packed[i]) if packed is not None else imageio.read_file(name, s3=s3)
        arr = imageio.decode(data, name, mode=spec.mode, size=spec.image_size, how=spec.resize,  # type: ignore[arg-type]
                             max_pixels=spec.max_pixels)
        out[i] = arr.reshape(spec.image_size, spec.image_size, c)
    res = {"image": out}
    for k in keep:
        res[k] = batch[k]
    return res


def _split_expr(splits: Iterable[str]):
    from ray.data.expressions import col

    expr = None
    for s in splits:
        e = col("split") == s
        expr = e if expr is None else (expr | e)
    return expr


def read_parquet(uri: str, s3: Any = None, columns: list[str] | None = None):
    """``ray.data.read_parquet`` of a file or folder URI, through Ray Data's established (V1) reader.

    Ray 2.60's default V2 reader provisions a pool of 32 footer-reader actors on every read: ~3 s and
    32 process starts before the first row of a one-file manifest (measured on 2 CPUs), paid again by
    every epoch's dataset, stage and evaluation. V1 plans the read from the Parquet footers in 0.1 s
    and reads with the same tasks. Every medray read of Parquet goes through here.
    """
    import ray.data

    fs, path = storage.pyarrow_filesystem(uri, s3)
    ctx = ray.data.DataContext.get_current()
    v2 = getattr(ctx, "use_datasource_v2", None)
    if v2:
        ctx.use_datasource_v2 = False  # read at call time only (read_api.read_parquet)
    try:
        return ray.data.read_parquet(path, filesystem=fs, columns=columns)
    finally:
        if v2:
            ctx.use_datasource_v2 = v2


def read_manifest(uri: str, splits: Iterable[str] | None = None, columns: list[str] | None = None,
                  s3: Any = None, rows_per_block: int | None = 32):
    """A streaming ``ray.data.Dataset`` over a manifest file or a folder of (packed) shards.

    Manifest rows are tiny (a URI and a few labels), so one Parquet row group holds thousands of them
    and would become ONE decode task. ``rows_per_block`` re-blocks the stream (a streaming
    repartition, no shuffle) so image decoding downstream runs as many parallel tasks.
    """
    ds = read_parquet(uri, s3)
    if columns is not None:
        ds = ds.select_columns(list(dict.fromkeys(list(columns) + (["split"] if splits else []))))
    if splits:
        ds = ds.filter(expr=_split_expr(splits))
    if rows_per_block:
        ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    return ds


def image_dataset(uri: str, splits: Iterable[str], spec: DecodeSpec, label_columns: Iterable[str] = (),
                  s3: Any = None, cache: bool | str = "auto", cache_max_gb: float = 4.0,
                  batch_size: int = 32, num_cpus: float = 1.0):
    """Manifest rows of ``splits`` -> dataset of ``image`` (uint8 NHWC) + label columns.

    ``cache="auto"`` materializes the decoded images when they fit in ``cache_max_gb`` (estimated
    from the row count in the manifest footer: no scan), so later epochs skip decoding.
    """
    label_columns = tuple(label_columns)
    is_packed = _is_packed(uri, s3)
    src_cols = ["image_bytes", "image"] if is_packed else ["image"]
    ds = read_manifest(uri, splits=splits, columns=src_cols + list(label_columns), s3=s3)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"spec": spec, "keep": label_columns, "s3": s3},
        batch_size=batch_size,
        num_cpus=num_cpus,
        batch_format="numpy",
    )
    if cache == "auto":
        try:
            rows = _row_count(uri, s3)
            c = 3 if spec.mode == "RGB" else 1
            need_gb = rows * spec.image_size**2 * c / 1e9
            cache = need_gb <= cache_max_gb
            log.info("decoded set ~%.2f GB -> %s", need_gb, "cached in the object store" if cache else "streamed")
        except Exception:  # noqa: BLE001 - unknown size: stream
            cache = False
    if cache:
        ds = ds.materialize()
    return ds


def _is_packed(uri: str, s3: Any = None) -> bool:
    """True when the manifest (or the first shard of a folder) has an ``image_bytes`` column."""
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(uri, s3)
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        files = [f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                 if f.type == pafs.FileType.File and f.path.endswith(".parquet")]
        if not files:
            return False
        path = sorted(f.path for f in files)[0]
    with fs.open_input_file(path) as f:
        return "image_bytes" in pq.ParquetFile(f).schema_arrow.names


def _row_count(uri: str, s3: Any = None) -> int:
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, path = storage.pyarrow_filesystem(uri, s3)
    info = fs.get_file_info(path)
    paths = [path]
    if info.type == pafs.FileType.Directory:
        paths = [f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                 if f.type == pafs.FileType.File and f.path.endswith(".parquet")]
    total = 0
    for p in paths:
        with fs.open_input_file(p) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def count_split(uri: str, splits: Iterable[str], s3: Any = None) -> int:
    """Rows in the given splits, streaming over the ``split`` column only (cheap)."""
    import pyarrow.compute as pc
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    splits = list(splits)
    fs, path = storage.pyarrow_filesystem(uri, s3)
    info = fs.get_file_info(path)
    paths = [path]
    if info.type == pafs.FileType.Directory:
        paths = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                       if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
    n = 0
    for p in paths:
        with fs.open_input_file(p) as f:
            for b in pq.ParquetFile(f).iter_batches(columns=["split"], batch_size=65536):
                n += pc.sum(pc.is_in(b.column(0), value_set=__import__("pyarrow").array(splits))).as_py() or 0
    return n


def manifest_info(uri: str, s3: Any = None) -> manifest.ManifestInfo:
    """Task/classes of a manifest, or of the first shard of a packed folder."""
    import pyarrow.fs as pafs

    fs, path = storage.pyarrow_filesystem(uri, s3)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        files = sorted(f.path for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                       if f.type == pafs.FileType.File and f.path.endswith(".parquet"))
        if not files:
            from medray.errors import ManifestError

            raise ManifestError(f"{uri}: folder holds no .parquet shards")
        proto = storage.protocol_of(uri)
        first = files[0] if proto == "file" else f"{proto}://{files[0]}"
        inf = manifest.info(first, s3)
        inf.uri = uri
        return inf
    return manifest.info(uri, s3)
