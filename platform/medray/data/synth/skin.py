"""Synthetic skin photos with lesions (manifest task ``skin``; dataset ``synth_skin``).

What the images look like: a square RGB "phone photo" (default 256 px, JPEG) of skin. The skin tone
is drawn uniformly over a Fitzpatrick-like range (I, very light, to VI, very dark) with blotchy
redness, fine pore texture, an illumination gradient in a random direction and a vignette. Some
photos show a strip of background (cloth, sheet) along one edge and some have dark hair strokes
drawn over everything. Each photo holds 1-3 lesions (60/28/12 %) of ONE class (the image label):
irregular ellipses whose radius follows a random sum of harmonics, with colour variegation, a soft
or sharp border and class-specific structures. Lesion colours scale with the skin tone, so a lesion
is darker than its surroundings on every skin type.

Classes (labels are indices into this list; default K = 5 uses the first five; frequencies are
long-tailed, ``p_k ~ (k + 1) ** -imbalance``, default imbalance 1.5: 57/20/11/7/5 %):

====  ==============  =====================================================================
 0    nevus           small, round, regular brown; regular pigment network; darker centre
 1    melanoma        large, irregular, elongated; dark brown/black with variegation, an
                      atypical (irregular, thick) network and a blue-grey veil; soft border
 2    keratosis       medium, oval, light tan with dark fissures and bright milia; sharp border
 3    bcc             small-medium pink, pearly raised rim, red telangiectasia lines
 4    actinic         pink-red, ill-defined border, white scale flecks
 5    vascular        small red-purple with dark red lacunae
 6    dermatofibroma  small, fuzzy reddish-brown with a central white scar
 7+   class_k         procedural appearance from a fixed per-class seed
====  ==============  =====================================================================

Class appearance never depends on the seed (only on the class), so a model trained on one seed's set
can be tested on another's.

Parts of a set (distinguished by columns, in row order): a "box" part (``boxes`` given, one box per
lesion, ``label_quality`` "clean"), a "clean" part (``boxes`` null, "clean") and a "full" part
(``boxes`` null, "noisy": each label is replaced by a uniformly drawn OTHER class with probability
``noise``, default 0.3). Fractions: ``box_frac`` (default 0.1) and ``clean_frac`` (0.3); the rest is
"full". Boxes are ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive, the tight bounding box of the
lesion's pixels (those where the lesion covers at least half the pixel).

The noise is reproducible from the seed: the label and its flip are drawn from the row's own label
stream (``rng_for(seed, "skin", STREAM_LABEL, i)``), before and independently of any rendering.
:func:`true_labels` recomputes the true label of every row of a generated manifest (reading the seed
and options from the manifest's metadata) without rendering a pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medray.data.synth._common import (
    STREAM_LABEL,
    STREAM_SAMPLE,
    Canvas,
    Item,
    SynthKind,
    Tally,
    bezier,
    blend,
    check_format,
    check_options,
    check_range,
    encode,
    grid,
    rng_for,
    smoothstep,
    to_uint8,
    value_noise,
)
from medray.errors import ConfigError

KIND = "skin"


@dataclass(frozen=True)
class LesionClass:
    """How one class looks. Colours are RGB on light skin; sizes are fractions of the image side."""

    name: str
    color: tuple[float, float, float]
    color2: tuple[float, float, float]
    radius: tuple[float, float]
    aspect: tuple[float, float]
    irregularity: float  # amplitude of the border harmonics
    edge: float  # border softness as a fraction of the radius (>= 1 px)
    network: float  # pigment network darkening 0..1
    network_irregular: float  # 0 regular thin mesh .. 1 atypical thick/broken mesh
    variegation: float  # 0 uniform .. 1 strongly two-coloured
    centre: float  # > 0 darker centre, < 0 lighter centre
    feature: str = "none"  # veil | cracks | rim | scale | lacunae | scar | none


CLASS_TABLE: list[LesionClass] = [
    LesionClass("nevus", (128, 82, 56), (100, 62, 42), (0.050, 0.085), (1.0, 1.25), 0.035, 0.10,
                0.35, 0.0, 0.25, 0.25),
    LesionClass("melanoma", (72, 46, 40), (38, 28, 34), (0.10, 0.16), (1.1, 1.7), 0.22, 0.22,
                0.55, 1.0, 0.9, 0.1, "veil"),
    LesionClass("keratosis", (165, 124, 80), (128, 95, 62), (0.075, 0.125), (1.15, 1.6), 0.07, 0.05,
                0.0, 0.0, 0.45, 0.0, "cracks"),
    LesionClass("bcc", (206, 142, 138), (184, 112, 118), (0.055, 0.10), (1.0, 1.35), 0.12, 0.12,
                0.0, 0.0, 0.3, -0.1, "rim"),
    LesionClass("actinic", (202, 112, 102), (215, 150, 140), (0.06, 0.11), (1.0, 1.5), 0.15, 0.32,
                0.0, 0.0, 0.5, 0.0, "scale"),
    LesionClass("vascular", (160, 38, 62), (112, 22, 52), (0.04, 0.075), (1.0, 1.3), 0.05, 0.08,
                0.0, 0.0, 0.4, 0.15, "lacunae"),
    LesionClass("dermatofibroma", (152, 100, 76), (176, 130, 106), (0.04, 0.07), (1.0, 1.2), 0.04, 0.35,
                0.2, 0.0, 0.2, -0.2, "scar"),
]

# Fitzpatrick-like skin tones I..VI (RGB), interpolated by a tone in [0, 1].
SKIN_TONES = np.array([(241, 214, 196), (228, 186, 160), (200, 150, 118), (160, 110, 80),
                       (116, 79, 56), (76, 53, 40)], np.float32)
_REF_LUMA = 0.299 * 241 + 0.587 * 214 + 0.114 * 196
BACKGROUNDS = np.array([(42, 42, 48), (205, 205, 210), (62, 92, 140), (92, 122, 84)], np.float32)

DEFAULTS: dict[str, Any] = {
    "size": 256,
    "n_classes": 5,
    "imbalance": 1.5,
    "class_probs": None,
    "box_frac": 0.1,
    "clean_frac": 0.3,
    "noise": 0.3,
    "max_lesions": 3,
    "hair": 0.5,
    "image_format": "jpeg",
    "images_per_patient": 1,
    "val": 0.15,
    "test": 0.15,
}


def lesion_class(k: int) -> LesionClass:
    """The appearance of class ``k`` (table for k < 7, procedural and seed-independent above)."""
    if k < len(CLASS_TABLE):
        return CLASS_TABLE[k]
    r = np.random.default_rng([0x5C1, k])
    c1 = tuple(float(v) for v in r.uniform([60, 30, 30], [200, 140, 130]))
    c2 = tuple(float(v) * 0.75 for v in c1)
    lo = float(r.uniform(0.04, 0.1))
    return LesionClass(f"class_{k}", c1, c2, (lo, lo + float(r.uniform(0.02, 0.06))),
                       (1.0, float(r.uniform(1.1, 1.7))), float(r.uniform(0.02, 0.2)),
                       float(r.uniform(0.05, 0.35)), float(r.choice([0.0, 0.4])), float(r.uniform(0, 1)),
                       float(r.uniform(0.1, 0.8)), float(r.uniform(-0.2, 0.3)),
                       str(r.choice(["none", "veil", "cracks", "rim", "scale", "lacunae", "scar"])))


def class_names(n_classes: int) -> list[str]:
    return [lesion_class(k).name for k in range(n_classes)]


def class_probabilities(n_classes: int, imbalance: float = 1.5, class_probs: list[float] | None = None) -> np.ndarray:
    """Long-tailed class frequencies ``p_k ~ (k + 1) ** -imbalance`` (or the given list, normalised)."""
    if class_probs is not None:
        p = np.asarray(class_probs, np.float64)
        if p.shape != (n_classes,) or (p < 0).any() or p.sum() <= 0:
            raise ConfigError(f"synth skin: class_probs must be {n_classes} non-negative numbers")
    else:
        p = (np.arange(n_classes) + 1.0) ** -float(imbalance)
    return p / p.sum()


# --------------------------------------------------------------------------------------------
# One sample


@dataclass
class Lesion:
    cx: float
    cy: float
    radius: float  # mean radius, pixels
    rmax: float  # largest border radius, pixels
    angles: np.ndarray  # border radius lookup: angles (0..2pi)
    radii: np.ndarray  # and radii (pixels)


@dataclass
class SkinSample:
    """One rendered skin photo.

    Attributes:
        image: ``HxWx3`` uint8.
        label: the true class of every lesion in the photo.
        boxes: one ``(x0, y0, x1, y1, label)`` per lesion, pixels, x1/y1 exclusive, tight around
            the lesion's pixels in ``lesion_mask``.
        lesion_mask: ``HxW`` uint8, 0 = not a lesion, k = lesion k (1-based, in ``boxes`` order).
        skin_tone: 0 (Fitzpatrick I) .. 1 (VI).
        hair: number of hair strokes.
        background: whether a strip of non-skin background is shown.
    """

    image: np.ndarray
    label: int
    boxes: list[tuple[float, float, float, float, int]]
    lesion_mask: np.ndarray
    skin_tone: float
    hair: int = 0
    background: bool = False
    lesions: list[Lesion] = field(default_factory=list, repr=False)


def _lesion_shape(rng: np.random.Generator, cls: LesionClass, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Border radius as a function of angle: a rotated ellipse times a sum of random harmonics."""
    th = np.linspace(0.0, 2 * math.pi, 361, dtype=np.float64)
    aspect = float(rng.uniform(*cls.aspect))
    rot = float(rng.uniform(0, math.pi))
    a, b = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
    ell = a * b / np.sqrt((b * np.cos(th - rot)) ** 2 + (a * np.sin(th - rot)) ** 2)
    mod = np.ones_like(th)
    for k in range(2, 9):
        amp = cls.irregularity * float(rng.standard_normal()) / k**0.7
        mod += amp * np.cos(k * th + float(rng.uniform(0, 2 * math.pi)))
    r = ell * np.clip(mod, 0.55, 1.5)
    r[-1] = r[0]
    return th, r


