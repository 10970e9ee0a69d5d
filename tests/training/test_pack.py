"""`medray data pack`: images + labels into Parquet shards that the pipeline decodes identically."""

from __future__ import annotations

import json

import numpy as np

from medray.data import pipeline
from medray.data.pack import pack_manifest


def test_pack_roundtrip_through_ray_data(ray_cluster, toy_manifest, tmp_path, cli):
    code, text, err = cli("data", "pack", toy_manifest, "--out", str(tmp_path / "packed"), "--shard-mb", "0.04")
    assert code == 0, err
    index = json.loads(text)
    assert index["rows"] == 48 and len(index["shards"]) >= 2  # 40 kB target -> several shards
    assert sum(s["rows"] for s in index["shards"]) == 48
    assert (tmp_path / "packed" / "_index.json").exists()
    assert pipeline._is_packed(str(tmp_path / "packed"))
    assert pipeline.manifest_info(str(tmp_path / "packed")).classes == ["dark_ring", "bright_disc"]

    spec = pipeline.DecodeSpec(image_size=32)

    # keep the source URI beside the decoded pixels to compare row by row
    def with_uri(batch):
        batch["image_uri"] = batch["image"]
        return batch

    a_ds = pipeline.read_manifest(toy_manifest, columns=["image"]).map_batches(with_uri, batch_format="numpy")
    b_ds = pipeline.read_manifest(str(tmp_path / "packed"), columns=["image", "image_bytes"]) \
        .map_batches(with_uri, batch_format="numpy")
    a = {}
    for ds, key in ((a_ds, "files"), (b_ds, "packed")):
        out = ds.map_batches(pipeline.decode_batch, fn_kwargs={"spec": spec, "keep": ("image_uri",)},
                             batch_format="numpy")
        a[key] = {str(u): im for b in out.iter_batches(batch_size=64, batch_format="numpy")
                  for u, im in zip(b["image_uri"], b["image"])}
    assert a["files"].keys() == a["packed"].keys() and len(a["files"]) == 48
    for k in a["files"]:
        np.testing.assert_array_equal(a["files"][k], a["packed"][k])  # same bytes -> same pixels
