"""A controlled study of the disease-aware label shift (METHODS.md §1) on generated fundus images.

The generator gives a known share of eyes an "aging disease" that makes them look 6-16 years older
than their chronological age. A tiny fundus-disease classifier is trained on the same images (stage-1
model), then the retinal-age job runs twice on the same responses and offsets: once with the shifted
loss and once with the unshifted baseline (``head.loss``). The question is the seed's claim: does the
shift make the model report a larger age gap for the diseased eyes (held-out rows)?

    python -m medray.methods.retinal_age.study --seeds 0 1 2 3 4 5 6 7 8 9 [--n 400 --epochs 24] [--out DIR]

The defaults (:data:`STUDY`) are exactly the setup of ``tests/methods/test_retinal_age.py`` (400 photos
rendered at 64 px; the stage-1 classifier at 64 px, where drusen and blot haemorrhages are visible; the
age model at 64 px, 24 epochs of 8 images per worker on 2 DDP workers, about 400 optimizer steps, with a
cosine learning-rate schedule, the last epoch's model evaluated), so the spread this study measures is
the spread of that test's figures, and the test's margins come from it. The age model must learn age
for the comparison to mean anything: with 200 photos, 32 px and 16 per worker (36 steps in all) it
stayed near a constant prediction, and the shift then only moved that constant. Results accumulate in
``OUT/results.json`` (a re-run skips finished seeds); the summary prints the per-seed diseased-eye gap,
diseased - healthy contrast and healthy-eye MAE of both runs and their paired differences, and
``OUT/retinal_age_shift.png`` plots the pairs.
``benchmarks/retinal_age_shift.py`` runs :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from medray import storage


STUDY = {"n": 400, "render_size": 64, "clf_size": 64, "clf_epochs": 8, "size": 64, "epochs": 24,
         "batch_size": 8, "workers": 2, "scheduler": "cosine", "select": "last", "baseline": "mean_variance",
         "p": 0.35}
"""The study's (and the test's) setup."""


def make_data(root: str, n: int = STUDY["n"], seed: int = 0, size: int = STUDY["render_size"], s3: Any = None,
              disease_rate: float = 0.35) -> tuple[str, str]:
    """``fundus_age`` images (ages 40-60, ``disease_rate`` of them with an aging disease that makes the
    eye look 6-16 years older) and a ``fundus_disease`` manifest over the SAME image files (label = the
    disease flag). Returns the two manifest URIs."""
    from medray.data import manifest
    from medray.data.synth import synth

    age_uri = storage.join(root, "age.parquet")
    synth("fundus_age", n, age_uri, seed=seed, size=size, s3=s3, age_range=[40.0, 60.0],
          disease_rate=disease_rate, image_format="png")
    t = manifest.read_manifest(age_uri, s3=s3)
    keep = ("image", "patient_id", "eye", "width", "height", "split", "dataset")
    rows = [{k: r[k] for k in keep} | {"label": int(r["disease"])} for r in t.to_pylist()]
    dis_uri = storage.join(root, "disease.parquet")
    manifest.write_manifest(rows, dis_uri, "fundus_disease", ["normal", "disease"], s3=s3)
    return age_uri, dis_uri


def classifier_job(dis_uri: str, storage_path: str, catalog: str, name: str = "disease_clf",
                   epochs: int = STUDY["clf_epochs"], size: int = STUDY["clf_size"], seed: int = 0):
    """The stage-1 model: the ``classify`` method on the disease manifest, published as ``name``."""
    from medray.config import validate
    from medray.methods.classify import Config as ClassifyConfig

    return validate(ClassifyConfig, {
        "method": "classify", "model": {"name": "tiny_effnet"},
        "data": {"manifests": [dis_uri], "image_size": size, "decode_batch_size": 32,
                 "augment": {"enabled": False}},
        "optim": {"epochs": epochs, "batch_size": 16, "lr": 0.01},
        "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
        "run": {"name": name, "storage_path": storage_path, "metric": "val_auc", "mode": "max",
                "checkpoints_to_keep": 1, "catalog": catalog, "seed": seed},
    }, source="study")


def age_job(age_uri: str, storage_path: str, catalog: str, name: str, loss: str = "shifted",
            epochs: int = STUDY["epochs"], workers: int = STUDY["workers"], seed: int = 0, size: int = STUDY["size"],
            batch_size: int = STUDY["batch_size"], scheduler: str = STUDY["scheduler"], select: str = STUDY["select"],
            p: float = STUDY["p"], **over: Any):
    """The retinal-age job on the generated set; ``over`` takes ``section__key=value`` overrides.

    ``select``: the checkpoint evaluated and published, ``last`` (the end of the cosine schedule) or
    ``best`` (lowest validation MAE: on ~30 validation eyes that picked an epoch-2 model in one seed of
    ten, whose overall bias then decided the comparison). ``p``: ``offsets.p``, the top share of each age
    group that may be shifted (the study's 0.35 is the generated disease rate; the seed's default is 0.025)."""
    from medray.config import validate
    from medray.methods.retinal_age import Config

    data: dict[str, Any] = {
        "method": "retinal_age", "model": {"name": "tiny_effnet"},
        "data": {"manifests": [age_uri], "image_size": size, "decode_batch_size": 32, "val_splits": ["val"],
                 "eval_splits": ["val", "test"], "augment": {"enabled": False}},
        "responses": {"classifier": "disease_clf", "classifier_catalog": catalog, "batch_size": 64},
        "offsets": {"p": p, "min_group_size": 8, "pool_window": 1},
        "head": {"age_min": 35, "age_max": 80, "loss": loss},
        "optim": {"epochs": epochs, "batch_size": batch_size, "lr": 0.01, "scheduler": scheduler,
                  "warmup_epochs": 1 if scheduler == "cosine" else 0},
        "scaling": {"num_workers": workers, "cpus_per_worker": 0.5},
        "run": {"name": name, "storage_path": storage_path, "metric": "epoch" if select == "last" else "val_mae",
                "mode": "max" if select == "last" else "min", "checkpoints_to_keep": 1, "catalog": catalog,
                "seed": seed},
    }
    for k, v in over.items():
        sec, key = k.split("__")
        data[sec][key] = v
    return validate(Config, data, source="study")


def _summary(ev: dict[str, Any]) -> dict[str, float]:
    return {"gap_disease": ev["gap_disease"]["mean"], "gap_healthy": ev["gap_healthy"]["mean"],
            "gap_disease_minus_healthy": ev["gap_disease_minus_healthy"], "mae": ev["mae"],
            "mae_dy0": ev.get("mae_dy0", float("nan")), "mae_healthy": ev.get("mae_healthy", float("nan")),
            "mae_constant": ev.get("mae_constant", float("nan")),
            "n": ev["n"], "n_disease": ev["gap_disease"]["n"]}


def run_pair(root: str, seed: int, n: int = STUDY["n"], epochs: int = STUDY["epochs"], size: int = STUDY["size"],
             workers: int = STUDY["workers"], batch_size: int = STUDY["batch_size"], baseline: str = STUDY["baseline"],
             render_size: int = STUDY["render_size"], clf_size: int = STUDY["clf_size"],
             clf_epochs: int = STUDY["clf_epochs"], scheduler: str = STUDY["scheduler"],
             select: str = STUDY["select"], p: float = STUDY["p"]) -> dict[str, Any]:
    """Data + classifier + the shifted run + the baseline on the shifted run's stages 1-2 (the same
    responses and offsets, so only the loss differs). Returns both runs' held-out summaries and the
    classifier's validation AUC."""
    from medray.training.launcher import run_job

    age_uri, dis_uri = make_data(root, n=n, seed=seed, size=render_size)
    catalog = storage.join(root, "catalog")
    runs = storage.join(root, "runs")
    clf = run_job(classifier_job(dis_uri, runs, catalog, epochs=clf_epochs, size=clf_size, seed=seed))
    common = {"epochs": epochs, "workers": workers, "seed": seed, "size": size, "batch_size": batch_size,
              "scheduler": scheduler, "select": select, "p": p}
    shifted = run_job(age_job(age_uri, runs, catalog, "age_shifted", loss="shifted", **common))
    for st in ("responses", "offsets"):
        dst = Path(root) / "runs" / "age_baseline" / st
        if not dst.exists():
            shutil.copytree(Path(root) / "runs" / "age_shifted" / st, dst)
    base = run_job(age_job(age_uri, runs, catalog, "age_baseline", loss=baseline, **common))
    return {"classifier_val_auc": float(clf["metrics"].get("val_auc", float("nan"))),
            "shifted": _summary(shifted["evaluation"]), "baseline": _summary(base["evaluation"])}


