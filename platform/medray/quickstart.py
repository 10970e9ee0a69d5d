"""``medray quickstart``: the README's main job on the public sample data.

1. Ingest every real sample set in ``../shared/data`` into Parquet manifests (HEI-MED, ODIR, Duke DME,
   the Spectralis layer scan, the DICOM fundus) and validate them; print a summary table.
2. Train the fundus-disease classifier (``jobs/fundus_disease.yaml``) on HEI-MED + ODIR with 2 Ray
   Train workers, publish it to the catalogue.
3. Evaluate the published model on the held-out patients and write an HTML report with plots.

Everything lands under ``--out`` (default ``runs/``): ``data/`` manifests, ``train/`` checkpoints,
``catalog/`` models, ``reports/`` evaluation.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from medray import storage
from medray.errors import MedrayError

SETS = [
    # (kind, folder under the data root, manifest name)
    ("heimed", "fundus_heimed", "heimed"),
    ("odir", "fundus_odir", "odir"),
    ("duke_dme", "oct_duke_dme", "duke_dme"),
    ("spectralis_layers", "oct_spectralis_layers", "spectralis_layers"),
    ("dicom", "formats/dicom/nema_wg04", "dicom_fundus"),
]


def _say(msg: str) -> None:
    print(f"[quickstart] {msg}", file=sys.stderr, flush=True)


def ingest_all(data: str, out: str) -> list[dict[str, Any]]:
    from medray.data.sources import ingest
    from medray.data.validate import validate_manifest

    rows = []
    for kind, folder, name in SETS:
        src = os.path.join(data, folder)
        if not os.path.isdir(src):
            _say(f"skip {kind}: {src} not found")
            continue
        res = ingest(kind, src, storage.join(out, "data", f"{name}.parquet"))
        rep = validate_manifest(res["manifest"], progress=False)
        rows.append({"kind": kind, "task": res["task"], "rows": res["rows"], "patients": res["patients"],
                     "splits": res["splits"], "classes": res.get("classes", []), "bad_rows": rep.bad_rows,
                     "manifest": res["manifest"]})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'set':<19}{'task':<16}{'rows':>5}{'patients':>9}  {'train/val/test':<15}{'bad':>4}  classes"
    print(head)
    print("-" * len(head))
    for r in rows:
        sp = r["splits"]
        tvt = f"{sp.get('train', 0)}/{sp.get('val', 0)}/{sp.get('test', 0)}"
        classes = ", ".join(r["classes"][:4]) + (" ..." if len(r["classes"]) > 4 else "")
        print(f"{r['kind']:<19}{r['task']:<16}{r['rows']:>5}{r['patients']:>9}  {tvt:<15}{r['bad_rows']:>4}  {classes}")


def run_quickstart(data: str, out: str, train: bool = True) -> dict[str, Any]:
    t0 = time.time()
    data = os.path.abspath(data)
    if not os.path.isdir(data):
        raise MedrayError(f"sample data folder {data} not found (pass --data or set MEDRAY_SHARED_DATA)")
    out = storage.to_uri(out)
    _say(f"1/3 ingest + validate the public samples from {data}")
    rows = ingest_all(data, out)
    print_table(rows)
    result: dict[str, Any] = {"manifests": {r["kind"]: r["manifest"] for r in rows}}
    have = {r["kind"] for r in rows}
    if train and {"heimed", "odir"} <= have:
        from medray.config import load_job
        from medray.training.launcher import run_job

        job_file = Path(__file__).resolve().parents[2] / "jobs" / "fundus_disease.yaml"
        if not job_file.exists():
            job_file = Path("jobs/fundus_disease.yaml")
        _say(f"2/3 train {job_file.name} (2 Ray Train workers) and publish to the catalogue")
        overrides = [
            f"data.manifests=[{storage.join(out, 'data', 'heimed.parquet')},{storage.join(out, 'data', 'odir.parquet')}]",
            f"run.storage_path={storage.join(out, 'train')}",
            f"run.catalog={storage.join(out, 'catalog')}",
        ]
        job = load_job(job_file, overrides)
        trained = run_job(job)
        result["train"] = trained
        _say("3/3 evaluate the published model on held-out patients")
        from medray.evaluation.evaluate import evaluate_model

        ev = evaluate_model(job.run.name, [storage.join(out, "data", "heimed.parquet"),
                                           storage.join(out, "data", "odir.parquet")],
                            storage.join(out, "reports", job.run.name), catalog=storage.join(out, "catalog"),
                            split="val,test")
        result["evaluation"] = ev
        print(f"\nmodel  {trained.get('published')}  in {storage.join(out, 'catalog')}")
        print(f"report {ev['report']}")
    print(f"\ndone in {time.time() - t0:.0f}s; everything is under {out}")
    return result
