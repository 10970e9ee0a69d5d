"""Training-overhead benchmark: medray on Ray Train (1 worker) vs a plain PyTorch loop.

Same model (``--model``, default resnet18), same images (generated fundus photos decoded once to
``--size`` px), same batch size, optimizer and augmentation. The plain loop trains from tensors held in
memory (the fastest possible input); medray runs ``medray train`` machinery end to end: Ray Data
shard -> ``iter_torch_batches`` -> DDP-ready worker loop -> per-epoch all-reduce and checkpoint. The
first epoch of each is a warm-up and is excluded; the images/s of the remaining epochs are compared.

    python benchmarks/train_overhead.py [--model resnet18] [--size 96] [--n 640] [--epochs 3]

The ratio printed is medray images/s / plain images/s (target >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--n", type=int, default=640)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import torch

    from medray.config import parse_job
    from medray.data import imageio, manifest
    from medray.data.synth import synth
    from medray.data.transforms import RandomAugment, normalize
    from medray.models import create_model
    from medray.training.launcher import run_job

    tmp = tempfile.mkdtemp()
    src = synth("fundus_age", a.n, os.path.join(tmp, "gen.parquet"), seed=0, size=a.size)
    # a classification manifest over the generated images (label = disease flag)
    t = manifest.read_manifest(src["manifest"])
    rows = [dict(image=r["image"], patient_id=r["patient_id"], eye=r["eye"], width=r["width"], height=r["height"],
                 split="train" if i % 8 else "val", dataset="bench", label=int(r["disease"] or 0))
            for i, r in enumerate(t.to_pylist())]
    uri = os.path.join(tmp, "bench.parquet")
    manifest.write_manifest(rows, uri, "fundus_disease", ["healthy", "disease"])
    train_rows = [r for r in rows if r["split"] == "train"]
    cpus = os.cpu_count() or 2
    torch.set_num_threads(cpus)

    # ---- plain PyTorch: tensors in memory, same model/optimizer/augmentation
    imgs = torch.from_numpy(np.stack([imageio.resize(imageio.read_image(r["image"]), a.size) for r in train_rows]))
    labels = torch.tensor([r["label"] for r in train_rows])
    model = create_model(a.model, num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    aug = RandomAugment()
    rates = []
    for ep in range(a.epochs):
        perm = torch.randperm(len(imgs))
        t0 = time.perf_counter()
        for i in range(0, len(imgs), a.batch_size):
            idx = perm[i:i + a.batch_size]
            x = aug(normalize(imgs[idx]))
            loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        rates.append(len(imgs) / (time.perf_counter() - t0))
    plain = float(np.mean(rates[1:]))
    print(f"plain PyTorch loop ({a.model}, {a.size}px, bs {a.batch_size}): {plain:.1f} images/s (epochs 2..{a.epochs})")

    # ---- medray: the same job through Ray Train with 1 worker
    job = parse_job({
        "method": "classify", "model": {"name": a.model},
        "data": {"manifests": [uri], "image_size": a.size, "cache": True, "augment": {}},
        "optim": {"epochs": a.epochs, "batch_size": a.batch_size, "lr": 1e-3, "scheduler": "none"},
        "scaling": {"num_workers": 1, "cpus_per_worker": cpus, "use_gpu": "auto"},
        "run": {"name": "bench", "storage_path": os.path.join(tmp, "runs"), "metric": "val_loss"},
    })
    run_job(job)
    with open(os.path.join(tmp, "runs", "bench", "summary.json")) as f:
        hist = json.load(f)["history"]
    med = float(np.mean([h["images_per_s"] for h in hist[1:]]))
    print(f"medray Ray Train, 1 worker:                      {med:.1f} images/s (epochs 2..{a.epochs}; the "
          "training part of each epoch, as reported by the worker)")
    print(f"ratio medray / plain: {med / plain:.2f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
