"""Input-pipeline benchmark: medray's Ray Data decode vs a naive PIL + torch DataLoader.

Both read the same real fundus JPEGs (HEI-MED 2196x1958 and ODIR up to 3696x2448, from
../shared/data) and produce 512x512 uint8 batches. The baseline is what a typical training script
does: ``PIL.Image.open(path).convert("RGB").resize((512, 512))`` in a ``torch.utils.data.Dataset``
behind a ``DataLoader`` with as many worker processes as CPUs. medray streams the manifest with Ray
Data and decodes in ``map_batches`` exactly as ``jobs/fundus_disease.yaml`` does (letterbox ``pad``
to 512 x 512, the aspect ratio kept), with reduced-size JPEG decoding (Pillow ``draft`` at the
smallest DCT scale that still covers the letterboxed size, so nothing is upsampled), on the same
number of CPUs. The baseline's plain stretch is the cheaper resize of the two.

Two measurements, each with its own ratio:

* ``cold pass``: every image is decoded every time (the files listed ``--repeat`` times in one
  manifest, one streaming pass; the baseline reads the same list). This is the decode path alone,
  what an epoch costs when the decoded set does not fit the object store.
* ``training epochs``: ``--epochs`` passes over the files, read the way ``medray train`` reads them:
  :func:`medray.data.pipeline.image_dataset` decodes once and keeps the decoded set in Ray's object
  store when it fits (``cache: auto``; deterministic preprocessing before ``materialize()``, random
  augmentation after, on the workers), so later epochs skip decoding. The baseline DataLoader decodes
  every epoch, as a plain training script does. The medray time includes the first, decoding epoch.

Each side first runs one warm-up pass (page cache, worker start).

    python benchmarks/ingest.py [--data ../shared/data] [--repeat 12] [--epochs 12] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# PIL's arrays are read-only; the DataLoader's collate copies them anyway
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def collect_images(data: Path) -> list[str]:
    files = sorted(str(p) for p in (data / "fundus_heimed" / "DMED").glob("*.jpg"))
    files += sorted(str(p) for p in (data / "fundus_odir" / "images").rglob("*.jpg"))
    if not files:
        sys.exit(f"no fundus JPEGs under {data} (set --data)")
    return files


class NaiveImages:
    """What a typical training script's Dataset does: ``files`` listed ``repeat`` times, each item
    ``PIL.Image.open(f).convert("RGB").resize((size, size))`` as a uint8 tensor."""

    def __init__(self, files: list[str], size: int, repeat: int = 1):
        self.files, self.size, self.repeat = files, size, repeat

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def __getitem__(self, i: int):
        im = Image.open(self.files[i % len(self.files)]).convert("RGB").resize((self.size, self.size),
                                                                               Image.BILINEAR)
        return torch.from_numpy(np.asarray(im))


def baseline(files: list[str], size: int, repeat: int, workers: int) -> float:
    def run(n_rep: int) -> tuple[int, float]:
        dl = torch.utils.data.DataLoader(NaiveImages(files, size, n_rep), batch_size=16, num_workers=workers,
                                         persistent_workers=False)
        t0, n = time.perf_counter(), 0
        for b in dl:
            n += len(b)
        return n, time.perf_counter() - t0

    run(1)  # warm-up (page cache, worker start)
    n, dt = run(repeat)
    return n / dt


def write_manifest(files: list[str], repeat: int) -> str:
    from medray.data import imageio, manifest

    tmp = tempfile.mkdtemp()
    rows = []
    for r in range(repeat):
        for i, f in enumerate(files):
            with open(f, "rb") as fh:
                w, h = imageio.image_size(fh.read(1 << 20))
            rows.append(dict(image=f, patient_id=f"{r}_{i}", eye="unknown", width=w, height=h, split="train",
                             dataset="bench", label=0))
    uri = os.path.join(tmp, "bench.parquet")
    manifest.write_manifest(rows, uri, "fundus_disease", ["a", "b"])
    return uri


def medray_pipeline(files: list[str], size: int, repeat: int) -> float:
    """One streaming pass that decodes every row (no cache)."""
    from medray.data import pipeline
    from medray.training.loop import quiet_ray_data

    uri = write_manifest(files, repeat)
    quiet_ray_data()
    spec = pipeline.DecodeSpec(image_size=size, resize="pad")  # as jobs/fundus_disease.yaml

    def run() -> tuple[int, float]:
        ds = pipeline.read_manifest(uri, splits=["train"], columns=["image"])
        ds = ds.map_batches(pipeline.decode_batch, fn_kwargs={"spec": spec}, batch_size=8, batch_format="numpy")
        t0, n = time.perf_counter(), 0
        for b in ds.iter_batches(batch_size=16, batch_format="numpy"):
            n += len(b["image"])
        return n, time.perf_counter() - t0

    run()  # warm-up (workers, page cache)
    n, dt = run()
    return n / dt


def baseline_epochs(files: list[str], size: int, epochs: int, workers: int) -> float:
    """A plain training script's input loop: the same DataLoader, iterated ``epochs`` times."""
    dl = torch.utils.data.DataLoader(NaiveImages(files, size), batch_size=16, num_workers=workers,
                                     persistent_workers=True, shuffle=True)
    for _ in dl:  # warm-up epoch (page cache, worker start)
        pass
    t0, n = time.perf_counter(), 0
    for _ in range(epochs):
        for b in dl:
            n += len(b)
    return n / (time.perf_counter() - t0)


