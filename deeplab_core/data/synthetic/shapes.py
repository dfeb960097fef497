"""Shape-drawing kit of the synthetic datasets and the shape of every class it draws.

A :class:`Shape` collects polygons in object-local coordinates; each VOC class (and each non-VOC
COCO category used as clutter) has a function that draws its shape family into one, and a
:class:`Kind` that says where it stands, how large it is, its colours and how often it is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

Tone = int  # 0 = main colour, 1 = detail colour, 2 = accent colour


class Shape:
    """Collects polygons in object-local coordinates: u to the right, v up from the ground point.

    ``d`` mirrors the object horizontally; ``ang`` rotates it (degrees) about local ``(0, pv)``.
    """

    def __init__(self, cx: float, by: float, d: int = 1, ang: float = 0.0, pv: float = 0.0):
        self.cx, self.by, self.d = cx, by, d
        self.cos, self.sin, self.pv = math.cos(math.radians(ang)), math.sin(math.radians(ang)), pv
        self.parts: list[tuple[np.ndarray, Tone]] = []

    def _xy(self, uv: np.ndarray) -> np.ndarray:
        u, v = uv[:, 0], uv[:, 1] - self.pv
        ur = u * self.cos - v * self.sin
        vr = u * self.sin + v * self.cos + self.pv
        return np.stack([self.cx + self.d * ur, self.by - vr], axis=1)

    def poly(self, pts, tone: Tone = 0):
        self.parts.append((self._xy(np.asarray(pts, dtype=np.float64)), tone))

    def rect(self, u0, v0, u1, v1, tone: Tone = 0):
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], tone)

    def ellipse(self, u, v, ru, rv, tone: Tone = 0, ang: float = 0.0, n: int = 18):
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        a = math.radians(ang)
        x, y = ru * np.cos(t), rv * np.sin(t)
        self.poly(np.stack([u + x * math.cos(a) - y * math.sin(a),
                            v + x * math.sin(a) + y * math.cos(a)], 1), tone)

    def line(self, u0, v0, u1, v1, t: float, tone: Tone = 0):
        du, dv = u1 - u0, v1 - v0
        n = math.hypot(du, dv) or 1.0
        pu, pv = -dv / n * t / 2, du / n * t / 2
        self.poly([(u0 + pu, v0 + pv), (u1 + pu, v1 + pv), (u1 - pu, v1 - pv), (u0 - pu, v0 - pv)],
                  tone)

    def ring(self, u, v, r, t: float, tone: Tone = 0, n: int = 14):
        a = np.linspace(0, 2 * np.pi, n + 1)
        ro, ri = r + t / 2, max(r - t / 2, 0.0)
        for a0, a1 in zip(a[:-1], a[1:]):
            self.poly([(u + ro * math.cos(a0), v + ro * math.sin(a0)),
                       (u + ro * math.cos(a1), v + ro * math.sin(a1)),
                       (u + ri * math.cos(a1), v + ri * math.sin(a1)),
                       (u + ri * math.cos(a0), v + ri * math.sin(a0))], tone)


def _thin(rng, lo=1.1, hi=2.2):
    return float(rng.uniform(lo, hi))


# --- VOC classes ------------------------------------------------------------------------------
def _aeroplane(b: Shape, s, rng):
    c = 0.45 * s
    b.rect(-0.5 * s, c - 0.055 * s, 0.45 * s, c + 0.055 * s)                        # fuselage
    b.ellipse(0.45 * s, c, 0.08 * s, 0.055 * s)                                     # nose
    sw = rng.uniform(0.05, 0.15) * s
    b.poly([(0.06 * s, c), (-sw, c + 0.42 * s), (-sw - 0.09 * s, c + 0.42 * s), (-0.1 * s, c),
            (-sw - 0.09 * s, c - 0.42 * s), (-sw, c - 0.42 * s)])                   # wings: cross
    b.poly([(-0.38 * s, c), (-0.46 * s, c + 0.2 * s), (-0.52 * s, c + 0.2 * s), (-0.5 * s, c)], 1)
    b.rect(-0.52 * s, c - 0.13 * s, -0.44 * s, c + 0.13 * s, 1)                     # tailplane


def _bicycle(b: Shape, s, rng):
    r = 0.22 * s
    tw = _thin(rng, 2.0, 3.2)
    for u in (-0.32 * s, 0.32 * s):
        b.ring(u, r, r, tw, 1)
        for k in range(int(rng.integers(2, 4))):
            a = rng.uniform(0, np.pi)
            b.line(u - r * math.cos(a), r - r * math.sin(a), u + r * math.cos(a),
                   r + r * math.sin(a), _thin(rng, 1.0, 1.3), 1)                    # spokes
    tf = _thin(rng, 1.8, 2.8)
    A, B = (-0.32 * s, r), (0.0, r)
    S, H, F = (-0.08 * s, r + 0.38 * s), (0.22 * s, r + 0.38 * s), (0.32 * s, r)
    for p, q in ((A, B), (A, S), (B, S), (S, H), (B, H), (H, F)):
        b.line(*p, *q, tf)
    b.line(H[0], H[1], 0.17 * s, r + 0.5 * s, tf)
    b.line(0.12 * s, r + 0.5 * s, 0.22 * s, r + 0.5 * s, tf, 1)                     # handlebar
    b.rect(-0.16 * s, S[1], 0.0, S[1] + 0.04 * s + 1, 1)                           # saddle


def _bird(b: Shape, s, rng):
    b.ellipse(0.0, 0.35 * s, 0.3 * s, 0.13 * s, ang=rng.uniform(-15, 15))
    b.ellipse(0.28 * s, 0.5 * s, 0.1 * s, 0.1 * s)
    b.poly([(0.36 * s, 0.53 * s), (0.5 * s, 0.48 * s), (0.36 * s, 0.45 * s)], 1)    # beak
    up = rng.uniform(0.6, 0.95) * s
    b.poly([(-0.12 * s, 0.4 * s), (0.12 * s, 0.4 * s), (-0.2 * s, up)])            # wing
    b.poly([(-0.25 * s, 0.35 * s), (-0.5 * s, 0.45 * s), (-0.48 * s, 0.25 * s)], 1)  # tail


def _boat(b: Shape, s, rng):
    b.poly([(-0.5 * s, 0.18 * s), (0.5 * s, 0.18 * s), (0.38 * s, 0.0), (-0.38 * s, 0.0)])
    if rng.random() < 0.6:
        b.line(0.0, 0.17 * s, 0.0, 0.9 * s, _thin(rng, 1.3, 2.5), 1)               # mast
        b.poly([(0.04 * s, 0.22 * s), (0.04 * s, 0.86 * s), (0.38 * s, 0.24 * s)], 2)
    else:
        b.rect(-0.25 * s, 0.17 * s, 0.15 * s, 0.35 * s, 2)                           # cabin
        b.rect(-0.18 * s, 0.24 * s, -0.05 * s, 0.3 * s, 1)


def _bottle(b: Shape, s, rng):
    w = rng.uniform(0.09, 0.13) * s
    b.rect(-w, 0.0, w, 0.6 * s)
    b.poly([(-w, 0.6 * s), (w, 0.6 * s), (0.045 * s, 0.72 * s), (-0.045 * s, 0.72 * s)])
    b.rect(-0.045 * s, 0.72 * s, 0.045 * s, 0.93 * s)
    b.rect(-0.05 * s, 0.93 * s, 0.05 * s, 1.0 * s, 1)
    b.rect(-w, 0.2 * s, w, 0.4 * s, 2)                                             # label


def _bus(b: Shape, s, rng):
    b.rect(-0.6 * s, 0.06 * s, 0.6 * s, 0.62 * s)
    n = int(rng.integers(4, 7))
    xs = np.linspace(-0.52 * s, 0.42 * s, n + 1)
    for x0, x1 in zip(xs[:-1], xs[1:]):
        b.rect(x0 + 0.02 * s, 0.38 * s, x1 - 0.02 * s, 0.54 * s, 1)               # windows
    b.rect(0.46 * s, 0.12 * s, 0.56 * s, 0.54 * s, 1)                               # door
    for u in (-0.38 * s, 0.38 * s):
        b.ellipse(u, 0.08 * s, 0.085 * s, 0.085 * s, 1)


def _car(b: Shape, s, rng):
    b.rect(-0.5 * s, 0.07 * s, 0.5 * s, 0.3 * s)
    b.poly([(-0.3 * s, 0.3 * s), (0.32 * s, 0.3 * s), (0.18 * s, 0.5 * s), (-0.2 * s, 0.5 * s)])
    b.poly([(-0.25 * s, 0.32 * s), (-0.03 * s, 0.32 * s), (-0.03 * s, 0.46 * s),
            (-0.17 * s, 0.46 * s)], 1)
    b.poly([(0.0, 0.32 * s), (0.26 * s, 0.32 * s), (0.15 * s, 0.46 * s), (0.0, 0.46 * s)], 1)
    for u in (-0.3 * s, 0.3 * s):
        b.ellipse(u, 0.1 * s, 0.1 * s, 0.1 * s, 1)


def _cat(b: Shape, s, rng):
    b.ellipse(-0.05 * s, 0.26 * s, 0.3 * s, 0.14 * s)
    for u in (-0.28 * s, -0.18 * s, 0.08 * s, 0.16 * s):
        b.rect(u, 0.0, u + 0.055 * s, 0.2 * s)
    b.ellipse(0.28 * s, 0.44 * s, 0.11 * s, 0.1 * s)
    b.poly([(0.19 * s, 0.5 * s), (0.22 * s, 0.65 * s), (0.28 * s, 0.52 * s)])
    b.poly([(0.29 * s, 0.52 * s), (0.35 * s, 0.65 * s), (0.38 * s, 0.5 * s)])
    b.line(-0.33 * s, 0.3 * s, -0.48 * s, rng.uniform(0.4, 0.65) * s, max(1.5, 0.045 * s))
    for k in range(int(rng.integers(3, 5))):                                       # stripes
        b.rect(-0.25 * s + k * 0.1 * s, 0.15 * s, -0.21 * s + k * 0.1 * s, 0.38 * s, 1)


def _chair(b: Shape, s, rng):
    tl = _thin(rng, 1.5, 2.5)
    seat_v, seat_t = 0.45 * s, rng.uniform(2.5, 4.0)
    b.poly([(-0.22 * s, seat_v), (0.2 * s, seat_v), (0.14 * s, seat_v + 0.08 * s),
            (-0.16 * s, seat_v + 0.08 * s)])
    b.rect(-0.22 * s, seat_v - seat_t, 0.2 * s, seat_v)
    for u, v in ((-0.2 * s, 0.0), (0.18 * s, 0.0), (-0.12 * s, 0.06 * s), (0.12 * s, 0.06 * s)):
        b.line(u, v, u * 0.95, seat_v, tl)                                           # legs
    top = rng.uniform(0.85, 1.0) * s
    tp = _thin(rng, 1.5, 2.5)
    b.line(-0.16 * s, seat_v, -0.17 * s, top, tp)
    b.line(0.14 * s, seat_v, 0.15 * s, top, tp)
    b.line(-0.17 * s, top, 0.15 * s, top, rng.uniform(2.0, 3.5))                   # top rail
    if rng.random() < 0.5:                                                         # solid back
        b.rect(-0.16 * s, (seat_v + top) / 2, 0.14 * s, top, 2)
    else:
        b.line(-0.16 * s, (seat_v + top) / 2, 0.14 * s, (seat_v + top) / 2, tp)
    if rng.random() < 0.5:
        b.line(-0.19 * s, 0.15 * s, 0.17 * s, 0.15 * s, tl)                         # stretcher


def _cow(b: Shape, s, rng):
    b.ellipse(0.0, 0.45 * s, 0.4 * s, 0.18 * s)
    for u in (-0.32 * s, -0.22 * s, 0.18 * s, 0.28 * s):
        b.rect(u, 0.0, u + 0.065 * s, 0.38 * s)
    b.poly([(0.36 * s, 0.5 * s), (0.56 * s, 0.48 * s), (0.58 * s, 0.32 * s), (0.44 * s, 0.3 * s)])
    b.line(0.44 * s, 0.5 * s, 0.4 * s, 0.6 * s, max(1.2, 0.025 * s), 2)             # horns
    b.line(0.5 * s, 0.5 * s, 0.54 * s, 0.6 * s, max(1.2, 0.025 * s), 2)
    for _ in range(int(rng.integers(1, 4))):
        b.ellipse(rng.uniform(-0.3, 0.25) * s, rng.uniform(0.38, 0.52) * s,
                  rng.uniform(0.06, 0.12) * s, rng.uniform(0.05, 0.09) * s, 1)
    b.line(-0.4 * s, 0.55 * s, -0.46 * s, 0.25 * s, max(1.2, 0.03 * s), 1)         # tail


def _diningtable(b: Shape, s, rng):
    top_v = rng.uniform(0.45, 0.6) * s
    depth = rng.uniform(3.0, max(3.5, 0.18 * s))
    b.poly([(-0.48 * s, top_v), (0.48 * s, top_v), (0.4 * s, top_v + depth),
            (-0.4 * s, top_v + depth)])                                            # top surface
    b.rect(-0.48 * s, top_v - rng.uniform(2.0, 4.0), 0.48 * s, top_v)              # edge
    tl = _thin(rng, 1.6, 2.8)
    for u, v in ((-0.45 * s, 0.0), (0.45 * s, 0.0), (-0.36 * s, 0.05 * s), (0.36 * s, 0.05 * s)):
        b.line(u, v, u, top_v, tl)
    if rng.random() < 0.4:                                                         # cloth
        b.poly([(-0.48 * s, top_v), (0.48 * s, top_v), (0.5 * s, top_v - 0.12 * s),
                (-0.5 * s, top_v - 0.12 * s)], 2)


def _dog(b: Shape, s, rng):
    b.ellipse(0.0, 0.38 * s, 0.3 * s, 0.13 * s)
    for u in (-0.26 * s, -0.17 * s, 0.13 * s, 0.21 * s):
        b.rect(u, 0.0, u + 0.06 * s, 0.32 * s)
    b.ellipse(0.34 * s, 0.55 * s, 0.11 * s, 0.09 * s)
    b.rect(0.4 * s, 0.48 * s, 0.52 * s, 0.56 * s)                                  # snout
    b.poly([(0.27 * s, 0.62 * s), (0.33 * s, 0.62 * s), (0.28 * s, 0.42 * s)], 1)   # ear
    b.line(0.25 * s, 0.56 * s, 0.31 * s, 0.44 * s, max(1.5, 0.04 * s), 2)          # collar
    b.line(-0.3 * s, 0.42 * s, -0.42 * s, rng.uniform(0.55, 0.75) * s, max(1.5, 0.04 * s))


def _horse(b: Shape, s, rng):
    b.ellipse(0.0, 0.55 * s, 0.35 * s, 0.15 * s)
    for u in (-0.28 * s, -0.2 * s, 0.17 * s, 0.25 * s):
        b.rect(u, 0.0, u + 0.05 * s, 0.5 * s)
    b.poly([(0.22 * s, 0.55 * s), (0.33 * s, 0.62 * s), (0.47 * s, 0.9 * s), (0.38 * s, 0.95 * s)])
    b.poly([(0.38 * s, 0.95 * s), (0.47 * s, 0.9 * s), (0.6 * s, 0.78 * s), (0.55 * s, 0.74 * s),
            (0.4 * s, 0.83 * s)])
    b.line(0.27 * s, 0.68 * s, 0.4 * s, 0.95 * s, max(1.5, 0.04 * s), 1)            # mane
    b.line(-0.35 * s, 0.62 * s, -0.45 * s, 0.3 * s, max(1.5, 0.05 * s), 1)          # tail


def _motorbike(b: Shape, s, rng):
    for u in (-0.33 * s, 0.33 * s):
        b.ellipse(u, 0.17 * s, 0.17 * s, 0.17 * s, 1)
        b.ellipse(u, 0.17 * s, 0.06 * s, 0.06 * s, 2)
    b.poly([(-0.28 * s, 0.25 * s), (0.18 * s, 0.22 * s), (0.28 * s, 0.45 * s), (-0.08 * s, 0.5 * s),
            (-0.3 * s, 0.42 * s)])
    b.rect(-0.3 * s, 0.44 * s, -0.02 * s, 0.52 * s, 1)                              # seat
    b.line(0.33 * s, 0.17 * s, 0.25 * s, 0.55 * s, _thin(rng, 1.5, 2.5), 2)         # fork
    b.line(0.2 * s, 0.6 * s, 0.32 * s, 0.58 * s, _thin(rng, 1.5, 2.5), 1)


def _person(b: Shape, s, rng):
    stance = rng.uniform(0.0, 0.1) * s
    lw = 0.065 * s
    b.poly([(-0.08 * s - stance, 0.0), (-0.08 * s - stance + lw, 0.0), (-0.005 * s, 0.48 * s),
            (-0.085 * s, 0.48 * s)], 1)
    b.poly([(0.08 * s + stance - lw, 0.0), (0.08 * s + stance, 0.0), (0.085 * s, 0.48 * s),
            (0.005 * s, 0.48 * s)], 1)
    b.poly([(-0.1 * s, 0.46 * s), (0.1 * s, 0.46 * s), (0.13 * s, 0.8 * s), (-0.13 * s, 0.8 * s)])
    aw = max(1.5, 0.05 * s)
    b.line(-0.12 * s, 0.78 * s, -0.12 * s - rng.uniform(0.02, 0.15) * s, 0.5 * s, aw)
    b.line(0.12 * s, 0.78 * s, 0.12 * s + rng.uniform(0.02, 0.15) * s, 0.5 * s, aw)
    b.rect(-0.025 * s, 0.79 * s, 0.025 * s, 0.83 * s, 2)
    b.ellipse(0.0, 0.895 * s, 0.065 * s, 0.08 * s, 2)                              # head
    if rng.random() < 0.5:
        b.ellipse(0.0, 0.93 * s, 0.07 * s, 0.05 * s, 1)                            # hair


def _pottedplant(b: Shape, s, rng):
    b.poly([(-0.14 * s, 0.0), (0.14 * s, 0.0), (0.18 * s, 0.24 * s), (-0.18 * s, 0.24 * s)], 1)
    b.rect(-0.2 * s, 0.22 * s, 0.2 * s, 0.27 * s, 1)
    for _ in range(int(rng.integers(2, 4))):                                       # foliage
        b.ellipse(rng.uniform(-0.14, 0.14) * s, rng.uniform(0.55, 0.75) * s,
                  rng.uniform(0.1, 0.17) * s, rng.uniform(0.08, 0.14) * s, 2, n=12)
    for _ in range(int(rng.integers(3, 7))):
        u0 = rng.uniform(-0.08, 0.08) * s
        u1 = u0 + rng.uniform(-0.32, 0.32) * s
        v1 = rng.uniform(0.55, 1.0) * s
        b.line(u0, 0.27 * s, u1, v1, _thin(rng, 1.3, 2.0))                          # stem
        for f in (1.0, rng.uniform(0.5, 0.8)):
            uu, vv = u0 + (u1 - u0) * f, 0.27 * s + (v1 - 0.27 * s) * f
            b.ellipse(uu, vv, rng.uniform(0.04, 0.09) * s, rng.uniform(0.02, 0.045) * s,
                      ang=rng.uniform(-60, 60), n=10)                              # leaves


def _sheep(b: Shape, s, rng):
    tl = _thin(rng, 1.4, 2.6)
    for u in (-0.22 * s, -0.14 * s, 0.1 * s, 0.18 * s):
        b.line(u, 0.0, u, 0.3 * s, tl, 1)
    for _ in range(int(rng.integers(6, 10))):
        rr = rng.uniform(0.09, 0.14) * s
        b.ellipse(rng.uniform(-0.25, 0.22) * s, rng.uniform(0.36, 0.47) * s, rr, rr, n=12)
    b.ellipse(0.36 * s, 0.46 * s, 0.085 * s, 0.065 * s, 1, ang=-20)


def _sofa(b: Shape, s, rng):
    b.rect(-0.42 * s, 0.1 * s, 0.42 * s, 0.3 * s)                                   # seat
    b.rect(-0.4 * s, 0.3 * s, 0.4 * s, rng.uniform(0.55, 0.65) * s)                 # backrest
    arm_v = rng.uniform(0.38, 0.48) * s
    aw = rng.uniform(0.03, 0.07) * s + 1.5
    b.rect(-0.42 * s - aw, 0.1 * s, -0.42 * s, arm_v)
    b.rect(0.42 * s, 0.1 * s, 0.42 * s + aw, arm_v)
    for u in (-0.42 * s, 0.42 * s):                                                # arm caps
        b.ellipse(u + (aw / 2 if u > 0 else -aw / 2), arm_v, aw * 0.9, 0.03 * s + 1)
    tl = _thin(rng, 1.2, 2.0)
    for u in (-0.44 * s, -0.3 * s, 0.3 * s, 0.44 * s):
        b.line(u, 0.0, u, 0.11 * s, tl, 1)                                         # short legs
    for k in range(1, int(rng.integers(2, 4))):
        u = -0.4 * s + 0.8 * s * k / 3
        b.line(u, 0.12 * s, u, 0.55 * s, _thin(rng, 1.0, 1.4), 1)                   # seams


def _train(b: Shape, s, rng):
    n = int(rng.integers(2, 4))
    L, gap = 0.46 * s, 0.04 * s
    x = -0.5 * s * n / 2
    for k in range(n):
        b.rect(x, 0.05 * s, x + L, 0.37 * s)
        b.rect(x, 0.37 * s, x + L, 0.41 * s, 2)                                    # roof
        for w in range(3):
            wx = x + 0.04 * s + w * 0.14 * s
            b.rect(wx, 0.22 * s, wx + 0.1 * s, 0.32 * s, 1)
        for u in (x + 0.08 * s, x + L - 0.08 * s):
            b.ellipse(u, 0.05 * s, 0.045 * s, 0.045 * s, 1)
        if k < n - 1:
            b.line(x + L, 0.12 * s, x + L + gap, 0.12 * s, _thin(rng, 1.5, 2.5), 1)  # coupler
        x += L + gap
    x -= gap
    b.poly([(x, 0.05 * s), (x + 0.12 * s, 0.05 * s), (x, 0.37 * s)])               # nose


def _tvmonitor(b: Shape, s, rng):
    w, h0, h1 = rng.uniform(0.24, 0.32) * s, 0.12 * s, 0.55 * s
    b.rect(-w, h0, w, h1)
    e = max(2.0, 0.035 * s)
    b.rect(-w + e, h0 + e, w - e, h1 - e, 2)                                       # screen
    b.line(0.0, 0.04 * s, 0.0, h0, _thin(rng, 1.5, 2.5))
    b.rect(-0.1 * s, 0.0, 0.1 * s, 0.04 * s + 1)


# --- non-VOC COCO categories (background in every VOC-class label) ------------------------------
def _truck(b, s, rng):
    b.rect(-0.55 * s, 0.08 * s, 0.25 * s, 0.6 * s, 2)                               # box
    b.rect(0.26 * s, 0.08 * s, 0.55 * s, 0.42 * s)
    b.rect(0.36 * s, 0.26 * s, 0.52 * s, 0.38 * s, 1)
    for u in (-0.4 * s, -0.2 * s, 0.4 * s):
        b.ellipse(u, 0.09 * s, 0.09 * s, 0.09 * s, 1)


def _bench(b, s, rng):
    tl = _thin(rng, 1.2, 2.4)
    b.rect(-0.5 * s, 0.3 * s, 0.5 * s, 0.3 * s + rng.uniform(2, 3.5))
    for v in (0.45 * s, 0.55 * s):
        b.line(-0.5 * s, v, 0.5 * s, v, tl)
    for u in (-0.45 * s, 0.45 * s):
        b.line(u, 0.0, u, 0.58 * s, tl)


def _elephant(b, s, rng):
    b.ellipse(0.0, 0.55 * s, 0.42 * s, 0.25 * s)
    for u in (-0.3 * s, -0.15 * s, 0.12 * s, 0.25 * s):
        b.rect(u, 0.0, u + 0.11 * s, 0.4 * s)
    b.ellipse(0.42 * s, 0.62 * s, 0.14 * s, 0.14 * s)
    b.ellipse(0.34 * s, 0.6 * s, 0.08 * s, 0.14 * s, 1)                            # ear
    b.line(0.52 * s, 0.6 * s, 0.6 * s, 0.08 * s, max(2.0, 0.06 * s))               # trunk


def _giraffe(b, s, rng):
    b.ellipse(0.0, 0.5 * s, 0.25 * s, 0.1 * s)
    for u in (-0.2 * s, -0.12 * s, 0.1 * s, 0.17 * s):
        b.rect(u, 0.0, u + 0.035 * s, 0.45 * s)
    b.line(0.18 * s, 0.52 * s, 0.35 * s, 1.0 * s, max(2.0, 0.06 * s))
    b.ellipse(0.38 * s, 1.0 * s, 0.07 * s, 0.04 * s)
    for _ in range(4):
        b.ellipse(rng.uniform(-0.18, 0.15) * s, rng.uniform(0.46, 0.54) * s, 0.03 * s, 0.025 * s, 1)


def _umbrella(b, s, rng):
    t = np.linspace(0, np.pi, 12)
    b.poly(np.stack([0.45 * s * np.cos(t), 0.65 * s + 0.3 * s * np.sin(t)], 1))
    b.line(0.0, 0.0, 0.0, 0.66 * s, _thin(rng, 1.2, 2.0), 1)


def _traffic_light(b, s, rng):
    b.line(0.0, 0.0, 0.0, 0.7 * s, _thin(rng, 1.5, 2.5), 1)
    b.rect(-0.07 * s, 0.65 * s, 0.07 * s, 1.0 * s, 1)
    for k in range(3):
        b.ellipse(0.0, 0.71 * s + k * 0.11 * s, 0.04 * s, 0.04 * s, 2, n=10)


def _cup(b, s, rng):
    b.poly([(-0.12 * s, 0.0), (0.12 * s, 0.0), (0.15 * s, 0.3 * s), (-0.15 * s, 0.3 * s)])
    b.ring(0.17 * s, 0.15 * s, 0.07 * s, _thin(rng, 1.2, 2.0), 0, n=10)


def _clock(b, s, rng):
    b.ellipse(0.0, 0.5 * s, 0.2 * s, 0.2 * s, 2, n=20)
    b.ring(0.0, 0.5 * s, 0.2 * s, 2.0, 0)
    b.line(0.0, 0.5 * s, 0.1 * s, 0.58 * s, 1.2, 1)
    b.line(0.0, 0.5 * s, -0.03 * s, 0.35 * s, 1.2, 1)


def _bed(b, s, rng):
    b.rect(-0.5 * s, 0.08 * s, 0.5 * s, 0.28 * s)
    b.rect(-0.5 * s, 0.08 * s, -0.44 * s, 0.5 * s, 1)                               # headboard
    b.ellipse(-0.32 * s, 0.31 * s, 0.1 * s, 0.05 * s, 2)                           # pillow
    b.rect(-0.5 * s, 0.0, 0.5 * s, 0.08 * s, 1)


def _laptop(b, s, rng):
    b.poly([(-0.25 * s, 0.0), (0.25 * s, 0.0), (0.3 * s, 0.05 * s), (-0.2 * s, 0.05 * s)], 1)
    b.poly([(-0.22 * s, 0.05 * s), (0.25 * s, 0.05 * s), (0.28 * s, 0.4 * s), (-0.19 * s, 0.4 * s)])
    b.poly([(-0.19 * s, 0.08 * s), (0.22 * s, 0.08 * s), (0.25 * s, 0.37 * s),
            (-0.16 * s, 0.37 * s)], 2)


def _vase(b, s, rng):
    b.ellipse(0.0, 0.25 * s, 0.16 * s, 0.25 * s)
    b.rect(-0.06 * s, 0.45 * s, 0.06 * s, 0.65 * s)
    b.rect(-0.09 * s, 0.63 * s, 0.09 * s, 0.68 * s, 1)


def _kite(b, s, rng):
    b.poly([(0.0, 0.5 * s), (0.2 * s, 0.75 * s), (0.0, 1.0 * s), (-0.2 * s, 0.75 * s)])
    b.line(0.0, 0.5 * s, -0.25 * s, 0.0, 1.1, 1)


def _suitcase(b, s, rng):
    b.rect(-0.2 * s, 0.02 * s, 0.2 * s, 0.45 * s)
    b.ring(0.0, 0.47 * s, 0.05 * s, 1.6, 1, n=8)


def _bear(b, s, rng):
    b.ellipse(0.0, 0.35 * s, 0.35 * s, 0.2 * s)
    for u in (-0.28 * s, -0.15 * s, 0.1 * s, 0.22 * s):
        b.rect(u, 0.0, u + 0.1 * s, 0.25 * s)
    b.ellipse(0.36 * s, 0.5 * s, 0.13 * s, 0.12 * s)
    for u in (0.3 * s, 0.42 * s):
        b.ellipse(u, 0.62 * s, 0.04 * s, 0.04 * s, n=8)


@dataclass(frozen=True)
class Kind:
    builder: Callable
    zones: tuple[str, ...]            # where it can stand: sky, ground, water, indoor
    size: tuple[float, float]         # object scale as a fraction of min(H, W)
    colours: tuple[tuple[int, int, int], ...]  # main, detail, accent colour means
    weight: float = 1.0               # how often it is drawn
    spin: float = 0.0                 # random rotation range (degrees)


VOC_KINDS: dict[int, Kind] = {
    1: Kind(_aeroplane, ("sky", "sky", "ground"), (0.45, 0.75),
             ((195, 198, 210), (150, 40, 40), (60, 60, 90)), 1.0, 18),
    2: Kind(_bicycle, ("ground",), (0.5, 0.75), ((160, 50, 50), (40, 40, 40), (200, 200, 200)),
             0.5),
    3: Kind(_bird, ("sky", "ground", "water"), (0.3, 0.48),
             ((120, 95, 70), (220, 160, 40), (240, 240, 240)), 1.0, 20),
    4: Kind(_boat, ("water",), (0.4, 0.7), ((225, 225, 230), (80, 60, 40), (200, 60, 50)), 1.0),
    5: Kind(_bottle, ("indoor", "indoor", "ground"), (0.35, 0.55),
             ((50, 120, 70), (200, 180, 60), (230, 225, 210)), 1.0),
    6: Kind(_bus, ("ground",), (0.55, 0.85), ((215, 180, 50), (40, 45, 55), (230, 230, 230)), 1.0),
    7: Kind(_car, ("ground",), (0.45, 0.7), ((150, 35, 40), (35, 38, 45), (200, 200, 210)), 1.0),
    8: Kind(_cat, ("indoor", "ground"), (0.35, 0.6), ((140, 115, 90), (60, 50, 40), (230, 220, 200)),
             1.0),
    9: Kind(_chair, ("indoor", "indoor", "ground"), (0.5, 0.75),
             ((115, 75, 45), (60, 40, 25), (180, 60, 60)), 0.5),
    10: Kind(_cow, ("ground",), (0.45, 0.7), ((95, 75, 55), (240, 240, 235), (200, 190, 170)), 1.0),
    11: Kind(_diningtable, ("indoor",), (0.55, 0.85), ((140, 95, 55), (90, 60, 35), (235, 235, 230)),
              0.5),
    12: Kind(_dog, ("indoor", "ground"), (0.35, 0.6), ((160, 120, 75), (70, 50, 35), (220, 200, 170)),
              1.0),
    13: Kind(_horse, ("ground",), (0.5, 0.75), ((115, 75, 45), (40, 30, 25), (230, 230, 220)), 1.0),
    14: Kind(_motorbike, ("ground",), (0.4, 0.6), ((190, 40, 40), (30, 30, 35), (190, 190, 200)), 1.0),
    15: Kind(_person, ("ground", "indoor", "ground"), (0.5, 0.85),
              ((70, 90, 150), (50, 55, 70), (215, 165, 135)), 2.0),
    16: Kind(_pottedplant, ("indoor", "ground"), (0.5, 0.7),
              ((55, 130, 55), (175, 95, 60), (90, 160, 60)), 0.5),
    17: Kind(_sheep, ("ground",), (0.35, 0.55), ((225, 220, 205), (50, 45, 40), (200, 190, 170)),
              1.0),
    18: Kind(_sofa, ("indoor",), (0.55, 0.85), ((125, 65, 65), (55, 40, 35), (170, 150, 130)), 0.5),
    19: Kind(_train, ("ground",), (0.6, 0.95), ((60, 85, 145), (30, 30, 40), (200, 60, 40)), 1.0),
    20: Kind(_tvmonitor, ("indoor",), (0.4, 0.6), ((35, 35, 40), (20, 20, 20), (90, 140, 200)), 1.0),
}

OTHER_KINDS: dict[int, Kind] = {  # COCO category id -> kind
    8: Kind(_truck, ("ground",), (0.5, 0.8), ((170, 60, 50), (35, 35, 40), (210, 210, 210))),
    15: Kind(_bench, ("ground",), (0.45, 0.7), ((120, 80, 50), (60, 60, 60), (0, 0, 0))),
    22: Kind(_elephant, ("ground",), (0.55, 0.8), ((120, 115, 110), (90, 85, 80), (0, 0, 0))),
    25: Kind(_giraffe, ("ground",), (0.5, 0.75), ((200, 160, 80), (110, 70, 30), (0, 0, 0))),
    28: Kind(_umbrella, ("ground",), (0.4, 0.6), ((60, 60, 160), (40, 40, 40), (0, 0, 0))),
    10: Kind(_traffic_light, ("ground",), (0.4, 0.7), ((60, 60, 60), (30, 30, 30), (220, 60, 40))),
    47: Kind(_cup, ("indoor",), (0.2, 0.35), ((230, 230, 225), (200, 60, 60), (0, 0, 0))),
    85: Kind(_clock, ("indoor",), (0.3, 0.45), ((150, 110, 60), (30, 30, 30), (235, 235, 225))),
    65: Kind(_bed, ("indoor",), (0.6, 0.9), ((180, 170, 200), (110, 80, 50), (240, 240, 240))),
    73: Kind(_laptop, ("indoor",), (0.3, 0.5), ((170, 170, 175), (40, 40, 45), (80, 120, 190))),
    86: Kind(_vase, ("indoor",), (0.25, 0.45), ((60, 110, 160), (200, 180, 60), (0, 0, 0))),
    38: Kind(_kite, ("sky",), (0.25, 0.45), ((220, 50, 60), (40, 40, 40), (0, 0, 0))),
    33: Kind(_suitcase, ("ground", "indoor"), (0.3, 0.5), ((60, 60, 70), (30, 30, 30), (0, 0, 0))),
    23: Kind(_bear, ("ground",), (0.45, 0.7), ((90, 65, 45), (40, 30, 25), (0, 0, 0))),
}
