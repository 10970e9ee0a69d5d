"""Shared fixtures: one real local Ray cluster per test session, a real S3 endpoint (moto's server on
127.0.0.1), and the public sample data in ../shared/data (tests that need it skip with a reason when
it is absent)."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

from medray.netutil import free_port

# Set before any SDK or Ray process exists, so every worker started later inherits them.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDRAY_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The public samples (read in place, never copied into the repo)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public sample data not found at {SHARED_DATA} (set MEDRAY_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3 endpoint: moto's threaded server on loopback. Exported as AWS_ENDPOINT_URL_S3 so
    medray.storage, s3fs, pyarrow and Ray workers all reach it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh bucket per test: returns ``s3://<name>``."""
    import boto3

    name = f"medray-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    """One local Ray cluster for the whole session (started after the S3 endpoint is known)."""
    import ray

    if not ray.is_initialized():
        # an explicit free dashboard port: two clusters starting at once on one machine (parallel
        # CI jobs, developers) would otherwise race for the default 8265
        ray.init(num_cpus=4, include_dashboard=True, dashboard_port=free_port(), log_to_driver=True,
                 runtime_env={"env_vars": {k: os.environ[k] for k in (
                     "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                     "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")}})
    yield ray
    ray.shutdown()


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``medray ARGS`` in-process, capturing stdout/stderr."""
    import contextlib
    import io

    from medray.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cli():
    return run_cli


sys.path.insert(0, str(Path(__file__).parent))
