"""OCT candidate selection on generated layered B-scans of three widths, repeated over data seeds.

Per seed: a fresh generated OCT set (all 14 structures, scan widths cycling 512 / 768 / 1024, height
``--height``, one B-scan per eye by default so the 48 scans come from 24 patients; split by patient
before windowing), then ``medray tune`` over the four smp architectures
(Unet, UnetPlusPlus, FPN, DeepLabV3Plus) with ASHA, exactly as ``tune/oct_candidates.yaml`` but at a
size this machine can train. The best candidate is scored by whole-scan stitched inference on the
held-out test scans. Prints per seed the selected architecture and the held-out mean IoU (all classes
present, and foreground = without vitreous/background), then mean +- std over seeds. Results
accumulate in OUT/results.json (a re-run skips finished seeds).

    python benchmarks/oct_selection.py [--seeds 0 1 2] [--n 48] [--height 128] [--epochs 6]
    python benchmarks/oct_selection.py --manifest runs/data/duke_dme.parquet --seeds 0 \
        --window 128 --stride 96 --epochs 4 --archs oct_unet oct_fpn --convs 2     # the real Duke DME set
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def main(argv: list[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/oct_selection")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=48, help="generated B-scans per seed (8 per eye)")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--widths", type=int, nargs="+", default=[512, 768, 1024])
    ap.add_argument("--scans-per-eye", type=int, default=1,
                    help="B-scans per eye (the split is by patient: 48 scans, 1 per eye = 24 patients)")
    ap.add_argument("--manifest", default=None, help="use this oct_seg manifest instead of generated scans")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--stride", type=int, default=48)
    ap.add_argument("--encoder", default="tu-test_resnet")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=0.005)
    ap.add_argument("--eval-max-scans", type=int, default=16)
    ap.add_argument("--archs", nargs="+", default=["oct_unet", "oct_unetplusplus", "oct_fpn", "oct_deeplabv3plus"],
                    help="candidate architectures (a grid)")
    ap.add_argument("--convs", type=int, nargs="+", default=[1, 2], help="choices of convolutions per block")
    args = ap.parse_args(argv)

    from medray.data.synth import synth
    from medray.tuning import run_study

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else []
    setup = {k: getattr(args, k) for k in ("n", "height", "widths", "scans_per_eye", "manifest", "window", "stride",
                                           "encoder", "epochs", "lr", "archs", "convs")}
    done = {r["seed"] for r in results if r["setup"] == setup}
    for seed in args.seeds:
        if seed in done:
            continue
        tag = "real" if args.manifest else f"n{args.n}_h{args.height}_spe{args.scans_per_eye}"
        root = out / f"{tag}_e{args.epochs}_{args.encoder}" / f"seed{seed}"
        manifest = args.manifest
        if not manifest:
            manifest = str(root / "data" / "oct.parquet")
            if not Path(manifest).exists():
                synth("oct", args.n, manifest, size=args.height, widths=args.widths, seed=seed,
                      scans_per_eye=args.scans_per_eye)
        job = {"method": "oct_layers",
               "model": {"name": "oct_unet", "in_chans": 1,
                         "kwargs": {"encoder": args.encoder, "encoder_depth": 3, "decoder_channels": 32,
                                    "convs_per_block": 2}},
               "data": {"manifests": [str(Path(manifest).resolve()) if "://" not in manifest else manifest],
                        "window": args.window, "stride": args.stride, "eval_max_scans": args.eval_max_scans,
                        "plot_scans": 2},
               "optim": {"epochs": args.epochs, "batch_size": 8, "lr": args.lr, "warmup_epochs": 0},
               "scaling": {"num_workers": 1, "cpus_per_worker": 1},
               "run": {"name": "base", "storage_path": str(root / "unused"), "metric": "val_miou", "mode": "max",
                       "checkpoints_to_keep": 1, "seed": seed}}
        (root / "jobs").mkdir(parents=True, exist_ok=True)
        (root / "jobs" / "oct.yaml").write_text(yaml.safe_dump(job))
        spec = {"name": "octsel", "job": "../jobs/oct.yaml",
                "space": {"model.name": {"grid": list(args.archs)},
                          "model.kwargs.convs_per_block": {"choice": list(args.convs)}},
                "num_samples": 1, "metric": "val_miou", "mode": "max", "seed": seed,
                "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
                "max_concurrent_trials": 1, "trial_resources": {"cpu": 0.1},
                "storage_path": str(root / "tune"), "catalog": str(root / "catalog"), "publish_as": "oct_best"}
        (root / "tune_specs").mkdir(exist_ok=True)
        (root / "tune_specs" / "study.yaml").write_text(yaml.safe_dump(spec))
        t0 = time.time()
        res = run_study(str(root / "tune_specs" / "study.yaml"))
        test = json.loads((root / "tune" / "octsel" / "test_report.json").read_text())
        row = {"seed": seed, "setup": setup, "seconds": round(time.time() - t0, 1),
               "best": res["best"], "val_miou": res["best"]["best"],
               **{k: test[k] for k in ("test_miou", "test_miou_fg", "test_mdice_fg", "scans") if k in test},
               "test_iou": test.get("test_iou", {})}
        print(f"seed {seed}: selected {res['best']['params']} val mIoU {row['val_miou']:.3f}; held-out "
              f"mIoU {row['test_miou']:.3f} (fg {row.get('test_miou_fg', float('nan')):.3f}, "
              f"Dice {row.get('test_mdice_fg', float('nan')):.3f}) on {row['scans']} scans ({row['seconds']} s)",
              flush=True)
        results.append(row)
        res_path.write_text(json.dumps(results, indent=1))
    rows = [r for r in results if r["setup"] == setup and r["seed"] in args.seeds]
    if not rows:
        return 1
    import numpy as np

    summary = {"setup": setup, "n_runs": len(rows)}
    for k in ("test_miou", "test_miou_fg", "test_mdice_fg"):
        v = np.array([r[k] for r in rows if k in r], float)
        if len(v):
            summary[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                          "min": float(v.min()), "max": float(v.max())}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{len(rows)} seed(s), {setup}")
    for k in ("test_miou", "test_miou_fg", "test_mdice_fg"):
        if k in summary:
            s = summary[k]
            print(f"  held-out {k}: {s['mean']:.3f} +- {s['std']:.3f} (min {s['min']:.3f}, max {s['max']:.3f})")
    print(f"results: {res_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
