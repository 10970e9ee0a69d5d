"""``medray quickstart``: the README's main job, train -> publish -> serve, on the public samples.

Steps (``--steps`` picks a subset; each later step needs the ones it names):

1. ``data``: ingest every real sample set in ``../shared/data`` into Parquet manifests (HEI-MED, ODIR,
   Duke DME, the Spectralis layer scan, the DICOM fundus), validate them, print a summary table.
2. ``fundus_disease``: train the fundus-disease classifier (``jobs/fundus_disease.yaml``) on HEI-MED +
   ODIR with 2 Ray Train workers, publish it, evaluate it on held-out patients (HTML report).
3. ``quality``: the image-quality gate (``jobs/fundus_quality.yaml``) on generated gradable /
   ungradable fundus photos; publishes ``fundus_quality`` (task ``quality``).
4. ``retinal_age``: ``jobs/retinal_age.yaml`` on the real ODIR + HEI-MED age manifests, its stage-1
   responses from step 2's classifier; publishes ``retinal_age`` (needs ``fundus_disease``).
5. ``oct``: generated layered B-scans of widths 512/768/1024, then ``tune/oct_candidates.yaml`` (Ray
   Tune over the smp candidates, ASHA); the best is published as ``oct_layers``.
6. ``skin``: a generated skin set, then the five stages of ``jobs/skin.yaml``; publishes ``skin`` and
   the ``skin_localiser``.
7. ``rop``: a generated ROP set, then ``jobs/rop.yaml`` (mean teacher at 20 % labels); publishes ``rop_mt``.
8. ``serve``: the fundus-screening preset (quality gate -> disease classifier and retinal age in
   parallel; narrowed to the models the catalogue holds) on Ray Serve; a real fundus photo goes over
   HTTP to ``/infer`` and the answer is printed.

The job files are the real configurations. Unless ``--full``, each training runs with the QUICK
overrides below (tiny networks, small images, few epochs), so the whole job finishes on a 2-CPU laptop;
``--full`` uses the job files as they are (a GPU cluster's run). Everything lands under ``--out``
(default ``runs/``): ``data/`` manifests, ``train/`` runs, ``tune/`` studies, ``catalog/`` models,
``reports/`` evaluations.
"""

from __future__ import annotations

import json
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


STEPS = ("data", "fundus_disease", "quality", "retinal_age", "oct", "skin", "rop", "serve")

# toy-size overrides per training step (a CPU laptop); --full drops them
QUICK: dict[str, list[str]] = {
    "fundus_disease": [],  # the real job is already small (256 px, resnet18, 2 workers)
    "quality": ["model.name=tiny_effnet", "data.image_size=64", "optim.epochs=6", "optim.lr=0.003",
                "scaling.cpus_per_worker=0.5"],
    "retinal_age": ["model.name=tiny", "data.image_size=96", "optim.epochs=3", "scaling.cpus_per_worker=0.5"],
    "skin": ["regressor.backbone=test_convnext", "regressor.image_size=64", "regressor.head_channels=16",
             "regressor.optim.epochs=10", "classifier.base_resolution=64", "classifier.phi_min=-3",
             "classifier.phi_max=-3", "classifier.budget.max_params_m=3.0", "classifier.budget.max_gflops=0.2",
             "classifier.optim.epochs=4", "second.optim.epochs=3", "scaling.cpus_per_worker=0.5"],
    "rop": ["model.name=tiny_effnet", "optim.epochs=4"],
}
# the OCT study's quick form: job overrides (dotted keys) and a smaller space
QUICK_OCT = {
    "overrides": {"model.kwargs.encoder": "tu-test_resnet", "data.window": 64, "data.stride": 48,
                  "optim.epochs": 3, "data.eval_max_scans": 6},
    "space": {"model.kwargs.encoder_depth": {"choice": [3]}, "model.kwargs.decoder_channels": {"choice": [16, 32]},
              "model.kwargs.convs_per_block": {"choice": [1, 2]}},
    "scheduler": {"grace_period": 1},
}
SYNTH = {  # generated sets for the methods without labelled public samples: (kind, n, options)
    "quality": ("fundus_quality", 240, {"size": 128}),
    "oct": ("oct", 64, {"size": 128, "widths": [512, 768, 1024], "scans_per_eye": 4}),  # 8 patients
    "skin": ("skin", 240, {"size": 64, "n_classes": 3, "box_frac": 0.2, "clean_frac": 0.3}),
    "rop": ("rop", 160, {"size": 64}),
}


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


