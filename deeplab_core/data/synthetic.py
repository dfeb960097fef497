"""Deterministic synthetic stand-ins for PASCAL VOC 2012, SBD and COCO 2017, in their real formats.

:func:`generate_synthetic` writes, under ``root``::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg                (every VOC-style id, SBD ones included)
    VOCdevkit/VOC2012/SegmentationClass/<id>.png         palette PNG, 0..20 + 255 boundary band
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    benchmark_RELEASE/dataset/img/<id>.jpg
    benchmark_RELEASE/dataset/cls/<id>.mat               GTcls struct (Segmentation, Boundaries,
                                                         CategoriesPresent)
    benchmark_RELEASE/dataset/{train,val}.txt
    coco/{train2017,val2017}/<012d id>.jpg
    coco/annotations/instances_{train,val}2017.json      80 categories, polygons, list RLE crowds
    synthetic_summary.json

Scenes are built so that colour alone does not identify a class: every class has a shape family
(aeroplane = cross, bottle = tall narrow body with a neck, bicycle = two thin rings and a thin
frame, ...), object colours come from wide, overlapping distributions, the background is textured
and holds unlabelled clutter (including non-VOC objects), and classes appear in their usual
context (aeroplanes in the sky, boats on water, sofas and tables indoors, objects lower in the
frame are larger). The hard classes (bicycle, chair, diningtable, pottedplant, sofa) are drawn
about half as often as the others and have 1-3 px structures (spokes, legs, stems) next to parts
a network can see at 96x128 (2-3 px tyres and frame, a seat and often a solid back, a table top a
few pixels deep, a pot under a clump of foliage). Look-alike classes carry a cue of their own
(cats are striped, dogs wear a collar). Objects have hard edges in the image (a dense CRF can
snap to them); the image then gets a mild blur, noise and JPEG compression.

Every image depends only on ``(seed, dataset, id)``, so the output is byte-identical for a seed.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from deeplab_core.classes import COCO_CATEGORIES, COCO_TO_VOC, HARD_CLASS_IDS, IGNORE_INDEX, \
    VOC_CLASSES
from deeplab_core.data.coco import coco_semantic_mask, mask_bbox, polygon_to_mask, rle_encode
from deeplab_core.data.io import PathLike, encode_jpeg, encode_label_png
from deeplab_core.data.sbd import encode_gtcls_mat
from deeplab_core.fileio import atomic_write_json, clean_stale_temporaries, replace_directory

DEFAULT_IMAGE_SIZE = (96, 128)
VOC_TO_COCO = {v: k for k, v in COCO_TO_VOC.items()}
N_CLASSES = len(VOC_CLASSES)

# ============================================================================ shape building
Tone = int  # 0 = main colour, 1 = detail colour, 2 = accent colour


class _Shape:
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
def _aeroplane(b: _Shape, s, rng):
    c = 0.45 * s
    b.rect(-0.5 * s, c - 0.055 * s, 0.45 * s, c + 0.055 * s)                        # fuselage
    b.ellipse(0.45 * s, c, 0.08 * s, 0.055 * s)                                     # nose
    sw = rng.uniform(0.05, 0.15) * s
    b.poly([(0.06 * s, c), (-sw, c + 0.42 * s), (-sw - 0.09 * s, c + 0.42 * s), (-0.1 * s, c),
            (-sw - 0.09 * s, c - 0.42 * s), (-sw, c - 0.42 * s)])                   # wings: cross
    b.poly([(-0.38 * s, c), (-0.46 * s, c + 0.2 * s), (-0.52 * s, c + 0.2 * s), (-0.5 * s, c)], 1)
    b.rect(-0.52 * s, c - 0.13 * s, -0.44 * s, c + 0.13 * s, 1)                     # tailplane


def _bicycle(b: _Shape, s, rng):
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


def _bird(b: _Shape, s, rng):
    b.ellipse(0.0, 0.35 * s, 0.3 * s, 0.13 * s, ang=rng.uniform(-15, 15))
    b.ellipse(0.28 * s, 0.5 * s, 0.1 * s, 0.1 * s)
    b.poly([(0.36 * s, 0.53 * s), (0.5 * s, 0.48 * s), (0.36 * s, 0.45 * s)], 1)    # beak
    up = rng.uniform(0.6, 0.95) * s
    b.poly([(-0.12 * s, 0.4 * s), (0.12 * s, 0.4 * s), (-0.2 * s, up)])            # wing
    b.poly([(-0.25 * s, 0.35 * s), (-0.5 * s, 0.45 * s), (-0.48 * s, 0.25 * s)], 1)  # tail


def _boat(b: _Shape, s, rng):
    b.poly([(-0.5 * s, 0.18 * s), (0.5 * s, 0.18 * s), (0.38 * s, 0.0), (-0.38 * s, 0.0)])
    if rng.random() < 0.6:
        b.line(0.0, 0.17 * s, 0.0, 0.9 * s, _thin(rng, 1.3, 2.5), 1)               # mast
        b.poly([(0.04 * s, 0.22 * s), (0.04 * s, 0.86 * s), (0.38 * s, 0.24 * s)], 2)
    else:
        b.rect(-0.25 * s, 0.17 * s, 0.15 * s, 0.35 * s, 2)                           # cabin
        b.rect(-0.18 * s, 0.24 * s, -0.05 * s, 0.3 * s, 1)


def _bottle(b: _Shape, s, rng):
    w = rng.uniform(0.09, 0.13) * s
    b.rect(-w, 0.0, w, 0.6 * s)
    b.poly([(-w, 0.6 * s), (w, 0.6 * s), (0.045 * s, 0.72 * s), (-0.045 * s, 0.72 * s)])
    b.rect(-0.045 * s, 0.72 * s, 0.045 * s, 0.93 * s)
    b.rect(-0.05 * s, 0.93 * s, 0.05 * s, 1.0 * s, 1)
    b.rect(-w, 0.2 * s, w, 0.4 * s, 2)                                             # label


def _bus(b: _Shape, s, rng):
    b.rect(-0.6 * s, 0.06 * s, 0.6 * s, 0.62 * s)
    n = int(rng.integers(4, 7))
    xs = np.linspace(-0.52 * s, 0.42 * s, n + 1)
    for x0, x1 in zip(xs[:-1], xs[1:]):
        b.rect(x0 + 0.02 * s, 0.38 * s, x1 - 0.02 * s, 0.54 * s, 1)               # windows
    b.rect(0.46 * s, 0.12 * s, 0.56 * s, 0.54 * s, 1)                               # door
    for u in (-0.38 * s, 0.38 * s):
        b.ellipse(u, 0.08 * s, 0.085 * s, 0.085 * s, 1)


def _car(b: _Shape, s, rng):
    b.rect(-0.5 * s, 0.07 * s, 0.5 * s, 0.3 * s)
    b.poly([(-0.3 * s, 0.3 * s), (0.32 * s, 0.3 * s), (0.18 * s, 0.5 * s), (-0.2 * s, 0.5 * s)])
    b.poly([(-0.25 * s, 0.32 * s), (-0.03 * s, 0.32 * s), (-0.03 * s, 0.46 * s),
            (-0.17 * s, 0.46 * s)], 1)
    b.poly([(0.0, 0.32 * s), (0.26 * s, 0.32 * s), (0.15 * s, 0.46 * s), (0.0, 0.46 * s)], 1)
    for u in (-0.3 * s, 0.3 * s):
        b.ellipse(u, 0.1 * s, 0.1 * s, 0.1 * s, 1)


def _cat(b: _Shape, s, rng):
    b.ellipse(-0.05 * s, 0.26 * s, 0.3 * s, 0.14 * s)
    for u in (-0.28 * s, -0.18 * s, 0.08 * s, 0.16 * s):
        b.rect(u, 0.0, u + 0.055 * s, 0.2 * s)
    b.ellipse(0.28 * s, 0.44 * s, 0.11 * s, 0.1 * s)
    b.poly([(0.19 * s, 0.5 * s), (0.22 * s, 0.65 * s), (0.28 * s, 0.52 * s)])
    b.poly([(0.29 * s, 0.52 * s), (0.35 * s, 0.65 * s), (0.38 * s, 0.5 * s)])
    b.line(-0.33 * s, 0.3 * s, -0.48 * s, rng.uniform(0.4, 0.65) * s, max(1.5, 0.045 * s))
    for k in range(int(rng.integers(3, 5))):                                       # stripes
        b.rect(-0.25 * s + k * 0.1 * s, 0.15 * s, -0.21 * s + k * 0.1 * s, 0.38 * s, 1)


def _chair(b: _Shape, s, rng):
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


def _cow(b: _Shape, s, rng):
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


def _diningtable(b: _Shape, s, rng):
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


def _dog(b: _Shape, s, rng):
    b.ellipse(0.0, 0.38 * s, 0.3 * s, 0.13 * s)
    for u in (-0.26 * s, -0.17 * s, 0.13 * s, 0.21 * s):
        b.rect(u, 0.0, u + 0.06 * s, 0.32 * s)
    b.ellipse(0.34 * s, 0.55 * s, 0.11 * s, 0.09 * s)
    b.rect(0.4 * s, 0.48 * s, 0.52 * s, 0.56 * s)                                  # snout
    b.poly([(0.27 * s, 0.62 * s), (0.33 * s, 0.62 * s), (0.28 * s, 0.42 * s)], 1)   # ear
    b.line(0.25 * s, 0.56 * s, 0.31 * s, 0.44 * s, max(1.5, 0.04 * s), 2)          # collar
    b.line(-0.3 * s, 0.42 * s, -0.42 * s, rng.uniform(0.55, 0.75) * s, max(1.5, 0.04 * s))


def _horse(b: _Shape, s, rng):
    b.ellipse(0.0, 0.55 * s, 0.35 * s, 0.15 * s)
    for u in (-0.28 * s, -0.2 * s, 0.17 * s, 0.25 * s):
        b.rect(u, 0.0, u + 0.05 * s, 0.5 * s)
    b.poly([(0.22 * s, 0.55 * s), (0.33 * s, 0.62 * s), (0.47 * s, 0.9 * s), (0.38 * s, 0.95 * s)])
    b.poly([(0.38 * s, 0.95 * s), (0.47 * s, 0.9 * s), (0.6 * s, 0.78 * s), (0.55 * s, 0.74 * s),
            (0.4 * s, 0.83 * s)])
    b.line(0.27 * s, 0.68 * s, 0.4 * s, 0.95 * s, max(1.5, 0.04 * s), 1)            # mane
    b.line(-0.35 * s, 0.62 * s, -0.45 * s, 0.3 * s, max(1.5, 0.05 * s), 1)          # tail


def _motorbike(b: _Shape, s, rng):
    for u in (-0.33 * s, 0.33 * s):
        b.ellipse(u, 0.17 * s, 0.17 * s, 0.17 * s, 1)
        b.ellipse(u, 0.17 * s, 0.06 * s, 0.06 * s, 2)
    b.poly([(-0.28 * s, 0.25 * s), (0.18 * s, 0.22 * s), (0.28 * s, 0.45 * s), (-0.08 * s, 0.5 * s),
            (-0.3 * s, 0.42 * s)])
    b.rect(-0.3 * s, 0.44 * s, -0.02 * s, 0.52 * s, 1)                              # seat
    b.line(0.33 * s, 0.17 * s, 0.25 * s, 0.55 * s, _thin(rng, 1.5, 2.5), 2)         # fork
    b.line(0.2 * s, 0.6 * s, 0.32 * s, 0.58 * s, _thin(rng, 1.5, 2.5), 1)


def _person(b: _Shape, s, rng):
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


def _pottedplant(b: _Shape, s, rng):
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


def _sheep(b: _Shape, s, rng):
    tl = _thin(rng, 1.4, 2.6)
    for u in (-0.22 * s, -0.14 * s, 0.1 * s, 0.18 * s):
        b.line(u, 0.0, u, 0.3 * s, tl, 1)
    for _ in range(int(rng.integers(6, 10))):
        rr = rng.uniform(0.09, 0.14) * s
        b.ellipse(rng.uniform(-0.25, 0.22) * s, rng.uniform(0.36, 0.47) * s, rr, rr, n=12)
    b.ellipse(0.36 * s, 0.46 * s, 0.085 * s, 0.065 * s, 1, ang=-20)


def _sofa(b: _Shape, s, rng):
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


def _train(b: _Shape, s, rng):
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


def _tvmonitor(b: _Shape, s, rng):
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
class _Kind:
    builder: Callable
    zones: tuple[str, ...]            # where it can stand: sky, ground, water, indoor
    size: tuple[float, float]         # object scale as a fraction of min(H, W)
    colours: tuple[tuple[int, int, int], ...]  # main, detail, accent colour means
    weight: float = 1.0               # how often it is drawn
    spin: float = 0.0                 # random rotation range (degrees)


_VOC_KINDS: dict[int, _Kind] = {
    1: _Kind(_aeroplane, ("sky", "sky", "ground"), (0.45, 0.75),
             ((195, 198, 210), (150, 40, 40), (60, 60, 90)), 1.0, 18),
    2: _Kind(_bicycle, ("ground",), (0.5, 0.75), ((160, 50, 50), (40, 40, 40), (200, 200, 200)),
             0.5),
    3: _Kind(_bird, ("sky", "ground", "water"), (0.3, 0.48),
             ((120, 95, 70), (220, 160, 40), (240, 240, 240)), 1.0, 20),
    4: _Kind(_boat, ("water",), (0.4, 0.7), ((225, 225, 230), (80, 60, 40), (200, 60, 50)), 1.0),
    5: _Kind(_bottle, ("indoor", "indoor", "ground"), (0.35, 0.55),
             ((50, 120, 70), (200, 180, 60), (230, 225, 210)), 1.0),
    6: _Kind(_bus, ("ground",), (0.55, 0.85), ((215, 180, 50), (40, 45, 55), (230, 230, 230)), 1.0),
    7: _Kind(_car, ("ground",), (0.45, 0.7), ((150, 35, 40), (35, 38, 45), (200, 200, 210)), 1.0),
    8: _Kind(_cat, ("indoor", "ground"), (0.35, 0.6), ((140, 115, 90), (60, 50, 40), (230, 220, 200)),
             1.0),
    9: _Kind(_chair, ("indoor", "indoor", "ground"), (0.5, 0.75),
             ((115, 75, 45), (60, 40, 25), (180, 60, 60)), 0.5),
    10: _Kind(_cow, ("ground",), (0.45, 0.7), ((95, 75, 55), (240, 240, 235), (200, 190, 170)), 1.0),
    11: _Kind(_diningtable, ("indoor",), (0.55, 0.85), ((140, 95, 55), (90, 60, 35), (235, 235, 230)),
              0.5),
    12: _Kind(_dog, ("indoor", "ground"), (0.35, 0.6), ((160, 120, 75), (70, 50, 35), (220, 200, 170)),
              1.0),
    13: _Kind(_horse, ("ground",), (0.5, 0.75), ((115, 75, 45), (40, 30, 25), (230, 230, 220)), 1.0),
    14: _Kind(_motorbike, ("ground",), (0.4, 0.6), ((190, 40, 40), (30, 30, 35), (190, 190, 200)), 1.0),
    15: _Kind(_person, ("ground", "indoor", "ground"), (0.5, 0.85),
              ((70, 90, 150), (50, 55, 70), (215, 165, 135)), 2.0),
    16: _Kind(_pottedplant, ("indoor", "ground"), (0.5, 0.7),
              ((55, 130, 55), (175, 95, 60), (90, 160, 60)), 0.5),
    17: _Kind(_sheep, ("ground",), (0.35, 0.55), ((225, 220, 205), (50, 45, 40), (200, 190, 170)),
              1.0),
    18: _Kind(_sofa, ("indoor",), (0.55, 0.85), ((125, 65, 65), (55, 40, 35), (170, 150, 130)), 0.5),
    19: _Kind(_train, ("ground",), (0.6, 0.95), ((60, 85, 145), (30, 30, 40), (200, 60, 40)), 1.0),
    20: _Kind(_tvmonitor, ("indoor",), (0.4, 0.6), ((35, 35, 40), (20, 20, 20), (90, 140, 200)), 1.0),
}

_OTHER_KINDS: dict[int, _Kind] = {  # COCO category id -> kind
    8: _Kind(_truck, ("ground",), (0.5, 0.8), ((170, 60, 50), (35, 35, 40), (210, 210, 210))),
    15: _Kind(_bench, ("ground",), (0.45, 0.7), ((120, 80, 50), (60, 60, 60), (0, 0, 0))),
    22: _Kind(_elephant, ("ground",), (0.55, 0.8), ((120, 115, 110), (90, 85, 80), (0, 0, 0))),
    25: _Kind(_giraffe, ("ground",), (0.5, 0.75), ((200, 160, 80), (110, 70, 30), (0, 0, 0))),
    28: _Kind(_umbrella, ("ground",), (0.4, 0.6), ((60, 60, 160), (40, 40, 40), (0, 0, 0))),
    10: _Kind(_traffic_light, ("ground",), (0.4, 0.7), ((60, 60, 60), (30, 30, 30), (220, 60, 40))),
    47: _Kind(_cup, ("indoor",), (0.2, 0.35), ((230, 230, 225), (200, 60, 60), (0, 0, 0))),
    85: _Kind(_clock, ("indoor",), (0.3, 0.45), ((150, 110, 60), (30, 30, 30), (235, 235, 225))),
    65: _Kind(_bed, ("indoor",), (0.6, 0.9), ((180, 170, 200), (110, 80, 50), (240, 240, 240))),
    73: _Kind(_laptop, ("indoor",), (0.3, 0.5), ((170, 170, 175), (40, 40, 45), (80, 120, 190))),
    86: _Kind(_vase, ("indoor",), (0.25, 0.45), ((60, 110, 160), (200, 180, 60), (0, 0, 0))),
    38: _Kind(_kite, ("sky",), (0.25, 0.45), ((220, 50, 60), (40, 40, 40), (0, 0, 0))),
    33: _Kind(_suitcase, ("ground", "indoor"), (0.3, 0.5), ((60, 60, 70), (30, 30, 30), (0, 0, 0))),
    23: _Kind(_bear, ("ground",), (0.45, 0.7), ((90, 65, 45), (40, 30, 25), (0, 0, 0))),
}

_SCENE_ZONES = {"outdoor": ("sky", "ground"), "water": ("sky", "water"), "indoor": ("indoor",)}
_ZONE_SCENES = {"sky": ("outdoor", "water"), "ground": ("outdoor",), "water": ("water",),
                "indoor": ("indoor",)}


# ============================================================================ scene sampling
@dataclass
class _Obj:
    cls: int                      # VOC class id; 0 for a non-VOC object
    coco_cat: int                 # COCO category id
    parts: list[tuple[np.ndarray, Tone]]
    crowd: bool = False


@dataclass
class _Scene:
    image: np.ndarray             # uint8 HxWx3
    inst: np.ndarray              # int32 HxW: 0 = background, k = objects[k - 1]
    objects: list[_Obj] = field(default_factory=list)


def _colour(rng, mean, spread=45.0, p_random=0.3) -> np.ndarray:
    if rng.random() < p_random:
        return rng.uniform(15, 240, 3)
    return np.clip(np.asarray(mean, float) + rng.normal(0, spread, 3), 0, 255)


def _background(rng, h, w, scene: str) -> tuple[np.ndarray, float]:
    if scene == "indoor":
        horizon = rng.uniform(0.45, 0.75) * h
        top = _colour(rng, (200, 190, 170), 45, 0.35)
        bottom = _colour(rng, (140, 110, 80), 45, 0.35)
    elif scene == "water":
        horizon = rng.uniform(0.3, 0.55) * h
        top = _colour(rng, (140, 175, 215), 40, 0.25)
        bottom = _colour(rng, (55, 95, 150), 40, 0.25)
    else:
        horizon = rng.uniform(0.3, 0.6) * h
        top = _colour(rng, (140, 175, 215), 40, 0.3)
        bottom = _colour(rng, (105, 125, 80) if rng.random() < 0.6 else (120, 120, 120), 40, 0.3)
    yy = np.arange(h, dtype=np.float64)[:, None]
    xx = np.arange(w, dtype=np.float64)[None, :]
    edge = horizon + rng.uniform(0.5, 3.0) * np.sin(xx / rng.uniform(6, 20) + rng.uniform(0, 6))
    low = (yy >= edge)[..., None]
    img = np.where(low, bottom, top) * (1.0 + 0.15 * (yy / h - 0.5))[..., None]
    gh, gw = max(h // 12, 2), max(w // 12, 2)
    coarse = rng.normal(0.0, rng.uniform(8, 22), (gh, gw, 3))
    img = img + ndimage.zoom(coarse, (h / gh, w / gw, 1), order=1)[:h, :w]
    img = img + rng.normal(0.0, rng.uniform(3, 9), (h, w, 1)) + rng.normal(0, 2.0, (h, w, 3))
    if scene == "water":  # ripples
        img += (low * np.sin(yy * rng.uniform(1.2, 2.2))[..., None] * 8.0)
    return img, float(horizon)


def _clutter(rng, img: np.ndarray) -> None:
    """Unlabelled blobs, bars and lines on the background (leaves, windows, poles, clouds)."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 5))):
        b = _Shape(rng.uniform(0, w), rng.uniform(0, h))
        k = rng.integers(0, 3)
        m = min(h, w)
        if k == 0:
            b.ellipse(0, 0, rng.uniform(0.05, 0.25) * m, rng.uniform(0.05, 0.2) * m,
                      ang=rng.uniform(0, 180))
        elif k == 1:
            b.rect(0, 0, rng.uniform(0.05, 0.3) * m, rng.uniform(0.05, 0.3) * m)
        else:
            b.line(0, 0, rng.uniform(-0.4, 0.4) * m, rng.uniform(-0.4, 0.4) * m,
                   rng.uniform(1.0, 3.0))
        col = _colour(rng, img[int(np.clip(b.by, 0, h - 1)), int(np.clip(b.cx, 0, w - 1))], 50, 0.3)
        alpha = rng.uniform(0.3, 0.8)
        for poly, _ in b.parts:
            mk = polygon_to_mask(poly, h, w)
            img[mk] = (1 - alpha) * img[mk] + alpha * col


