"""Serve fixtures: Serve's HTTP proxy on a free loopback port of the session's Ray cluster, and a
temporary catalogue of real tiny models (randomly initialised timm test networks saved with
safetensors: the thing under test is the catalogue/planner/serving, not the networks)."""

from __future__ import annotations


import pytest

from medray.netutil import free_port


@pytest.fixture(scope="session")
def serve_http(ray_cluster):
    """``http://127.0.0.1:PORT`` of Serve's proxy (started once; shut down at the session's end)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"enable_access_log": False})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def tiny_weights(num_classes: int = 2, head_bias: list[float] | None = None, seed: int = 0) -> bytes:
    """safetensors bytes of models.create_model("tiny"); ``head_bias`` sets the classifier bias."""
    import torch
    from safetensors.torch import save

    from medray.models import create_model

    torch.manual_seed(seed)
    m = create_model("tiny", num_classes=num_classes)
    if head_bias is not None:
        head = m.get_classifier() if hasattr(m, "get_classifier") else None
        with torch.no_grad():
            head.bias.copy_(torch.tensor(head_bias))
    return save({k: v.contiguous() for k, v in m.state_dict().items()})


def tiny_card(name: str, labels: list[str], task: str = "classify", modality: str = "fundus", **over) -> dict:
    d = {
        "name": name, "task": task, "modality": modality, "description": f"test model {name}",
        "inputs": ["image"], "outputs": ["probs", "label", "score"], "labels": labels,
        "architecture": {"name": "tiny", "num_classes": len(labels), "in_chans": 3},
        "preprocessing": {"image_size": 32, "mode": "RGB", "resize": "pad"},
        "resources": {"num_cpus": 0.25}, "metrics": {"val_acc": 0.5},
    }
    d.update(over)
    return d
