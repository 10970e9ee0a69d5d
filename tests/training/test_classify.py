"""The training core end to end on a real local Ray cluster: 2 DDP workers (gloo on CPU),
checkpoints, resume, publish to the catalogue, predict, S3 storage, and a real worker kill."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from medray import storage
from medray.config import load_job, parse_job
from medray.training.launcher import run_job


def _job(manifest_uri: str, storage_path: str, name: str, catalog: str | None = None, **over):
    data = {
        "method": "classify",
        "model": {"name": "tiny"},
        "data": {"manifests": [manifest_uri], "image_size": 48, "decode_batch_size": 16,
                 "augment": {"rotate_deg": 5.0}},
        "optim": {"epochs": 6, "batch_size": 8, "lr": 0.001, "warmup_epochs": 0.5},
        "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
        "run": {"name": name, "storage_path": storage_path, "metric": "val_acc", "mode": "max",
                "checkpoints_to_keep": 2, "catalog": catalog},
    }
    for k, v in over.items():
        sec, key = k.split("__")
        data[sec][key] = v
    return parse_job(data, source="test")


@pytest.mark.slow
def test_two_workers_train_checkpoint_publish_predict(ray_cluster, toy_manifest, tmp_path, cli):
    job = _job(toy_manifest, str(tmp_path / "runs"), "toy", catalog=str(tmp_path / "catalog"))
    out = run_job(job)
    assert out["resumed_from_epoch"] == -1
    run = tmp_path / "runs" / "toy"
    ckpts = sorted(p.name for p in run.iterdir() if p.name.startswith("epoch_"))
    assert 1 <= len(ckpts) <= 2, ckpts  # best-2 kept (+ latest)
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["history"]) == 6
    assert (run / "curves.png").stat().st_size > 1000
    # it learns the visible rule: loss falls, validation beats chance
    hist = summary["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"], hist
    assert summary["best_metrics"]["val_acc"] >= 0.7, summary["best_metrics"]
    # checkpoint holds everything needed to resume
    import torch

    ts = torch.load(run / ckpts[-1] / "train_state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "epoch", "step", "rng"} <= set(ts)
    assert (run / ckpts[-1] / "model.safetensors").exists()

    # published: versioned, checksummed, loadable by `medray predict`
    assert out["published"] == "toy:1"
    code, text, err = cli("catalog", "list", "--catalog", str(tmp_path / "catalog"))
    assert code == 0 and "toy:1" in text, err
    img = storage.join(os.path.dirname(toy_manifest), "img_001.jpg")
    code, text, err = cli("predict", "toy", img, "--catalog", str(tmp_path / "catalog"))
    assert code == 0, err
    pred = json.loads(text)
    assert set(pred["probs"]) == {"dark_ring", "bright_disc"} and pred["label"] in pred["probs"]

    # same job, same storage path, more epochs -> resumes after epoch 6, trains only epoch 7
    job2 = _job(toy_manifest, str(tmp_path / "runs"), "toy", catalog=str(tmp_path / "catalog"), optim__epochs=7)
    out2 = run_job(job2)
    assert out2["resumed_from_epoch"] == 6
    summary2 = json.loads((run / "summary.json").read_text())
    assert [h["epoch"] for h in summary2["history"]] == [1, 2, 3, 4, 5, 6, 7]
    assert out2["published"] == "toy:2"


@pytest.mark.slow
def test_storage_and_catalog_on_s3_and_resume(ray_cluster, s3_bucket, tmp_path):
    from tests.training.conftest import make_toy_classify

    manifest_uri = make_toy_classify(f"{s3_bucket}/data", n=24, seed=1)
    job = _job(manifest_uri, f"{s3_bucket}/runs", "s3toy", catalog=f"{s3_bucket}/catalog", optim__epochs=1)
    out = run_job(job)
    assert out["run"] == f"{s3_bucket}/runs/s3toy"
    assert storage.exists(f"{s3_bucket}/runs/s3toy/summary.json")
    assert any("epoch_0001" in p for p in storage.listdir(f"{s3_bucket}/runs/s3toy"))
    from medray.catalog import Catalog

    card = Catalog(f"{s3_bucket}/catalog").get("s3toy")
    assert card.version == 1 and card.checksum
    out2 = run_job(_job(manifest_uri, f"{s3_bucket}/runs", "s3toy", catalog=f"{s3_bucket}/catalog",
                        optim__epochs=2))
    assert out2["resumed_from_epoch"] == 1


def _kill_a_worker_after_first_checkpoint(run_dir, killed: dict) -> None:
    from ray.util.state import list_actors

    # epoch_0002 appearing means epoch 1's checkpoint is registered (a directory still being
    # uploaded is not a checkpoint yet): kill one worker of the group in the middle of the run
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "epoch_0002").exists():
        time.sleep(0.05)
    for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]):
        if a.pid:
            os.kill(a.pid, signal.SIGKILL)  # a real process death, not an exception in the loop
            killed["pid"] = a.pid
            return


@pytest.mark.slow
def test_killed_worker_restarts_and_resumes(ray_cluster, toy_manifest, tmp_path):
    # enough epochs that the run is still going when the kill lands (an epoch here takes ~0.3 s)
    job = _job(toy_manifest, str(tmp_path / "runs"), "ft", optim__epochs=30, run__max_failures=2)
    killed: dict = {}
    t = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(tmp_path / "runs" / "ft", killed))
    t.start()
    out = run_job(job)
    t.join()
    assert killed.get("pid"), "no worker was killed"
    assert out["resumed_from_epoch"] >= 1  # the new worker group started after a checkpoint
    summary = json.loads((tmp_path / "runs" / "ft" / "summary.json").read_text())
    assert summary["final_metrics"]["epoch"] == 30
    assert [h["epoch"] for h in summary["history"]][-1] == 30


def test_job_yaml_misspelt_key_names_file_and_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("method: classify\ndata: {manifests: [x.parquet]}\noptim: {lrr: 0.1}\n")
    from medray.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_job(p)
    assert str(p) in str(e.value) and "optim.lrr" in str(e.value) and "did you mean 'lr'" in str(e.value)


def test_workers_are_sized_to_leave_ray_data_a_cpu(ray_cluster, tmp_path):
    """On the 4-CPU test cluster: a job that fits is left alone; one that does not, or that shares the
    cluster with other Tune trials (each holding its own placement), gets a smaller per-worker CPU
    request, so one CPU always stays free for Ray Data's read/decode tasks."""
    from medray.training.launcher import scaling_config

    def cpus(workers, per_worker, **kw):
        job = _job("m.parquet", str(tmp_path), "sizing", scaling__num_workers=workers,
                   scaling__cpus_per_worker=per_worker)
        sc = scaling_config(job, **kw)
        return sc.num_workers * sc.resources_per_worker["CPU"]

    assert cpus(2, 1.0) == 2.0  # 2 of 4 CPUs: fits
    assert cpus(2, 2.0) <= 3.0  # 4 of 4 would starve Ray Data
    # three concurrent trials, each holding 0.1 CPU itself: 3 x (0.1 + workers) <= 3
    assert 3 * (0.1 + cpus(1, 1.0, reserved_cpus=0.1, share=3)) <= 3.0