def medray_epochs(files: list[str], size: int, epochs: int) -> tuple[float, float]:
    """``epochs`` passes as ``medray train`` makes them; returns (images/s overall, first epoch s)."""
    from medray.data import pipeline
    from medray.training.loop import quiet_ray_data

    uri = write_manifest(files, 1)
    quiet_ray_data()
    spec = pipeline.DecodeSpec(image_size=size, resize="pad")

    def run() -> tuple[int, float, float]:
        t0, n = time.perf_counter(), 0
        ds = pipeline.image_dataset(uri, ["train"], spec, cache="auto", batch_size=8)
        first = 0.0
        for e in range(epochs):
            for b in ds.iter_batches(batch_size=16, batch_format="numpy", local_shuffle_buffer_size=64):
                n += len(b["image"])
            if e == 0:
                first = time.perf_counter() - t0
        return n, time.perf_counter() - t0, first

    run()  # warm-up (workers, page cache); the cached set of this pass is dropped
    n, dt, first = run()
    return n / dt, first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("MEDRAY_SHARED_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data")))
    ap.add_argument("--repeat", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--size", type=int, default=512)
    a = ap.parse_args()
    import ray

    files = collect_images(Path(a.data))
    cpus = os.cpu_count() or 2
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    print(f"{len(files)} real fundus JPEGs -> {a.size}x{a.size}, {cpus} CPUs")
    print(f"cold pass: each image decoded every time ({len(files)} x {a.repeat})", flush=True)
    base = baseline(files, a.size, a.repeat, workers=cpus)
    print(f"  baseline  PIL + DataLoader({cpus} workers): {base:7.1f} images/s", flush=True)
    med = medray_pipeline(files, a.size, a.repeat)
    print(f"  medray    Ray Data + reduced-size decode : {med:7.1f} images/s")
    print(f"  ratio medray / baseline: {med / base:.2f}x", flush=True)
    print(f"training epochs: {a.epochs} epochs over the {len(files)} images, as each side's training loop reads them",
          flush=True)
    base_e = baseline_epochs(files, a.size, a.epochs, workers=cpus)
    print(f"  baseline  DataLoader, decodes every epoch      : {base_e:7.1f} images/s", flush=True)
    med_e, first = medray_epochs(files, a.size, a.epochs)
    print(f"  medray    image_dataset, decoded set cached    : {med_e:7.1f} images/s (first epoch {first:.1f} s)")
    print(f"  ratio medray / baseline: {med_e / base_e:.2f}x  (target >= 3x)")
    ray.shutdown()


if __name__ == "__main__":
    main()