def _place(rng, kind: _Kind, zone: str, h: int, w: int, horizon: float, scale_mul: float = 1.0):
    m = min(h, w)
    if zone == "sky":
        by = rng.uniform(0.25 * h, max(horizon, 0.3 * h) + 0.05 * h)
        depth = 1.0
    else:
        by = rng.uniform(horizon + 0.12 * (h - horizon), h + 0.08 * h)
        depth = 0.55 + 0.7 * (by - horizon) / max(h - horizon, 1.0)
    s = rng.uniform(*kind.size) * m * depth * scale_mul
    cx = rng.uniform(0.08 * w, 0.92 * w)
    return cx, by, s


def _build(rng, kind: _Kind, cx: float, by: float, s: float) -> list[tuple[np.ndarray, Tone]]:
    d = 1 if rng.random() < 0.5 else -1
    ang = rng.uniform(-kind.spin, kind.spin) if kind.spin else 0.0
    b = _Shape(cx, by, d, ang, pv=0.45 * s)
    kind.builder(b, s, rng)
    return b.parts


def _clamp_parts(parts, h, w):
    out = []
    for poly, tone in parts:
        p = np.round(np.clip(poly, [0.0, 0.0], [float(w), float(h)]), 2)
        if len(np.unique(p, axis=0)) >= 3:
            out.append((p, tone))
    return out


