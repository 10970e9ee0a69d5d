"""OCT whole-scan inference benchmark: all windows of a B-scan in ONE batch vs one window at a time.

The same network (an smp Unet candidate, 15 classes, 1 channel), the same 768 x 496 scan, the same
windows (width 128, stride 64, last one right-aligned, height padded to 512) and the same Gaussian
blending: only how the windows reach the network differs. Each way runs once as a warm-up, then
``--repeat`` times; the scans/s of both and their ratio are printed (issue target >= 2x).

    python benchmarks/oct_inference.py [--width 768] [--height 496] [--repeat 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--height", type=int, default=496)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--model", default="oct_unet")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    from medray.methods.oct_layers.bench import benchmark

    r = benchmark(a.width, a.height, a.window, a.stride, a.model, repeat=a.repeat, device=a.device)
    print(f"{a.width}x{a.height} B-scan, windows {a.window}/{a.stride}, {r['model']} on {r['device']} "
          f"({r['threads']} threads)")
    print(f"one window at a time: {r['one_at_a_time_scans_per_s']:7.2f} scans/s")
    print(f"all windows batched : {r['batched_scans_per_s']:7.2f} scans/s")
    print(f"ratio batched / one-at-a-time: {r['speedup']:.2f}x  (target >= 2x)")


if __name__ == "__main__":
    main()
