"""Scene sampling and rendering of the synthetic datasets: classes chosen by context, objects
placed by depth, a textured background with unlabelled clutter, and the labels read off a scene
(class map, VOC label with its void band)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from deeplab_core.classes import COCO_TO_VOC, IGNORE_INDEX
from deeplab_core.data.coco import polygon_to_mask
from deeplab_core.data.synthetic.shapes import OTHER_KINDS, VOC_KINDS, Kind, Shape, Tone

VOC_TO_COCO = {v: k for k, v in COCO_TO_VOC.items()}

_SCENE_ZONES = {"outdoor": ("sky", "ground"), "water": ("sky", "water"), "indoor": ("indoor",)}
_ZONE_SCENES = {"sky": ("outdoor", "water"), "ground": ("outdoor",), "water": ("water",),
                 "indoor": ("indoor",)}


@dataclass
class SceneObject:
    cls: int                      # VOC class id; 0 for a non-VOC object
    coco_cat: int                 # COCO category id
    parts: list[tuple[np.ndarray, Tone]]
    crowd: bool = False


@dataclass
class Scene:
    image: np.ndarray             # uint8 HxWx3
    inst: np.ndarray              # int32 HxW: 0 = background, k = objects[k - 1]
    objects: list[SceneObject] = field(default_factory=list)


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
        b = Shape(rng.uniform(0, w), rng.uniform(0, h))
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


def _place(rng, kind: Kind, zone: str, h: int, w: int, horizon: float, scale_mul: float = 1.0):
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


def _build(rng, kind: Kind, cx: float, by: float, s: float) -> list[tuple[np.ndarray, Tone]]:
    d = 1 if rng.random() < 0.5 else -1
    ang = rng.uniform(-kind.spin, kind.spin) if kind.spin else 0.0
    b = Shape(cx, by, d, ang, pv=0.45 * s)
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
    ids = np.array(sorted(VOC_KINDS))
    wts = np.array([VOC_KINDS[i].weight for i in ids])
    first = int(rng.choice(ids, p=wts / wts.sum()))
    zone = str(rng.choice(VOC_KINDS[first].zones))
    scene = str(rng.choice(_ZONE_SCENES[zone]))
    chosen = [(first, zone)]
    zones_here = _SCENE_ZONES[scene]
    ok = [i for i in ids if any(z in zones_here for z in VOC_KINDS[i].zones)]
    okw = np.array([VOC_KINDS[i].weight for i in ok])
    for _ in range(n - 1):
        c = int(rng.choice(ok, p=okw / okw.sum()))
        zs = [z for z in VOC_KINDS[c].zones if z in zones_here]
        chosen.append((c, str(rng.choice(zs))))
    if any(c == 11 for c, _ in chosen) and len(chosen) < 4 and rng.random() < 0.5:
        chosen.append((9, "indoor"))  # tables come with chairs
    return scene, chosen


def _stage_others(rng, zones_here, n_other: int, h: int, w: int,
                  horizon: float) -> list[tuple[float, SceneObject, Kind]]:
    """Non-VOC objects, drawn first: they stand behind, so that COCO polygons of VOC objects stay
    exact."""
    others = [c for c, k in OTHER_KINDS.items() if any(z in zones_here for z in k.zones)]
    staged: list[tuple[float, SceneObject, Kind]] = []
    for _ in range(n_other if others else 0):
        cat = int(rng.choice(others))
        kind = OTHER_KINDS[cat]
        zone = str(rng.choice([z for z in kind.zones if z in zones_here]))
        cx, by, s = _place(rng, kind, zone, h, w, horizon)
        staged.append((-1e9 + by, SceneObject(0, cat, _build(rng, kind, cx, by, s)), kind))
    return staged


def _crowd(rng, h: int, w: int, horizon: float) -> tuple[SceneObject, Kind]:
    """A COCO crowd: several small objects of one class near each other, one annotation."""
    c = int(rng.choice([15, 17, 10, 3, 7, 13]))
    kind = VOC_KINDS[c]
    zone = "sky" if c == 3 else "ground"
    parts = []
    gx = rng.uniform(0.2 * w, 0.8 * w)
    for _ in range(int(rng.integers(3, 7))):
        by = horizon + rng.uniform(0.0, 0.18) * (h - horizon) if zone == "ground" \
            else rng.uniform(0.15 * h, max(horizon, 0.3 * h))
        s = rng.uniform(*kind.size) * min(h, w) * 0.4
        parts += _build(rng, kind, gx + rng.uniform(-0.15, 0.15) * w, by, s)
    return SceneObject(c, VOC_TO_COCO[c], parts, crowd=True), kind


def _paint_objects(rng, img: np.ndarray, paint: list[tuple[SceneObject, Kind]]
                   ) -> tuple[np.ndarray, list[SceneObject]]:
    """Paint the objects in order into ``img`` (in place); returns the instance map (int32 HxW,
    k = k-th returned object) and the objects with at least one visible pixel."""
    h, w = img.shape[:2]
    inst = np.zeros((h, w), dtype=np.int32)
    objects: list[SceneObject] = []
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
    return inst, objects


def render_scene(rng, h: int, w: int, coco: bool = False) -> Scene:
    """One random scene of size ``h`` x ``w``, every draw from ``rng``; ``coco`` adds the COCO
    cases (images without a VOC class, more non-VOC objects, crowds)."""
    n_obj = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.2, 0.15]))
    scene, chosen = _sample_classes(rng, n_obj)
    if coco and rng.random() < 0.15:
        chosen = []  # an image without any VOC class (the COCO filter drops it)
    img, horizon = _background(rng, h, w, scene)
    _clutter(rng, img)
    zones_here = _SCENE_ZONES[scene]

    n_other = int(rng.integers(0, 3)) if coco else int(rng.random() < 0.35)
    if coco and not chosen:
        n_other = int(rng.integers(1, 4))
    staged = _stage_others(rng, zones_here, n_other, h, w, horizon)
    crowd_objs: list[tuple[SceneObject, Kind]] = []
    if coco and chosen and scene == "outdoor" and rng.random() < 0.25:
        crowd_objs.append(_crowd(rng, h, w, horizon))
    for c, zone in chosen:
        kind = VOC_KINDS[c]
        cx, by, s = _place(rng, kind, zone, h, w, horizon)
        order = by - (1e6 if zone == "sky" else 0.0)
        staged.append((order, SceneObject(c, VOC_TO_COCO[c], _build(rng, kind, cx, by, s)), kind))
    staged.sort(key=lambda t: t[0])
    paint = [(o, k) for o, k in crowd_objs] + [(o, k) for _, o, k in staged]
    # crowds and non-VOC objects go behind the VOC objects
    paint.sort(key=lambda ok: 0 if (ok[0].crowd or ok[0].cls == 0) else 1)

    inst, objects = _paint_objects(rng, img, paint)
    img = ndimage.gaussian_filter(img, sigma=(rng.uniform(0.3, 0.6),) * 2 + (0,), mode="nearest")
    img = img + rng.normal(0, 2.0, img.shape)
    return Scene(np.clip(np.rint(img), 0, 255).astype(np.uint8), inst, objects)


def class_map(scene: Scene) -> np.ndarray:
    """uint8 HxW class ids of a scene (crowds and non-VOC objects count as background)."""
    lut = np.zeros(len(scene.objects) + 1, dtype=np.uint8)
    for i, o in enumerate(scene.objects, start=1):
        lut[i] = 0 if o.crowd else o.cls
    return lut[scene.inst]


def voc_label_from_scene(scene: Scene, difficult_px: int = 10) -> np.ndarray:
    """VOC-style label: class ids with a 1 px void (255) band outside each labelled object (where
    it meets background or another object) and tiny visible objects marked void entirely."""
    cls = class_map(scene)
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

