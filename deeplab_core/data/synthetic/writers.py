"""On-disk writers of the synthetic datasets: VOC 2012 (JPEG + palette PNG + split files), SBD
(JPEG + GTcls .mat + split files) and COCO 2017 (JPEG + instances JSON), and
:func:`generate_synthetic`, which samples the ids and splits and writes the three trees."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplab_core.classes import COCO_CATEGORIES, HARD_CLASS_IDS, VOC_CLASSES
from deeplab_core.data.coco import coco_semantic_mask, mask_bbox, polygon_to_mask, rle_encode
from deeplab_core.data.io import PathLike, encode_jpeg, encode_label_png
from deeplab_core.data.sbd import encode_gtcls_mat
from deeplab_core.data.synthetic.scenes import (SceneObject, class_map, render_scene,
                                                voc_label_from_scene)
from deeplab_core.fileio import atomic_write_json, clean_stale_temporaries, replace_directory

DEFAULT_IMAGE_SIZE = (96, 128)
N_CLASSES = len(VOC_CLASSES)
_TREES = ("VOCdevkit", "benchmark_RELEASE", "coco")


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


@dataclass(frozen=True)
class _Splits:
    """The ids of every split; ``pool`` holds every VOC-style id (SBD-only ones included)."""

    pool: list[str]
    voc_train: list[str]
    voc_val: list[str]
    sbd_train: list[str]
    sbd_val: list[str]
    overlap_val: list[str]        # VOC val ids that are in SBD too
    overlap_train: int            # how many VOC train ids are in SBD train
    coco: dict[str, list[int]]    # split -> COCO image ids


def _sample_splits(rng, n_voc_train: int, n_voc_val: int, n_sbd_train: int, n_sbd_val: int,
                   n_coco_train: int, n_coco_val: int, sbd_overlap_val: int,
                   sbd_overlap_train: int | None) -> _Splits:
    """Draw the ids of every split from ``rng`` (see :func:`generate_synthetic` for the rules)."""
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

    pool = _voc_ids(rng, n_voc_train + n_voc_val + n_sbd_only_tr + n_sbd_only_va)
    perm = [pool[i] for i in rng.permutation(len(pool))]
    voc_train = perm[:n_voc_train]
    voc_val = perm[n_voc_train:n_voc_train + n_voc_val]
    rest = perm[n_voc_train + n_voc_val:]
    sbd_only_tr, sbd_only_va = rest[:n_sbd_only_tr], rest[n_sbd_only_tr:]
    ov_val = voc_val[:sbd_overlap_val]
    sbd_train = voc_train[:sbd_overlap_train] + ov_val[:n_ov_val_tr] + sbd_only_tr
    sbd_val = ov_val[n_ov_val_tr:] + sbd_only_va

    coco_ids = rng.choice(np.arange(1, 581930), size=n_coco_train + n_coco_val, replace=False)
    coco = {"train": sorted(int(i) for i in coco_ids[:n_coco_train]),
            "val": sorted(int(i) for i in coco_ids[n_coco_train:])}
    return _Splits(pool, voc_train, voc_val, sbd_train, sbd_val, ov_val, sbd_overlap_train, coco)


# ============================================================================ writers
def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _id_lines(ids) -> str:
    return "".join(f"{i}\n" for i in sorted(ids))


@dataclass(frozen=True)
class _Render:
    """What every image shares: the seed, the nominal (H, W), its jitter, the JPEG quality range."""

    seed: int
    size: tuple[int, int]
    jitter: float
    jpeg_quality: tuple[int, int]

    def scene(self, kind: str, key: str, coco: bool = False):
        """(scene, JPEG bytes) of one image; both depend on (seed, kind, key) alone."""
        r = _rng_for(self.seed, kind, key)
        h, w = _jitter_size(r, self.size, self.jitter)
        scene = render_scene(r, h, w, coco=coco)
        q = int(r.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
        return scene, encode_jpeg(scene.image, q)


class _Tally:
    """Images and pixels per VOC class of each dataset."""

    def __init__(self) -> None:
        self.images = {k: np.zeros(N_CLASSES, np.int64) for k in ("voc", "sbd", "coco")}
        self.pixels = {k: np.zeros(N_CLASSES, np.int64) for k in self.images}

    def add(self, dataset: str, label: np.ndarray) -> None:
        cnt = np.bincount(label.ravel(), minlength=256)[:N_CLASSES]
        self.pixels[dataset] += cnt
        self.images[dataset] += cnt > 0

    def summary(self) -> dict:
        return {"class_images": {k: dict(zip(VOC_CLASSES, v.tolist()))
                                 for k, v in self.images.items()},
                "class_pixels": {k: dict(zip(VOC_CLASSES, v.tolist()))
                                 for k, v in self.pixels.items()}}


def _write_voc_sbd(tmp: Path, splits: _Splits, render: _Render, tally: _Tally, bar) -> None:
    """VOCdevkit/VOC2012 and benchmark_RELEASE/dataset under ``tmp``: images, labels, splits."""
    voc_dir = tmp / "VOCdevkit" / "VOC2012"
    sbd_dir = tmp / "benchmark_RELEASE" / "dataset"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc_dir / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("img", "cls"):
        (sbd_dir / sub).mkdir(parents=True, exist_ok=True)
    voc_set = set(splits.voc_train) | set(splits.voc_val)
    sbd_set = set(splits.sbd_train) | set(splits.sbd_val)
    for image_id in sorted(splits.pool):
        scene, jpg = render.scene("voc", image_id)
        _write(voc_dir / "JPEGImages" / f"{image_id}.jpg", jpg)
        if image_id in voc_set:
            lab = voc_label_from_scene(scene)
            _write(voc_dir / "SegmentationClass" / f"{image_id}.png", encode_label_png(lab))
            tally.add("voc", lab)
        if image_id in sbd_set:
            seg = class_map(scene)
            _write(sbd_dir / "img" / f"{image_id}.jpg", jpg)
            _write(sbd_dir / "cls" / f"{image_id}.mat", encode_gtcls_mat(seg))
            tally.add("sbd", seg)
        if bar:
            bar.update(1)
    seg_sets = voc_dir / "ImageSets" / "Segmentation"
    (seg_sets / "train.txt").write_text(_id_lines(splits.voc_train))
    (seg_sets / "val.txt").write_text(_id_lines(splits.voc_val))
    (seg_sets / "trainval.txt").write_text(_id_lines(splits.voc_train + splits.voc_val))
    (sbd_dir / "train.txt").write_text(_id_lines(splits.sbd_train))
    (sbd_dir / "val.txt").write_text(_id_lines(splits.sbd_val))


def _write_coco_split(tmp: Path, split: str, ids: list[int], ann_id: int, render: _Render,
                      tally: _Tally, bar) -> tuple[dict, int]:
    """coco/<split>2017 images and coco/annotations/instances_<split>2017.json under ``tmp``;
    returns the split's counts and the last annotation id used."""
    images, anns = [], []
    n_crowd = n_poly = 0
    for image_id in ids:
        scene, jpg = render.scene(f"coco_{split}", str(image_id), coco=True)
        h, w = scene.inst.shape
        fname = f"{image_id:012d}.jpg"
        _write(tmp / "coco" / f"{split}2017" / fname, jpg)
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
        tally.add("coco", coco_semantic_mask(img_anns, h, w))
        if bar:
            bar.update(1)
    doc = {"info": {"description": "synthetic COCO-format data", "version": "1.0",
                    "year": 2017, "contributor": "deeplab_core.data.synthetic",
                    "date_created": "2017/09/01"},
           "licenses": [{"url": "", "id": 1, "name": "synthetic"}],
           "images": images, "annotations": anns, "categories": _coco_categories()}
    _write(tmp / "coco" / "annotations" / f"instances_{split}2017.json",
           json.dumps(doc, separators=(",", ":")).encode())
    counts = {"images": len(images), "annotations": len(anns), "crowd": n_crowd,
              "polygon": n_poly}
    return counts, ann_id


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


