"""Shared pieces of the synthetic generators: seeded random streams, smooth noise, anti-aliased
drawing, and the description of one generator kind (:class:`SynthKind`).

Determinism: every random number a generator uses comes from a ``numpy.random.Generator`` seeded by
:func:`rng_for` with ``(seed, kind, stream, index)``. A sample's pixels therefore depend only on the
seed, the kind, its options and its own index, never on which process or chunk rendered it or on
how many samples came before it; that is what makes chunked/parallel generation bit-identical to a
sequential run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from medray.errors import ConfigError

# Stable numbers per kind (part of every seed): never renumber, or every generated set changes.
KIND_CODES: dict[str, int] = {"skin": 1, "rop": 2, "oct": 3, "fundus_age": 4, "fundus_quality": 5}

# Stream numbers (part of every seed): what a random stream is used for.
STREAM_SAMPLE = 0  # pixels of one sample
STREAM_LABEL = 1  # the labels of one sample (drawn without rendering, so truth can be recomputed)
STREAM_PATIENT = 2  # per-patient properties shared by the patient's images
STREAM_EYE = 3  # per-eye anatomy shared by the B-scans of one eye (OCT)


def rng_for(seed: int, kind: str, stream: int, index: int) -> np.random.Generator:
    """The random stream ``stream`` of item ``index`` of ``kind`` under ``seed`` (PCG64)."""
    return np.random.default_rng([int(seed), KIND_CODES[kind], int(stream), int(index)])


# --------------------------------------------------------------------------------------------
# Generator description


@dataclass
class Item:
    """One generated row before its files are written.

    Attributes:
        files: column name (``"image"``, ``"mask"``) -> (file suffix, encoded bytes).
        row: manifest columns other than the file URIs and ``split``/``dataset``.
        stats: per-row facts the summary aggregates (e.g. ``{"class": "nevus"}``); JSON-able.
    """

    files: dict[str, tuple[str, bytes]]
    row: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SynthKind:
    """A generator kind: how to resolve its options, its classes, and how to make row ``i``.

    Attributes:
        name: the kind (``medray data synth NAME``).
        task: manifest task written (see :data:`medray.data.manifest.TASKS`).
        dataset: value of the manifest's ``dataset`` column.
        defaults: default options (``size`` included where it applies); also the allowed keys.
        resolve: ``(options) -> options``: validates and completes options (JSON-able result).
        classes: ``(options) -> class list`` stored in the manifest metadata.
        item: ``(seed, index, options, n) -> Item``: renders row ``index`` of an ``n``-row set;
            pure and deterministic.
        summarize: ``(tally, options) -> dict`` of kind-specific summary entries.
        render: the kind's pure one-sample renderer (``render(rng, ...)``), for in-memory use.
        sample: ``(seed, index, options, n=None) -> sample object``: row ``index`` as rendered, with
            everything known about it (true labels, geometry).
    """

    name: str
    task: str
    dataset: str
    defaults: dict[str, Any]
    resolve: Callable[[dict[str, Any]], dict[str, Any]]
    classes: Callable[[dict[str, Any]], list[str]]
    item: Callable[[int, int, dict[str, Any], int], Item]
    summarize: Callable[["Tally", dict[str, Any]], dict[str, Any]]
    render: Callable[..., Any]
    sample: Callable[..., Any]


class Tally:
    """Running aggregate of the per-row ``Item.stats`` (constant memory whatever the row count).

    ``counts[key][str(value)]`` counts str/int/bool values, ``lists[key][str(element)]`` counts the
    elements of list values, ``nums[key]`` holds ``[min, max, sum, count]`` of float values.
    """

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.lists: dict[str, dict[str, int]] = {}
        self.nums: dict[str, list[float]] = {}

    def add(self, stats: dict[str, Any]) -> None:
        for k, v in stats.items():
            if isinstance(v, float):
                m = self.nums.setdefault(k, [math.inf, -math.inf, 0.0, 0])
                m[0], m[1], m[2], m[3] = min(m[0], v), max(m[1], v), m[2] + v, m[3] + 1
            elif isinstance(v, (list, tuple)):
                d = self.lists.setdefault(k, {})
                for e in v:
                    d[str(e)] = d.get(str(e), 0) + 1
            else:
                d = self.counts.setdefault(k, {})
                d[str(v)] = d.get(str(v), 0) + 1

    def count(self, key: str, value: Any) -> int:
        return self.counts.get(key, {}).get(str(value), 0)


def check_options(kind: str, options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``options``; an unknown option is a ConfigError naming it."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(f"synth {kind}: unknown option(s) {unknown}; known: {sorted(defaults)}")
    out = dict(defaults)
    out.update({k: v for k, v in options.items() if v is not None})
    return out


def check_range(kind: str, name: str, value: float, lo: float, hi: float) -> None:
    if not (lo <= value <= hi):
        raise ConfigError(f"synth {kind}: {name}={value} out of range [{lo}, {hi}]")


def check_format(kind: str, fmt: str) -> str:
    f = str(fmt).lower()
    f = {"jpg": "jpeg"}.get(f, f)
    if f not in ("png", "jpeg"):
        raise ConfigError(f"synth {kind}: image_format={fmt!r} must be 'png' or 'jpeg'")
    return f


def encode(arr: np.ndarray, fmt: str, quality: int = 92) -> tuple[str, bytes]:
    """``(suffix, bytes)`` of ``arr`` encoded as PNG or JPEG (both deterministic in Pillow)."""
    from medray.data.imageio import encode_jpeg, encode_png

    if fmt == "jpeg":
        return ".jpg", encode_jpeg(arr, quality=quality)
    return ".png", encode_png(arr)


# --------------------------------------------------------------------------------------------
# Pixels


def value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field (features about ``cell`` pixels wide), zero mean, unit std, float32."""
    gh = max(2, int(math.ceil(h / max(cell, 1.0))) + 2)
    gw = max(2, int(math.ceil(w / max(cell, 1.0))) + 2)
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    a = np.asarray(Image.fromarray(g).resize((w, h), Image.BICUBIC), dtype=np.float32)
    a = a - a.mean()
    s = float(a.std())
    return a / s if s > 1e-6 else a


