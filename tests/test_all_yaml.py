"""Every job spec shipped in jobs/ is a test case: it parses and validates as its method's Config."""

from __future__ import annotations

from pathlib import Path

import pytest

from medray.config import load_job

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted((REPO / "jobs").glob("*.yaml"))


def test_every_method_has_a_job():
    assert {p.stem for p in JOBS} >= {"fundus_disease", "retinal_age", "oct_layers", "skin", "rop"}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_yaml_validates(path):
    job = load_job(path)
    assert job.run.name and job.method
