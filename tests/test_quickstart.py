"""The README's main job (`medray quickstart`): every training step's job is the repository's job file
with the quickstart's overrides (checked here without training), and the real-data path end to end on
the public samples: ingest -> fundus-disease classifier (2 workers, publish, HTML report) -> quality
gate -> retinal age on the real ODIR + HEI-MED ages -> the fundus-screening preset on Ray Serve
answering a real photo over HTTP. The generated-data steps (OCT, skin, ROP) run the same `run_job` / `run_study` as their
own end-to-end tests; here their jobs are built and validated."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medray.errors import ConfigError, MedrayError
from medray.quickstart import QUICK, STEPS, build_job, build_study, run_quickstart


@pytest.mark.parametrize("quick", [True, False])
@pytest.mark.parametrize("step", ["fundus_disease", "quality", "retinal_age", "skin", "rop"])
def test_every_training_step_builds_a_valid_job(step, quick, tmp_path):
    out = str(tmp_path / "runs")
    job = build_job(step, out, [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")], quick=quick,
                    extra=["run.seed=3"])
    assert job.run.storage_path == f"{out}/train" and job.run.catalog == f"{out}/catalog"
    assert job.run.seed == 3
    if step == "skin":
        assert job.data.manifest == str(tmp_path / "a.parquet")
    else:
        assert job.data.manifests == [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    if step == "retinal_age":
        assert job.responses.classifier_catalog == f"{out}/catalog"
    if quick and step == "rop":
        assert job.model.name == "tiny_effnet"
    if step == "quality":
        assert job.publish_task == "quality" and job.data.classes == ["ungradable", "gradable"]
    if not quick:  # --full: the job file as it is
        assert job.scaling.num_workers == 2


@pytest.mark.parametrize("quick", [True, False])
def test_oct_study_is_the_repository_study_with_the_quick_space(quick, tmp_path):
    from medray.tuning import load_study

    path = build_study(str(tmp_path / "runs"), str(tmp_path / "oct.parquet"), quick=quick,
                       extra=["optim.epochs=2"])
    spec, base = load_study(str(path))  # validates the base job and every value of the space
    assert spec.catalog == str(tmp_path / "runs" / "catalog") and spec.publish_as == "oct_layers"
    assert base["data"]["manifests"] == [str(tmp_path / "oct.parquet")] and base["optim"]["epochs"] == 2
    assert spec.space["model.name"].grid == ["oct_unet", "oct_unetplusplus", "oct_fpn", "oct_deeplabv3plus"]
    if quick:
        assert base["model"]["kwargs"]["encoder"] == "tu-test_resnet"
        assert spec.space["model.kwargs.encoder_depth"].choice == [3]
    else:
        assert base["model"]["kwargs"]["encoder"] == "resnet18"


def test_bad_steps_and_overrides_are_clear_errors(shared_data, tmp_path, cli):
    with pytest.raises(MedrayError, match="unknown step"):
        run_quickstart(str(shared_data), str(tmp_path), steps=["data", "nope"])
    with pytest.raises(MedrayError, match="only the training steps"):
        run_quickstart(str(shared_data), str(tmp_path), overrides={"serve": ["x=1"]})
    with pytest.raises(ConfigError, match="did you mean"):
        build_job("rop", str(tmp_path), ["m.parquet"], extra=["optim.epoch=3"])
    code, _, err = cli("quickstart", "--set", "retinal_age", "--data", str(shared_data))
    assert code == 2 and "STEP:key.path=value" in err
    assert set(QUICK) < set(STEPS)


@pytest.mark.slow
def test_main_job_real_samples_train_publish_serve(ray_cluster, shared_data, tmp_path, capsys):
    out = tmp_path / "runs"
    tiny = ["model.name=tiny", "data.image_size=64", "optim.epochs=2", "scaling.cpus_per_worker=0.5"]
    res = run_quickstart(str(shared_data), str(out),
                         steps=["data", "fundus_disease", "quality", "retinal_age", "serve"],
                         overrides={"fundus_disease": tiny, "retinal_age": tiny, "quality": ["optim.epochs=3"]})
    printed = capsys.readouterr().out
    steps = res["steps"]
    assert list(steps) == ["data", "fundus_disease", "quality", "retinal_age", "serve"]

    # 1. the real sets, validated
    assert {"heimed", "odir", "duke_dme", "spectralis_layers", "dicom"} <= set(res["manifests"])
    assert steps["data"]["bad_rows"] == 0

    # 2. the classifier: 2 workers, checkpoints, published, a self-contained report with its plots
    assert steps["fundus_disease"]["published"] == "fundus_disease:1"
    run = out / "train" / "fundus_disease"
    assert any(p.name.startswith("epoch_") for p in run.iterdir()) and (run / "curves.png").exists()
    html = Path(steps["fundus_disease"]["report"]).read_text()
    imgs = re.findall(r"<img[^>]+src=[\"']([^\"']+)[\"']", html)
    assert len(imgs) >= 4 and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "http://" not in html and "https://" not in html
    metrics = json.loads((out / "reports" / "fundus_disease" / "metrics.json").read_text())
    held_out = sum(res_n for res_n in _held_out(out))
    assert metrics["n"] == held_out > 0  # every held-out (all labelled) row predicted once
    for png in ("roc.png", "pr.png", "confusion.png", "calibration.png"):
        assert (out / "reports" / "fundus_disease" / png).stat().st_size > 2000

    # 3. retinal age on the real ages, its responses from that classifier
    assert steps["retinal_age"]["published"] == "retinal_age:1"
    age_run = out / "train" / "retinal_age"
    import numpy as np
    import pyarrow.parquet as pq

    audit = pq.read_table(age_run / "offsets" / "offsets.parquet")
    r, dy = np.array(audit["r"].to_pylist()), np.array(audit["dy"].to_pylist())
    assert audit.num_rows > 0 and np.all((r >= 0) & (r <= 1)) and np.all((dy >= 0) & (dy <= 10))
    assert np.isfinite(steps["retinal_age"]["metrics"]["mae"])
    for png in ("offsets/offset_hist.png", "offsets/responses_by_age.png", "evaluate/pred_vs_true.png"):
        assert (age_run / png).stat().st_size > 5000, png

    # 4. the quality gate, trained on generated gradable / ungradable photos
    assert steps["quality"]["published"] == "fundus_quality:1"
    from medray.catalog import Catalog

    card = Catalog(str(out / "catalog")).get("fundus_quality")
    assert card.task == "quality" and card.labels == ["ungradable", "gradable"]

    # 5. served over HTTP, the whole preset: gate -> disease + retinal age; the real photo and an
    # under-exposed copy; whatever the (3-epoch) gate decides, the plan follows it
    answer = steps["serve"]["answer"]
    assert steps["serve"]["models"] == ["fundus_quality", "fundus_disease", "retinal_age"]
    assert [r["image"] for r in answer["results"]] == ["retina.jpg", "retina_underexposed.jpg"]
    for result in answer["results"]:
        gate = result["models"]["fundus_quality"]
        assert gate["status"] == "ok" and gate["outputs"]["label"] in ("ungradable", "gradable")
        if gate["gate"]["passed"]:
            assert result["status"] == "complete", result
            assert result["models"]["fundus_disease"]["outputs"]["label"] in ("normal", "disease")
            assert 20 <= result["models"]["retinal_age"]["outputs"]["retinal_age"] <= 90
        else:
            assert result["status"] == "stopped" and result["stopped_by"] == ["fundus_quality"]
            assert result["models"]["retinal_age"]["status"] == "skipped"
    assert "POST" in printed and "retinal_age" in printed and "done in" in printed


def _held_out(out: Path):
    import pyarrow.parquet as pq

    for name in ("heimed", "odir"):
        t = pq.read_table(out / "data" / f"{name}.parquet", columns=["split"])
        yield sum(1 for s in t["split"].to_pylist() if s in ("val", "test"))
