"""Synthetic fundus photos labelled gradable / ungradable (manifest task ``fundus_disease`` with the
classes ``[ungradable, gradable]``; dataset ``synth_fundus_quality``): the training set of the image-
quality gate that the fundus-screening preset (METHODS.md §3) puts in front of the other models.

What the images look like: the adult fundus photos of :mod:`.fundus_age` (ages 20-80, a share with
disease signs). A share ``ungradable_rate`` (default 0.5) of them is then degraded the way real
ungradable photos are, one or two defects per photo drawn from:

* ``blur``: defocus, a Gaussian blur of 2.5-5 % of the side (vessels and disc edge wash out);
* ``dark``: under-exposure, brightness x 0.08-0.25 with sensor noise;
* ``glare``: over-exposure / lens haze, a bright white-yellow veil over 50-90 % of the field;
* ``occlusion``: an eyelid / eyelash shadow, a dark band over 35-60 % of the field from one edge;
* ``off_centre``: the eye not in the frame, the field shifted by 30-45 % of the side.

Gradable photos get only mild variation (brightness x 0.85-1.15, slight blur up to 0.6 px). The
defects are in ``defects`` (list of names; empty when gradable). Two rows per patient (right and
left eye); each eye is graded on its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from medray.data.synth import fundus_age
from medray.data.synth._common import (
    STREAM_LABEL,
    STREAM_PATIENT,
    STREAM_SAMPLE,
    Item,
    SynthKind,
    Tally,
    check_format,
    check_options,
    check_range,
    encode,
    grid,
    rng_for,
    to_uint8,
)

KIND = "fundus_quality"
CLASSES = ["ungradable", "gradable"]
DEFECTS = ("blur", "dark", "glare", "occlusion", "off_centre")

DEFAULTS: dict[str, Any] = {
    "size": 128,
    "ungradable_rate": 0.5,
    "image_format": "jpeg",
    "val": 0.15,
    "test": 0.15,
}


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([ndimage.gaussian_filter(x[..., c], sigma) for c in range(3)], -1)


def degrade(img: np.ndarray, defects: list[str], rng: np.random.Generator) -> np.ndarray:
    """Apply ``defects`` (names of :data:`DEFECTS`) to a uint8 RGB photo; returns uint8."""
    x = img.astype(np.float32)
    s = x.shape[0]
    for d in defects:
        if d == "blur":
            x = _blur(x, s * float(rng.uniform(0.025, 0.05)))
        elif d == "dark":
            x = x * float(rng.uniform(0.08, 0.25)) + rng.normal(0, 3.0, x.shape).astype(np.float32)
        elif d == "glare":
            yy, xx = grid(s, s)
            cy, cx = rng.uniform(0.2, 0.8, 2)
            r = np.hypot(yy / s - cy, xx / s - cx)
            veil = np.clip(1.2 - r / float(rng.uniform(0.4, 0.7)), 0, 1)[..., None] * float(rng.uniform(0.5, 0.9))
            x = x * (1 - veil) + veil * np.array([255.0, 245.0, 200.0], np.float32)
        elif d == "occlusion":
            yy, xx = grid(s, s)
            side = int(rng.integers(4))
            coord = (yy, s - 1 - yy, xx, s - 1 - xx)[side] / s
            edge = float(rng.uniform(0.35, 0.6))
            shade = np.clip((edge - coord) / 0.08, 0, 1)[..., None]
            x = x * (1 - 0.92 * shade)
        elif d == "off_centre":
            dy, dx = (rng.uniform(0.3, 0.45, 2) * s * rng.choice([-1, 1], 2)).astype(int)
            x = ndimage.shift(x, (dy, dx, 0), order=0, mode="constant", cval=0.0)
    return to_uint8(x)


def resolve(options: dict[str, Any]) -> dict[str, Any]:
    o = check_options(KIND, options, DEFAULTS)
    o["size"] = int(o["size"])
    check_range(KIND, "size", o["size"], 32, 8192)
    for key in ("ungradable_rate", "val", "test"):
        o[key] = float(o[key])
        check_range(KIND, key, o[key], 0.0, 1.0)
    o["image_format"] = check_format(KIND, o["image_format"])
    return o


def labels(seed: int, i: int, options: dict[str, Any]) -> tuple[int, list[str]]:
    """``(label, defects)`` of row ``i`` (label 1 = gradable), from the label stream."""
    rng = rng_for(seed, KIND, STREAM_LABEL, i)
    if rng.random() >= options["ungradable_rate"]:
        return 1, []
    k = 1 + int(rng.random() < 0.3)
    return 0, sorted(str(d) for d in rng.choice(DEFECTS, k, replace=False))


def sample(seed: int, i: int, options: dict[str, Any], n: int | None = None) -> dict[str, Any]:
    """Row ``i`` as rendered: ``{"image", "label", "defects", "eye"}``."""
    label, defects = labels(seed, i, options)
    age_rng = rng_for(seed, KIND, STREAM_PATIENT, i // 2)
    age, disease = round(float(age_rng.uniform(20, 80)), 1), int(age_rng.random() < 0.15)
    look = fundus_age.draw_look(age_rng)
    rng = rng_for(seed, KIND, STREAM_SAMPLE, i)
    eye = "right" if i % 2 == 0 else "left"
    img = fundus_age.render(rng, options["size"], age, disease, eye, look).image
    if defects:
        img = degrade(img, defects, rng)
    else:  # mild, gradable variation
        x = img.astype(np.float32) * float(rng.uniform(0.85, 1.15))
        sig = float(rng.uniform(0, 0.6)) * options["size"] / 256
        if sig > 0.05:
            x = _blur(x, sig)
        img = to_uint8(x)
    return {"image": img, "label": label, "defects": defects, "eye": eye}


def render(rng: np.random.Generator, size: int = 128, defects: list[str] | None = None) -> np.ndarray:
    """One photo from ``rng``, with ``defects`` applied (gradable when empty)."""
    img = fundus_age.render(rng, size).image
    return degrade(img, list(defects or []), rng) if defects else img


def item(seed: int, i: int, options: dict[str, Any], n: int) -> Item:
    smp = sample(seed, i, options)
    s = options["size"]
    row = {"patient_id": f"synth_fundus_quality_{seed}_p{i // 2:08d}", "eye": smp["eye"], "width": s, "height": s,
           "label": smp["label"]}
    return Item({"image": encode(smp["image"], options["image_format"], quality=92)}, row,
                {"label": CLASSES[smp["label"]], "defects": smp["defects"]})


def summarize(tally: Tally, options: dict[str, Any]) -> dict[str, Any]:
    return {"label": dict(sorted(tally.counts.get("label", {}).items())),
            "defects": dict(sorted(tally.lists.get("defects", {}).items()))}


GENERATOR = SynthKind(
    name=KIND, task="fundus_disease", dataset="synth_fundus_quality", defaults=DEFAULTS, resolve=resolve,
    classes=lambda o: list(CLASSES), item=item, summarize=summarize, render=render, sample=sample,
)
