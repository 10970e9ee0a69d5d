"""`medray tune`: the OCT candidate selection as a Ray Tune search (function trainables, each a full
Ray Train run named by its trial id; ASHA; leaderboard; publish the best with its IoU table; score it
on held-out generated scans by whole-scan stitched inference)."""

from __future__ import annotations

import json

import pytest
import yaml

from medray.errors import ConfigError


def _spec(tmp_path, manifest: str, **over) -> str:
    job = {"method": "oct_layers",
           "model": {"name": "oct_unet", "in_chans": 1,
                     "kwargs": {"encoder": "tu-test_resnet", "encoder_depth": 3, "decoder_channels": 16,
                                "convs_per_block": 2}},
           "data": {"manifests": [manifest], "window": 32, "stride": 24, "eval_max_scans": 4, "plot_scans": 2},
           "optim": {"epochs": 2, "batch_size": 8, "lr": 0.01, "warmup_epochs": 0},
           "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
           "run": {"name": "base", "storage_path": str(tmp_path / "unused"), "metric": "val_miou", "mode": "max",
                   "checkpoints_to_keep": 1}}
    (tmp_path / "jobs").mkdir(exist_ok=True)
    (tmp_path / "jobs" / "oct.yaml").write_text(yaml.safe_dump(job))
    spec = {"name": "octsel", "job": "../jobs/oct.yaml",
            "space": {"model.name": {"grid": ["oct_unet", "oct_unetplusplus", "oct_fpn", "oct_deeplabv3plus"]},
                      "model.kwargs.convs_per_block": {"choice": [1, 2]}},
            "num_samples": 1, "metric": "val_miou", "mode": "max",
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
            "max_concurrent_trials": "auto", "max_concurrent_cap": 2, "trial_resources": {"cpu": 0.1},
            "storage_path": str(tmp_path / "tune"), "catalog": str(tmp_path / "catalog"), "publish_as": "oct_best",
            **over}
    (tmp_path / "tune_specs").mkdir(exist_ok=True)
    p = tmp_path / "tune_specs" / "study.yaml"
    p.write_text(yaml.safe_dump(spec))
    return str(p)


def test_study_spec_errors_name_the_file_and_field(tmp_path):
    from medray.tuning import load_study

    p = _spec(tmp_path, "/nonexistent.parquet", trial_resources={"cpu": 0})
    with pytest.raises(ConfigError, match="study.yaml.*trial_resources.*> 0"):
        load_study(p)
    p = _spec(tmp_path, "/nonexistent.parquet", space={"model.kwargs.encoder_depth": {"choice": [3, 7]}})
    with pytest.raises(ConfigError, match="space.model.kwargs.encoder_depth=7"):
        load_study(p)
    p = _spec(tmp_path, "/nonexistent.parquet", space={"optim.lr": {"grid": [0.1], "choice": [0.2]}})
    with pytest.raises(ConfigError, match="space.optim.lr.*exactly one"):
        load_study(p)


@pytest.fixture(scope="module")
def oct_small(tmp_path_factory):
    from medray.data.synth import synth

    out = tmp_path_factory.mktemp("octsel") / "oct.parquet"
    synth("oct", 24, str(out), size=72, widths=[80, 97, 128], scans_per_eye=2, seed=0)
    return str(out)


@pytest.mark.slow
def test_tune_selects_publishes_and_scores_held_out(ray_cluster, oct_small, tmp_path, cli):
    from medray.catalog import Catalog

    spec = _spec(tmp_path, oct_small)
    code, out, err = cli("tune", spec)
    assert code == 0, err[-3000:]
    study = tmp_path / "tune" / "octsel"
    res = json.loads((study / "study.json").read_text())  # stdout also carries Tune's own lines
    assert res["trials"] == 4 and 1 <= res["concurrency"] <= 2
    board = json.loads((study / "leaderboard.json").read_text())
    assert len(board) == 4 and {r["params"]["model.name"] for r in board} == {
        "oct_unet", "oct_unetplusplus", "oct_fpn", "oct_deeplabv3plus"}
    assert all(r["status"] in ("done", "stopped early") for r in board), board
    assert board[0]["best"] >= max(r["best"] for r in board)
    assert (study / "leaderboard.png").stat().st_size > 5000 and "| rank |" in (study / "leaderboard.md").read_text()
    # each trial is its own Ray Train run named by the trial id
    for r in board:
        assert (study / "trials" / f"octsel-{r['trial_id']}" / "trial.json").exists()
    # the best is published with its IoU table, and scored on held-out scans (whole-scan inference)
    card = Catalog(str(tmp_path / "catalog")).get("oct_best")
    assert card.task == "oct_seg" and card.extra["selection"]["trial_id"] == board[0]["trial_id"]
    assert set(card.extra["iou_table"]) >= {"rnfl", "rpe", "choroid"}
    assert card.metrics["val_miou"] == pytest.approx(board[0]["best"])
    test = json.loads((study / "test_report.json").read_text())
    assert test["scans"] >= 1 and 0 < test["test_miou"] <= 1
    assert (study / "overlays.png").exists() and (study / "thickness.png").exists()
    print("held-out", {k: test[k] for k in ("test_miou", "test_miou_fg", "test_mdice", "scans")}, "best", board[0])

    # the same study again restores the finished experiment (no trial retrains) and re-publishes
    code, out2, err = cli("tune", spec)
    assert code == 0, err[-3000:]
    assert json.loads((study / "study.json").read_text())["best"]["trial_id"] == res["best"]["trial_id"]
    assert Catalog(str(tmp_path / "catalog")).get("oct_best").version == 2