def _sample_classes(rng, n: int) -> tuple[str, list[tuple[int, str]]]:
    ids = np.array(sorted(_VOC_KINDS))
    wts = np.array([_VOC_KINDS[i].weight for i in ids])
    first = int(rng.choice(ids, p=wts / wts.sum()))
    zone = str(rng.choice(_VOC_KINDS[first].zones))
    scene = str(rng.choice(_ZONE_SCENES[zone]))
    chosen = [(first, zone)]
    zones_here = _SCENE_ZONES[scene]
    ok = [i for i in ids if any(z in zones_here for z in _VOC_KINDS[i].zones)]
    okw = np.array([_VOC_KINDS[i].weight for i in ok])
    for _ in range(n - 1):
        c = int(rng.choice(ok, p=okw / okw.sum()))
        zs = [z for z in _VOC_KINDS[c].zones if z in zones_here]
        chosen.append((c, str(rng.choice(zs))))
    if any(c == 11 for c, _ in chosen) and len(chosen) < 4 and rng.random() < 0.5:
        chosen.append((9, "indoor"))  # tables come with chairs
    return scene, chosen


def _render_scene(rng, h: int, w: int, coco: bool = False) -> _Scene:
    n_obj = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.2, 0.15]))
    scene, chosen = _sample_classes(rng, n_obj)
    if coco and rng.random() < 0.15:
        chosen = []  # an image without any VOC class (the COCO filter drops it)
    img, horizon = _background(rng, h, w, scene)
    _clutter(rng, img)
    zones_here = _SCENE_ZONES[scene]

    # non-VOC objects first: they stand behind, so that COCO polygons of VOC objects stay exact
    others = [c for c, k in _OTHER_KINDS.items() if any(z in zones_here for z in k.zones)]
    n_other = int(rng.integers(0, 3)) if coco else int(rng.random() < 0.35)
    if coco and not chosen:
        n_other = int(rng.integers(1, 4))
    staged: list[tuple[float, _Obj, _Kind]] = []
    for _ in range(n_other if others else 0):
        cat = int(rng.choice(others))
        kind = _OTHER_KINDS[cat]
        zone = str(rng.choice([z for z in kind.zones if z in zones_here]))
        cx, by, s = _place(rng, kind, zone, h, w, horizon)
        staged.append((-1e9 + by, _Obj(0, cat, _build(rng, kind, cx, by, s)), kind))

    crowd_objs: list[tuple[_Obj, _Kind]] = []
    if coco and chosen and scene == "outdoor" and rng.random() < 0.25:
        c = int(rng.choice([15, 17, 10, 3, 7, 13]))
        kind = _VOC_KINDS[c]
        zone = "sky" if c == 3 else "ground"
        parts = []
        gx = rng.uniform(0.2 * w, 0.8 * w)
        for _ in range(int(rng.integers(3, 7))):
            by = horizon + rng.uniform(0.0, 0.18) * (h - horizon) if zone == "ground" \
                else rng.uniform(0.15 * h, max(horizon, 0.3 * h))
            s = rng.uniform(*kind.size) * min(h, w) * 0.4
            parts += _build(rng, kind, gx + rng.uniform(-0.15, 0.15) * w, by, s)
        crowd_objs.append((_Obj(c, VOC_TO_COCO[c], parts, crowd=True), kind))

    for c, zone in chosen:
        kind = _VOC_KINDS[c]
        cx, by, s = _place(rng, kind, zone, h, w, horizon)
        order = by - (1e6 if zone == "sky" else 0.0)
        staged.append((order, _Obj(c, VOC_TO_COCO[c], _build(rng, kind, cx, by, s)), kind))
    staged.sort(key=lambda t: t[0])
    paint = [(o, k) for o, k in crowd_objs] + [(o, k) for _, o, k in staged]
    # crowds and non-VOC objects go behind the VOC objects
    paint.sort(key=lambda ok: 0 if (ok[0].crowd or ok[0].cls == 0) else 1)

    inst = np.zeros((h, w), dtype=np.int32)
    objects: list[_Obj] = []
    for obj, kind in paint:
        obj.parts = _clamp_parts(obj.parts, h, w)
        if not obj.parts:
            continue
        cols = [_colour(rng, kind.colours[0], 45, 0.3), _colour(rng, kind.colours[1], 30, 0.15),
                _colour(rng, kind.colours[2], 35, 0.25)]
        shade = rng.uniform(-0.15, 0.15)
        noise = rng.uniform(2, 7)
        k = len(objects) + 1
        any_px = False
        for poly, tone in obj.parts:
            mk = polygon_to_mask(poly, h, w)
            if not mk.any():
                continue
            any_px = True
            ys = np.nonzero(mk)[0]
            ramp = 1.0 + shade * ((ys - ys.mean()) / max(int(np.ptp(ys)), 1))
            img[mk] = cols[tone] * ramp[:, None] + rng.normal(0, noise, (ys.size, 3))
            inst[mk] = k
        if any_px:
            objects.append(obj)
        else:
            inst[inst == k] = 0
    img = ndimage.gaussian_filter(img, sigma=(rng.uniform(0.3, 0.6),) * 2 + (0,), mode="nearest")
    img = img + rng.normal(0, 2.0, img.shape)
    return _Scene(np.clip(np.rint(img), 0, 255).astype(np.uint8), inst, objects)


