"""Drawing helpers shared by the two fundus-like generators (``rop`` and ``fundus_age``): the
circular field of view, the optic disc and a vessel tree grown as branching random walks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from medray.data.synth._common import Canvas, smoothstep


@dataclass
class Trunk:
    """Start of one vessel: position, heading (radians, image coordinates: +y is down), the heading
    it is steered towards, width (pixels) and kind (0 = artery, 1 = vein)."""

    x: float
    y: float
    angle: float
    target: float
    width: float
    kind: int = 0


@dataclass
class VesselSegment:
    x0: float
    y0: float
    x1: float
    y1: float
    width: float
    opacity: float
    kind: int


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def grow_vessels(rng: np.random.Generator, trunks: list[Trunk], *, step: float, min_width: float,
                 inside: Callable[[float, float], float], tortuosity: float = 0.08, steer: float = 0.08,
                 branch_prob: float = 0.06, decay: float = 0.985, max_steps: int = 400,
                 max_segments: int = 6000) -> list[VesselSegment]:
    """Grow a vessel tree: each vessel walks ``step`` pixels at a time, its heading meandering with
    ``tortuosity`` (momentum-smoothed angular noise) and pulled towards its target heading by
    ``steer``; it narrows by ``decay`` per step, branches with ``branch_prob`` per step and stops
    where ``inside(x, y)`` is 0 (the returned opacity multiplier otherwise) or below ``min_width``.
    """
    segs: list[VesselSegment] = []
    stack = list(reversed(trunks))
    while stack and len(segs) < max_segments:
        t = stack.pop()
        x, y, a, w = t.x, t.y, t.angle, t.width
        omega = 0.0
        for _ in range(max_steps):
            omega = 0.75 * omega + tortuosity * float(rng.standard_normal())
            a = a + omega + steer * _wrap(t.target - a)
            nx, ny = x + step * math.cos(a), y + step * math.sin(a)
            op = inside(nx, ny)
            if op <= 0.0:
                break
            segs.append(VesselSegment(x, y, nx, ny, w, op, t.kind))
            x, y = nx, ny
            w *= decay
            if w < min_width or len(segs) >= max_segments:
                break
            if rng.random() < branch_prob:
                side = 1.0 if rng.random() < 0.5 else -1.0
                ba = a + side * float(rng.uniform(0.45, 0.95))
                stack.append(Trunk(x, y, ba, ba + side * 0.15, w * float(rng.uniform(0.55, 0.75)), t.kind))
                w *= 0.9
    return segs


def rasterize_vessels(segs: list[VesselSegment], h: int, w: int, kinds: int = 1) -> list[np.ndarray]:
    """Coverage maps (one per vessel kind) of the segments, anti-aliased, values in [0, 1]."""
    canvases = [Canvas(h, w) for _ in range(kinds)]
    for s in segs:
        canvases[min(s.kind, kinds - 1)].segment(s.x0, s.y0, s.x1, s.y1, s.width, s.opacity)
    return [c.coverage() for c in canvases]


def fov_mask(yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, radius: float, soft: float = 1.5) -> np.ndarray:
    """Soft circular field-of-view mask (1 inside, 0 outside)."""
    rho = np.hypot(xx - cx, yy - cy)
    return smoothstep(radius + soft, radius - soft, rho).astype(np.float32)


def draw_disc(img: np.ndarray, yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, r: float,
              rim: np.ndarray, cup: np.ndarray, cup_ratio: float, aspect: float = 1.1) -> np.ndarray:
    """Paint an optic disc (slightly tall ellipse, colour ``rim``) with a brighter cup (colour
    ``cup``, ``cup_ratio`` of the disc radius). Returns the disc's alpha map."""
    d = np.hypot(xx - cx, (yy - cy) / aspect)
    a = smoothstep(r + 1.2, r - 1.2, d)
    img *= 1.0 - a[..., None]
    img += a[..., None] * np.asarray(rim, np.float32)
    ac = smoothstep(r * cup_ratio + 1.5, r * cup_ratio * 0.6, d)
    img *= 1.0 - ac[..., None] * 0.8
    img += (ac * 0.8)[..., None] * np.asarray(cup, np.float32)
    return a
