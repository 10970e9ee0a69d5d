"""Retinal age: does the disease-aware label shift give diseased eyes a larger age gap than the baseline?

Per seed: a generated fundus set (ages 40-60, 35 % with an aging disease that makes the eye look 6-16
years older), a tiny disease classifier (stage 1), then the retinal-age job twice on the same
responses and offsets, shifted loss vs the unshifted baseline. Prints the held-out diseased-eye age gap
of both and the paired difference, mean +- std over seeds (results accumulate in OUT/results.json).

    python benchmarks/retinal_age_shift.py [--seeds 0 1 2 3 4] [--n 200] [--epochs 30] [--baseline mean_variance]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

if __name__ == "__main__":
    from medray.methods.retinal_age.study import main

    sys.exit(main())
