"""Serving pieces that need no running Serve: the plan executor (concurrency, gates, upstream
inputs), overlays, upload checks, the Serve config files, the typed builder's planning half and the
checksum check at model load."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
import yaml

from medray.catalog import Catalog, CatalogError, ModelCard
from medray.catalog.planner import plan
from medray.catalog.selection import CardIndex, select
from medray.serving.executor import execute, overlaps
from medray.serving.render import render_outputs
from medray.serving.uploads import UploadError, decode_upload

from .conftest import tiny_card, tiny_weights

REPO = Path(__file__).resolve().parents[2]


def card(name, inputs=("image",), outputs=("label", "score"), **kw):
    return ModelCard(name=name, task="classify", modality="fundus", inputs=list(inputs), outputs=list(outputs), **kw)


def fundus_plan(gate_allow=("gradable",)):
    idx = CardIndex([card("q"), card("a", inputs=["image", "q.label"]), card("b"), card("c", inputs=["a.score"])])
    return plan(select(idx, {"models": ["q", "a", "b", "c"],
                             "gates": {"q": {"output": "label", "allow": list(gate_allow)}}}))


def run(p, call):
    return asyncio.run(execute(p, call))


def test_executor_runs_independent_branches_concurrently_and_passes_inputs():
    seen = {}

    async def call(name, inputs):
        seen[name] = inputs
        await asyncio.sleep(0.05)
        return {"outputs": {"label": "gradable" if name == "q" else "x", "score": 0.7}}

    p = fundus_plan()
    assert p.stages == [["q"], ["a", "b"], ["c"]]
    res = run(p, call)
    assert res["status"] == "complete" and all(m["status"] == "ok" for m in res["models"].values())
    t = res["timings"]
    assert overlaps(t["a"], t["b"]) and t["c"]["start"] >= t["a"]["end"] and t["a"]["start"] >= t["q"]["end"]
    assert seen["a"] == {"q.label": "gradable"} and seen["c"] == {"a.score": 0.7} and seen["b"] == {}
    assert res["models"]["q"]["gate"]["passed"] is True


def test_executor_gate_stops_what_it_guards():
    calls = []

    async def call(name, inputs):
        calls.append(name)
        return {"outputs": {"label": "ungradable", "score": 0.1}}

    res = run(fundus_plan(), call)
    assert calls == ["q"] and res["status"] == "stopped" and res["stopped_by"] == ["q"]
    assert res["models"]["a"] == {"status": "skipped", "reason": "stopped by gate q"}
    assert res["models"]["c"]["status"] == "skipped"


def test_executor_reports_a_failing_model_and_skips_its_dependents():
    async def call(name, inputs):
        if name == "a":
            raise RuntimeError("boom")
        return {"outputs": {"label": "gradable", "score": 0.5}}

    res = run(fundus_plan(), call)
    assert res["status"] == "failed"
    assert res["models"]["a"] == {"status": "error", "reason": "RuntimeError: boom"}
    assert res["models"]["b"]["status"] == "ok"
    assert res["models"]["c"] == {"status": "skipped", "reason": "upstream a did not run"}


def test_render_outputs_masks_heatmaps_and_json():
    from PIL import Image

    image = np.zeros((40, 60, 3), np.uint8)
    mask = np.zeros((40, 60), np.int64)
    mask[10:20, 10:30] = 2
    heat = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    stored = {}

    def store(key, png):
        stored[key] = png
        return f"/results/x/{key}.png"

    from medray.data.imageio import encode_png

    own = encode_png(np.zeros((8, 8, 3), np.uint8))
    out = render_outputs({"mask": mask, "heatmap": heat, "score": np.float32(0.25), "probs": np.array([0.1, 0.9]),
                          "label": "dr", "overlay": own, "blob": b"\x00\x01"}, image, store)
    assert out["overlay"] == {"overlay": "/results/x/overlay.png", "bytes": len(own)} and stored["overlay"] == own
    assert out["blob"] == {"bytes": 2}
    assert out["mask"] == {"overlay": "/results/x/mask.png", "shape": [40, 60], "dtype": "int64"}
    assert out["heatmap"]["overlay"] == "/results/x/heatmap.png"
    assert out["score"] == 0.25 and out["probs"] == [0.1, 0.9] and out["label"] == "dr"
    for key in ("mask", "heatmap"):
        im = Image.open(io.BytesIO(stored[key]))
        assert im.format == "PNG" and im.size == (60, 40)


def test_decode_upload_names_the_problem(shared_data):
    kw = dict(modality="fundus", max_pixels=10_000_000, min_side=16, display_size=256)
    jpg = (shared_data / "fundus_skimage" / "retina.jpg").read_bytes()
    arr = decode_upload(jpg, "retina.jpg", **kw)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and max(arr.shape[:2]) == 256
    dcm = shared_data / "formats" / "dicom"
    assert decode_upload((dcm / "nema_wg04" / "VL4_J2KI_fundoscopy.dcm").read_bytes(), "f.dcm", **kw).shape[2] == 3
    cases = {
        b"": (400, "empty"),
        jpg[:3000]: (422, "truncated"),
        b"hello world, not an image": (415, "unsupported"),
        (dcm / "pydicom_test_files" / "CT_small.dcm").read_bytes(): (422, "wrong_modality"),
    }
    for data, (status, kind) in cases.items():
        with pytest.raises(UploadError) as e:
            decode_upload(data, "up.bin", **kw)
        assert (e.value.status, e.value.extra["kind"]) == (status, kind), e.value.message
        assert "up.bin" in e.value.message


@pytest.mark.parametrize("path", sorted((REPO / "serve").glob("*.yaml")), ids=lambda p: p.name)
def test_serve_configs_validate(path):
    from ray.serve.schema import ServeDeploySchema

    from medray.serving.app import AppArgs

    raw = yaml.safe_load(path.read_text())
    cfg = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(raw)
    assert cfg.http_options.host == "127.0.0.1"
    (app,) = raw["applications"]
    assert app["import_path"] == "medray.serving.app:build_app"
    args = AppArgs.model_validate(app["args"])
    assert (REPO / "serve" / "presets" / f"{args.preset}.yaml").exists()


def test_builder_plans_from_the_catalogue_and_refuses_what_it_cannot_serve(tmp_path):
    from medray.errors import ConfigError
    from medray.serving.app import AppArgs, plan_app

    cat = Catalog(str(tmp_path / "cat"))
    cat.publish(tiny_card("fundus_quality", ["ungradable", "gradable"], task="quality"), {"weights": tiny_weights()})
    cat.publish(tiny_card("fundus_disease", ["normal", "dr"]), {"weights": tiny_weights()})
    _, presets, request, p, cards = plan_app(AppArgs(catalog=cat.uri, models=["fundus_disease", "fundus_quality"]))
    assert request == {"models": ["fundus_disease", "fundus_quality"]} and [c.ref for c in cards] == [
        "fundus_disease:1", "fundus_quality:1"]
    assert "fundus_screening" in presets
    with pytest.raises(ConfigError, match="retinal_age"):  # the preset needs a model this catalogue lacks
        plan_app(AppArgs(catalog=cat.uri, preset="fundus_screening"))
    with pytest.raises(ValueError):
        AppArgs(catalog=cat.uri)


def test_tampered_weights_are_refused_at_load(tmp_path):
    from medray.serving.node import load_model

    cat = Catalog(str(tmp_path / "cat"), cache_dir=str(tmp_path / "cache"))
    c = cat.publish(tiny_card("fundus_disease", ["normal", "dr"]), {"weights": tiny_weights()})
    pred = load_model(c.model_dump(mode="json"), cat.uri)
    assert pred.predict([np.zeros((40, 40, 3), np.uint8)])[0]["label"] in ("normal", "dr")
    wfile = tmp_path / "cat" / "fundus_disease" / "v0001" / "weights.safetensors"
    data = bytearray(wfile.read_bytes())
    data[-1] ^= 0xFF
    wfile.write_bytes(bytes(data))
    with pytest.raises(CatalogError, match="checksum mismatch"):
        load_model(c.model_dump(mode="json"), cat.uri)
