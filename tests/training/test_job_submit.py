"""The cluster path: a training job submitted with `ray job submit` to a `ray start --head` cluster
started by the test (its own ports and temp dir, stopped at the end without touching other clusters)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_cluster(tmp_path):
    """A separate single-node Ray cluster (`ray start --head --block`) with a job server."""
    gcs, dash, client = _free_port(), _free_port(), _free_port()
    temp = Path("/tmp") / f"ray_medray_{os.getpid()}_{gcs}"  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--ray-client-server-port={client}", f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 90
    import urllib.request

    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except Exception:  # noqa: BLE001 - not up yet
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "head.log").read_text()[-3000:])
            time.sleep(1)
    else:
        raise RuntimeError("head node did not start: " + (tmp_path / "head.log").read_text()[-3000:])
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)  # --block: the head cleans up the processes it started
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_job_submit_runs_training_to_succeeded(head_cluster, toy_manifest, tmp_path):
    address, env = head_cluster
    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    job = {
        "method": "classify",
        "model": {"name": "tiny"},
        "data": {"manifests": [toy_manifest], "image_size": 48},
        "optim": {"epochs": 2, "batch_size": 8},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        "run": {"name": "submitted", "storage_path": str(tmp_path / "runs"), "catalog": str(tmp_path / "catalog"),
                "metric": "val_loss", "mode": "min"},
    }
    (work / "jobs" / "toy.yaml").write_text(yaml.safe_dump(job))
    out = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", "medray-toy",
         "--working-dir", str(work),
         "--runtime-env-json", '{"env_vars": {"MEDRAY_SUBMITTED": "1"}}',
         "--", str(BIN / "medray"), "train", "jobs/toy.yaml", "optim.lr=0.002"],
        env=env, capture_output=True, text=True, timeout=480,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(address).get_job_status("medray-toy") == JobStatus.SUCCEEDED
    assert (tmp_path / "runs" / "submitted" / "summary.json").exists()
    assert (tmp_path / "catalog" / "submitted").is_dir()
