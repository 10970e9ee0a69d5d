"""Mean teacher (SRC-MT) vs the supervised-only baseline on the generated ROP set, repeated.

For every labelled share and seed, the SAME job is trained twice — ``mean_teacher.enabled`` true and
false (same labelled patients, augmentation, optimizer and number of steps) — and the best-validation
student is scored on the test split. Results accumulate in ``OUT/results.json`` (a re-run skips the
runs already done); ``OUT/summary.json`` holds mean/std per share and mode and the paired difference
(mean teacher - supervised, same seed); ``OUT/rop_mt_vs_supervised.png`` plots them.

    .venv/bin/python benchmarks/rop_mean_teacher.py                         # defaults below
    .venv/bin/python benchmarks/rop_mean_teacher.py --fractions 0.1 0.2 --seeds 0 1 2 3 --epochs 15

Not a test: it takes minutes to an hour depending on the machine.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/rop_mt")
    ap.add_argument("--n", type=int, default=600, help="generated images (pairs of eyes per infant)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--model", default="tiny_effnet")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--num-cpus", type=int, default=None, help="local Ray cluster size (default: all)")
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--rampup", type=float, default=5.0)
    ap.add_argument("--relation-weight", type=float, default=1.0)
    ap.add_argument("--consistency", type=float, default=1.0)
    ap.add_argument("--report-only", action="store_true", help="summarise and plot the results so far")
    args = ap.parse_args(argv)

    import ray

    from medray.config import validate
    from medray.data.synth import synth
    from medray.methods.rop import Config
    from medray.methods.rop import evaluate as rop_eval
    from medray.training.launcher import run_job

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / f"data_n{args.n}_s{args.size}_seed{args.data_seed}" / "rop.parquet"
    if not manifest.exists() and not args.report_only:
        print(f"generating {args.n} ROP images ({args.size} px) -> {manifest}", flush=True)
        synth("rop", args.n, str(manifest), seed=args.data_seed, size=args.size)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else []
    done = {(r["fraction"], r["mode"], r["seed"], r.get("epochs"), r.get("model"), r.get("lr")) for r in results}
    if not ray.is_initialized() and not args.report_only:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    runs = [(f, s, m) for f in args.fractions for s in args.seeds for m in ("supervised", "mean_teacher")]
    for i, (frac, seed, mode) in enumerate(runs):
        if (frac, mode, seed, args.epochs, args.model, args.lr) in done or args.report_only:
            continue
        name = f"{mode}_f{frac:g}_s{seed}_e{args.epochs}"
        job = validate(Config, {
            "method": "rop",
            "model": {"name": args.model},
            "data": {"manifests": [str(manifest)], "image_size": args.size, "labelled_fraction": frac,
                     "labelled_seed": seed, "unlabelled_batch_size": 16},
            "mean_teacher": {"enabled": mode == "mean_teacher", "rampup_epochs": args.rampup,
                             "relation_weight": args.relation_weight, "consistency": args.consistency,
                             "evaluate_teacher": False},
            "optim": {"epochs": args.epochs, "batch_size": 8, "lr": args.lr, "warmup_epochs": 1},
            "scaling": {"num_workers": args.workers, "cpus_per_worker": args.cpus_per_worker},
            "run": {"name": name, "storage_path": str(out / "runs"), "metric": "val_kappa", "mode": "max",
                    "seed": seed, "checkpoints_to_keep": 1},
        }, name)
        t0 = time.time()
        print(f"[{i + 1}/{len(runs)}] {name}", flush=True)
        o = run_job(job)
        row = {"fraction": frac, "mode": mode, "seed": seed, "epochs": args.epochs, "model": args.model, "lr": args.lr,
               "seconds": round(time.time() - t0, 1),
               **{k: v for k, v in o["test_metrics"].items() if isinstance(v, (int, float))},
               "val_kappa": o["metrics"].get("val_kappa")}
        print(f"    test kappa {row['test_kappa']:.4f} acc {row['test_acc']:.4f} auc {row['test_auc']:.4f} "
              f"({row['seconds']} s)", flush=True)
        results.append(row)
        res_path.write_text(json.dumps(results, indent=1))
    rows = [r for r in results if r.get("epochs") == args.epochs and r.get("model") == args.model
            and r.get("lr") == args.lr and r["fraction"] in args.fractions]
    if not rows:
        print("no results yet")
        return 1
    summary = {m: rop_eval.summarize_runs(rows, m) for m in ("test_kappa", "test_acc", "test_auc")}
    summary["setup"] = vars(args)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    rop_eval.plot_comparison(summary["test_kappa"], "test_kappa", path=str(out / "rop_mt_vs_supervised.png"),
                             title=f"Generated ROP ({args.n} images, {args.size} px, {args.model}): test kappa")
    print(f"\n{'share':>6} {'supervised':>18} {'mean teacher':>18} {'MT - sup (paired)':>22} wins")
    for f, row in summary["test_kappa"].items():
        s, m, d = row.get("supervised", {}), row.get("mean_teacher", {}), row.get("difference", {})
        print(f"{float(f) * 100:5.0f}% {s.get('mean', float('nan')):8.4f} +- {s.get('std', 0):.4f} "
              f"{m.get('mean', float('nan')):8.4f} +- {m.get('std', 0):.4f} "
              f"{d.get('mean', float('nan')):+10.4f} +- {d.get('se', float('nan')):.4f} (se) "
              f"{d.get('wins', 0)}/{d.get('n', 0)}")
    print(f"\nresults: {res_path}\nplot:    {out / 'rop_mt_vs_supervised.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