def _skin(rng: np.random.Generator, s: int, tone: float) -> tuple[np.ndarray, np.ndarray]:
    """Skin background (float ``HxWx3``) and its base colour."""
    pos = tone * (len(SKIN_TONES) - 1)
    i = min(int(pos), len(SKIN_TONES) - 2)
    base = SKIN_TONES[i] * (1 - (pos - i)) + SKIN_TONES[i + 1] * (pos - i)
    base = base + rng.normal(0, 5, 3).astype(np.float32)
    img = np.empty((s, s, 3), np.float32)
    img[:] = base
    red = smoothstep(-0.3, 2.0, value_noise(rng, s, s, s / 4))
    img += red[..., None] * np.array([14.0, -4.0, -3.0], np.float32) * float(rng.uniform(0.3, 1.2))
    pores = value_noise(rng, s, s, 1.6)
    img *= (1.0 + 0.025 * pores)[..., None]
    return img, base


def _place(rng: np.random.Generator, s: int, radii: list[float]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for k, r in enumerate(radii):
        m = r + 3
        for _ in range(40):
            c = (float(rng.uniform(m, s - m)), float(rng.uniform(m, s - m)))
            if all(math.hypot(c[0] - o[0], c[1] - o[1]) > r + radii[j] + 4 for j, o in enumerate(out)):
                out.append(c)
                break
        if len(out) <= k and k == 0:  # the first lesion always fits (radius < s / 2)
            out.append((s / 2.0, s / 2.0))
        if len(out) <= k:
            break
    return out


def _paint_lesion(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, idx: int, les: Lesion,
                  cls: LesionClass, tone_factor: float) -> None:
    s = img.shape[0]
    edge = max(1.0, cls.edge * les.radius)
    half = les.rmax + edge + 2
    x0, x1 = max(0, int(les.cx - half)), min(s, int(math.ceil(les.cx + half)) + 1)
    y0, y1 = max(0, int(les.cy - half)), min(s, int(math.ceil(les.cy + half)) + 1)
    h, w = y1 - y0, x1 - x0
    yy, xx = grid(h, w)
    dx, dy = xx + x0 - les.cx, yy + y0 - les.cy
    rho = np.hypot(dx, dy)
    th = np.mod(np.arctan2(dy, dx), 2 * math.pi)
    rb = np.interp(th, les.angles, les.radii).astype(np.float32)
    alpha = np.clip((rb - rho) / edge + 0.5, 0.0, 1.0)
    inside = rho <= rb
    mask[y0:y1, x0:x1][inside] = idx
    radial = np.clip(rho / np.maximum(rb, 1e-3), 0.0, 1.0)

    c1 = np.asarray(cls.color, np.float32) * tone_factor
    c2 = np.asarray(cls.color2, np.float32) * tone_factor
    v = value_noise(rng, h, w, max(3.0, les.radius / 2))
    mix = np.clip(0.5 + 0.5 * v * cls.variegation, 0, 1)[..., None]
    col = c1 * (1 - mix) + c2 * mix
    col *= (1.0 - cls.centre * (1.0 - radial) * 0.8)[..., None]
    col *= (1.0 + 0.05 * value_noise(rng, h, w, 1.5))[..., None]
    if cls.network > 0:
        cell = max(1.5, les.radius / (4.5 - 2.0 * cls.network_irregular))
        n = value_noise(rng, h, w, cell)
        thick = 0.22 + 0.25 * cls.network_irregular * (1 + value_noise(rng, h, w, les.radius / 2))
        lines = np.exp(-((n / np.maximum(thick, 0.05)) ** 2))
        fade = 1.0 - 0.6 * smoothstep(0.6, 1.0, radial) * (1 - cls.network_irregular)
        col *= (1.0 - cls.network * lines * fade)[..., None]
    f = cls.feature
    if f == "veil":
        veil = smoothstep(0.2, 0.9, value_noise(rng, h, w, les.radius / 2.5)) * 0.55
        blend(col, np.array([105, 115, 148], np.float32) * tone_factor, veil)
        dots = (value_noise(rng, h, w, 1.4) > 2.0).astype(np.float32) * 0.7
        blend(col, np.array([25, 20, 22], np.float32), dots)
    elif f == "cracks":
        n = value_noise(rng, h, w, max(1.5, les.radius / 6))
        col *= (1.0 - 0.45 * np.exp(-((n / 0.12) ** 2)))[..., None]
        milia = (value_noise(rng, h, w, 1.3) > 2.1).astype(np.float32) * 0.8
        blend(col, np.array([238, 226, 190], np.float32), milia)
    elif f == "rim":
        rim = np.exp(-(((1.0 - radial) / 0.2) ** 2))
        col += (rim * 48.0)[..., None]
        c = Canvas(h, w)
        for _ in range(int(rng.integers(2, 5))):
            a0 = float(rng.uniform(0, 2 * math.pi))
            lx, ly, lr = les.cx - x0, les.cy - y0, les.radius
            p0 = (lx + 0.7 * lr * math.cos(a0), ly + 0.7 * lr * math.sin(a0))
            p2 = (lx - 0.5 * lr * math.cos(a0 + 0.6), ly - 0.5 * lr * math.sin(a0 + 0.6))
            p1 = (lx + float(rng.normal(0, lr * 0.3)), ly + float(rng.normal(0, lr * 0.3)))
            c.line(bezier(p0, p1, p2, 12), width=max(0.8, lr * 0.05), value=0.8)
        blend(col, np.array([196, 38, 52], np.float32), c.coverage())
    elif f == "scale":
        flecks = smoothstep(0.9, 1.6, value_noise(rng, h, w, 1.5)) * 0.7
        blend(col, np.array([242, 232, 222], np.float32), flecks)
    elif f == "lacunae":
        c = Canvas(h, w)
        for _ in range(int(rng.integers(3, 9))):
            rr = float(rng.uniform(0, 0.7)) * les.radius
            a0 = float(rng.uniform(0, 2 * math.pi))
            c.disc(les.cx - x0 + rr * math.cos(a0), les.cy - y0 + rr * math.sin(a0),
                   max(0.8, les.radius * float(rng.uniform(0.1, 0.22))))
        blend(col, np.array([96, 8, 34], np.float32) * tone_factor, c.coverage() * 0.85)
    elif f == "scar":
        scar = 0.7 * np.exp(-((radial / 0.45) ** 2))
        blend(col, np.array([236, 226, 214], np.float32), scar)
    region = img[y0:y1, x0:x1]
    blend(region, col, alpha)


def _hair(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    s = img.shape[0]
    c = Canvas(s, s)
    for _ in range(count):
        p0 = (float(rng.uniform(-0.1, 1.1)) * s, float(rng.uniform(-0.1, 1.1)) * s)
        a = float(rng.uniform(0, 2 * math.pi))
        ln = float(rng.uniform(0.25, 0.8)) * s
        p2 = (p0[0] + ln * math.cos(a), p0[1] + ln * math.sin(a))
        bend = float(rng.normal(0, 0.15)) * ln
        p1 = ((p0[0] + p2[0]) / 2 - bend * math.sin(a), (p0[1] + p2[1]) / 2 + bend * math.cos(a))
        c.line(bezier(p0, p1, p2, 24), width=max(0.7, s / 256 * float(rng.uniform(1.0, 2.2))), value=0.85)
    blend(img, np.array([34, 25, 20], np.float32), c.coverage())


def _background(rng: np.random.Generator, img: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> bool:
    """A strip of non-skin background along one edge, unless it would touch a lesion."""
    s = img.shape[0]
    side = int(rng.integers(0, 4))
    depth = float(rng.uniform(0.06, 0.2)) * s
    wig = 0.03 * s
    col = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))] + rng.normal(0, 6, 3).astype(np.float32)
    reach = depth + wig + 3
    for (x0, y0, x1, y1) in boxes:
        near = {0: x0 < reach, 1: y0 < reach, 2: x1 > s - reach, 3: y1 > s - reach}[side]
        if near:
            return False
    yy, xx = grid(s, s)
    along = yy if side in (0, 2) else xx
    across = {0: xx, 1: yy, 2: s - 1 - xx, 3: s - 1 - yy}[side]
    edge_pos = depth + wig * np.sin(along / s * float(rng.uniform(2, 6)) + float(rng.uniform(0, 6.3)))
    a = smoothstep(edge_pos + 1.0, edge_pos - 1.0, across)
    tex = value_noise(rng, s, s, s / 10)
    bg = np.empty_like(img)
    bg[:] = col
    bg *= (1 + 0.05 * tex)[..., None]
    blend(img, bg, a)
    return True


