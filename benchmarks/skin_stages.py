"""Skin workflow (METHODS.md §4): does the stage-5 classifier beat stage 3's, repeated over seeds?

For every seed a fresh generated skin set (lesion-like blobs of several classes, boxes on a small
share, noisy labels on the "full" set, a clean held-out split) is made and the whole five-stage job
runs on it (regressor -> foreground heatmaps -> stage-3 classifier on the clean set -> ranked
class-proportional sample of the pseudo-labelled full set -> stage-5 classifier with the heatmap as a
weak, randomly present input). Both classifiers are scored on the same clean held-out rows (balanced
accuracy) and on the full set's held-out rows against the TRUE labels the generator kept.

Results accumulate in ``OUT/results.json`` (a re-run skips seeds already done); ``OUT/summary.json``
holds the per-seed figures and the paired difference (stage 5 - stage 3, same seed, mean and std);
``OUT/stage5_vs_stage3.png`` plots them.

    .venv/bin/python benchmarks/skin_stages.py [--seeds 0 1 2] [--n 600] [--epochs 20] [--regressor-epochs 60] [--out runs/bench/skin]

Not a test: minutes per seed on 2 CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def job_dict(manifest: str, runs: str, name: str, epochs: int, size: int, workers: int,
             regressor_epochs: int = 60, second_class_weights: str | None = "classifier") -> dict:
    opt = {"epochs": epochs, "batch_size": 16, "lr": 0.002}
    return {
        "method": "skin",
        "data": {"manifest": manifest, "decode_batch_size": 16},
        "regressor": {"backbone": "test_convnext", "image_size": size, "head_channels": 16, "out_stride": 4,
                      "optim": {**opt, "epochs": regressor_epochs, "lr": 0.003}},
        "foreground": {"downsample": 8, "batch_size": 32, "num_cpus": 0.5},
        # phi -3: the budget's compound scaling at 64 px base gives a ~45 px, 2.1 M-parameter EfficientNetV2
        "classifier": {"budget": {"max_params_m": 3.0, "max_gflops": 0.2}, "base_resolution": size,
                       "phi_min": -3, "phi_max": -3, "phi_step": 1.0, "optim": opt, "predict_batch_size": 32,
                       "class_weights": "balanced"},
        "second": {"q": 0.5, "optim": opt, "class_weights": second_class_weights},
        "evaluate": {"heatmap_examples": 4},
        "scaling": {"num_workers": workers, "cpus_per_worker": 0.5},
        "run": {"name": name, "storage_path": runs, "checkpoints_to_keep": 1},
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in ((axes[0], "clean_test", "clean held-out split"),
                           (axes[1], "full_test_true_labels", "full held-out, true labels")):
        for r in rows:
            a, b = r[key]["stage3"], r[key]["stage5"]
            ax.plot([0, 1], [a, b], "o-", color="tab:green" if b > a else "tab:red", alpha=0.8)
            ax.annotate(f"seed {r['seed']}", (1.02, b), fontsize=7, va="center")
        ax.set_xticks([0, 1], ["stage 3", "stage 5"])
        ax.set_xlim(-0.3, 1.4)
        ax.set_ylabel("balanced accuracy")
        ax.set_title(title, fontsize=10)
    fig.suptitle("Skin: stage-5 vs stage-3 classifier, paired by seed", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=600, help="generated images per seed")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the two classifier stages")
    ap.add_argument("--regressor-epochs", type=int, default=60,
                    help="epochs of the stage-1 heatmap regressor (its box set is small: few steps per epoch)")
    ap.add_argument("--second-class-weights", default="classifier", choices=["classifier", "none"],
                    help="stage-5 cross-entropy weights: the stage-3 policy (balanced here) or none")
    ap.add_argument("--noise", type=float, default=0.3, help="label-noise rate of the full set")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "skin"))
    a = ap.parse_args()
    import numpy as np
    import ray

    from medray.config import parse_job
    from medray.data.synth import synth
    from medray.training.launcher import run_job

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    ray.init(num_cpus=max(4, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    for seed in a.seeds:
        base = f"seed{seed}_n{a.n}_s{a.size}_e{a.epochs}_r{a.regressor_epochs}_noise{a.noise}"
        variant = "" if a.second_class_weights == "none" else f"_w{a.second_class_weights}"
        key = base + variant
        if key in results:
            print(f"[bench] {key}: done before, skipped", flush=True)
            continue
        t0 = time.time()
        data = synth("skin", a.n, str(out / base / "skin.parquet"), seed=seed, size=a.size, n_classes=3,
                     box_frac=0.15, clean_frac=0.25, noise=a.noise, val=0.2, test=0.2)
        runs = out / base / f"runs{variant}"
        done4 = out / base / "runs" / "skin" / "4_sample" / "_SUCCESS.json"
        if variant and done4.exists() and not (runs / "skin").exists():
            # the stage-5 variant on the SAME stages 1-4 (a paired comparison, and 60 % less time)
            import shutil

            for st in ("1_regressor", "2_foreground", "3_classifier", "4_sample"):
                shutil.copytree(out / base / "runs" / "skin" / st, runs / "skin" / st)
            shutil.copy(out / base / "runs" / "skin" / "counts.json", runs / "skin" / "counts.json")
        job = parse_job(job_dict(data["manifest"], str(runs), "skin", a.epochs, a.size, a.workers,
                                 a.regressor_epochs, None if a.second_class_weights == "none" else "classifier"),
                        source="benchmarks/skin_stages.py")
        run_job(job)
        m = json.loads((runs / "skin" / "evaluate" / "metrics.json").read_text())["sets"]
        row = {"seed": seed, "minutes": round((time.time() - t0) / 60, 1)}
        for s in ("clean_test", "full_test_true_labels"):
            row[s] = {st: round(m[s][st]["bal_acc"], 4) for st in ("stage3", "stage5")}
        results[key] = row
        res_path.write_text(json.dumps(results, indent=1))
        print(f"[bench] {key}: {row}", flush=True)
    suffix = f"_n{a.n}_s{a.size}_e{a.epochs}_r{a.regressor_epochs}_noise{a.noise}" + (
        "" if a.second_class_weights == "none" else f"_w{a.second_class_weights}")
    rows = [results[k] for k in results if k.endswith(suffix)]
    summary: dict = {"config": vars(a), "runs": rows}
    print(f"\n{'seed':>4} | clean test bal_acc s3 -> s5 | full test (true labels) s3 -> s5")
    for r in rows:
        print(f"{r['seed']:>4} | {r['clean_test']['stage3']:.3f} -> {r['clean_test']['stage5']:.3f}"
              f"            | {r['full_test_true_labels']['stage3']:.3f} -> {r['full_test_true_labels']['stage5']:.3f}")
    for s in ("clean_test", "full_test_true_labels"):
        d = np.array([r[s]["stage5"] - r[s]["stage3"] for r in rows])
        summary[f"{s}_diff"] = {"mean": round(float(d.mean()), 4), "std": round(float(d.std(ddof=1)), 4)
                                if len(d) > 1 else None, "wins": int((d > 0).sum()), "n": len(d)}
        print(f"stage 5 - stage 3 ({s}): mean {d.mean():+.3f}"
              + (f" +- {d.std(ddof=1):.3f} (sd)" if len(d) > 1 else "") + f", stage 5 better in {(d > 0).sum()}/{len(d)}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(rows, out / "stage5_vs_stage3.png")
    print(f"-> {out / 'summary.json'}, {out / 'stage5_vs_stage3.png'}")
    ray.shutdown()


if __name__ == "__main__":
    main()
