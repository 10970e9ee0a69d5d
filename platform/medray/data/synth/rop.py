"""Synthetic infant fundus photos for ROP staging (manifest task ``rop``; dataset ``synth_rop``).

What the images look like: a square RGB wide-field infant fundus photo (default 256 px, PNG) with a
black surround outside a circular field of view. The retina is orange-red with a mottled choroidal
texture and darker periphery; a pale pink-yellow optic disc sits on the nasal side (right of centre
for a right eye, left for a left eye) and a tree of dark-red vessels grows out of it. The retina is
vascularised only inside a closed boundary curve around the disc (a wobbly ellipse, radius
0.24-0.34 of the image, random orientation and wobble); outside it, the avascular periphery is paler.
The ROP lesion lies ON that boundary, over an angular extent of 120-360 degrees (it tapers off at
its ends) centred on a direction where the boundary is well inside the field of view. Image
brightness, colour balance, contrast and focus vary from photo to photo.

Stages (manifest ``stage``; default 4 stages 0..3, up to 6 with ``n_stages``):

====  ========================================================================================
 0    normal: vessels thin out and fade towards the avascular periphery; no line
 1    demarcation line: a thin, flat, white line on the boundary; vessels stop at it
 2    ridge: a thicker white-pink ridge with shading (lit on one side, shadowed on the other)
 3    ridge plus extraretinal fibrovascular proliferation: fuzzy pink tufts along its
      posterior (disc) side; the ridge is a little wider still
 4    stage 3 plus a partial retinal detachment: a grey-white folded sheet behind part of it
 5    total detachment: a grey-white funnel of folds over the posterior retina, disc hidden
====  ========================================================================================

The "whiteness" on the boundary grows with the stage: along the visible part of the boundary, the
mean luminance in a band of +-0.035 image sides around the curve, minus the luminance just outside it
(avascular side), is near 0 for stage 0 and increases through stages 1, 2, 3 (see
:meth:`RopGeometry.points`). Every row is labelled; a training job picks its labelled share. Rows come
in pairs per infant (right eye, left eye) that share colouring and lighting; each eye's stage is
drawn independently (``stage_probs``, default ``p_k ~ 0.7 ** k``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from medray.data.synth._common import (
    STREAM_LABEL,
    STREAM_PATIENT,
    STREAM_SAMPLE,
    Canvas,
    Item,
    SynthKind,
    blend,
    check_format,
    check_options,
    check_range,
    encode,
    fbm,
    grid,
    rng_for,
    smoothstep,
    to_uint8,
    value_noise,
)
from medray.data.synth._fundus import Trunk, draw_disc, fov_mask, grow_vessels, rasterize_vessels
from medray.errors import ConfigError

KIND = "rop"
STAGE_NAMES = ["stage0_normal", "stage1_demarcation_line", "stage2_ridge", "stage3_extraretinal_proliferation",
               "stage4_partial_detachment", "stage5_total_detachment"]

DEFAULTS: dict[str, Any] = {
    "size": 256,
    "n_stages": 4,
    "stage_probs": None,
    "image_format": "png",
    "val": 0.15,
    "test": 0.15,
}


@dataclass
class RopGeometry:
    """Where the vascular boundary (and so the line/ridge) is, in pixels.

    The boundary is ``r(theta) = radius * (1 + ecc * cos(2 (theta - ecc_angle)) + w1 sin(3 theta + p1)
    + w2 sin(5 theta + p2))`` around ``(cx, cy)`` (the disc centre); the lesion's strength along it is
    1 within ``span / 2`` of ``theta0`` and tapers to 0 over 0.35 rad beyond.
    """

    cx: float
    cy: float
    radius: float
    ecc: float
    ecc_angle: float
    w1: float
    p1: float
    w2: float
    p2: float
    theta0: float
    span: float
    fov_cx: float
    fov_cy: float
    fov_r: float

    def r(self, theta: np.ndarray | float) -> np.ndarray:
        th = np.asarray(theta, np.float64)
        return self.radius * (1 + self.ecc * np.cos(2 * (th - self.ecc_angle)) + self.w1 * np.sin(3 * th + self.p1)
                              + self.w2 * np.sin(5 * th + self.p2))

    def strength(self, theta: np.ndarray | float) -> np.ndarray:
        d = np.abs((np.asarray(theta, np.float64) - self.theta0 + math.pi) % (2 * math.pi) - math.pi)
        return 1.0 - smoothstep(self.span / 2, self.span / 2 + 0.35, d)

    def points(self, n: int = 360, offset: float = 0.0, min_strength: float = 0.99,
               margin: float = 6.0) -> np.ndarray:
        """``(k, 3)`` array of ``(x, y, theta)`` on the boundary (moved ``offset`` pixels outwards,
        negative = towards the disc) where the lesion has full strength and the point lies at least
        ``margin`` pixels inside the field of view."""
        th = np.linspace(0, 2 * math.pi, n, endpoint=False)
        rr = self.r(th) + offset
        x, y = self.cx + rr * np.cos(th), self.cy + rr * np.sin(th)
        ok = (self.strength(th) >= min_strength) & (np.hypot(x - self.fov_cx, y - self.fov_cy) < self.fov_r - margin)
        return np.stack([x[ok], y[ok], th[ok]], axis=1)


@dataclass
class RopSample:
    """One rendered infant fundus photo: ``image`` (``HxWx3`` uint8), its ``stage``, ``eye`` and the
    boundary ``geometry``."""

    image: np.ndarray
    stage: int
    eye: str
    geometry: RopGeometry


def draw_look(rng: np.random.Generator) -> dict[str, Any]:
    """Per-infant colouring and lighting shared by both eyes."""
    return {
        "base": (rng.uniform([195, 88, 52], [228, 125, 85])).tolist(),
        "light_angle": float(rng.uniform(0, 2 * math.pi)),
        "choroid": float(rng.uniform(0.3, 1.0)),
    }


def stage_probabilities(n_stages: int, stage_probs: list[float] | None = None) -> np.ndarray:
    if stage_probs is not None:
        p = np.asarray(stage_probs, np.float64)
        if p.shape != (n_stages,) or (p < 0).any() or p.sum() <= 0:
            raise ConfigError(f"synth rop: stage_probs must be {n_stages} non-negative numbers")
    else:
        p = 0.7 ** np.arange(n_stages, dtype=np.float64)
    return p / p.sum()


def render(rng: np.random.Generator, size: int = 256, stage: int | None = None, n_stages: int = 4,
           eye: str = "right", look: dict[str, Any] | None = None) -> RopSample:
    """Render one infant fundus photo.

    Args:
        rng: the only source of randomness.
        size: side of the square image, pixels.
        stage: ROP stage 0..n_stages-1; drawn from the default frequencies when None.
        n_stages: number of stages (2..6).
        eye: "right" or "left" (the disc is on the nasal side).
        look: per-infant colouring from :func:`draw_look` (drawn from ``rng`` when None).

    Returns:
        A :class:`RopSample`.
    """
    s = int(size)
    if stage is None:
        stage = int(rng.choice(n_stages, p=stage_probabilities(n_stages)))
    look = look or draw_look(rng)
    yy, xx = grid(s, s)
    c = (s - 1) / 2.0
    fr = 0.47 * s
    side = -1.0 if eye == "left" else 1.0
    cx = c + side * float(rng.uniform(0.04, 0.14)) * s
    cy = c + float(rng.uniform(-0.08, 0.08)) * s
    geo = RopGeometry(cx, cy, float(rng.uniform(0.24, 0.34)) * s, float(rng.uniform(0, 0.15)),
                      float(rng.uniform(0, math.pi)), float(rng.uniform(0, 0.05)), float(rng.uniform(0, 6.3)),
                      float(rng.uniform(0, 0.025)), float(rng.uniform(0, 6.3)), 0.0,
                      float(rng.uniform(2 * math.pi / 3, 2 * math.pi)), c, c, fr)
    # centre the lesion on a direction where the boundary is well inside the field of view, +-20 deg
    tg = np.linspace(0, 2 * math.pi, 360, endpoint=False)
    rg = geo.r(tg)
    inner = np.hypot(geo.cx + rg * np.cos(tg) - c, geo.cy + rg * np.sin(tg) - c) < fr - 0.1 * s
    ok = inner.copy()
    for sh in range(-20, 21):
        ok &= np.roll(inner, sh)
    cand = np.flatnonzero(ok) if ok.any() else np.flatnonzero(inner)
    geo.theta0 = float(tg[int(rng.choice(cand))]) if len(cand) else float(rng.uniform(0, 2 * math.pi))

    # retina: base colour, choroidal mottling, darker periphery
    base = np.asarray(look["base"], np.float32) + rng.normal(0, 4, 3).astype(np.float32)
    img = np.empty((s, s, 3), np.float32)
    img[:] = base
    img *= (1.0 + 0.06 * fbm(rng, s, s, s / 6, 3))[..., None]
    stripes = np.exp(-((value_noise(rng, s, s, s / 14) / 0.35) ** 2)) * look["choroid"]
    img += stripes[..., None] * np.array([14, 6, 2], np.float32)
    rho = np.hypot(xx - c, yy - c) / fr
    img *= (1.0 - 0.45 * np.clip(rho, 0, 1) ** 3)[..., None]

    dxd, dyd = xx - geo.cx, yy - geo.cy
    rd = np.hypot(dxd, dyd)
    th = np.arctan2(dyd, dxd)
    rb = geo.r(th).astype(np.float32)
    d = rd - rb  # signed distance to the boundary, + = avascular side
    strength = geo.strength(th).astype(np.float32)

    # avascular periphery: paler and greyer
    if stage == 0:
        av = smoothstep(-0.03 * s, 0.1 * s, d)
    else:
        av = smoothstep(-0.006 * s, 0.006 * s, d)
    blend(img, np.array([226, 168, 146], np.float32), 0.25 * av)

    # optic disc
    disc_r = float(rng.uniform(0.042, 0.058)) * s
    draw_disc(img, yy, xx, geo.cx, geo.cy, disc_r, np.array([236, 172, 128]), np.array([246, 214, 178]),
              float(rng.uniform(0.2, 0.4)))

    # vessels from the disc, stopping at (stage >= 1) or fading before (stage 0) the boundary
    def inside(x: float, y: float) -> float:
        if math.hypot(x - c, y - c) > fr - 1:
            return 0.0
        t = math.atan2(y - geo.cy, x - geo.cx)
        r = math.hypot(x - geo.cx, y - geo.cy)
        rbt = float(geo.r(t))
        if stage == 0:
            return float(np.clip((1.02 * rbt - r) / (0.45 * rbt), 0.0, 1.0))
        return 1.0 if r < rbt - 0.012 * s else 0.0

    trunks = []
    nt = int(rng.integers(8, 13))
    a0 = float(rng.uniform(0, 2 * math.pi))
    for k in range(nt):
        a = a0 + 2 * math.pi * k / nt + float(rng.normal(0, 0.15))
        kind = k % 2
        w = (0.011 if kind else 0.008) * s * float(rng.uniform(0.85, 1.15))
        trunks.append(Trunk(geo.cx + disc_r * 0.8 * math.cos(a), geo.cy + disc_r * 0.8 * math.sin(a), a, a, w, kind))
    tort = 0.05 + (0.04 if stage >= 3 else 0.0)
    segs = grow_vessels(rng, trunks, step=max(1.5, s / 80), min_width=max(0.5, s / 420), inside=inside,
                        tortuosity=tort, steer=0.05, branch_prob=0.07, decay=0.99)
    art, vein = rasterize_vessels(segs, s, s, kinds=2)
    blend(img, np.array([178, 52, 38], np.float32), 0.7 * art)
    blend(img, np.array([128, 28, 26], np.float32), 0.8 * vein)

    # the lesion on the boundary
    light = look["light_angle"]
    if stage == 1:
        w = 0.005 * s
        g = np.exp(-((d / w) ** 2)) * strength
        blend(img, np.array([246, 240, 226], np.float32), 0.8 * g)
    elif stage >= 2:
        w = (0.014 if stage == 2 else 0.018) * s
        h = np.exp(-((d / w) ** 2)) * strength
        blend(img, np.array([242, 214, 200], np.float32), 0.85 * h)
        shade = 1.0 + 0.3 * (-2.0 * d / w) * h * np.cos(th - light)
        img *= shade[..., None]
        if stage >= 3:
            tuft = Canvas(s, s)
            ntuft = int((10 + 16 * geo.span / math.pi) * float(rng.uniform(0.8, 1.2)))
            for _ in range(ntuft):
                t = geo.theta0 + float(rng.uniform(-0.5, 0.5)) * geo.span
                rr = float(geo.r(t)) - float(rng.uniform(0.3, 1.6)) * w
                tuft.disc(geo.cx + rr * math.cos(t), geo.cy + rr * math.sin(t), float(rng.uniform(0.01, 0.024)) * s)
            cov = ndimage.gaussian_filter(tuft.coverage(), 0.003 * s + 0.4)
            cov *= 0.8 + 0.2 * value_noise(rng, s, s, 0.008 * s + 1)
            blend(img, np.array([244, 112, 128], np.float32), np.clip(cov, 0, 1) * 0.9)
        if stage == 4:
            tp = geo.theta0 + float(rng.uniform(-0.3, 0.3)) * geo.span
            width = float(rng.uniform(0.7, 1.5))
            ang = np.abs((th - tp + math.pi) % (2 * math.pi) - math.pi)
            depth = float(rng.uniform(0.1, 0.18)) * s
            det = smoothstep(width / 2 + 0.2, width / 2, ang) * smoothstep(-depth - 0.02 * s, -depth, d) * \
                smoothstep(0.01 * s, -0.01 * s, d)
            folds = 0.5 + 0.5 * np.sin(th * 40 + value_noise(rng, s, s, s / 12) * 2)
            blend(img, np.array([208, 194, 188], np.float32), det * (0.45 + 0.15 * folds))
        elif stage == 5:
            det = smoothstep(0.02 * s, -0.04 * s, d)
            folds = 0.5 + 0.5 * np.sin(th * 24 + value_noise(rng, s, s, s / 10) * 3)
            centre = np.exp(-((rd / (0.2 * s)) ** 2))
            blend(img, np.array([212, 200, 194], np.float32), det * (0.5 + 0.2 * folds + 0.2 * centre))

    # photo variation: gain, colour balance, gamma, focus, sensor noise
    img *= float(rng.uniform(0.72, 1.18)) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    gamma = float(rng.uniform(0.85, 1.15))
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** gamma
    if rng.random() < 0.3:
        sig = float(rng.uniform(0.3, 0.9)) * s / 256
        img = ndimage.gaussian_filter(img, (sig, sig, 0))
    img += rng.normal(0, 2.0, img.shape).astype(np.float32)
    img *= fov_mask(yy, xx, c, c, fr)[..., None]
    return RopSample(to_uint8(img), int(stage), eye, geo)


# --------------------------------------------------------------------------------------------
# Rows of a set


def resolve(options: dict[str, Any]) -> dict[str, Any]:
    o = check_options(KIND, options, DEFAULTS)
    o["size"] = int(o["size"])
    check_range(KIND, "size", o["size"], 32, 8192)
    o["n_stages"] = int(o["n_stages"])
    check_range(KIND, "n_stages", o["n_stages"], 2, 6)
    for k in ("val", "test"):
        o[k] = float(o[k])
        check_range(KIND, k, o[k], 0.0, 1.0)
    o["image_format"] = check_format(KIND, o["image_format"])
    o["stage_probs"] = (stage_probabilities(o["n_stages"], o["stage_probs"]).round(6).tolist()
                        if o["stage_probs"] is not None else None)
    return o


def stage_of(seed: int, i: int, options: dict[str, Any]) -> int:
    rng = rng_for(seed, KIND, STREAM_LABEL, i)
    return int(rng.choice(options["n_stages"], p=stage_probabilities(options["n_stages"], options["stage_probs"])))


def sample(seed: int, i: int, options: dict[str, Any], n: int | None = None) -> RopSample:
    """Row ``i`` of a set, as rendered."""
    eye = "right" if i % 2 == 0 else "left"
    look = draw_look(rng_for(seed, KIND, STREAM_PATIENT, i // 2))
    return render(rng_for(seed, KIND, STREAM_SAMPLE, i), options["size"], stage_of(seed, i, options),
                  options["n_stages"], eye, look)


def item(seed: int, i: int, options: dict[str, Any], n: int) -> Item:
    smp = sample(seed, i, options)
    s = options["size"]
    row = {"patient_id": f"synth_rop_{seed}_p{i // 2:08d}", "eye": smp.eye, "width": s, "height": s,
           "stage": smp.stage}
    return Item({"image": encode(smp.image, options["image_format"])}, row, {"class": smp.stage})


GENERATOR = SynthKind(
    name=KIND, task="rop", dataset="synth_rop", defaults=DEFAULTS, resolve=resolve,
    classes=lambda o: STAGE_NAMES[: o["n_stages"]], item=item, summarize=lambda st, o: {}, render=render,
    sample=sample,
)