def render(rng: np.random.Generator, size: int = 256, label: int | None = None, n_classes: int = 5,
           class_probs: list[float] | np.ndarray | None = None, max_lesions: int = 3,
           hair: float = 0.5) -> SkinSample:
    """Render one skin photo.

    Args:
        rng: the only source of randomness.
        size: side of the square image, pixels.
        label: class of the lesions; drawn from ``class_probs`` when None.
        n_classes: number of classes K.
        class_probs: class frequencies (default: long-tailed, see :func:`class_probabilities`).
        max_lesions: at most this many lesions (1..3 by default).
        hair: probability that the photo has hair strokes.

    Returns:
        A :class:`SkinSample` (image, label, tight boxes, per-lesion mask).
    """
    s = int(size)
    if label is None:
        p = class_probabilities(n_classes) if class_probs is None else np.asarray(class_probs, np.float64)
        label = int(rng.choice(n_classes, p=p / p.sum()))
    cls = lesion_class(label)
    tone = float(rng.uniform(0, 1))
    img, base = _skin(rng, s, tone)
    luma = float(0.299 * base[0] + 0.587 * base[1] + 0.114 * base[2])
    tone_factor = float(np.clip(luma / _REF_LUMA, 0.2, 1.1) ** 0.6)

    counts_p = np.array([0.6, 0.28, 0.12][:max(1, max_lesions)])
    n_les = 1 + int(rng.choice(len(counts_p), p=counts_p / counts_p.sum()))
    scale = {1: 1.0, 2: 0.8, 3: 0.65}.get(n_les, 0.6)
    radii = [max(2.5, float(rng.uniform(*cls.radius)) * s * scale) for _ in range(n_les)]
    shapes = [_lesion_shape(rng, cls, r) for r in radii]
    rmax = [float(sh[1].max()) + max(1.0, cls.edge * r) for sh, r in zip(shapes, radii)]
    centres = _place(rng, s, rmax)
    lesions = [Lesion(c[0], c[1], radii[k], float(shapes[k][1].max()), shapes[k][0], shapes[k][1])
               for k, c in enumerate(centres)]

    mask = np.zeros((s, s), np.uint8)
    for k, les in enumerate(lesions):
        _paint_lesion(rng, img, mask, k + 1, les, cls, tone_factor)
    boxes: list[tuple[float, float, float, float, int]] = []
    keep: list[Lesion] = []
    for k, les in enumerate(lesions):
        ys, xs = np.nonzero(mask == k + 1)
        if len(xs):
            boxes.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), label))
            keep.append(les)
    # renumber so the mask ids follow the boxes
    if len(keep) != len(lesions):
        remap = np.zeros(256, np.uint8)
        j = 0
        for k in range(len(lesions)):
            if np.any(mask == k + 1):
                j += 1
                remap[k + 1] = j
        mask = remap[mask]

    box_px = [(int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in boxes]
    bg = bool(rng.random() < 0.3) and _background(rng, img, box_px)
    n_hair = int(rng.poisson(4)) + 1 if rng.random() < hair else 0
    if n_hair:
        _hair(rng, img, n_hair)
    yy, xx = grid(s, s)
    ang = float(rng.uniform(0, 2 * math.pi))
    along = ((xx - s / 2) * math.cos(ang) + (yy - s / 2) * math.sin(ang)) / (s / 2)
    grad = 1.0 + float(rng.uniform(0.05, 0.22)) * along
    vig = 1.0 - float(rng.uniform(0.05, 0.2)) * (((xx - s / 2) ** 2 + (yy - s / 2) ** 2) / (s * s / 2))
    img *= (grad * vig)[..., None]
    img *= rng.uniform(0.94, 1.06, 3).astype(np.float32)
    return SkinSample(to_uint8(img), label, boxes, mask, tone, n_hair, bg, keep)


# --------------------------------------------------------------------------------------------
# Rows of a set


def resolve(options: dict[str, Any]) -> dict[str, Any]:
    o = check_options(KIND, options, DEFAULTS)
    o["size"] = int(o["size"])
    check_range(KIND, "size", o["size"], 32, 8192)
    o["n_classes"] = int(o["n_classes"])
    check_range(KIND, "n_classes", o["n_classes"], 2, 64)
    for k in ("box_frac", "clean_frac", "noise", "hair", "val", "test"):
        o[k] = float(o[k])
        check_range(KIND, k, o[k], 0.0, 1.0)
    if o["box_frac"] + o["clean_frac"] > 1.0:
        raise ConfigError(f"synth skin: box_frac + clean_frac = {o['box_frac'] + o['clean_frac']} > 1")
    o["imbalance"] = float(o["imbalance"])
    o["max_lesions"] = int(o["max_lesions"])
    check_range(KIND, "max_lesions", o["max_lesions"], 1, 3)
    o["images_per_patient"] = int(o["images_per_patient"])
    check_range(KIND, "images_per_patient", o["images_per_patient"], 1, 1000)
    o["image_format"] = check_format(KIND, o["image_format"])
    o["class_probs"] = (class_probabilities(o["n_classes"], o["imbalance"], o["class_probs"]).round(6).tolist()
                        if o["class_probs"] is not None else None)
    return o


def part_of(i: int, n: int, options: dict[str, Any]) -> str:
    """"box", "clean" or "full": the first ``round(n * box_frac)`` rows, the next
    ``round(n * clean_frac)``, the rest."""
    nb = int(round(n * options["box_frac"]))
    nc = int(round(n * options["clean_frac"]))
    return "box" if i < nb else "clean" if i < nb + nc else "full"


def labels_of(seed: int, i: int, n: int, options: dict[str, Any]) -> tuple[int, int, str]:
    """``(true label, manifest label, part)`` of row ``i``, from its label stream only."""
    rng = rng_for(seed, KIND, STREAM_LABEL, i)
    p = class_probabilities(options["n_classes"], options["imbalance"], options["class_probs"])
    true = int(rng.choice(options["n_classes"], p=p))
    flip_u, other_u = float(rng.random()), int(rng.integers(0, options["n_classes"] - 1))
    part = part_of(i, n, options)
    shown = true
    if part == "full" and flip_u < options["noise"]:
        shown = other_u if other_u < true else other_u + 1
    return true, shown, part


def sample(seed: int, i: int, options: dict[str, Any], n: int | None = None) -> SkinSample:
    """Row ``i`` of a set as rendered (the TRUE label; the manifest may show a noisy one)."""
    true, _, _ = labels_of(seed, i, n or (i + 1), options)
    return render(rng_for(seed, KIND, STREAM_SAMPLE, i), options["size"], true, options["n_classes"],
                  max_lesions=options["max_lesions"], hair=options["hair"])


def item(seed: int, i: int, options: dict[str, Any], n: int) -> Item:
    true, shown, part = labels_of(seed, i, n, options)
    smp = render(rng_for(seed, KIND, STREAM_SAMPLE, i), options["size"], true, options["n_classes"],
                 max_lesions=options["max_lesions"], hair=options["hair"])
    boxes = None
    if part == "box":
        boxes = [{"x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3], "label": b[4]} for b in smp.boxes]
    s = options["size"]
    row = {"patient_id": f"synth_skin_{seed}_p{i // options['images_per_patient']:08d}", "eye": "unknown",
           "width": s, "height": s, "label": shown, "boxes": boxes,
           "label_quality": "noisy" if part == "full" else "clean"}
    return Item({"image": encode(smp.image, options["image_format"], quality=90)}, row,
                {"class": shown, "part": part, "flipped": shown != true, "lesions": len(smp.boxes)})


def summarize(tally: Tally, options: dict[str, Any]) -> dict[str, Any]:
    parts = {p: tally.count("part", p) for p in ("box", "clean", "full")}
    flipped = tally.count("flipped", True)
    lesions = sum(int(k) * v for k, v in tally.counts.get("lesions", {}).items())
    full = parts["full"]
    return {"parts": parts, "lesions": lesions,
            "noise": {"rate": options["noise"], "flipped": flipped, "full_rows": full,
                      "observed_rate": round(flipped / full, 4) if full else None}}


def true_labels(manifest_uri: str, s3: Any = None) -> list[int]:
    """The true label of every row of a manifest written by ``synth("skin", ...)``, in row order,
    recomputed from the seed and options in its metadata (no pixels are rendered).

    Raises:
        ManifestError: the manifest was not written by the skin generator.
    """
    from medray import storage
    from medray.data import manifest
    from medray.errors import ManifestError

    inf = manifest.info(manifest_uri, s3)
    meta = inf.meta.get("synth") or {}
    if meta.get("kind") != KIND:
        raise ManifestError(f"{manifest_uri}: not a synthetic skin manifest (metadata synth.kind="
                            f"{meta.get('kind')!r})")
    seed, n, options = int(meta["seed"]), int(meta["n"]), dict(meta["options"])
    out: list[int] = []
    for b in manifest.iter_batches(manifest_uri, columns=["image"], s3=s3):
        for uri in b.column(0).to_pylist():
            idx = int(storage.basename(uri).split(".")[0])
            out.append(labels_of(seed, idx, n, options)[0])
    return out


GENERATOR = SynthKind(
    name=KIND, task="skin", dataset="synth_skin", defaults=DEFAULTS, resolve=resolve,
    classes=lambda o: class_names(o["n_classes"]), item=item, summarize=summarize, render=render,
    sample=sample,
)