def _class_map(scene: _Scene) -> np.ndarray:
    lut = np.zeros(len(scene.objects) + 1, dtype=np.uint8)
    for i, o in enumerate(scene.objects, start=1):
        lut[i] = 0 if o.crowd else o.cls
    return lut[scene.inst]


def voc_label_from_scene(scene: _Scene, difficult_px: int = 10) -> np.ndarray:
    """VOC-style label: class ids with a 1 px void (255) band outside each labelled object (where
    it meets background or another object) and tiny visible objects marked void entirely."""
    cls = _class_map(scene)
    lab_inst = np.where(cls > 0, scene.inst, 0)
    h, w = lab_inst.shape
    pad = np.pad(lab_inst, 1, mode="edge")
    band = np.zeros((h, w), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            q = pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
            band |= (q != lab_inst) & (q != 0)
    label = cls.copy()
    label[band] = IGNORE_INDEX
    counts = np.bincount(lab_inst.ravel(), minlength=len(scene.objects) + 1)
    for k in np.flatnonzero((counts > 0) & (counts < difficult_px)):
        if k:
            label[lab_inst == k] = IGNORE_INDEX
    return label


# ============================================================================ ids and splits
def _rng_for(seed: int, kind: str, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(f"{kind}:{key}".encode())])


def _jitter_size(rng, image_size: tuple[int, int], jitter: float) -> tuple[int, int]:
    h, w = image_size
    if jitter <= 0:
        return h, w
    return (max(8, int(round(h * (1 + rng.uniform(-jitter, jitter))))),
            max(8, int(round(w * (1 + rng.uniform(-jitter, jitter))))))


