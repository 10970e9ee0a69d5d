"""The inference DAG on Ray Serve over real HTTP (issue 8): a 3-model preset (quality gate ->
disease + glaucoma classifiers in parallel) built by the typed app builder from a temporary
catalogue of real tiny models, served on the session's local Ray cluster.

One app for the whole module (started once, deleted at the end)."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from medray.catalog import Catalog
from medray.netutil import wait_healthy
from medray.serving.executor import overlaps

from .conftest import tiny_card, tiny_weights

pytestmark = pytest.mark.slow

API_KEY = "medray-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
APP = "medray_fundus_test"

PRESET = """\
# test preset: quality gate -> disease and glaucoma in parallel
name: fundus_test
title: Fundus test
modality: fundus
models: [fundus_quality, fundus_disease@production, fundus_glaucoma]
gates:
  fundus_quality: {output: label, allow: [gradable]}
stages:
  - [fundus_quality]
  - [fundus_disease, fundus_glaucoma]
evaluation:
  fundus_disease: {column: label}
"""


@pytest.fixture(scope="module")
def app(serve_http, tmp_path_factory):
    from ray import serve

    from medray.serving.app import AppArgs, build_app

    root = tmp_path_factory.mktemp("serve_app")
    cat = Catalog(str(root / "catalog"), cache_dir=str(root / "cache"))
    # the quality model's head bias leans to "gradable" (P ~ 0.88): a real network forward pass
    cat.publish(tiny_card("fundus_quality", ["ungradable", "gradable"], task="quality"),
                {"weights": tiny_weights(2, head_bias=[0.0, 2.0])})
    cat.publish(tiny_card("fundus_disease", ["normal", "dr"], excludes=["fundus_disease_lite"],
                          metrics={"val_acc": 0.61, "val_auc": 0.66}),
                {"weights": tiny_weights(2, seed=1)}, alias="production")
    cat.publish(tiny_card("fundus_glaucoma", ["normal", "glaucoma"]), {"weights": tiny_weights(2, seed=2)})
    cat.publish(tiny_card("fundus_disease_lite", ["normal", "dr"]), {"weights": tiny_weights(2, seed=3)})
    cat.publish(tiny_card("dr_report", ["low", "high"], inputs=["image", "fundus_disease.score"]),
                {"weights": tiny_weights(2, seed=4)})
    cat.publish(tiny_card("cyc_a", ["x", "y"], inputs=["cyc_b.label"]), {"weights": tiny_weights(2)})
    cat.publish(tiny_card("cyc_b", ["x", "y"], inputs=["cyc_a.label"]), {"weights": tiny_weights(2)})
    presets = root / "presets"
    presets.mkdir()
    (presets / "fundus_test.yaml").write_text(PRESET)

    args = AppArgs(catalog=cat.uri, preset="fundus_test", presets_dir=str(presets), api_key=API_KEY,
                   max_body_mb=4, max_image_pixels=20_000_000,
                   defaults={"ray_actor_options": {"num_cpus": 0.25}, "max_batch_size": 8,
                             "batch_wait_timeout_s": 0.02})
    t0 = time.time()
    serve.run(build_app(args), name=APP, route_prefix="/fundus")
    url = serve_http + "/fundus"
    health = wait_healthy(url)
    print(f"app ready in {time.time() - t0:.1f}s: {health}")
    yield {"url": url, "catalog": cat, "root": root}
    serve.delete(APP)


def post_infer(url, files, data=None, headers=AUTH, timeout=60):
    import requests

    return requests.post(f"{url}/infer", files=files, data=data or {}, headers=headers, timeout=timeout)


def fundus_jpeg(shared_data) -> bytes:
    return (shared_data / "fundus_skimage" / "retina.jpg").read_bytes()


# --------------------------------------------------------------------------------------------
# browse, plans, docs, auth


def test_health_docs_and_api_key(app):
    import requests

    url = app["url"]
    h = requests.get(f"{url}/healthz?deep=true", timeout=30).json()
    assert h["stages"] == [["fundus_quality"], ["fundus_disease", "fundus_glaucoma"]]
    assert set(h["replicas"]) == {"fundus_quality", "fundus_disease", "fundus_glaucoma"}
    spec = requests.get(f"{url}/openapi.json", timeout=30).json()
    assert {"/models", "/plans", "/infer", "/evaluate", "/healthz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/infer"]["post"]["requestBody"]["content"]
    assert requests.get(f"{url}/docs", timeout=30).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = requests.get(f"{url}/models", headers=headers, timeout=30)
        assert r.status_code == 401 and "API key" in r.json()["detail"]["error"]
        r = post_infer(url, {"image": ("a.jpg", b"x")}, headers=headers)
        assert r.status_code == 401


def test_models_browse_with_disabled_state(app):
    import requests

    r = requests.get(f"{app['url']}/models", params={"selected": "fundus_disease"}, headers=AUTH, timeout=30)
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert {n for n, m in models.items() if m["disabled"]} == {"fundus_disease_lite"}
    assert models["fundus_disease_lite"]["reasons"] == [
        "fundus_disease excludes fundus_disease_lite (fundus_disease.excludes lists it)"]
    assert models["fundus_disease"]["selected"] and models["fundus_disease"]["served"]
    assert not models["fundus_disease_lite"]["served"]
    assert "fundus_test" in r.json()["presets"]
    r = requests.get(f"{app['url']}/models", params={"modality": "oct"}, headers=AUTH, timeout=30)
    assert r.json()["models"] == []
    r = requests.get(f"{app['url']}/models", params={"selected": "nope"}, headers=AUTH, timeout=30)
    assert r.status_code == 422 and "unknown model 'nope'" in r.json()["detail"]["error"]


def test_plans_selection_flow(app):
    import requests

    def plans(body):
        return requests.post(f"{app['url']}/plans", json=body, headers=AUTH, timeout=30)

    r = plans({"preset": "fundus_test"})
    assert r.status_code == 200 and r.json()["servable"]
    p = r.json()["plan"]
    assert p["stages"] == [["fundus_quality"], ["fundus_disease", "fundus_glaucoma"]]
    assert {(e["src"], e["dst"], e["kind"]) for e in p["edges"]} == {
        ("fundus_quality", "fundus_disease", "gate"), ("fundus_quality", "fundus_glaucoma", "gate")}
    # second selection inside the combination
    r = plans({"preset": "fundus_test", "subset": ["fundus_quality", "fundus_glaucoma"]})
    assert r.json()["plan"]["stages"] == [["fundus_quality"], ["fundus_glaucoma"]]
    # missing upstream: auto-completed and reported, or refused
    r = plans({"models": ["dr_report"]})
    assert r.status_code == 200
    p = r.json()["plan"]
    assert p["added"] == [{"name": "fundus_disease", "ref": "fundus_disease:1",
                           "reason": "dr_report consumes fundus_disease.score"}]
    assert p["stages"] == [["fundus_disease"], ["dr_report"]] and not r.json()["servable"]
    r = plans({"models": ["dr_report"], "auto_complete": False})
    assert r.status_code == 422
    assert r.json()["detail"]["reasons"] == ["dr_report consumes fundus_disease.score but fundus_disease is not "
                                             "selected: select fundus_disease or allow auto-completion"]
    # conflict and cycle refused with reasons
    r = plans({"models": ["fundus_disease", "fundus_disease_lite"]})
    assert r.status_code == 422 and r.json()["detail"]["reasons"][0].startswith("conflict: fundus_disease excludes")
    r = plans({"models": ["cyc_a", "cyc_b"]})
    assert r.status_code == 422 and r.json()["detail"]["reasons"][0].startswith("cycle: ")
    # malformed bodies
    assert requests.post(f"{app['url']}/plans", data=b"{nope", headers=AUTH, timeout=30).status_code == 400
    assert plans({"preset": "fundus_test", "models": ["x"]}).status_code == 422


# --------------------------------------------------------------------------------------------
# inference


def _check_complete(res, n_models=3):
    assert res["status"] == "complete", res
    assert list(res["models"]) == ["fundus_quality", "fundus_disease", "fundus_glaucoma"]
    for name, m in res["models"].items():
        assert m["status"] == "ok", (name, m)
        assert m["outputs"]["label"] in m["outputs"]["probs"]
        assert abs(sum(m["outputs"]["probs"].values()) - 1) < 1e-4
    assert res["models"]["fundus_quality"]["gate"]["passed"] is True


def test_preset_answers_real_fundus_jpeg_and_dicom(app, shared_data):
    from medray.inference.predictor import load_predictor
    from medray.serving.uploads import decode_upload

    jpg = fundus_jpeg(shared_data)
    dcm = (shared_data / "formats" / "dicom" / "nema_wg04" / "VL4_J2KI_fundoscopy.dcm").read_bytes()
    r = post_infer(app["url"], [("image", ("retina.jpg", jpg, "image/jpeg")),
                                ("image", ("fundus.dcm", dcm, "application/dicom"))])
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["image"] for x in body["results"]] == ["retina.jpg", "fundus.dcm"]
    for res in body["results"]:
        _check_complete(res)
        t = res["timings"]
        # the independent branches ran concurrently: their windows intersect
        assert overlaps(t["fundus_disease"], t["fundus_glaucoma"]), t
        # both started after the gate finished
        assert min(t["fundus_disease"]["start"], t["fundus_glaucoma"]["start"]) >= t["fundus_quality"]["end"]
        print("timings (ms from gate start):", {k: (round((v["start"] - t["fundus_quality"]["start"]) * 1e3, 1),
                                                    round((v["end"] - t["fundus_quality"]["start"]) * 1e3, 1))
                                                for k, v in t.items()})
    # the served answer is the catalogued model's answer on the same image (in-process predictor)
    cat = app["catalog"]
    pred = load_predictor(cat.get("fundus_disease@production"), cat)
    arr = decode_upload(jpg, "retina.jpg", modality="fundus", max_pixels=20_000_000, min_side=16, display_size=1024)
    local = pred.predict([arr])[0]
    served = body["results"][0]["models"]["fundus_disease"]["outputs"]
    assert served["label"] == local["label"]
    assert served["probs"] == pytest.approx(local["probs"], abs=1e-4)


def test_gate_stops_later_stages(app, shared_data):
    # a stricter quality threshold than this image reaches: the plan stops after the gate
    plan = {"preset": "fundus_test", "gates": {"fundus_quality": {"output": "score", "min": 0.999}}}
    r = post_infer(app["url"], {"image": ("retina.jpg", fundus_jpeg(shared_data))}, {"plan": json.dumps(plan)})
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["status"] == "stopped" and res["stopped_by"] == ["fundus_quality"]
    q = res["models"]["fundus_quality"]
    assert q["status"] == "ok" and q["gate"]["passed"] is False and "< min 0.999" in q["gate"]["reason"]
    for name in ("fundus_disease", "fundus_glaucoma"):
        assert res["models"][name] == {"status": "skipped", "reason": "stopped by gate fundus_quality"}
    assert set(res["timings"]) == {"fundus_quality"}
    # the same image with the preset's own gate (label must be "gradable") goes through
    r = post_infer(app["url"], {"image": ("retina.jpg", fundus_jpeg(shared_data))}, {"preset": "fundus_test"})
    _check_complete(r.json()["results"][0])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(w: int, h: int, rgb: bool = True) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3) if rgb else (h, w), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _bad_requests(shared_data, rng):
    """(kind, files, data, content) tuples: at least 8 kinds of malformed requests."""
    jpg = fundus_jpeg(shared_data)
    png = _png(64, 64)
    dicom = shared_data / "formats" / "dicom" / "pydicom_test_files"
    ct = (dicom / "CT_small.dcm").read_bytes()
    ecg = (dicom / "waveform_ecg.dcm").read_bytes()
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + _png_chunk(b"IEND", b""))
    bad_crc = bytearray(png)
    bad_crc[40] ^= 0xFF
    kinds = {
        "empty": lambda: {"files": {"image": ("e.jpg", b"")}},
        "truncated_jpeg": lambda: {"files": {"image": ("t.jpg", jpg[: int(rng.integers(200, len(jpg) // 2))])}},
        "truncated_png": lambda: {"files": {"image": ("t.png", png[: int(rng.integers(40, len(png) - 20))])}},
        "random_bytes": lambda: {"files": {"image": ("r.jpg", rng.bytes(int(rng.integers(1, 5000))))}},
        "text_file": lambda: {"files": {"image": ("notes.txt", b"patient notes, not an image\n" * 5)}},
        "html_as_jpeg": lambda: {"files": {"image": ("x.jpg", b"<html><body>404</body></html>")}},
        "corrupt_png": lambda: {"files": {"image": ("c.png", bytes(bad_crc))}},
        "dicom_ct_wrong_modality": lambda: {"files": {"image": ("ct.dcm", ct)}},
        "dicom_without_pixels": lambda: {"files": {"image": ("ecg.dcm", ecg)}},
        "too_small": lambda: {"files": {"image": ("s.png", _png(int(rng.integers(1, 15)), 8))}},
        "pixel_bomb": lambda: {"files": {"image": ("bomb.png", bomb)}},
        "no_image_field": lambda: {"files": {"file": ("a.jpg", jpg[:100])}},
        "bad_plan_json": lambda: {"files": {"image": ("a.png", png)}, "data": {"plan": "{not json"}},
        "unknown_preset": lambda: {"files": {"image": ("a.png", png)}, "data": {"preset": "nope"}},
        "plan_unknown_model": lambda: {"files": {"image": ("a.png", png)},
                                       "data": {"plan": json.dumps({"models": ["fundus_disease_lite"]})}},
        "declared_wrong_modality": lambda: {"files": {"image": ("a.png", png)}, "data": {"modality": "oct"}},
        "not_multipart": lambda: {"content": b'{"image": "retina.jpg"}', "ctype": "application/json"},
        "conflicting_plan": lambda: {"files": {"image": ("a.png", png)}, "data": {
            "plan": json.dumps({"models": ["fundus_disease", "fundus_quality"], "gates": {
                "fundus_glaucoma": {"output": "label", "allow": ["normal"]}}})}},
    }
    return kinds


def test_bad_uploads_are_4xx_and_the_service_still_answers(app, shared_data):
    import requests

    rng = np.random.default_rng(0)
    kinds = _bad_requests(shared_data, rng)
    names = list(kinds)
    seen: dict[str, set[int]] = {}
    url = app["url"]

    def send(i):
        kind = names[i % len(names)]
        req = kinds[kind]()
        if "content" in req:
            r = requests.post(f"{url}/infer", data=req["content"], timeout=60,
                              headers={**AUTH, "Content-Type": req["ctype"]})
        else:
            r = post_infer(url, req["files"], req.get("data"))
        return kind, r.status_code, r.json()

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(send, range(216)))
    for kind, status, body in answers:
        assert 400 <= status < 500, (kind, status, body)
        assert body["detail"]["error"], (kind, body)
        seen.setdefault(kind, set()).add(status)
    assert len(seen) >= 8 and len(answers) >= 200
    print({k: sorted(v) for k, v in seen.items()})
    assert seen["pixel_bomb"] == {413} and seen["empty"] == {400} and seen["dicom_ct_wrong_modality"] == {422}
    # the body limit (4 MB in this app) -> 413 before parsing
    r = post_infer(url, {"image": ("big.jpg", b"\xff\xd8\xff" + rng.bytes(5 * 2**20))})
    assert r.status_code == 413 and "limit" in r.json()["detail"]["error"]
    # the service still answers a good request, every replica alive
    r = post_infer(url, {"image": ("retina.jpg", fundus_jpeg(shared_data))})
    assert r.status_code == 200
    _check_complete(r.json()["results"][0])


def test_replica_killed_under_load_every_request_succeeds(app, shared_data):
    import ray

    jpg = fundus_jpeg(shared_data)
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True)
              if "SERVE_REPLICA" in a["name"] and "fundus_disease" in a["name"] and APP in a["name"]]
    assert len(actors) == 1, actors
    victim = ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"])

    def one(i):
        r = post_infer(app["url"], {"image": (f"r{i}.jpg", jpg)}, timeout=180)
        return r.status_code, r.json()

    killer = threading.Timer(0.5, lambda: ray.kill(victim, no_restart=True))
    with ThreadPoolExecutor(16) as pool:
        futs = [pool.submit(one, i) for i in range(32)]
        killer.start()
        answers = [f.result() for f in futs]
    killer.join()
    for status, body in answers:
        assert status == 200, body
        _check_complete(body["results"][0])
    # a new replica replaced the killed one, and a second load succeeds entirely
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if "SERVE_REPLICA" in a["name"] and "fundus_disease" in a["name"] and APP in a["name"]]
    assert names and actors[0]["name"] not in names
    with ThreadPoolExecutor(16) as pool:
        for status, body in pool.map(one, range(16)):
            assert status == 200
            _check_complete(body["results"][0])


# --------------------------------------------------------------------------------------------
# efficacy evaluation


@pytest.fixture(scope="module")
def labelled_manifest(app, shared_data):
    from medray.data.manifest import write_manifest

    imgs = sorted((shared_data / "fundus_heimed").rglob("*.jpg"))[:5] + [shared_data / "fundus_skimage" / "retina.jpg"]
    rows = [{"image": str(p), "patient_id": f"p{i}", "eye": "unknown", "width": 0, "height": 0, "split": "test",
             "dataset": "test", "label": i % 2, "labels": None} for i, p in enumerate(imgs)]
    uri = str(app["root"] / "eval.parquet")
    write_manifest(rows, uri, task="fundus_disease", classes=["normal", "dr"])
    return uri, len(rows)


def test_evaluate_endpoint(app, labelled_manifest):
    import requests

    uri, n = labelled_manifest
    r = requests.post(f"{app['url']}/evaluate", json={"manifest": uri, "preset": "fundus_test"}, headers=AUTH,
                      timeout=300)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["rows"] == n and rep["status"] == {"complete": n}
    m = rep["models"]["fundus_disease"]
    assert m["n"] == n and 0 <= m["accuracy"] <= 1 and m["card_metrics"] == {"val_acc": 0.61, "val_auc": 0.66}
    assert len(m["confusion_matrix"]) == 2 and sum(map(sum, m["confusion_matrix"])) == n
    lat = rep["latency"]
    assert lat["n"] == n and lat["p50_ms"] <= lat["p99_ms"] and lat["throughput_per_s"] > 0
    r = requests.post(f"{app['url']}/evaluate", json={"manifest": "/nope.parquet"}, headers=AUTH, timeout=30)
    assert r.status_code == 422 and "not found" in r.json()["detail"]["error"]


def test_cli_evaluate_pipeline_over_http(app, labelled_manifest, cli, tmp_path, monkeypatch):
    uri, n = labelled_manifest
    monkeypatch.setenv("MEDRAY_API_KEY", API_KEY)
    code, out, err = cli("evaluate-pipeline", "fundus_test", uri, "--url", app["url"], "--out", str(tmp_path),
                         "--concurrency", "4")
    assert code == 0, err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["models"]["fundus_disease"]["n"] == n and rep["latency"]["n"] == n
    assert (tmp_path / "latency.png").stat().st_size > 1000 and (tmp_path / "report.html").exists()