def test_worker_cpus_leave_one_cpu_for_ray_data_per_share():
    """The sizing rule alone (no cluster): what the launcher and Tune's auto concurrency both use."""
    from medray.training.launcher import worker_cpus

    assert worker_cpus(2, 1.0, 4) == 1.0  # fits: left alone
    assert worker_cpus(1, 0.5, 2) == 0.5
    assert 2 * worker_cpus(2, 2.0, 4) <= 3.0  # would take all 4
    assert worker_cpus(1, 1.0, 2, reserved_cpus=0.1) <= 0.9  # a 2-CPU machine, one Tune trial
    for share in (1, 2, 3):  # side by side, each trial with its own 0.1 CPU, Ray Data keeps one CPU
        assert share * (0.1 + 2 * worker_cpus(2, 1.0, 8, reserved_cpus=0.1, share=share)) <= 7.0
    assert worker_cpus(4, 1.0, 1) >= 0.1  # never below the floor, even on a 1-CPU cluster


def test_a_run_without_validation_rows_for_its_val_metric_is_refused(tmp_path):
    """An empty validation split would train for nothing and select checkpoints on a missing metric
    (a Tune study of such trials would rank n/a against n/a): refused before any worker starts."""
    from medray.errors import ManifestError
    from medray.training.launcher import check_rows

    job = _job("m.parquet", str(tmp_path), "empty_val")
    with pytest.raises(ManifestError, match=r"no validation rows in splits \['val'\] of \['m.parquet'\].*val_acc"):
        check_rows(job, {"train_rows": 40, "val_rows": 0})
    with pytest.raises(ManifestError, match="no training rows"):
        check_rows(job, {"train_rows": 0, "val_rows": 8})
    check_rows(job, {"train_rows": 40, "val_rows": 8})
    check_rows(job, {"train_rows": 40, "val_rows": -1})  # counted later by the workers: not checked here
    check_rows(_job("m.parquet", str(tmp_path), "t", run__metric="train_loss"), {"train_rows": 40, "val_rows": 0})
