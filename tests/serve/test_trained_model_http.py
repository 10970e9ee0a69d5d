"""A model trained by the real ``classify`` method (2 DDP workers on the session's Ray cluster),
published to a catalogue, served by the app builder from a custom selection, and evaluated over
HTTP: the served pipeline reproduces the visible rule it learned (accuracy well above chance) and the
efficacy report puts it next to the card's recorded validation metrics."""

from __future__ import annotations

import pytest

from medray.netutil import wait_healthy

pytestmark = pytest.mark.slow


def test_trained_classifier_served_and_evaluated(ray_cluster, serve_http, tmp_path):
    import requests
    from ray import serve

    from medray.catalog import Catalog
    from medray.config import parse_job
    from medray.serving.app import AppArgs, build_app
    from medray.training.launcher import run_job
    from training.conftest import make_toy_classify

    manifest = make_toy_classify(str(tmp_path / "toy"), n=48, size=48)
    job = parse_job({
        "method": "classify", "model": {"name": "tiny"},
        "data": {"manifests": [manifest], "image_size": 48, "decode_batch_size": 16},
        "optim": {"epochs": 6, "batch_size": 8, "lr": 0.001, "warmup_epochs": 0.5},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        "run": {"name": "toy_served", "storage_path": str(tmp_path / "runs"), "metric": "val_acc", "mode": "max",
                "checkpoints_to_keep": 1, "catalog": str(tmp_path / "catalog")},
    }, source="test")
    out = run_job(job)
    cat = Catalog(str(tmp_path / "catalog"))
    card = cat.get(out["published"])
    assert card.metrics["val_acc"] >= 0.7, card.metrics

    app = "medray_trained_test"
    serve.run(build_app(AppArgs(catalog=cat.uri, models=[card.ref], presets_dir=str(tmp_path / "none"),
                                defaults={"ray_actor_options": {"num_cpus": 0.25}})),
              name=app, route_prefix="/trained")
    url = serve_http + "/trained"
    try:
        wait_healthy(url)
        img = tmp_path / "toy" / "img_001.jpg"  # label 1: bright disc
        r = requests.post(f"{url}/infer", files={"image": ("img_001.jpg", img.read_bytes())}, timeout=60)
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
        assert res["status"] == "complete" and set(res["models"][card.name]["outputs"]["probs"]) == {
            "dark_ring", "bright_disc"}
        r = requests.post(f"{url}/evaluate", json={"manifest": manifest, "split": "val"}, timeout=300)
        assert r.status_code == 200, r.text
        m = r.json()["models"][card.name]
        print("served:", {k: m.get(k) for k in ("n", "accuracy", "auc")}, "card:", m["card_metrics"])
        assert m["n"] >= 8 and m["accuracy"] >= 0.7
        assert m["card_metrics"]["val_acc"] == card.metrics["val_acc"]
    finally:
        serve.delete(app)
