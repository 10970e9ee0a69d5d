"""OCT whole-scan inference benchmark: all windows of a B-scan in ONE batch vs one window at a time.

The same network (an smp Unet candidate, 15 classes, 1 channel), the same 768 x 496 scan, the same
windows (width 128, stride 64, last one right-aligned, height padded to 512) and the same Gaussian
blending: only how the windows reach the network differs. Each way runs once as a warm-up, then
``--repeat`` times; the scans/s of both and their ratio are printed (issue target >= 2x).

    python benchmarks/oct_inference.py [--width 768] [--height 496] [--repeat 5] [--device cpu|cuda] [--json]
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from medray.methods.oct_layers.bench import main

    sys.exit(main())