def _repo_file(rel: str) -> Path:
    """A repository file (job, study, preset), from the source tree or the working directory."""
    p = Path(__file__).resolve().parents[2] / rel
    return p if p.exists() else Path(rel)


def _synth(step: str, out: str) -> str:
    from medray.data.synth import synth

    kind, n, opts = SYNTH[step]
    uri = storage.join(out, "data", f"{kind}_quickstart.parquet")
    if not storage.exists(uri):
        synth(kind, n, uri, seed=0, **opts)
    return uri


def build_job(step: str, out: str, manifests: list[str], quick: bool = True, extra: list[str] | tuple = ()):
    """The validated job of a training step: the repository's job file with the manifests, this
    quickstart's storage and catalogue, the QUICK overrides (unless ``quick`` is false) and ``extra``."""
    from medray.config import load_job

    files = {"fundus_disease": "jobs/fundus_disease.yaml", "quality": "jobs/fundus_quality.yaml",
             "retinal_age": "jobs/retinal_age.yaml",
             "skin": "jobs/skin.yaml", "rop": "jobs/rop.yaml"}
    catalog = storage.join(out, "catalog")
    over = [f"data.manifest={manifests[0]}" if step == "skin" else f"data.manifests=[{','.join(manifests)}]",
            f"run.storage_path={storage.join(out, 'train')}", f"run.catalog={catalog}"]
    if step == "retinal_age":
        over.append(f"responses.classifier_catalog={catalog}")
    return load_job(_repo_file(files[step]), [*over, *(QUICK[step] if quick else []), *extra])


