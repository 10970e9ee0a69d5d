"""A small controlled classification set: real JPEG files whose class is visible (a bright disc vs a
dark ring on noise), so a tiny model learns it in a few epochs on CPU."""

from __future__ import annotations

import numpy as np
import pytest

from medray import storage
from medray.data import imageio, manifest


def make_toy_classify(root: str, n: int = 48, size: int = 48, seed: int = 0, s3=None) -> str:
    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        label = i % 2
        img = rng.integers(0, 60, (size, size, 3)).astype(np.float32)
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = np.hypot(yy - cy, xx - cx)
        if label:
            img[r < size / 5] += 150
        else:
            img[(r > size / 6) & (r < size / 4)] += 90
            img[..., 0] += 40
        arr = np.clip(img, 0, 255).astype(np.uint8)
        uri = storage.join(root, f"img_{i:03d}.jpg")
        storage.write_bytes(uri, imageio.encode_jpeg(arr), s3)
        pid = f"p{i // 2:03d}"
        rows.append(dict(image=uri, patient_id=pid, eye="left" if i % 2 else "right", width=size, height=size,
                         split=manifest.patient_split(pid, seed=seed, val=0.25, test=0.0), dataset="toy",
                         label=label))
    out = storage.join(root, "toy.parquet")
    manifest.write_manifest(rows, out, "fundus_disease", ["dark_ring", "bright_disc"], s3=s3)
    return out


@pytest.fixture(scope="session")
def toy_manifest(tmp_path_factory) -> str:
    return make_toy_classify(str(tmp_path_factory.mktemp("toy")))