PAIRED = (("gap_disease", "diseased eyes: mean age gap", 1),
          ("gap_disease_minus_healthy", "diseased - healthy age gap", 1),
          ("mae_healthy", "healthy eyes: MAE", -1))
"""The paired figures, shifted vs baseline: (summary key, title, +1 if the shift should raise it, -1 lower)."""


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per paired figure, ``diff_<key>``: the shifted - baseline differences' mean, sd, min, max and the
    seeds where it rose (``wins``) or fell (``lower``)."""
    import numpy as np

    out = {"seeds": [r["seed"] for r in rows], "n_runs": len(rows)}
    for key, _, _ in PAIRED:
        v = np.array([r["shifted"].get(key, np.nan) - r["baseline"].get(key, np.nan) for r in rows])
        out[f"diff_{key}"] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                    "min": float(v.min()), "max": float(v.max()), "wins": int((v > 0).sum()),
                    "lower": int((v < 0).sum())}
    return out


def plot_pairs(rows: list[dict[str, Any]], path: str) -> bytes:
    """Per seed, the held-out diseased-eye gap, the diseased - healthy gap and the healthy eyes' MAE of
    the baseline and the shifted run, joined by a line (blue where the shift moved it the expected way:
    up for the gaps, down for the MAE): the paired comparison at a glance."""
    from medray.evaluation import plots

    fig = plots.new_figure((13.0, 4.2))
    with plots.style():
        for k, (key, title, sign) in enumerate(PAIRED):
            ax = fig.add_subplot(1, len(PAIRED), k + 1)
            for r in rows:
                b, s = r["baseline"].get(key, float("nan")), r["shifted"].get(key, float("nan"))
                up = (s - b) * sign > 0
                ax.plot([0, 1], [b, s], marker="o", color=plots.series_style(0 if up else 1)["color"], alpha=0.8)
                ax.annotate(str(r["seed"]), (1.03, s), fontsize=7, va="center")
            ax.set_xticks([0, 1], [f"baseline\n({rows[0]['setup']['baseline']})", "shifted"])
            ax.set_xlim(-0.3, 1.3)
            ax.axhline(0, color="0.6", lw=0.8)
            ax.set_ylabel("years")
            ax.set_title(title)
        fig.suptitle(f"Retinal age: the disease-aware shift vs the baseline ({len(rows)} seeds, held-out eyes)")
        return plots.figure_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/retinal_age_shift")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    choices = {"baseline": ["mean_variance", "ldl", "l1"], "scheduler": ["cosine", "step", "none"],
               "select": ["last", "best"]}
    for k, v in STUDY.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v, choices=choices.get(k))
    args = ap.parse_args(argv)

    import ray

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else []
    key = {k: getattr(args, k) for k in STUDY}
    done = {r["seed"] for r in results if r["setup"] == key}
    for seed in args.seeds:
        if seed in done:
            continue
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        root = out / "_".join(f"{k}{v}" for k, v in key.items()) / f"seed{seed}"
        t0 = time.time()
        pair = run_pair(str(root), seed, **key)
        row = {"seed": seed, "setup": key, "seconds": round(time.time() - t0, 1), **pair}
        s, b = pair["shifted"], pair["baseline"]
        print(f"seed {seed}: diseased-eye gap shifted {s['gap_disease']:+.2f} vs baseline {b['gap_disease']:+.2f} "
              f"(diseased - healthy {s['gap_disease_minus_healthy']:+.2f} vs {b['gap_disease_minus_healthy']:+.2f}; "
              f"healthy-eye MAE {s['mae_healthy']:.2f} vs {b['mae_healthy']:.2f}, a constant {s['mae_constant']:.2f}; "
              f"classifier val AUC {pair['classifier_val_auc']:.2f}; "
              f"{row['seconds']} s)", flush=True)
        results.append(row)
        storage.write_text(str(res_path), json.dumps(results, indent=1))
    rows = [r for r in results if r["setup"] == key and r["seed"] in args.seeds]
    if not rows:
        print("no results")
        return 1
    summ = {"setup": key, **summarize(rows)}
    storage.write_text(str(out / "summary.json"), json.dumps(summ, indent=1))
    print(f"\n{len(rows)} seeds ({key}):")
    for k, title, sign in PAIRED:
        d = summ[f"diff_{k}"]
        print(f"  {title}, shifted - baseline: {d['mean']:+.2f} +- {d['std']:.2f} years (min {d['min']:+.2f}, "
              f"max {d['max']:+.2f}; {'larger' if sign > 0 else 'lower'} in "
              f"{d['wins'] if sign > 0 else d['lower']}/{len(rows)})")
    plot_pairs(rows, str(out / "retinal_age_shift.png"))
    print(f"results: {res_path}\nplot:    {out / 'retinal_age_shift.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
