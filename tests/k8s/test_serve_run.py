"""The RayService path on one machine: the serveConfigV2 that `medray k8s render` generates from
serve/quickstart.yaml is written to a file and started with the real `serve run FILE` CLI, on its own
fresh local Ray cluster (never the session's: `serve run` shuts Serve down when it stops). The
catalogue it names (s3://medray/catalog, as on the cluster) lives on the moto S3 server and holds a
real tiny fundus_disease model; a real fundus JPEG is sent over HTTP and answered.

Only the HTTP port differs from the rendered file (a free loopback port instead of 8000)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from k8s.schemas import CRD_DIR
from medray.errors import MedrayError
from medray.k8s.render import Settings, serve_config_v2
from medray.netutil import wait_healthy

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(not CRD_DIR.is_dir(), reason=f"KubeRay CRDs not found at {CRD_DIR}")


def _stop(proc: subprocess.Popen) -> str:
    """Ctrl-C (what a person does: `serve run` shuts Serve and its own Ray down), then the group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    return proc.stdout.read() if proc.stdout else ""


@pytest.mark.slow
def test_rendered_serve_config_runs_with_serve_run(s3_endpoint, shared_data, tmp_path):
    import boto3
    import requests

    from medray.catalog import Catalog
    from serve.conftest import free_port, tiny_card, tiny_weights

    settings = Settings.load(REPO)
    cfg = serve_config_v2(settings, REPO / "serve" / "quickstart.yaml")
    catalog = cfg["applications"][0]["args"]["catalog"]
    assert catalog == settings.catalog and catalog.startswith("s3://")
    bucket = catalog[len("s3://"):].split("/")[0]
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    Catalog(catalog).publish(tiny_card("fundus_disease", ["normal", "disease"], task="classify"),
                             {"weights": tiny_weights(2, seed=1)})

    path = tmp_path / "quickstart.rendered.yaml"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh cluster of its own
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    for attempt in (1, 2):  # a free port can be taken by another process before the proxy binds it
        port = free_port()
        cfg["http_options"]["port"] = port
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        proc = subprocess.Popen([str(BIN / "serve"), "run", str(path)], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, timeout=180, alive=lambda: proc.poll() is None, interval=1)
            break
        except MedrayError as e:
            log = _stop(proc)
            if attempt == 1 and "Failed to bind" in log:
                continue
            pytest.fail(f"`serve run` never became healthy ({e}):\n{log[-4000:]}")
    try:
        jpg = (shared_data / "fundus_skimage" / "retina.jpg").read_bytes()
        r = requests.post(f"{url}/infer", files=[("image", ("retina.jpg", jpg, "image/jpeg"))], timeout=120)
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
        out = res["models"]["fundus_disease"]["outputs"]
        assert set(out["probs"]) == {"normal", "disease"} and out["label"] in out["probs"]
        print(f"[test] serve run {path.name}: {out}")
    finally:
        log = _stop(proc)
    assert "Deployed app" in log or "quickstart" in log, log[-3000:]