def _coco_annotation(obj: SceneObject, ann_id: int, image_id: int, h: int, w: int) -> dict:
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


def _progress_bar(total: int, progress: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc="synthetic", disable=not progress)


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
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7])
    splits = _sample_splits(rng, n_voc_train, n_voc_val, n_sbd_train, n_sbd_val, n_coco_train,
                            n_coco_val, sbd_overlap_val, sbd_overlap_train)
    render = _Render(int(seed), (h0, w0), size_jitter, jpeg_quality)
    tally = _Tally()
    bar = _progress_bar(len(splits.pool) + n_coco_train + n_coco_val, progress)
    for n in _TREES + ("synthetic",):
        clean_stale_temporaries(root, n)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic.tmp-", dir=root))
    try:
        _write_voc_sbd(tmp, splits, render, tally, bar)
        coco_counts = {}
        ann_id = 100000 + int(rng.integers(0, 100000))
        for split, ids in splits.coco.items():
            coco_counts[split], ann_id = _write_coco_split(tmp, split, ids, ann_id, render,
                                                           tally, bar)
        if bar:
            bar.close()
        summary = {
            "seed": int(seed), "image_size": [h0, w0], "size_jitter": size_jitter,
            "voc": {"train": len(splits.voc_train), "val": len(splits.voc_val),
                    "jpeg_images": len(splits.pool)},
            "sbd": {"train": len(splits.sbd_train), "val": len(splits.sbd_val),
                    "overlap_voc_val": sorted(splits.overlap_val),
                    "overlap_voc_train": splits.overlap_train},
            "coco": coco_counts,
            **tally.summary(),
            "hard_class_ids": list(HARD_CLASS_IDS),
        }
        for n in _TREES:  # swap each finished tree into place
            replace_directory(tmp / n, root / n)
        atomic_write_json(root / "synthetic_summary.json", summary)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dict(summary, root=str(root), seconds=round(time.perf_counter() - t0, 3))
