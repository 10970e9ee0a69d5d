"""Synthetic adult fundus photos whose age is visible (manifest task ``fundus_age``; dataset
``synth_fundus_age``).

What the images look like: a square RGB macula-centred colour fundus photo (default 256 px, JPEG)
with a black surround outside a circular field of view: orange-red retina with choroidal texture, a
darker macula with a foveal reflex, an optic disc with a cup on the nasal side (right of centre for a
right eye), and arteries (lighter, thinner) and veins (darker, wider) leaving the disc in four
arcades that bend around the macula.

Labels: ``age`` (years, uniform in ``age_range``, default 20-80, one decimal), ``sex`` ("F"/"M",
50/50), ``disease`` (0/1, aging-related fundus disease, rate ``disease_rate`` default 0.15);
``age_flag`` is null. Two rows per patient (right and left eye) share age, sex and disease.

How age shows (a KNOWN function): each eye has an apparent age ``a = age + N(0, age_noise)``
(default noise 2.5 years, per patient) ``+ disease * U(6, 16)`` years, and ``t = clip((a - 10) / 80,
0, 1.25)``. Every age feature is a fixed function of ``t`` plus a little independent noise:

* lens yellowing ``Y = 0.05 + 0.6 t``: a yellow-brown haze (weight ``0.2 t``), then the blue
  channel x ``(1 - Y)`` and green x ``(1 - 0.3 Y)``, and a slight blur (``0.2 + 0.9 t`` px at 256 px);
* overall brightness x ``(1.06 - 0.2 t)``;
* artery calibre x ``(1.2 - 0.45 t)`` (arteriolar narrowing), vein calibre x ``(1.1 - 0.2 t)``;
* vessel tortuosity ``0.03 + 0.08 t``;
* optic disc pallor ``0.08 + 0.55 t`` (mix of the rim colour towards pale yellow-white);
* drusen-like yellow spots around the macula: Poisson count with mean ``40 t ** 2.5``;
* foveal reflex strength ``max(0, 0.9 - t)``.

The ``disease`` flag makes the eye LOOK OLDER than it is (the apparent-age shift above) and adds
disease signs: ``10 + 20 t`` extra (often larger) drusen, extra disc pallor (+0.2) and a few dark-red
blot haemorrhages. This is the situation the retinal-age label shift of METHODS.md section 1 targets.
A simple statistic already tracks age: the blue share of the field, ``B / (R + G + B)``, falls with
age (Pearson r below -0.8 on disease-free rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from medray.data.synth._common import (
    STREAM_LABEL,
    STREAM_PATIENT,
    STREAM_SAMPLE,
    Item,
    SynthKind,
    Tally,
    blend,
    check_format,
    check_options,
    check_range,
    encode,
    fbm,
    grid,
    rng_for,
    to_uint8,
    value_noise,
)
from medray.data.synth._fundus import Trunk, draw_disc, fov_mask, grow_vessels, rasterize_vessels
from medray.errors import ConfigError

KIND = "fundus_age"

DEFAULTS: dict[str, Any] = {
    "size": 256,
    "age_range": [20.0, 80.0],
    "disease_rate": 0.15,
    "age_noise": 2.5,
    "image_format": "jpeg",
    "val": 0.15,
    "test": 0.15,
}


@dataclass
class FundusAgeSample:
    """One rendered fundus photo.

    Attributes:
        image: ``HxWx3`` uint8.
        age: chronological age (the label).
        disease: 0/1.
        apparent_age: the age the eye's features were rendered for (age + noise + disease shift).
        features: the rendered feature values (``t``, ``yellowing``, ``brightness``,
            ``artery_width``, ``vein_width``, ``tortuosity``, ``pallor``, ``drusen``, ``reflex``).
    """

    image: np.ndarray
    age: float
    disease: int
    apparent_age: float
    eye: str = "right"
    features: dict[str, float] = field(default_factory=dict)


def draw_look(rng: np.random.Generator) -> dict[str, Any]:
    """Per-patient pigmentation shared by both eyes."""
    return {
        "base": (np.array([198.0, 85.0, 39.0]) * float(rng.uniform(0.86, 1.1))
                 + rng.normal(0, [6.0, 4.0, 1.0])).tolist(),
        "tessellation": float(rng.uniform(0.0, 0.8)),
        "cup_ratio": float(rng.uniform(0.3, 0.5)),
    }


def age_features(apparent_age: float, disease: int, rng: np.random.Generator) -> dict[str, float]:
    """The feature values for an apparent age (see the module docstring), with their small noise."""
    t = float(np.clip((apparent_age - 10.0) / 80.0, 0.0, 1.25))
    j = lambda sd: float(rng.normal(0.0, sd))  # noqa: E731 - tiny local helper
    return {
        "t": t,
        "yellowing": float(np.clip(0.05 + 0.6 * t + j(0.02), 0.0, 0.85)),
        "brightness": 1.06 - 0.2 * t + j(0.02),
        "artery_width": 1.2 - 0.45 * t + j(0.04),
        "vein_width": 1.1 - 0.2 * t + j(0.04),
        "tortuosity": max(0.01, 0.03 + 0.08 * t + j(0.01)),
        "pallor": float(np.clip(0.08 + 0.55 * t + 0.2 * disease + j(0.04), 0.0, 0.95)),
        "drusen": float(rng.poisson(40.0 * t**2.5 + (10 + 20 * t) * disease)),
        "reflex": max(0.0, 0.9 - t + j(0.05)),
    }


def render(rng: np.random.Generator, size: int = 256, age: float | None = None, disease: int | None = None,
           eye: str = "right", look: dict[str, Any] | None = None, age_range: tuple[float, float] = (20.0, 80.0),
           disease_rate: float = 0.15, age_noise: float = 2.5, apparent_age: float | None = None) -> FundusAgeSample:
    """Render one fundus photo.

    Args:
        rng: the only source of randomness.
        size: side of the square image, pixels.
        age: chronological age; uniform in ``age_range`` when None.
        disease: 0/1; Bernoulli(``disease_rate``) when None.
        eye: "right" or "left" (the disc is on the nasal side).
        look: per-patient pigmentation from :func:`draw_look` (drawn from ``rng`` when None).
        age_range: range of drawn ages.
        disease_rate: rate of drawn disease.
        age_noise: standard deviation (years) of apparent age around the true age.
        apparent_age: override the apparent age (otherwise age + noise + disease shift).

    Returns:
        A :class:`FundusAgeSample`.
    """
    s = int(size)
    if age is None:
        age = round(float(rng.uniform(*age_range)), 1)
    if disease is None:
        disease = int(rng.random() < disease_rate)
    if apparent_age is None:
        apparent_age = age + float(rng.normal(0, age_noise)) + (float(rng.uniform(6, 16)) if disease else 0.0)
    look = look or draw_look(rng)
    f = age_features(apparent_age, disease, rng)
    t = f["t"]
    k = s / 256.0
    yy, xx = grid(s, s)
    c = (s - 1) / 2.0
    fr = 0.46 * s
    side = -1.0 if eye == "left" else 1.0

    base = np.asarray(look["base"], np.float32) + rng.normal(0, 3, 3).astype(np.float32)
    img = np.empty((s, s, 3), np.float32)
    img[:] = base
    img *= (1.0 + 0.05 * fbm(rng, s, s, s / 6, 3))[..., None]
    tess = np.exp(-((value_noise(rng, s, s, s / 16) / 0.3) ** 2)) * look["tessellation"]
    img += tess[..., None] * np.array([16, 4, 0], np.float32)
    rho = np.hypot(xx - c, yy - c) / fr
    img *= (1.0 - 0.35 * np.clip(rho, 0, 1) ** 3)[..., None]

    # macula and foveal reflex
    fx, fy = c + float(rng.normal(0, 0.015)) * s, c + float(rng.normal(0, 0.015)) * s
    rf = np.hypot(xx - fx, yy - fy)
    img *= (1.0 - 0.3 * np.exp(-((rf / (0.09 * s)) ** 2)))[..., None]
    img += (f["reflex"] * 40.0 * np.exp(-((rf / (0.008 * s + 0.6)) ** 2)))[..., None]

    # optic disc: pallor mixes the rim towards pale yellow-white
    dx, dy = c + side * 0.27 * s + float(rng.normal(0, 0.01)) * s, c - 0.02 * s + float(rng.normal(0, 0.015)) * s
    dr = float(rng.uniform(0.05, 0.06)) * s
    pal = f["pallor"]
    rim = np.array([236, 156, 106], np.float32) * (1 - pal) + np.array([246, 234, 204], np.float32) * pal
    draw_disc(img, yy, xx, dx, dy, dr, rim, np.array([250, 240, 215]), look["cup_ratio"])

    # vessels: four arcades, artery + vein each
    def inside(x: float, y: float) -> float:
        return 1.0 if math.hypot(x - c, y - c) < fr - 1 else 0.0

    def ang(a: float) -> float:  # mirror headings for a left eye
        return a if side > 0 else math.pi - a

    pi = math.pi
    heads = [(-pi / 2 - 0.45, -pi + 0.3), (pi / 2 + 0.45, pi - 0.3), (-pi / 2 + 0.6, -0.35), (pi / 2 - 0.6, 0.35)]
    trunks = []
    for h, (a0, tgt) in enumerate(heads):
        for kind in (0, 1):
            a = ang(a0 + float(rng.normal(0, 0.1)) + (0.12 if kind else -0.12))
            wbase = (0.0105 * f["artery_width"] if kind == 0 else 0.0145 * f["vein_width"]) * s
            wbase *= 1.0 if h < 2 else 0.75
            trunks.append(Trunk(dx + 0.6 * dr * math.cos(a), dy + 0.6 * dr * math.sin(a), a, ang(tgt), wbase, kind))
    segs = grow_vessels(rng, trunks, step=max(1.5, s / 80), min_width=max(0.5, s / 450), inside=inside,
                        tortuosity=f["tortuosity"], steer=0.045, branch_prob=0.05, decay=0.992)
    art, vein = rasterize_vessels(segs, s, s, kinds=2)
    blend(img, np.array([196, 62, 42], np.float32), 0.75 * art)
    blend(img, np.array([124, 30, 28], np.float32), 0.82 * vein)

    # drusen around the macula (disease: more and larger)
    n_dr = int(f["drusen"])
    if n_dr:
        spots = np.zeros((s, s), np.float32)
        for _ in range(n_dr):
            r = abs(float(rng.normal(0, 0.09))) * s
            a = float(rng.uniform(0, 2 * pi))
            px, py = fx + r * math.cos(a), fy + r * math.sin(a)
            big = disease and rng.random() < 0.4
            rad = float(rng.uniform(0.01, 0.018) if big else rng.uniform(0.004, 0.009)) * s
            x0, x1 = max(0, int(px - 3 * rad)), min(s, int(px + 3 * rad) + 2)
            y0, y1 = max(0, int(py - 3 * rad)), min(s, int(py + 3 * rad) + 2)
            if x1 <= x0 or y1 <= y0:
                continue
            g = np.exp(-(((xx[y0:y1, x0:x1] - px) ** 2 + (yy[y0:y1, x0:x1] - py) ** 2) / (rad * rad)))
            np.maximum(spots[y0:y1, x0:x1], g, out=spots[y0:y1, x0:x1])
        blend(img, np.array([236, 212, 128], np.float32), 0.75 * spots)
    if disease:
        blots = np.zeros((s, s), np.float32)
        for _ in range(int(rng.integers(2, 7))):
            r = float(rng.uniform(0.08, 0.35)) * s
            a = float(rng.uniform(0, 2 * pi))
            px, py, rad = c + r * math.cos(a), c + r * math.sin(a), float(rng.uniform(0.006, 0.016)) * s
            blots = np.maximum(blots, np.exp(-(((xx - px) ** 2 + (yy - py) ** 2) / (rad * rad))))
        blend(img, np.array([96, 16, 14], np.float32), 0.8 * blots)

    # lens: yellowing, haze, blur, darkening
    blend(img, np.array([190, 150, 40], np.float32), np.full((s, s), 0.2 * t, np.float32))
    y = f["yellowing"]
    img[..., 2] *= 1.0 - y
    img[..., 1] *= 1.0 - 0.3 * y
    sig = (0.2 + 0.9 * t) * k
    img = ndimage.gaussian_filter(img, (sig, sig, 0))
    img *= f["brightness"]

    # photo variation: exposure and a little colour balance, sensor noise
    img *= float(rng.uniform(0.85, 1.15)) * rng.uniform(0.98, 1.02, 3).astype(np.float32)
    img += rng.normal(0, 1.5, img.shape).astype(np.float32)
    img *= fov_mask(yy, xx, c, c, fr)[..., None]
    return FundusAgeSample(to_uint8(img), float(age), int(disease), float(apparent_age), eye, f)


def blue_share(image: np.ndarray, threshold: float = 20.0) -> float:
    """``B / (R + G + B)`` over the field of view (pixels brighter than ``threshold``)."""
    a = np.asarray(image, np.float32)
    tot = a.sum(axis=2)
    m = tot > 3 * threshold
    return float(a[..., 2][m].sum() / max(tot[m].sum(), 1e-6))


# --------------------------------------------------------------------------------------------
# Rows of a set


def resolve(options: dict[str, Any]) -> dict[str, Any]:
    o = check_options(KIND, options, DEFAULTS)
    o["size"] = int(o["size"])
    check_range(KIND, "size", o["size"], 32, 8192)
    try:
        lo, hi = (float(v) for v in o["age_range"])
    except (TypeError, ValueError):
        raise ConfigError(f"synth fundus_age: age_range={o['age_range']!r} must be [min, max]") from None
    if not 0 <= lo < hi <= 120:
        raise ConfigError(f"synth fundus_age: age_range=[{lo}, {hi}] must satisfy 0 <= min < max <= 120")
    o["age_range"] = [lo, hi]
    for key in ("disease_rate", "val", "test"):
        o[key] = float(o[key])
        check_range(KIND, key, o[key], 0.0, 1.0)
    o["age_noise"] = float(o["age_noise"])
    check_range(KIND, "age_noise", o["age_noise"], 0.0, 30.0)
    o["image_format"] = check_format(KIND, o["image_format"])
    return o


def patient_labels(seed: int, patient: int, options: dict[str, Any]) -> dict[str, Any]:
    """Age, sex, disease and apparent age of a patient (both eyes), from the label stream."""
    rng = rng_for(seed, KIND, STREAM_LABEL, patient)
    lo, hi = options["age_range"]
    age = round(float(rng.uniform(lo, hi)), 1)
    sex = "F" if rng.random() < 0.5 else "M"
    disease = int(rng.random() < options["disease_rate"])
    noise, shift = float(rng.normal(0, options["age_noise"])), float(rng.uniform(6, 16))
    return {"age": age, "sex": sex, "disease": disease, "apparent_age": age + noise + (shift if disease else 0.0)}


def sample(seed: int, i: int, options: dict[str, Any], n: int | None = None) -> FundusAgeSample:
    """Row ``i`` of a set, as rendered."""
    lab = patient_labels(seed, i // 2, options)
    look = draw_look(rng_for(seed, KIND, STREAM_PATIENT, i // 2))
    return render(rng_for(seed, KIND, STREAM_SAMPLE, i), options["size"], lab["age"], lab["disease"],
                  "right" if i % 2 == 0 else "left", look, apparent_age=lab["apparent_age"])


def item(seed: int, i: int, options: dict[str, Any], n: int) -> Item:
    smp = sample(seed, i, options)
    lab = patient_labels(seed, i // 2, options)
    s = options["size"]
    row = {"patient_id": f"synth_fundus_age_{seed}_p{i // 2:08d}", "eye": smp.eye, "width": s, "height": s,
           "age": smp.age, "age_flag": None, "sex": lab["sex"], "disease": smp.disease}
    return Item({"image": encode(smp.image, options["image_format"], quality=92)}, row,
                {"age": smp.age, "disease": smp.disease, "sex": lab["sex"]})


def summarize(tally: Tally, options: dict[str, Any]) -> dict[str, Any]:
    lo, hi, total, count = tally.nums.get("age", [0.0, 0.0, 0.0, 0])
    return {"age": {"min": lo, "max": hi, "mean": round(total / count, 1)} if count else {},
            "disease": tally.count("disease", 1), "sex": dict(sorted(tally.counts.get("sex", {}).items()))}


GENERATOR = SynthKind(
    name=KIND, task="fundus_age", dataset="synth_fundus_age", defaults=DEFAULTS, resolve=resolve,
    classes=lambda o: [], item=item, summarize=summarize, render=render, sample=sample,
)
