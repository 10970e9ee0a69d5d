"""The ``medray`` command.

    medray data ingest KIND SRC --out URI      real public layouts -> Parquet manifest
    medray data synth KIND --n N --out URI     generated controlled sets (skin, rop, oct, fundus_age)
    medray data validate MANIFEST              every file exists and decodes, every label in range
    medray data summary MANIFEST               counts per split / class
    medray data pack MANIFEST --out URI        images + labels into large Parquet shards
    medray train JOB.yaml [key.path=value ...] run a training job on Ray (local or cluster)
    medray catalog list|show                   browse published models
    medray predict MODEL IMAGE...              run a catalogued model on images
    medray evaluate MODEL MANIFEST --out DIR   metrics JSON, PNG plots, HTML report
    medray quickstart                          the README's main job on the sample data
    medray serve CONFIG.yaml                   run a Serve config (serve/<preset>.yaml) until Ctrl-C
    medray evaluate-pipeline PRESET MANIFEST   efficacy + latency of a served plan (JSON, HTML, PNG)
    medray k8s render [--check]                KubeRay RayJobs/RayServices from jobs/ tune/ serve/ (k8s/)
    medray k8s build k8s/overlays/gpu          print an overlay's objects (kustomize subset)

Errors meant for a person (bad YAML, missing file, undecodable image) print one line to stderr and
exit with status 2; an unexpected crash keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from medray.errors import ConfigError, MedrayError


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


# --------------------------------------------------------------------------------------------
# data


def cmd_data_ingest(a: argparse.Namespace) -> int:
    from medray.data.sources import ingest

    res = ingest(a.kind, a.src, a.out, task=a.task, seed=a.seed, copy_images=a.copy_images)
    _print_json(res)
    return 0


def cmd_data_synth(a: argparse.Namespace) -> int:
    from medray.data.synth import synth

    res = synth(a.kind, a.n, a.out, seed=a.seed, size=a.size)
    _print_json(res)
    return 0


def cmd_data_validate(a: argparse.Namespace) -> int:
    from medray.data.validate import format_report, validate_manifest

    report = validate_manifest(a.manifest, workers=a.workers, limit=a.limit)
    print(format_report(report))
    return 1 if report.bad else 0


def cmd_data_summary(a: argparse.Namespace) -> int:
    from medray.data import manifest

    _print_json(manifest.summarize(a.manifest))
    return 0


def cmd_data_pack(a: argparse.Namespace) -> int:
    from medray.data.pack import pack_manifest

    _print_json(pack_manifest(a.manifest, a.out, target_mb=a.shard_mb, image_size=a.image_size))
    return 0


# --------------------------------------------------------------------------------------------
# train / catalog / predict / evaluate / quickstart


def cmd_train(a: argparse.Namespace) -> int:
    from medray.config import load_job
    from medray.training.launcher import run_job

    job = load_job(a.job, a.overrides)
    result = run_job(job, source=a.job, force=a.force)
    _print_json(result)
    return 0


def cmd_tune(a: argparse.Namespace) -> int:
    from medray.tuning import run_study

    _print_json(run_study(a.spec, a.overrides))
    return 0


def cmd_catalog(a: argparse.Namespace) -> int:
    from medray.catalog import store

    cat = store.Catalog(a.catalog)
    if a.action == "list":
        rows = cat.list(task=a.task, modality=a.modality)
        if not rows:
            print(f"(catalogue {cat.uri} is empty)")
        for card in rows:
            aliases = f" [{', '.join(card.aliases)}]" if card.aliases else ""
            metric = ", ".join(f"{k}={v:.3f}" for k, v in list(card.metrics.items())[:3]
                               if isinstance(v, (int, float)))
            print(f"{card.name}:{card.version}{aliases}\t{card.task}\t{card.modality}\t{metric}")
    else:
        if not a.model:
            raise MedrayError("catalog show needs a MODEL (name, name:version or name@alias)")
        _print_json(cat.get(a.model).model_dump(mode="json"))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from medray.catalog import store
    from medray.inference.predictor import load_predictor

    from medray.data.imageio import read_image

    cat = store.Catalog(a.catalog)
    card = cat.get(a.model)
    pred = load_predictor(card, cat)
    for img in a.images:
        out = pred.predict([read_image(img, mode=pred.mode, target=pred.image_size)])[0]
        _print_json({"image": img, "model": f"{card.name}:{card.version}", **out})
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from medray.evaluation.evaluate import evaluate_model

    _print_json(evaluate_model(a.model, a.manifest, a.out, catalog=a.catalog, split=a.split))
    return 0


def cmd_quickstart(a: argparse.Namespace) -> int:
    from medray.quickstart import run_quickstart

    steps = [x.strip() for x in a.steps.split(",") if x.strip()] if a.steps else None
    overrides: dict[str, list[str]] = {}
    for item in a.set or []:
        step, sep, kv = item.partition(":")
        if not sep or "=" not in kv:
            raise ConfigError(f"--set {item!r}: expected STEP:key.path=value (e.g. retinal_age:optim.epochs=20)")
        overrides.setdefault(step, []).append(kv)
    run_quickstart(a.data, a.out, train=not a.no_train, steps=steps, full=a.full, overrides=overrides)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from medray.serving.cli import serve_config

    return serve_config(a.config, port=a.port)


def cmd_evaluate_pipeline(a: argparse.Namespace) -> int:
    from medray.serving.cli import evaluate_pipeline

    _print_json(evaluate_pipeline(a.preset, a.manifest, out=a.out, url=a.url, catalog=a.catalog, split=a.split,
                                  limit=a.limit, concurrency=a.concurrency))
    return 0


def cmd_k8s_build(a: argparse.Namespace) -> int:
    import yaml

    from medray.k8s.kustomize import build

    print(yaml.safe_dump_all(build(a.folder), sort_keys=False), end="")
    return 0


def cmd_k8s(a: argparse.Namespace) -> int:
    from medray.k8s.render import check_stale, render

    rep = render(a.repo, check=a.check)
    for key in ("written", "removed", "stale", "missing", "orphaned"):
        for path in rep[key]:
            print(f"{key}: {path}")
    if a.check:
        if check_stale(rep):
            print("medray: error: generated k8s manifests are out of date: run `medray k8s render`",
                  file=sys.stderr)
            return 1
        print(f"k8s manifests up to date ({len(rep['unchanged'])} files)")
    else:
        print(f"{len(rep['written'])} written, {len(rep['unchanged'])} unchanged, {len(rep['removed'])} removed")
    return 0


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medray", description="Train and serve medical-image models on Ray.")
    p.add_argument("--version", action="version", version=f"medray {__import__('medray').__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="manifests: ingest, synth, validate, summary, pack")
    dsub = d.add_subparsers(dest="data_command", required=True)
    x = dsub.add_parser("ingest", help="real public data layouts -> Parquet manifest")
    x.add_argument("kind", help="duke_dme | spectralis_layers | odir | heimed | dicom | folder | csv")
    x.add_argument("src", help="source folder (or CSV file for 'csv')")
    x.add_argument("--out", required=True, help="manifest URI (local path or s3://.../x.parquet)")
    x.add_argument("--task", default=None, help="manifest task (default: the kind's natural task)")
    x.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    x.add_argument("--copy-images", action="store_true",
                   help="copy images next to the manifest (e.g. into S3) and point rows there")
    x.set_defaults(fn=cmd_data_ingest)

    x = dsub.add_parser("synth", help="generate a controlled data set (real image files + manifest)")
    x.add_argument("kind", help="skin | rop | oct | fundus_age")
    x.add_argument("--n", type=int, required=True, help="number of images")
    x.add_argument("--out", required=True, help="manifest URI; images go beside it")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--size", type=int, default=None, help="image size (pixels) where applicable")
    x.set_defaults(fn=cmd_data_synth)

    x = dsub.add_parser("validate", help="check files exist and decode, labels in range")
    x.add_argument("manifest")
    x.add_argument("--workers", type=int, default=8, help="parallel readers")
    x.add_argument("--limit", type=int, default=None, help="check only the first N rows")
    x.set_defaults(fn=cmd_data_validate)

    x = dsub.add_parser("summary", help="rows per split and class")
    x.add_argument("manifest")
    x.set_defaults(fn=cmd_data_summary)

    x = dsub.add_parser("pack", help="write images + labels into large Parquet shards")
    x.add_argument("manifest")
    x.add_argument("--out", required=True, help="output folder URI for the shards")
    x.add_argument("--shard-mb", type=float, default=192, help="target shard size (MB)")
    x.add_argument("--image-size", type=int, default=None, help="re-encode images at this size first")
    x.set_defaults(fn=cmd_data_pack)

    x = sub.add_parser("train", help="run a training job (YAML) on Ray")
    x.add_argument("job", help="job spec, e.g. jobs/fundus_disease.yaml")
    x.add_argument("overrides", nargs="*", help="key.path=value overrides")
    x.add_argument("--force", action="store_true", help="re-run finished stages")
    x.set_defaults(fn=cmd_train)

    x = sub.add_parser("tune", help="Ray Tune search over a job's candidates (YAML study spec)")
    x.add_argument("spec", help="study spec, e.g. tune/oct_candidates.yaml")
    x.add_argument("overrides", nargs="*", help="key.path=value overrides of the study spec")
    x.set_defaults(fn=cmd_tune)

    cat_default = os.environ.get("MEDRAY_CATALOG", "runs/catalog")
    x = sub.add_parser("catalog", help="browse the model catalogue")
    x.add_argument("action", choices=["list", "show"])
    x.add_argument("model", nargs="?")
    x.add_argument("--catalog", default=cat_default, help="catalogue URI (env MEDRAY_CATALOG)")
    x.add_argument("--task", default=None)
    x.add_argument("--modality", default=None)
    x.set_defaults(fn=cmd_catalog)

    x = sub.add_parser("predict", help="run a catalogued model on image files")
    x.add_argument("model", help="name, name:version or name@alias")
    x.add_argument("images", nargs="+")
    x.add_argument("--catalog", default=cat_default)
    x.set_defaults(fn=cmd_predict)

    x = sub.add_parser("evaluate", help="evaluate a catalogued model on a manifest")
    x.add_argument("model", help="name, name:version or name@alias")
    x.add_argument("manifest", nargs="+", help="labelled manifest(s)")
    x.add_argument("--out", required=True, help="report folder (local or s3://)")
    x.add_argument("--split", default="test", help="comma-separated splits, or 'all'")
    x.add_argument("--catalog", default=cat_default)
    x.set_defaults(fn=cmd_evaluate)

    x = sub.add_parser("serve", help="run a Serve config (serve/<preset>.yaml) on Ray until Ctrl-C")
    x.add_argument("config", help="Serve config file, e.g. serve/fundus_screening.yaml")
    x.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's)")
    x.set_defaults(fn=cmd_serve)

    x = sub.add_parser("evaluate-pipeline", help="run a labelled manifest through a served preset")
    x.add_argument("preset", help="preset name (serve/presets/<name>.yaml)")
    x.add_argument("manifest", help="labelled manifest URI")
    x.add_argument("--url", default=None, help="a running app (http://127.0.0.1:8000); default: start one")
    x.add_argument("--catalog", default=cat_default, help="catalogue for an app started here")
    x.add_argument("--out", default="runs/evaluate-pipeline", help="folder for report.json/.html and plots")
    x.add_argument("--split", default="test", help="rows of this split (or 'all')")
    x.add_argument("--limit", type=int, default=None, help="first N rows only")
    x.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    x.set_defaults(fn=cmd_evaluate_pipeline)

    x = sub.add_parser("k8s", help="KubeRay manifests: `k8s render` regenerates RayJobs/RayServices in k8s/")
    ksub = x.add_subparsers(dest="k8s_command", required=True)
    x = ksub.add_parser("render", help="write k8s/base/ray-job.*.yaml, ray-service.*.yaml from their sources")
    x.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated file is stale")
    x.add_argument("--repo", default=None, help="repository root (default: the nearest with k8s/render.yaml)")
    x.set_defaults(fn=cmd_k8s)
    x = ksub.add_parser("build", help="print a kustomization's objects (kustomize build subset)")
    x.add_argument("folder", help="e.g. k8s/overlays/gpu")
    x.set_defaults(fn=cmd_k8s_build)

    x = sub.add_parser("quickstart", help="the main job on the sample data (see README)")
    x.add_argument("--data", default=os.environ.get("MEDRAY_SHARED_DATA", "../shared/data"),
                   help="folder of the public samples")
    x.add_argument("--out", default="runs", help="where manifests, runs, catalogue, reports go")
    x.add_argument("--no-train", action="store_true", help="only ingest + validate + summarise")
    x.add_argument("--steps", default=None,
                   help="comma-separated subset of: data,fundus_disease,retinal_age,oct,skin,rop,serve (default: all)")
    x.add_argument("--full", action="store_true",
                   help="train with the job files as they are (GPU cluster); default: toy-size overrides for a CPU laptop")
    x.add_argument("--set", action="append", metavar="STEP:KEY=VALUE",
                   help="an override for one training step, e.g. retinal_age:optim.epochs=20 (repeatable)")
    x.set_defaults(fn=cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    fn: Callable[[argparse.Namespace], int] = a.fn
    try:
        return fn(a)
    except MedrayError as e:
        print(f"medray: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"medray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
