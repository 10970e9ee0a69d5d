"""Serving benchmark (issue 8), one run prints:

1. HTTP pipeline latency (p50/p99 of POST /infer, sequential requests) vs the same models called
   in-process (their predictors one after the other on the decoded image): overhead per hop;
2. batched vs unbatched throughput of one model deployment at concurrency 16 (``@serve.batch``
   with max_batch_size 16 vs the same replica's unbatched method).

    python benchmarks/serve.py                      # tiny models in a temporary catalogue
    python benchmarks/serve.py --arch resnet18 --size 224 --requests 200

Runs on a local Ray (``ray.init``) unless RAY_ADDRESS is set. Prints a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

PRESET = """name: bench
modality: fundus
models: [bench_quality, bench_disease, bench_glaucoma]
gates: {bench_quality: {output: score, min: 0.0}}
stages: [[bench_quality], [bench_disease, bench_glaucoma]]
"""


def _pct(a: list[float]) -> dict[str, float]:
    x = np.array(a) * 1e3
    return {"p50_ms": round(float(np.percentile(x, 50)), 2), "p99_ms": round(float(np.percentile(x, 99)), 2),
            "mean_ms": round(float(x.mean()), 2)}


def publish(cat_dir: str, arch: str, size: int):
    import torch
    from safetensors.torch import save

    from medray.catalog import Catalog
    from medray.models import create_model

    cat = Catalog(cat_dir)
    for i, name in enumerate(["bench_quality", "bench_disease", "bench_glaucoma"]):
        torch.manual_seed(i)
        m = create_model(arch, num_classes=2)
        cat.publish({"name": name, "task": "classify", "modality": "fundus", "outputs": ["probs", "label", "score"],
                     "labels": ["a", "b"], "architecture": {"name": arch, "num_classes": 2, "in_chans": 3},
                     "preprocessing": {"image_size": size, "mode": "RGB", "resize": "pad"},
                     "resources": {"num_cpus": 1}},
                    {"weights": save({k: v.contiguous() for k, v in m.state_dict().items()})})
    return cat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--image", default=str(Path(__file__).resolve().parents[2] / "shared/data/fundus_skimage/retina.jpg"))
    ap.add_argument("--cpus-per-replica", type=float, default=0.5)
    a = ap.parse_args()

    import ray
    import requests
    from ray import serve

    from medray.inference.predictor import load_predictor
    from medray.netutil import free_port
    from medray.serving.app import AppArgs, build_app
    from medray.serving.uploads import decode_upload

    tmp = tempfile.mkdtemp(prefix="medray-bench-")
    cat = publish(os.path.join(tmp, "catalog"), a.arch, a.size)
    Path(tmp, "presets").mkdir()
    Path(tmp, "presets", "bench.yaml").write_text(PRESET)
    data = Path(a.image).read_bytes()
    arr = decode_upload(data, "bench.jpg", modality="fundus", max_pixels=10**8, min_side=16, display_size=1024)

    # in-process: the same models one after the other (gate, then two branches), no Serve, no HTTP,
    # with as many torch threads as one replica gets (fair per-model compute)
    import torch

    torch.set_num_threads(max(1, int(round(a.cpus_per_replica))))
    preds = [load_predictor(c, cat) for c in cat.list()]
    for p in preds:
        p.predict([arr])
    local = []
    for _ in range(a.requests):
        t0 = time.perf_counter()
        for p in preds:
            p.predict([arr])
        local.append(time.perf_counter() - t0)

    ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    args = AppArgs(catalog=cat.uri, preset="bench", presets_dir=os.path.join(tmp, "presets"),
                   defaults={"ray_actor_options": {"num_cpus": a.cpus_per_replica}, "max_batch_size": 16,
                             "batch_wait_timeout_s": 0.005, "max_ongoing_requests": 64})
    serve.run(build_app(args), name="bench", route_prefix="/bench")
    url = f"http://127.0.0.1:{port}/bench"
    for _ in range(3):
        requests.post(f"{url}/infer", files={"image": ("b.jpg", data)}, timeout=60).raise_for_status()
    http = []
    for _ in range(a.requests):
        t0 = time.perf_counter()
        r = requests.post(f"{url}/infer", files={"image": ("b.jpg", data)}, timeout=60)
        http.append(time.perf_counter() - t0)
        r.raise_for_status()
    hops = 3  # critical path: proxy -> ingress, ingress -> gate, ingress -> branch (the 2 branches overlap)

    # batched vs unbatched throughput of one model deployment at concurrency N (handle calls)
    handle = serve.get_deployment_handle("bench_disease", app_name="bench")

    async def load(method: str, n: int) -> float:
        sem = asyncio.Semaphore(a.concurrency)

        async def one():
            async with sem:
                h = handle if method == "__call__" else getattr(handle, method)
                await h.remote(arr, {})

        await asyncio.gather(*(one() for _ in range(8)))  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - t0)

    n = max(4 * a.concurrency, a.requests)
    batched = asyncio.run(load("__call__", n))
    unbatched = asyncio.run(load("predict_unbatched", n))
    serve.delete("bench")

    lp, hp = _pct(local), _pct(http)
    summary = {
        "arch": a.arch, "image_size": a.size, "requests": a.requests,
        "in_process_3_models": lp, "http_pipeline_3_models": hp,
        "overhead_per_hop_ms": {"p50": round((hp["p50_ms"] - lp["p50_ms"]) / hops, 2),
                                "p99": round((hp["p99_ms"] - lp["p99_ms"]) / hops, 2)},
        "concurrency": a.concurrency,
        "throughput_batched_per_s": round(batched, 1), "throughput_unbatched_per_s": round(unbatched, 1),
        "batching_speedup": round(batched / unbatched, 2),
    }
    print(f"in-process 3 models : p50 {lp['p50_ms']:.1f} ms  p99 {lp['p99_ms']:.1f} ms")
    print(f"HTTP pipeline       : p50 {hp['p50_ms']:.1f} ms  p99 {hp['p99_ms']:.1f} ms  "
          f"(overhead per hop p50 {summary['overhead_per_hop_ms']['p50']} ms)")
    print(f"throughput @{a.concurrency}: batched {batched:.1f}/s vs unbatched {unbatched:.1f}/s "
          f"= {summary['batching_speedup']}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