def build_study(out: str, manifest: str, quick: bool = True, extra: list[str] | tuple = ()) -> Path:
    """``tune/oct_candidates.yaml`` pointed at ``manifest`` and this quickstart's folders (the QUICK_OCT
    job overrides and space unless ``quick`` is false; ``extra`` are ``job.key=value`` overrides),
    written beside the study's outputs; returns its path."""
    import yaml

    from medray.config import load_yaml

    study = load_yaml(str(_repo_file("tune/oct_candidates.yaml")))
    study["job"] = str(_repo_file("jobs/oct_layers.yaml").resolve())
    study.setdefault("overrides", {})["data.manifests"] = [manifest]
    study["storage_path"] = storage.join(out, "tune")
    study["catalog"] = storage.join(out, "catalog")
    if quick:
        study["overrides"].update(QUICK_OCT["overrides"])
        study["space"].update(QUICK_OCT["space"])
        study["scheduler"].update(QUICK_OCT["scheduler"])
    for o in extra:  # dotted job keys, as the study's `overrides` section takes them
        if "=" not in o:
            raise MedrayError(f"quickstart oct override {o!r}: expected key.path=value")
        k, raw = o.split("=", 1)
        study["overrides"][k.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    folder = Path(out) if "://" not in out else Path("runs")
    path = folder / "tune" / "oct_candidates.quickstart.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def step_fundus_disease(out: str, quick: bool, extra: list[str]) -> dict[str, Any]:
    from medray.evaluation.evaluate import evaluate_model
    from medray.training.launcher import run_job

    manifests = [storage.join(out, "data", "heimed.parquet"), storage.join(out, "data", "odir.parquet")]
    job = build_job("fundus_disease", out, manifests, quick, extra)
    trained = run_job(job)
    ev = evaluate_model(job.run.name, manifests, storage.join(out, "reports", job.run.name),
                        catalog=storage.join(out, "catalog"), split="val,test")
    return {"published": trained.get("published"), "report": ev["report"],
            "metrics": {k: ev[k] for k in ("n", "auc", "accuracy", "balanced_accuracy") if ev.get(k) is not None}}


def step_quality(out: str, quick: bool, extra: list[str]) -> dict[str, Any]:
    from medray.training.launcher import run_job

    res = run_job(build_job("quality", out, [_synth("quality", out)], quick, extra))
    return {"published": res.get("published"),
            "metrics": {k: v for k, v in (res.get("metrics") or {}).items() if k in ("val_auc", "val_acc")}}


def step_retinal_age(out: str, quick: bool, extra: list[str], data: str) -> dict[str, Any]:
    from medray.data.sources import ingest
    from medray.training.launcher import run_job

    manifests = []
    for kind, folder in (("odir", "fundus_odir"), ("heimed", "fundus_heimed")):
        res = ingest(kind, os.path.join(data, folder), storage.join(out, "data", f"{kind}_age.parquet"),
                     task="fundus_age")
        manifests.append(res["manifest"])
    res = run_job(build_job("retinal_age", out, manifests, quick, extra))
    ev = res.get("evaluation", {})
    return {"published": res.get("published"),
            "metrics": {k: ev.get(k) for k in ("n", "mae", "pearson_r") if k in ev}}


def step_oct(out: str, quick: bool, extra: list[str]) -> dict[str, Any]:
    from medray.tuning import run_study

    res = run_study(str(build_study(out, _synth("oct", out), quick, extra)))
    return {"published": res.get("published"), "best": res["best"]["params"],
            "metrics": {"val_miou": res["best"]["best"], **res.get("test", {})}, "leaderboard": res["leaderboard"]}


def step_skin(out: str, quick: bool, extra: list[str]) -> dict[str, Any]:
    from medray.training.launcher import run_job

    res = run_job(build_job("skin", out, [_synth("skin", out)], quick, extra))
    return {"published": ", ".join(res.get("published") or []), "metrics": res.get("metrics", {})}


def step_rop(out: str, quick: bool, extra: list[str]) -> dict[str, Any]:
    from medray.training.launcher import run_job

    res = run_job(build_job("rop", out, [_synth("rop", out)], quick, extra))
    m = res.get("test_metrics", {})
    return {"published": res.get("published"),
            "metrics": {k: m[k] for k in ("test_kappa", "test_acc", "test_auc") if k in m}}


def step_serve(out: str, data: str, models: list[str]) -> dict[str, Any]:
    """Deploy the fundus-screening preset narrowed to ``models`` and answer a real photo (and an
    under-exposed copy of it, for the quality gate) over HTTP."""
    import requests
    from ray import serve

    from medray.serving.app import AppArgs, build_app
    from medray.netutil import free_port, wait_healthy

    image = os.path.join(data, "fundus_skimage", "retina.jpg")
    if not os.path.exists(image):
        raise MedrayError(f"serve: the test photo {image} is missing")
    args = AppArgs(preset="fundus_screening", subset=models, catalog=storage.join(out, "catalog"),
                   presets_dir=str(_repo_file("serve/presets")),
                   defaults={"max_batch_size": 8, "batch_wait_timeout_s": 0.01, "ray_actor_options": {"num_cpus": 0.5}})
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, logging_config={"enable_access_log": False})
    # when Serve was already running on this cluster, its proxy keeps the port it started with
    from ray.serve.context import _get_global_client

    http = _get_global_client().http_config
    url = f"http://{http.host if http.host not in ('0.0.0.0', '') else '127.0.0.1'}:{http.port}/quickstart"
    try:
        serve.run(build_app(args), name="quickstart", route_prefix="/quickstart")
        wait_healthy(url)
        with open(image, "rb") as f:
            photo = f.read()
        files = [("image", ("retina.jpg", photo, "image/jpeg")),
                 ("image", ("retina_underexposed.jpg", _underexposed(image), "image/jpeg"))]
        r = requests.post(f"{url}/infer", files=files, timeout=300)
        if r.status_code != 200:
            raise MedrayError(f"serve: POST /infer answered {r.status_code}: {r.text[:500]}")
        answer = r.json()
    finally:
        serve.delete("quickstart")
    print(f"\nPOST {url}/infer  (retina.jpg, and an under-exposed copy the quality gate should stop) ->")
    print(json.dumps(_brief(answer), indent=1))
    return {"url": url, "models": models, "answer": _brief(answer)}


def _underexposed(path: str) -> bytes:
    """JPEG bytes of the photo at 512 px, darkened the way an ungradable under-exposed photo is."""
    import io

    import numpy as np
    from PIL import Image

    from medray.data.synth.fundus_quality import degrade

    img = Image.open(path).convert("RGB")
    img.thumbnail((512, 512))
    dark = degrade(np.asarray(img), ["dark"], np.random.default_rng(0))
    buf = io.BytesIO()
    Image.fromarray(dark).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _brief(answer: Any) -> Any:
    """The answer without long arrays / base64 blobs (for printing)."""
    if isinstance(answer, dict):
        return {k: _brief(v) for k, v in answer.items()}
    if isinstance(answer, list):
        return [_brief(v) for v in answer[:8]] + (["..."] if len(answer) > 8 else [])
    if isinstance(answer, str) and len(answer) > 120:
        return answer[:60] + f"... ({len(answer)} chars)"
    return answer