def _voc_ids(rng, n: int) -> list[str]:
    ids, num, years = [], 0, (2007, 2008, 2009, 2010, 2011)
    per_year = max(1, math.ceil(n / len(years)))
    for i in range(n):
        if i % per_year == 0:
            num = int(rng.integers(1, 40))
        ids.append(f"{years[min(i // per_year, 4)]}_{num:06d}")
        num += int(rng.integers(1, 25))
    return ids


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _id_lines(ids) -> str:
    return "".join(f"{i}\n" for i in sorted(ids))


# ============================================================================ public entry point
def generate_synthetic(root: PathLike, seed: int = 0,
                       image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                       n_voc_train: int = 200, n_voc_val: int = 60,
                       n_sbd_train: int = 160, n_sbd_val: int = 40,
                       n_coco_train: int = 200, n_coco_val: int = 40,
                       sbd_overlap_val: int = 12, sbd_overlap_train: int | None = None,
                       size_jitter: float = 0.1, jpeg_quality: tuple[int, int] = (82, 95),
                       progress: bool = True) -> dict:
    """Write synthetic VOC 2012, SBD and COCO 2017 trees under ``root`` and return a summary.

    * VOC: ``n_voc_train`` / ``n_voc_val`` ids (``2007_000123`` style) with palette PNG labels.
    * SBD: ``n_sbd_train`` + ``n_sbd_val`` ids. ``sbd_overlap_val`` VOC *val* ids are in SBD too
      (about two thirds in SBD train, the rest in SBD val), with the same image, as in the real
      SBD, so the train_aug rule has something to remove; ``sbd_overlap_train`` VOC *train* ids
      (default a quarter of them, fewer if SBD train is smaller) are in SBD train as well; the
      remaining SBD ids exist only in SBD (their images are also in ``JPEGImages``, as in the
      real VOC 2012 tree).
    * COCO: ``n_coco_train`` / ``n_coco_val`` images; about 15 % hold no VOC-class object.
    * ``image_size`` is (H, W); each image varies by up to ``size_jitter`` of it.

    The three trees are built in a temporary folder and swapped in at the end, so an interrupted
    run leaves the previous trees (if any) untouched. Same arguments give byte-identical files.
    """
    t0 = time.perf_counter()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    h0, w0 = (int(image_size[0]), int(image_size[1]))
    if min(h0, w0) < 16:
        raise ValueError(f"image_size {image_size} is too small (need at least 16x16)")
    n_ov_val_tr = int(math.ceil(sbd_overlap_val * 2 / 3))
    n_ov_val_va = sbd_overlap_val - n_ov_val_tr
    if sbd_overlap_train is None:
        sbd_overlap_train = max(0, min(n_voc_train // 4, n_sbd_train - n_ov_val_tr))
    if sbd_overlap_val > n_voc_val or sbd_overlap_train > n_voc_train:
        raise ValueError("SBD overlaps cannot exceed the VOC split sizes")
    if n_ov_val_tr + sbd_overlap_train > n_sbd_train or n_ov_val_va > n_sbd_val:
        raise ValueError("n_sbd_train / n_sbd_val too small for the requested overlaps")
    n_sbd_only_tr = n_sbd_train - n_ov_val_tr - sbd_overlap_train
    n_sbd_only_va = n_sbd_val - n_ov_val_va

    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7])
    pool = _voc_ids(rng, n_voc_train + n_voc_val + n_sbd_only_tr + n_sbd_only_va)
    perm = [pool[i] for i in rng.permutation(len(pool))]
    voc_train = perm[:n_voc_train]
    voc_val = perm[n_voc_train:n_voc_train + n_voc_val]
    rest = perm[n_voc_train + n_voc_val:]
    sbd_only_tr, sbd_only_va = rest[:n_sbd_only_tr], rest[n_sbd_only_tr:]
    ov_val = voc_val[:sbd_overlap_val]
    sbd_train = voc_train[:sbd_overlap_train] + ov_val[:n_ov_val_tr] + sbd_only_tr
    sbd_val = ov_val[n_ov_val_tr:] + sbd_only_va
    voc_set, sbd_set = set(voc_train) | set(voc_val), set(sbd_train) | set(sbd_val)

    coco_ids = rng.choice(np.arange(1, 581930), size=n_coco_train + n_coco_val, replace=False)
    coco_split = {"train": sorted(int(i) for i in coco_ids[:n_coco_train]),
                  "val": sorted(int(i) for i in coco_ids[n_coco_train:])}

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    total = len(pool) + n_coco_train + n_coco_val
    bar = tqdm(total=total, desc="synthetic", disable=not progress) if tqdm else None

    class_images = {"voc": np.zeros(N_CLASSES, np.int64), "sbd": np.zeros(N_CLASSES, np.int64),
                    "coco": np.zeros(N_CLASSES, np.int64)}
    class_pixels = {k: np.zeros(N_CLASSES, np.int64) for k in class_images}
    names = ("VOCdevkit", "benchmark_RELEASE", "coco")
    for n in names + ("synthetic",):
        clean_stale_temporaries(root, n)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic.tmp-", dir=root))
    try:
        voc_dir = tmp / "VOCdevkit" / "VOC2012"
        sbd_dir = tmp / "benchmark_RELEASE" / "dataset"
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (voc_dir / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("img", "cls"):
            (sbd_dir / sub).mkdir(parents=True, exist_ok=True)

        for image_id in sorted(pool):
            r = _rng_for(seed, "voc", image_id)
            h, w = _jitter_size(r, (h0, w0), size_jitter)
            scene = _render_scene(r, h, w)
            jpg = encode_jpeg(scene.image, int(r.integers(jpeg_quality[0], jpeg_quality[1] + 1)))
            _write(voc_dir / "JPEGImages" / f"{image_id}.jpg", jpg)
            if image_id in voc_set:
                lab = voc_label_from_scene(scene)
                _write(voc_dir / "SegmentationClass" / f"{image_id}.png", encode_label_png(lab))
                _tally(lab, class_images["voc"], class_pixels["voc"])
            if image_id in sbd_set:
                seg = _class_map(scene)
                _write(sbd_dir / "img" / f"{image_id}.jpg", jpg)
                _write(sbd_dir / "cls" / f"{image_id}.mat", encode_gtcls_mat(seg))
                _tally(seg, class_images["sbd"], class_pixels["sbd"])
            if bar:
                bar.update(1)
        seg_sets = voc_dir / "ImageSets" / "Segmentation"
        (seg_sets / "train.txt").write_text(_id_lines(voc_train))
        (seg_sets / "val.txt").write_text(_id_lines(voc_val))
        (seg_sets / "trainval.txt").write_text(_id_lines(voc_train + voc_val))
        (sbd_dir / "train.txt").write_text(_id_lines(sbd_train))
        (sbd_dir / "val.txt").write_text(_id_lines(sbd_val))

        coco_counts = {}
        ann_id = 100000 + int(rng.integers(0, 100000))
        for split, ids in coco_split.items():
            images, anns = [], []
            n_crowd = n_poly = 0
            for image_id in ids:
                r = _rng_for(seed, f"coco_{split}", str(image_id))
                h, w = _jitter_size(r, (h0, w0), size_jitter)
                scene = _render_scene(r, h, w, coco=True)
                fname = f"{image_id:012d}.jpg"
                _write(tmp / "coco" / f"{split}2017" / fname,
                       encode_jpeg(scene.image, int(r.integers(jpeg_quality[0],
                                                                jpeg_quality[1] + 1))))
                images.append({"license": 1, "file_name": fname, "coco_url": "",
                               "height": h, "width": w, "date_captured": "2013-11-14 00:00:00",
                               "flickr_url": "", "id": image_id})
                img_anns = []
                for obj in scene.objects:
                    ann_id += 1
                    img_anns.append(_coco_annotation(obj, ann_id, image_id, h, w))
                    n_crowd += obj.crowd
                    n_poly += not obj.crowd
                anns += img_anns
                sem = coco_semantic_mask(img_anns, h, w)
                _tally(sem, class_images["coco"], class_pixels["coco"])
                if bar:
                    bar.update(1)
            doc = {"info": {"description": "synthetic COCO-format data", "version": "1.0",
                            "year": 2017, "contributor": "deeplab_core.data.synthetic",
                            "date_created": "2017/09/01"},
                   "licenses": [{"url": "", "id": 1, "name": "synthetic"}],
                   "images": images, "annotations": anns, "categories": _coco_categories()}
            _write(tmp / "coco" / "annotations" / f"instances_{split}2017.json",
                   json.dumps(doc, separators=(",", ":")).encode())
            coco_counts[split] = {"images": len(images), "annotations": len(anns),
                                  "crowd": n_crowd, "polygon": n_poly}
        if bar:
            bar.close()
        summary = {
            "seed": int(seed), "image_size": [h0, w0], "size_jitter": size_jitter,
            "voc": {"train": len(voc_train), "val": len(voc_val),
                    "jpeg_images": len(pool)},
            "sbd": {"train": len(sbd_train), "val": len(sbd_val),
                    "overlap_voc_val": sorted(ov_val), "overlap_voc_train": sbd_overlap_train},
            "coco": coco_counts,
            "class_images": {k: dict(zip(VOC_CLASSES, v.tolist())) for k, v in class_images.items()},
            "class_pixels": {k: dict(zip(VOC_CLASSES, v.tolist())) for k, v in class_pixels.items()},
            "hard_class_ids": list(HARD_CLASS_IDS),
        }
        for n in names:  # swap each finished tree into place
            replace_directory(tmp / n, root / n)
        atomic_write_json(root / "synthetic_summary.json", summary)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = dict(summary, root=str(root), seconds=round(time.perf_counter() - t0, 3))
    return summary


def _tally(label: np.ndarray, images: np.ndarray, pixels: np.ndarray) -> None:
    cnt = np.bincount(label.ravel(), minlength=256)[:N_CLASSES]
    pixels += cnt
    images += cnt > 0


def _coco_categories() -> list[dict]:
    def supercat(cid: int) -> str:
        for hi, name in ((1, "person"), (9, "vehicle"), (15, "outdoor"), (25, "animal"),
                         (33, "accessory"), (43, "sports"), (51, "kitchen"), (61, "food"),
                         (70, "furniture"), (77, "electronic"), (82, "appliance"), (90, "indoor")):
            if cid <= hi:
                return name
        return "other"
    return [{"supercategory": supercat(cid), "id": cid, "name": name}
            for cid, name in COCO_CATEGORIES]


def _coco_annotation(obj: _Obj, ann_id: int, image_id: int, h: int, w: int) -> dict:
    mask = np.zeros((h, w), dtype=bool)
    for poly, _ in obj.parts:
        polygon_to_mask(poly, h, w, out=mask)
    if obj.crowd:
        seg = rle_encode(mask)
    else:
        seg = [[float(v) for v in poly.ravel()] for poly, _ in obj.parts]
    return {"segmentation": seg, "area": float(mask.sum()), "iscrowd": int(obj.crowd),
            "image_id": int(image_id), "bbox": mask_bbox(mask), "category_id": int(obj.coco_cat),
            "id": int(ann_id)}