def fbm(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 3, gain: float = 0.5) -> np.ndarray:
    """Fractal noise: ``octaves`` value-noise layers, each half the feature size; unit std."""
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for o in range(octaves):
        out += amp * value_noise(rng, h, w, cell / (2**o))
        amp *= gain
    s = float(out.std())
    return out / s if s > 1e-6 else out


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def luminance(img: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an ``HxWx3`` array, float32."""
    img = np.asarray(img, np.float32)
    return 0.299 * img[..., 0] + 0.587 * img[..., 1] + 0.114 * img[..., 2]


def blend(img: np.ndarray, color: Sequence[float] | np.ndarray, alpha: np.ndarray) -> None:
    """In place: ``img = img * (1 - alpha) + color * alpha`` (alpha ``HxW``, color RGB or ``HxWx3``)."""
    a = alpha[..., None]
    img *= 1.0 - a
    img += np.asarray(color, np.float32) * a


class Canvas:
    """Anti-aliased drawing of lines and discs into a coverage map in [0, 1] (2x supersampled)."""

    SS = 2

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.im = Image.new("L", (w * self.SS, h * self.SS), 0)
        self.draw = ImageDraw.Draw(self.im)

    def line(self, pts: Sequence[tuple[float, float]], width: float, value: float = 1.0) -> None:
        s = self.SS
        self.draw.line([(x * s, y * s) for x, y in pts], fill=int(round(255 * value)),
                       width=max(1, int(round(width * s))), joint="curve")

    def segment(self, x0: float, y0: float, x1: float, y1: float, width: float, value: float = 1.0) -> None:
        """A line segment with round caps (so chained segments join without gaps)."""
        s = self.SS
        v = int(round(255 * value))
        wpx = max(1, int(round(width * s)))
        self.draw.line([(x0 * s, y0 * s), (x1 * s, y1 * s)], fill=v, width=wpx)
        if wpx >= 3:
            r = wpx / 2.0
            for x, y in ((x0 * s, y0 * s), (x1 * s, y1 * s)):
                self.draw.ellipse([x - r, y - r, x + r, y + r], fill=v)

    def disc(self, x: float, y: float, r: float, value: float = 1.0) -> None:
        s = self.SS
        self.draw.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=int(round(255 * value)))

    def coverage(self) -> np.ndarray:
        small = self.im.reduce(self.SS)
        return np.asarray(small, dtype=np.float32) / 255.0


Point = tuple[float, float]


def bezier(p0: Point, p1: Point, p2: Point, steps: int = 16) -> list[Point]:
    """Points of a quadratic Bezier curve."""
    t = np.linspace(0.0, 1.0, steps)
    x = (1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * p1[0] + t**2 * p2[0]
    y = (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * p1[1] + t**2 * p2[1]
    return list(zip(x.tolist(), y.tolist()))


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``(yy, xx)`` pixel-centre coordinates, float32."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx
