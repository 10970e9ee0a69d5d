"""Catalogue fixtures: a catalogue URI on each real backend (local folder, memory://, moto S3)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from safetensors.numpy import save


def weights_bytes(value: float = 0.0, n: int = 3) -> bytes:
    """Real safetensors bytes (one float32 tensor ``w`` filled with ``value``)."""
    return save({"w": np.full(n, value, np.float32)})


def card_dict(name: str = "fundus_dr", **over) -> dict:
    """A minimal publishable card mapping."""
    d = {
        "name": name,
        "task": "classify",
        "modality": "fundus",
        "description": "diabetic retinopathy grade",
        "outputs": ["label", "probs"],
        "labels": ["none", "mild", "severe"],
        "architecture": {"name": "test_tiny_cnn", "kwargs": {}, "in_chans": 3, "num_classes": 3},
        "preprocessing": {"image_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3, "mode": "RGB",
                          "resize": "bilinear"},
        "resources": {"num_cpus": 1, "num_gpus": 0},
        "metrics": {"auc": 0.91, "acc": 0.8, "n_test": 120},
        "source": {"method": "classify", "job": "fundus_dr", "run_path": "runs/fundus_dr"},
    }
    d.update(over)
    return d


@pytest.fixture(params=["local", "memory", "s3"])
def catalog_uri(request, tmp_path) -> str:
    """A fresh, empty catalogue URI on each backend."""
    if request.param == "local":
        yield str(tmp_path / "catalog")
    elif request.param == "memory":
        import fsspec

        root = f"medray-test-{uuid.uuid4().hex[:10]}"
        yield f"memory://{root}/catalog"
        fs = fsspec.filesystem("memory")
        if fs.exists(f"/{root}"):
            fs.rm(f"/{root}", recursive=True)
    else:
        yield request.getfixturevalue("s3_bucket") + "/catalog"


@pytest.fixture
def cache_dir(tmp_path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture
def make_weights():
    """``make_weights(value=0.0, n=3) -> bytes``: real safetensors bytes."""
    return weights_bytes


@pytest.fixture
def make_card():
    """``make_card(name="fundus_dr", **overrides) -> dict``: a publishable card mapping."""
    return card_dict