def run_quickstart(data: str, out: str, train: bool = True, steps: list[str] | None = None,
                   full: bool = False, overrides: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Run the steps in order (all by default); ``train=False`` is ``steps=["data"]``. ``overrides``
    adds ``key.path=value`` overrides per training step (after the QUICK ones)."""
    t0 = time.time()
    data = os.path.abspath(data)
    if not os.path.isdir(data):
        raise MedrayError(f"sample data folder {data} not found (pass --data or set MEDRAY_SHARED_DATA)")
    steps = list(steps or STEPS) if train else ["data"]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise MedrayError(f"quickstart: unknown step(s) {unknown}; the steps are {', '.join(STEPS)}")
    bad = [k for k in (overrides or {}) if k not in QUICK]
    if bad:
        raise MedrayError(f"quickstart: overrides for {bad}: only the training steps take them ({', '.join(QUICK)})")
    out = storage.to_uri(out)
    quick = not full
    extra = {k: list(v) for k, v in (overrides or {}).items()}
    result: dict[str, Any] = {"steps": {}}
    todo = [s for s in STEPS if s in steps]

    def begin(i: int, name: str, what: str) -> float:
        _say(f"{i}/{len(todo)} {name}: {what}")
        return time.time()

    for i, name in enumerate(todo, 1):
        if name == "data":
            ts = begin(i, name, f"ingest + validate the public samples from {data}")
            rows = ingest_all(data, out)
            print_table(rows)
            result["manifests"] = {r["kind"]: r["manifest"] for r in rows}
            info: dict[str, Any] = {"manifests": len(rows), "bad_rows": sum(r["bad_rows"] for r in rows)}
        elif name == "fundus_disease":
            ts = begin(i, name, "train jobs/fundus_disease.yaml (HEI-MED + ODIR, 2 workers), publish, evaluate")
            info = step_fundus_disease(out, quick, extra.get("fundus_disease", []))
        elif name == "quality":
            ts = begin(i, name, "generated gradable/ungradable fundus photos -> jobs/fundus_quality.yaml, "
                                "publish the quality gate")
            info = step_quality(out, quick, extra.get("quality", []))
        elif name == "retinal_age":
            ts = begin(i, name, "jobs/retinal_age.yaml on the real ODIR + HEI-MED ages (responses -> offsets "
                                "-> shifted LDL training -> evaluation), publish")
            info = step_retinal_age(out, quick, extra.get("retinal_age", []), data)
        elif name == "oct":
            ts = begin(i, name, "generated B-scans (512/768/1024 wide) -> Ray Tune over the OCT candidates, "
                                "publish the best")
            info = step_oct(out, quick, extra.get("oct", []))
        elif name == "skin":
            ts = begin(i, name, "generated skin set -> the five stages of jobs/skin.yaml, publish")
            info = step_skin(out, quick, extra.get("skin", []))
        elif name == "rop":
            ts = begin(i, name, "generated ROP set -> jobs/rop.yaml (mean teacher, 20 % labels), publish")
            info = step_rop(out, quick, extra.get("rop", []))
        else:
            served = {"fundus_quality": "quality", "fundus_disease": "fundus_disease", "retinal_age": "retinal_age"}
            models = [m for m, step in served.items() if step in todo or _published(out, m)]
            ts = begin(i, name, f"serve the fundus-screening preset ({', '.join(models)}) and answer a real photo")
            info = step_serve(out, data, models)
        info["seconds"] = round(time.time() - ts, 1)
        result["steps"][name] = info
    print(f"\n{'step':<16}{'seconds':>8}  result")
    for name, info in result["steps"].items():
        what = info.get("published") or info.get("url") or f"{info.get('manifests', '')} manifests"
        metrics = info.get("metrics") or {}
        ms = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in list(metrics.items())[:4])
        print(f"{name:<16}{info['seconds']:>8.0f}  {what}{'  (' + ms + ')' if ms else ''}")
    if "fundus_disease" in result["steps"]:
        print(f"report {result['steps']['fundus_disease']['report']}")
    print(f"\ndone in {time.time() - t0:.0f}s; everything is under {out}")
    return result


def _published(out: str, name: str) -> bool:
    from medray.catalog import Catalog

    try:
        return bool(Catalog(storage.join(out, "catalog")).versions(name))
    except Exception:  # noqa: BLE001 - no catalogue yet
        return False
