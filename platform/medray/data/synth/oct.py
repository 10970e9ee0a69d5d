"""Synthetic OCT B-scans with a 14-structure class mask (manifest task ``oct_seg``; dataset
``synth_oct``).

What the images look like: a single-channel 8-bit PNG B-scan, ``height`` rows deep (default 496,
deliberately not a power of two) and ``width`` columns wide (option ``widths``, default
``[512, 768, 1024]`` cycled per row), covering ``span_mm`` (default 6 mm) laterally and
``height * axial_um`` in depth (``axial_um`` default ``3.9 * 496 / height``, so the depth range is
always 1.93 mm). Dark vitreous on top; below it the retina as horizontal bands of layer-specific
reflectivity (bright RNFL, grey GCL, bright IPL, dark INL, bright OPL, dark ONL, thin bright ELM, dark
myoid zone, very bright ellipsoid zone and RPE), then the choroid (mid-grey with dark vessel lumens)
and the sclera fading with depth; multiplicative speckle, a little axial/lateral blur, and vertical
shadows under retinal vessels. Layer boundaries are smooth random curves (tilt, curvature and
low-frequency undulation); layer thicknesses are typical macular values in micrometres.

Mask (single-channel 8-bit PNG, same size): class ids of METHODS.md section 2, every pixel labelled:

==  ==================  ==  ==================
 0  background/unused    8  ELM
 1  vitreous             9  myoid zone
 2  RNFL                10  ellipsoid zone
 3  GCL                 11  RPE
 4  IPL                 12  choroid
 5  INL                 13  sclera
 6  OPL                 14  optic disc
 7  ONL
==  ==================  ==  ==================

Outside the optic disc, ids never decrease down a column (the boundaries are ordered by
construction; GCL/IPL/INL may thin to nothing in the foveal pit). In the disc columns, the vitreous
dips into the cup and the disc (14) runs from the cup surface to below the choroid, then sclera (13).

Volumes: rows come in eyes of ``scans_per_eye`` consecutive B-scans (default 8) spaced
``bscan_spacing_mm`` apart (default 0.24 mm); all scans of an eye share its anatomy (a smooth field
over the retina), so neighbouring B-scans are near copies, and two eyes (right, left) make a
patient. Eyes cycle through three volume types (offset by the seed): "macula" (foveal pit near the
centre, no disc), "wide" (pit on the temporal side and disc on the nasal side) and "disc" (disc
centred, no pit). The scan width cycles per row, so one eye is seen at several lateral samplings
(``lateral_um = span_mm * 1000 / width``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from medray.data.synth._common import (
    STREAM_EYE,
    STREAM_SAMPLE,
    Item,
    SynthKind,
    Tally,
    check_options,
    check_range,
    encode,
    rng_for,
    smoothstep,
)
from medray.errors import ConfigError

KIND = "oct"
CLASSES = ["background", "vitreous", "rnfl", "gcl", "ipl", "inl", "opl", "onl", "elm", "myoid_zone",
           "ellipsoid_zone", "rpe", "choroid", "sclera", "optic_disc"]
VITREOUS, RNFL, GCL, IPL, INL, OPL, ONL, ELM, MYOID, ELLIPSOID, RPE, CHOROID, SCLERA, DISC = range(1, 15)
VOLUME_TYPES = ("macula", "wide", "disc")
DEPTH_UM = 3.9 * 496  # default depth range of a scan, micrometres

# mean reflectivity per class id (0..14), before speckle and display compression
REFLECTIVITY = np.array([0.0, 0.03, 0.75, 0.40, 0.56, 0.20, 0.50, 0.14, 0.52, 0.20, 0.86, 0.92, 0.50,
                         0.30, 0.36], np.float32)

DEFAULTS: dict[str, Any] = {
    "size": None,  # a synth(size=...) sets the height of OCT scans
    "widths": [512, 768, 1024],
    "height": 496,
    "axial_um": None,
    "span_mm": 6.0,
    "scans_per_eye": 8,
    "bscan_spacing_mm": 0.24,
    "val": 0.15,
    "test": 0.15,
}

# nominal layer thicknesses (micrometres), RNFL .. RPE, away from fovea and disc
_THICK = {RNFL: 28.0, GCL: 40.0, IPL: 35.0, INL: 33.0, OPL: 26.0, ONL: 72.0, ELM: 8.0, MYOID: 18.0,
          ELLIPSOID: 16.0, RPE: 22.0}


@dataclass
class Field2D:
    """A smooth random field over the retina, ``sum_m a_m sin(kx_m u + ky_m v + p_m)`` (u, v in mm)."""

    coef: np.ndarray  # (M, 4): amplitude, kx, ky, phase

    @staticmethod
    def draw(rng: np.random.Generator, m: int = 3, wavelength: tuple[float, float] = (2.0, 8.0)) -> "Field2D":
        lam = rng.uniform(*wavelength, m)
        ang = rng.uniform(0, 2 * math.pi, m)
        k = 2 * math.pi / lam
        amp = rng.normal(0, 1, m) / math.sqrt(m)
        return Field2D(np.stack([amp, k * np.cos(ang), k * np.sin(ang), rng.uniform(0, 2 * math.pi, m)], 1))

    def __call__(self, u: np.ndarray, v: float) -> np.ndarray:
        c = self.coef
        return (c[:, 0:1] * np.sin(c[:, 1:2] * u[None, :] + c[:, 2:3] * v + c[:, 3:4])).sum(0)


@dataclass
class EyeAnatomy:
    """What all B-scans of one eye share (positions in mm on the scan grid; depths in micrometres)."""

    volume: str
    eye: str
    bm_depth: float  # Bruch's membrane (bottom of the RPE) depth at the centre, as a fraction of depth
    tilt: float  # um per mm
    curvature: float  # um per mm^2
    fovea: tuple[float, float] | None
    fovea_sigma: float
    pit: float
    disc: tuple[float, float] | None
    disc_radius: float
    cup_depth: float
    cup_ratio: float
    choroid: float
    shape: Field2D
    fields: dict[int, Field2D]
    vessels: list[tuple[float, float, float, float]]  # u0, slope (du/dv), width mm, darkness


def draw_eye(rng: np.random.Generator, volume: str = "macula", eye: str = "right") -> EyeAnatomy:
    """The anatomy of one eye for a volume type ("macula", "wide" or "disc")."""
    if volume not in VOLUME_TYPES:
        raise ConfigError(f"synth oct: volume={volume!r} must be one of {VOLUME_TYPES}")
    side = -1.0 if eye == "left" else 1.0
    fovea: tuple[float, float] | None = None
    disc: tuple[float, float] | None = None
    if volume == "macula":
        fovea = (float(rng.normal(0, 0.15)), float(rng.normal(0, 0.1)))
    elif volume == "wide":
        fovea = (-side * 1.9 + float(rng.normal(0, 0.1)), float(rng.normal(0, 0.1)))
        disc = (side * 2.1 + float(rng.normal(0, 0.1)), float(rng.normal(0, 0.1)))
    else:
        disc = (float(rng.normal(0, 0.12)), float(rng.normal(0, 0.1)))
    vessels = []
    for _ in range(int(rng.integers(4, 9))):
        vessels.append((float(rng.uniform(-3.2, 3.2)), float(rng.normal(0, 0.6)), float(rng.uniform(0.04, 0.09)),
                        float(rng.uniform(0.35, 0.65))))
    return EyeAnatomy(
        volume=volume, eye=eye, bm_depth=float(rng.uniform(0.52, 0.6)), tilt=float(rng.uniform(-35, 35)),
        curvature=float(rng.uniform(-8, 22)), fovea=fovea, fovea_sigma=float(rng.uniform(0.35, 0.5)),
        pit=float(rng.uniform(0.85, 1.0)), disc=disc, disc_radius=float(rng.uniform(0.7, 0.9)),
        cup_depth=float(rng.uniform(150, 420)), cup_ratio=float(rng.uniform(0.45, 0.75)),
        choroid=float(rng.uniform(160, 320)), shape=Field2D.draw(rng),
        fields={k: Field2D.draw(rng) for k in list(_THICK) + [CHOROID]}, vessels=vessels,
    )


@dataclass
class OctSample:
    """One rendered B-scan.

    Attributes:
        image: ``HxW`` uint8.
        mask: ``HxW`` uint8 class ids (see :data:`CLASSES`).
        boundaries: ``(12, W)`` float32 depths (pixels) of the 12 layer boundaries ILM .. choroid/sclera.
        disc_columns: ``W`` bool, the columns inside the optic disc.
        axial_um: micrometres per pixel along depth.
        lateral_um: micrometres per pixel along width.
        has_fovea: the foveal pit is visible (pit depth > 0.5).
        eye: "right" or "left".
    """

    image: np.ndarray
    mask: np.ndarray
    boundaries: np.ndarray
    disc_columns: np.ndarray
    axial_um: float
    lateral_um: float
    has_fovea: bool
    eye: str


def _aniso_noise(rng: np.random.Generator, h: int, w: int, cell_y: float, cell_x: float) -> np.ndarray:
    gh, gw = max(2, int(h / cell_y) + 2), max(2, int(w / cell_x) + 2)
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    a = np.asarray(Image.fromarray(g).resize((w, h), Image.BILINEAR), np.float32)
    return (a - a.mean()) / max(float(a.std()), 1e-6)


def render(rng: np.random.Generator, width: int = 512, height: int = 496, axial_um: float | None = None,
           span_mm: float = 6.0, anatomy: EyeAnatomy | None = None, v: float = 0.0) -> OctSample:
    """Render one B-scan and its class mask.

    Args:
        rng: the only source of randomness (anatomy is drawn from it too when not given).
        width: columns.
        height: rows.
        axial_um: micrometres per row (default ``3.9 * 496 / height``).
        span_mm: lateral extent of the scan.
        anatomy: the eye's shared anatomy (from :func:`draw_eye`); drawn when None.
        v: the scan's position across the volume, mm (neighbouring scans differ by a little ``v``).

    Returns:
        An :class:`OctSample`.
    """
    w, h = int(width), int(height)
    axial = float(axial_um) if axial_um else DEPTH_UM / h
    if anatomy is None:
        anatomy = draw_eye(rng, VOLUME_TYPES[int(rng.integers(0, 3))], "right" if rng.random() < 0.5 else "left")
    a = anatomy
    depth_um = h * axial
    u = ((np.arange(w, dtype=np.float64) + 0.5) / w - 0.5) * span_mm

    # fovea and disc geometry on this scan line
    if a.fovea is not None:
        r2 = (u - a.fovea[0]) ** 2 + (v - a.fovea[1]) ** 2
        fov = a.pit * np.exp(-r2 / (2 * a.fovea_sigma**2))
        ring = np.exp(-((np.sqrt(r2) - 1.1) ** 2) / (2 * 0.45**2))
    else:
        fov = np.zeros_like(u)
        ring = np.zeros_like(u)
    if a.disc is not None:
        dd = np.sqrt((u - a.disc[0]) ** 2 + (v - a.disc[1]) ** 2)
        half = a.disc_radius**2 - (v - a.disc[1]) ** 2
        hc = math.sqrt(half) if half > 0 else 0.0
        in_disc = np.abs(u - a.disc[0]) < hc
        near = np.exp(-np.maximum(dd - a.disc_radius, 0) / 0.5)
        taper = 0.25 + 0.75 * smoothstep(a.disc_radius, a.disc_radius + 0.4, dd)
    else:
        dd = np.full_like(u, 99.0)
        hc = 0.0
        in_disc = np.zeros(w, bool)
        near = np.zeros_like(u)
        taper = np.ones_like(u)

    jit = float(rng.normal(0, 12))  # axial motion between scans (um)
    f = {k: 1.0 + 0.1 * fld(u, v) for k, fld in a.fields.items()}
    th = {
        RNFL: _THICK[RNFL] * f[RNFL] * (1 - 0.9 * fov) + 110.0 * near,
        GCL: (_THICK[GCL] + 18 * ring) * f[GCL] * (1 - 0.97 * fov) * taper,
        IPL: (_THICK[IPL] + 8 * ring) * f[IPL] * (1 - 0.95 * fov) * taper,
        INL: (_THICK[INL] + 6 * ring) * f[INL] * (1 - 0.8 * fov) * taper,
        OPL: _THICK[OPL] * f[OPL] * (1 - 0.4 * fov) * taper,
        ONL: _THICK[ONL] * f[ONL] * (1 + 0.5 * fov) * taper,
        ELM: _THICK[ELM] * f[ELM] * taper,
        MYOID: _THICK[MYOID] * f[MYOID] * (1 + 0.3 * fov) * taper,
        ELLIPSOID: _THICK[ELLIPSOID] * f[ELLIPSOID] * taper,
        RPE: _THICK[RPE] * f[RPE] * taper,
    }
    px = {k: np.maximum(t / axial, 0.0) for k, t in th.items()}
    for k in (RNFL, OPL, ONL, ELM, MYOID, ELLIPSOID, RPE):  # always at least one pixel thick
        px[k] = np.maximum(px[k], 1.0)
    chor = np.maximum(a.choroid * f[CHOROID] * (1 + 0.15 * fov) / axial, 3.0)

    bm = (a.bm_depth * DEPTH_UM + a.tilt * u + a.curvature * u**2 + 14.0 * a.shape(u, v) + jit) / axial
    bm = np.clip(bm, 0.3 * h, 0.8 * h)
    bounds = np.empty((12, w), np.float64)
    bounds[10] = bm  # RPE | choroid
    z = bm.copy()
    for idx, k in zip(range(9, -1, -1), (RPE, ELLIPSOID, MYOID, ELM, ONL, OPL, INL, IPL, GCL, RNFL)):
        z = z - px[k]
        bounds[idx] = z  # boundary above class k
    bounds[11] = np.minimum(bm + chor, 0.95 * h)  # some sclera stays in view (bm <= 0.8 h)
    bounds[0] = np.maximum(bounds[0], 2.0)
    bounds = np.maximum.accumulate(bounds, axis=0)

    rows = np.arange(h, dtype=np.float32)[:, None] + 0.5
    b32 = bounds.astype(np.float32)
    mask = np.ones((h, w), np.uint8)
    for k in range(12):
        mask += rows >= b32[k][None, :]
    if in_disc.any():
        cup_w = max(a.cup_ratio * hc, 1e-3)
        bowl = np.cos(np.pi / 2 * np.minimum(np.abs(u - a.disc[0]) / cup_w, 1.0)) ** 2  # type: ignore[index]
        cup = (bounds[0] + a.cup_depth * bowl / axial).astype(np.float32)
        bottom = (bounds[11] + 180.0 / axial).astype(np.float32)
        cols = np.flatnonzero(in_disc)
        sub = np.full((h, len(cols)), DISC, np.uint8)
        sub[rows < cup[cols][None, :]] = VITREOUS
        sub[rows >= bottom[cols][None, :]] = SCLERA
        mask[:, cols] = sub

    # reflectivity, texture, vessels, shadows
    img = REFLECTIVITY[mask]
    img *= 1.0 + 0.18 * _aniso_noise(rng, h, w, 3.0, 14.0)
    chn = _aniso_noise(rng, h, w, 7.0, 10.0)
    sel = mask == CHOROID
    img[sel] *= 0.45 + 0.55 * smoothstep(-0.4, 0.5, chn[sel])
    if in_disc.any():
        sel = mask == DISC
        img[sel] *= 0.75 + 0.25 * _aniso_noise(rng, h, w, 12.0, 3.0)[sel]
    sel = mask == SCLERA
    img[sel] *= np.exp(-np.maximum(rows - b32[11][None, :], 0.0) / (0.12 * h))[sel]
    shadow = np.ones(w, np.float64)
    for (u0, slope, vw, dark) in a.vessels:
        uc = u0 + slope * v
        shadow *= 1.0 - dark * np.exp(-(((u - uc) / vw) ** 2))
        vessel_row = bounds[1] + 0.5 * (bounds[2] - bounds[1])  # in the GCL, just under the RNFL
        k = np.argmin(np.abs(u - uc))
        if abs(u[k] - uc) < vw and not in_disc[k]:
            rad = max(1.5, vw * 1000 / axial / 3)  # vessel cross-section (pixels, axial)
            radx = rad * axial / (span_mm * 1000 / w)  # the same in columns
            y0, y1 = max(0, int(vessel_row[k] - 3 * rad)), min(h, int(vessel_row[k] + 3 * rad) + 2)
            x0, x1 = max(0, int(k - 3 * radx)), min(w, int(k + 3 * radx) + 2)
            yy = rows[y0:y1, 0] - vessel_row[k]
            xx = (np.arange(x0, x1) - k) / radx * rad
            img[y0:y1, x0:x1] += 0.5 * np.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (rad * rad)).astype(np.float32)
    img = np.where(rows > b32[1][None, :] + 2, img * shadow.astype(np.float32)[None, :], img)
    img = ndimage.gaussian_filter(img, (0.7, 0.8))
    k_speckle = float(rng.uniform(3.0, 6.0))
    img *= rng.standard_gamma(k_speckle, img.shape, dtype=np.float32) / k_speckle
    img += 0.015 * np.abs(rng.standard_normal(img.shape, dtype=np.float32))
    gain = float(rng.uniform(0.85, 1.1))
    out = 255.0 * gain * np.clip(img, 0, None) ** 0.75 + float(rng.uniform(-4, 6))
    image = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return OctSample(image, mask, bounds.astype(np.float32), in_disc, axial, span_mm * 1000.0 / w,
                     bool(fov.max() > 0.5), a.eye)


# --------------------------------------------------------------------------------------------
# Rows of a set


def resolve(options: dict[str, Any]) -> dict[str, Any]:
    o = check_options(KIND, options, DEFAULTS)
    size = o.pop("size", None)
    if size:
        o["height"] = int(size)
    o["height"] = int(o["height"])
    check_range(KIND, "height", o["height"], 64, 8192)
    try:
        o["widths"] = [int(x) for x in (o["widths"] if isinstance(o["widths"], (list, tuple)) else [o["widths"]])]
    except (TypeError, ValueError):
        raise ConfigError(f"synth oct: widths={o['widths']!r} must be a list of integers") from None
    if not o["widths"] or any(not 32 <= x <= 8192 for x in o["widths"]):
        raise ConfigError(f"synth oct: widths={o['widths']} must be non-empty, each in [32, 8192]")
    o["axial_um"] = float(o["axial_um"]) if o["axial_um"] else round(DEPTH_UM / o["height"], 6)
    check_range(KIND, "axial_um", o["axial_um"], 0.1, 100.0)
    o["span_mm"] = float(o["span_mm"])
    check_range(KIND, "span_mm", o["span_mm"], 1.0, 20.0)
    o["scans_per_eye"] = int(o["scans_per_eye"])
    check_range(KIND, "scans_per_eye", o["scans_per_eye"], 1, 1024)
    o["bscan_spacing_mm"] = float(o["bscan_spacing_mm"])
    check_range(KIND, "bscan_spacing_mm", o["bscan_spacing_mm"], 0.0, 2.0)
    for k in ("val", "test"):
        o[k] = float(o[k])
        check_range(KIND, k, o[k], 0.0, 1.0)
    return o


def eye_of(seed: int, i: int, options: dict[str, Any]) -> tuple[int, int, EyeAnatomy]:
    """``(eye index, scan index within the eye, anatomy)`` of row ``i``."""
    m = options["scans_per_eye"]
    e, j = divmod(i, m)
    volume = VOLUME_TYPES[(e + seed) % len(VOLUME_TYPES)]
    return e, j, draw_eye(rng_for(seed, KIND, STREAM_EYE, e), volume, "right" if e % 2 == 0 else "left")


def sample(seed: int, i: int, options: dict[str, Any], n: int | None = None) -> OctSample:
    """Row ``i`` of a set, as rendered."""
    e, j, anatomy = eye_of(seed, i, options)
    m = options["scans_per_eye"]
    v = (j - (m - 1) / 2.0) * options["bscan_spacing_mm"]
    width = options["widths"][i % len(options["widths"])]
    return render(rng_for(seed, KIND, STREAM_SAMPLE, i), width, options["height"], options["axial_um"],
                  options["span_mm"], anatomy, v)


def item(seed: int, i: int, options: dict[str, Any], n: int) -> Item:
    smp = sample(seed, i, options)
    e = i // options["scans_per_eye"]
    h, w = smp.image.shape
    row = {"patient_id": f"synth_oct_{seed}_p{e // 2:08d}", "eye": smp.eye, "width": w, "height": h,
           "axial_um": smp.axial_um, "lateral_um": smp.lateral_um, "scan_mode": "line"}
    present = np.flatnonzero(np.bincount(smp.mask.ravel(), minlength=len(CLASSES))).tolist()
    return Item({"image": encode(smp.image, "png"), "mask": encode(smp.mask, "png")}, row,
                {"present": present, "fovea": smp.has_fovea, "disc": bool(smp.disc_columns.any())})


def summarize(tally: Tally, options: dict[str, Any]) -> dict[str, Any]:
    present = tally.lists.get("present", {})
    return {"images_with_structure": {CLASSES[c]: present.get(str(c), 0) for c in range(1, len(CLASSES))},
            "with_fovea": tally.count("fovea", True), "with_disc": tally.count("disc", True)}


GENERATOR = SynthKind(
    name=KIND, task="oct_seg", dataset="synth_oct", defaults=DEFAULTS, resolve=resolve,
    classes=lambda o: list(CLASSES), item=item, summarize=summarize, render=render, sample=sample,
)
