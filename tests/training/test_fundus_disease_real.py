"""Acceptance of the training core on the REAL samples: jobs/fundus_disease.yaml on HEI-MED + ODIR,
2 Ray Train workers, checkpoint, publish, evaluate; the HTML report embeds its plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medray.config import load_job
from medray.data.sources import ingest
from medray.evaluation.evaluate import evaluate_model
from medray.training.launcher import run_job

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fundus_disease_job_on_real_heimed_and_odir(ray_cluster, shared_data, tmp_path, cli):
    heimed = ingest("heimed", str(shared_data / "fundus_heimed"), str(tmp_path / "data" / "heimed.parquet"))
    odir = ingest("odir", str(shared_data / "fundus_odir"), str(tmp_path / "data" / "odir.parquet"))
    job = load_job(REPO / "jobs" / "fundus_disease.yaml", [
        f"data.manifests=[{heimed['manifest']},{odir['manifest']}]",
        f"run.storage_path={tmp_path / 'runs'}", f"run.catalog={tmp_path / 'catalog'}",
        # toy size for a 2-CPU test machine; the job file itself is the real configuration
        "model.name=tiny", "data.image_size=64", "optim.epochs=2", "scaling.cpus_per_worker=0.5",
    ])
    assert job.scaling.num_workers == 2
    out = run_job(job)
    run = tmp_path / "runs" / "fundus_disease"
    assert any(p.name.startswith("epoch_") for p in run.iterdir())
    assert (run / "summary.json").exists() and (run / "curves.png").exists()
    assert out["published"] == "fundus_disease:1"

    ev = evaluate_model("fundus_disease", [heimed["manifest"], odir["manifest"]], str(tmp_path / "report"),
                        catalog=str(tmp_path / "catalog"), split="val,test")
    html = Path(ev["report"]).read_text()
    imgs = re.findall(r"<img[^>]+src=[\"']([^\"']+)[\"']", html)
    assert len(imgs) >= 4 and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "http://" not in html and "https://" not in html  # self-contained
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    held_out = sum(m["splits"].get(s, 0) for m in (heimed, odir) for s in ("val", "test"))
    assert metrics["n"] == held_out  # every held-out (all labelled) row was predicted once
    for png in ("roc.png", "pr.png", "confusion.png", "calibration.png"):
        assert (tmp_path / "report" / png).stat().st_size > 2000

    # the CLI front door on the same catalogue
    code, text, err = cli("catalog", "show", "fundus_disease", "--catalog", str(tmp_path / "catalog"))
    assert code == 0 and json.loads(text)["labels"] == ["normal", "disease"], err
