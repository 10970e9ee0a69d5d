"""Throughput of whole-scan inference: all windows of a scan in ONE batch vs one window at a time.

    python -m medray.methods.oct_layers.bench [--width 768 --height 496 --model oct_unet --repeat 5] [--json]

Prints scans/s of both ways and the speed-up (METHODS.md §2 step 5; issue target >= 2x);
``benchmarks/oct_inference.py`` runs :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def benchmark(width: int = 768, height: int = 496, window: int = 128, stride: int = 64, model: str = "oct_unet",
              kwargs: dict | None = None, repeat: int = 3, device: str | None = None) -> dict:
    from medray.methods.oct_layers import models  # noqa: F401 - registers the candidates
    from medray.methods.oct_layers.infer import predict_logits
    from medray.models import create_model

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kw = kwargs if kwargs is not None else {"encoder": "resnet18", "encoder_depth": 4, "decoder_channels": 64}
    net = create_model(model, num_classes=15, in_chans=1, **kw).eval().to(dev)
    x = torch.randn(1, height, width, device=dev)
    out = {"width": width, "height": height, "window": window, "stride": stride, "model": model,
           "device": str(dev), "threads": torch.get_num_threads()}
    for name, mb in (("batched", None), ("one_at_a_time", 1)):
        predict_logits(net, x, window, stride, max_batch=mb)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeat):
            predict_logits(net, x, window, stride, max_batch=mb)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        out[f"{name}_scans_per_s"] = round(repeat / (time.perf_counter() - t), 3)
    out["speedup"] = round(out["batched_scans_per_s"] / out["one_at_a_time_scans_per_s"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--height", type=int, default=496)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--model", default="oct_unet")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the report")
    a = p.parse_args(argv)
    r = benchmark(a.width, a.height, a.window, a.stride, a.model, repeat=a.repeat, device=a.device)
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{a.width}x{a.height} B-scan, windows {a.window}/{a.stride}, {r['model']} on {r['device']} "
          f"({r['threads']} threads)")
    print(f"one window at a time: {r['one_at_a_time_scans_per_s']:7.2f} scans/s")
    print(f"all windows batched : {r['batched_scans_per_s']:7.2f} scans/s")
    print(f"ratio batched / one-at-a-time: {r['speedup']:.2f}x  (target >= 2x)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
