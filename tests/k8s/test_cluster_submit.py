"""The cluster path on one machine: a two-node Ray cluster (`ray start --head` + a second `ray start
--address`, each with its own ports, started and stopped by this test without touching any other Ray
on the machine), and a training job submitted with `ray job submit` and a runtime env (working dir +
env vars). The job reads its manifest and writes checkpoints and the catalogue on the moto S3 server;
the Ray processes are started WITHOUT any AWS_* variable, so S3 works only because the runtime env
carries them. The Train workers' node ids (state API) show both nodes did the work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from medray.netutil import free_port

BIN = Path(sys.executable).parent
AWS_KEYS = ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "AWS_EC2_METADATA_DISABLED")
CPUS_PER_NODE = 3  # logical CPUs: one 2-CPU Train worker per node, 1 left for Ray Data on each


def _stop(proc: subprocess.Popen) -> None:
    """Stop one `ray start --block` we started (its process group only; never `ray stop`)."""
    def signal_group(sig):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    signal_group(signal.SIGTERM)  # --block: the node cleans up the processes it started
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(1)
    signal_group(signal.SIGKILL)  # whatever of the group is left (e.g. after a failed `ray start`)
    proc.wait(timeout=30)


def _node_ports() -> list[str]:
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]


@pytest.fixture
def two_node_cluster(tmp_path):
    """(dashboard address, env for CLI calls): a head and a second node, CPUS_PER_NODE logical CPUs each."""
    from ray.util.state import list_nodes

    gcs, dash, client = free_port(), free_port(), free_port()
    temp = Path("/tmp") / f"ray_mr2_{os.getpid()}_{gcs}"  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               # a busy machine: a second raylet must not give up on its agents / the GCS after ~15 s
               RAY_agent_register_timeout_ms="240000", RAY_raylet_start_wait_time_s="240")
    procs: list[subprocess.Popen] = []
    address = f"http://127.0.0.1:{dash}"
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", f"--num-cpus={CPUS_PER_NODE}",
             "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             f"--ray-client-server-port={client}", f"--temp-dir={temp}", "--disable-usage-stats",
             *_node_ports()],
            env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        def head_alive():
            urllib.request.urlopen(f"{address}/api/version", timeout=5)
            assert [n for n in list_nodes(address=address) if n.state == "ALIVE" and n.is_head_node]

        _wait(head_alive, procs, tmp_path, "head")  # the second node needs the head registered in the GCS
        worker_cmd = [str(BIN / "ray"), "start", "--block", f"--address=127.0.0.1:{gcs}",
                      f"--num-cpus={CPUS_PER_NODE}", "--num-gpus=0", "--disable-usage-stats"]

        def two_alive():
            alive = [n for n in list_nodes(address=address) if n.state == "ALIVE"]
            assert len(alive) == 2, alive

        # `ray start` gives a joining node's raylet a hard-coded 30 s to register; on a loaded machine
        # its agents can take longer, so a failed join is retried (each try in its own process group).
        for attempt in range(3):
            proc = subprocess.Popen(worker_cmd + _node_ports(), env=env, stderr=subprocess.STDOUT,
                                    stdout=open(tmp_path / "worker.log", "a"), start_new_session=True)
            procs.append(proc)
            try:
                _wait(two_alive, [proc], tmp_path, "second node")
                break
            except RuntimeError:
                _stop(proc)
                procs.remove(proc)
                if attempt == 2:
                    raise
                print(f"[test] second node failed to join (try {attempt + 1}); retrying", flush=True)
        print(f"[test] two-node cluster up: {address}", flush=True)
        yield address, env
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(temp, ignore_errors=True)


def _wait(check, procs, tmp_path, what, timeout=300):
    deadline = time.time() + timeout
    while True:
        try:
            check()
            return
        except Exception:  # noqa: BLE001 - not up yet
            dead = [p for p in procs if p.poll() is not None]
            logs = "".join((tmp_path / f).read_text()[-2000:] for f in ("head.log", "worker.log")
                           if (tmp_path / f).exists())
            if dead or time.time() > deadline:
                raise RuntimeError(f"{what} did not start:\n{logs}") from None
            time.sleep(1)


def _submit(cmd, env, timeout, agent_wait_s=180):
    """`ray job submit`, retried while the head's job agent has not registered yet: on a loaded machine
    the dashboard answers before its agent does, and the job server then refuses the submission (HTTP
    500 "No available agent", nothing created) instead of waiting."""
    deadline = time.time() + agent_wait_s
    while True:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if out.returncode == 0 or "No available agent" not in out.stdout + out.stderr or time.time() > deadline:
            return out
        print("[test] the job agent is not up yet; submitting again in 5 s", flush=True)
        time.sleep(5)


@pytest.mark.slow
def test_ray_job_submit_trains_on_both_nodes_with_s3_storage(two_node_cluster, s3_bucket, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors, list_nodes

    from medray import storage
    from training.conftest import make_toy_classify

    address, env = two_node_cluster
    manifest = make_toy_classify(f"{s3_bucket}/data/toy", n=32, size=32)
    work = tmp_path / "work"  # the job's working dir: only the job file (no venv, no data)
    (work / "jobs").mkdir(parents=True)
    job = {
        "method": "classify",
        "model": {"name": "tiny"},
        "data": {"manifests": [manifest], "image_size": 32},
        "optim": {"epochs": 1, "batch_size": 8},
        "scaling": {"num_workers": 2, "cpus_per_worker": 2, "use_gpu": False},
        "run": {"name": "two_nodes", "storage_path": f"{s3_bucket}/runs", "catalog": f"{s3_bucket}/catalog",
                "metric": "val_loss", "mode": "min"},
    }
    (work / "jobs" / "toy.yaml").write_text(yaml.safe_dump(job))
    runtime_env = {"env_vars": {**{k: os.environ[k] for k in AWS_KEYS}, "MEDRAY_SUBMITTED": "1",
                                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
                                "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}}
    out = _submit(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", "medray-two-nodes",
         "--working-dir", str(work), "--runtime-env-json", json.dumps(runtime_env),
         "--", str(BIN / "medray"), "train", "jobs/toy.yaml", "optim.lr=0.002"],
        env=env, timeout=540,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-5000:]
    assert JobSubmissionClient(address).get_job_status("medray-two-nodes") == JobStatus.SUCCEEDED

    # both nodes ran a Train worker (the state API keeps finished actors with their node id)
    nodes = {n.node_id for n in list_nodes(address=address) if n.state == "ALIVE"}
    workers = [a for a in list_actors(address=address, detail=True, limit=1000)
               if "TrainWorker" in a.class_name]
    assert len(workers) >= 2, [a.class_name for a in list_actors(address=address, limit=1000)]
    used = {a.node_id for a in workers}
    assert used == nodes and len(nodes) == 2, (used, nodes)
    print(f"[test] Train workers on nodes {sorted(used)}", flush=True)

    # checkpoints, the run summary and the catalogue entry are on S3
    summary = json.loads(storage.read_bytes(f"{s3_bucket}/runs/two_nodes/summary.json"))
    assert summary
    assert storage.exists(f"{s3_bucket}/catalog/two_nodes")
    assert not (tmp_path / "runs").exists() and not (work / "runs").exists()


def test_driver_leaves_the_submitted_jobs_env_vars_to_the_job(monkeypatch):
    """ray.init inside `ray job submit --runtime-env-json '{"env_vars": {...AWS_*...}}'` must not set the
    same keys again (Ray refuses the merge): the launcher reads them from the job's injected config."""
    from medray.training.launcher import _submitted_job_env_vars

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _submitted_job_env_vars() == {}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"working_dir": "gcs://x.zip", "env_vars": {"AWS_ACCESS_KEY_ID": "k"}}, "metadata": {}}))
    assert _submitted_job_env_vars() == {"AWS_ACCESS_KEY_ID": "k"}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{not json")
    assert _submitted_job_env_vars() == {}
