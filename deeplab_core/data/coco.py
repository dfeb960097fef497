"""COCO 2017 instance annotations: reading, decoding and rasterising with pycocotools, and the
VOC semantic masks DeepLab pretrains on.

Decoding (list RLE, compressed RLE) and polygon rasterisation are pycocotools' own
(``pycocotools.mask``), called exactly as ``COCO.annToMask`` calls them, so a mask here is the
mask every COCO user gets. Only the writer of the uncompressed list RLE (used to store crowd
regions in generated instance files) is written here.

The COCO -> VOC semantic mask rules (see :func:`coco_semantic_mask`):

* objects of the 20 categories shared with VOC are painted with their VOC class id; every other
  category is background (0);
* a pixel covered by objects of two or more *different* VOC classes is ambiguous: 255 (ignore),
  the rule of the reference COCO -> VOC loaders; objects of one class simply unite;
* ``iscrowd=1`` regions of VOC categories are 255 where no single (non-crowd) object covers
  them: a crowd is a group of objects the annotators did not separate, so its pixels are neither
  reliable foreground nor background. Crowds of other categories stay background. Crowd pixels
  never count towards an image's VOC-class area;
* an image is kept for pretraining only when its mask holds at least ``min_area`` pixels of VOC
  classes (1000 by default, as the DeepLab recipe's COCO loader requires).

Expected folder layout (the official one)::

    coco_root/annotations/instances_train2017.json
    coco_root/annotations/instances_val2017.json
    coco_root/train2017/<012d image id>.jpg
    coco_root/val2017/<012d image id>.jpg
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from deeplab_core.classes import COCO_TO_VOC, IGNORE_INDEX
from deeplab_core.data.io import DataError, PathLike, require_dir, require_file
from deeplab_core.fileio import json_error

COCO_SPLITS = ("train", "val")
COCO_MIN_AREA = 1000  # VOC-class pixels an image needs to be kept for pretraining
JSON_RULE = "a COCO instances file is UTF-8 JSON"


# ----------------------------------------------------------------------------- RLE
def rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE ``{"counts": [int, ...], "size": [h, w]}`` of a boolean HxW mask
    (column-major runs starting with a run of zeros), the form instance files use for crowds."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.astype(bool).ravel(order="F")
    if flat.size == 0:
        return {"counts": [], "size": [int(h), int(w)]}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(h), int(w)]}


def _rle_size(rle: Mapping) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in rle["size"])
        rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed RLE (need 'counts' and 'size'=[h, w]): {exc!r}") from exc
    return h, w


def to_compressed_rle(rle: Mapping) -> dict:
    """pycocotools' compressed RLE (``counts`` as bytes) of a list or compressed RLE. List run
    lengths must be non-negative and add up to h*w (pycocotools does not check this)."""
    h, w = _rle_size(rle)
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str)
                else bytes(counts)}
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise ValueError("RLE holds a negative run length")
    if sum(counts) != h * w:
        raise ValueError(f"RLE run lengths sum to {sum(counts)}, expected h*w = {h * w}")
    return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)


def rle_to_compressed(rle: Mapping) -> dict:
    """The compressed string form ``{"counts": str, "size": [h, w]}`` (JSON-ready)."""
    comp = to_compressed_rle(rle)
    return {"counts": comp["counts"].decode("ascii"), "size": list(comp["size"])}


def rle_decode(rle: Mapping) -> np.ndarray:
    """Boolean HxW mask of an RLE with list counts or compressed string counts."""
    try:
        return mask_utils.decode(to_compressed_rle(rle)).astype(bool)
    except ValueError:
        raise
    except Exception as exc:  # pycocotools raises bare Exceptions for bad strings
        raise ValueError(f"undecodable RLE: {exc}") from exc


def rle_area(rle: Mapping) -> int:
    return int(mask_utils.area(to_compressed_rle(rle)))


# ----------------------------------------------------------------------------- polygons
def polygons_to_rle(polygons: Sequence, h: int, w: int) -> dict:
    """One compressed RLE uniting the polygons of a COCO ``segmentation`` list, rasterised by
    pycocotools (``frPyObjects`` + ``merge``, as ``COCO.annToRLE`` does)."""
    polys = [np.asarray(p, dtype=np.float64).ravel().tolist() for p in polygons]
    polys = [p for p in polys if len(p) >= 6]  # fewer than 3 points cover no pixel
    if not polys:
        return mask_utils.encode(np.zeros((h, w), dtype=np.uint8, order="F"))
    if not all(np.isfinite(p).all() for p in polys):
        raise ValueError("polygon holds a non-finite coordinate")
    return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))


def polygon_to_mask(polygon: Sequence[float] | np.ndarray, h: int, w: int,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Rasterise one polygon (flat ``[x1, y1, x2, y2, ...]`` or an (N, 2) array of x, y) with
    pycocotools. With ``out`` given, the polygon is OR-ed into it and it is returned."""
    mask = mask_utils.decode(polygons_to_rle([polygon], h, w)).astype(bool)
    if out is None:
        return mask
    out |= mask
    return out


def polygons_to_mask(polygons: Iterable, h: int, w: int) -> np.ndarray:
    """Union of several polygons (a COCO ``segmentation`` list)."""
    return mask_utils.decode(polygons_to_rle(list(polygons), h, w)).astype(bool)


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, width, height]`` of the pixels set in ``mask`` (zeros if empty)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1),
            float(rows[-1] - rows[0] + 1)]


def annotation_to_mask(ann: Mapping, h: int, w: int) -> np.ndarray:
    """Boolean HxW mask of one COCO annotation (polygons, list RLE or compressed RLE), decoded
    by pycocotools. Raises ValueError naming the annotation id when it cannot be decoded or its
    RLE size is not the image's."""
    seg = ann.get("segmentation")
    try:
        if isinstance(seg, list):
            if seg and not isinstance(seg[0], (list, tuple, np.ndarray)):
                seg = [seg]  # a single flat polygon
            return mask_utils.decode(polygons_to_rle(seg, h, w)).astype(bool)
        if isinstance(seg, Mapping):
            if list(_rle_size(seg)) != [h, w]:
                raise ValueError(f"RLE size {list(seg['size'])} does not match the image size "
                                 f"{[h, w]}")
            return rle_decode(seg)
    except ValueError as exc:
        raise ValueError(f"annotation {ann.get('id')}: {exc}") from exc
    raise ValueError(f"annotation {ann.get('id')}: unsupported segmentation of type "
                     f"{type(seg).__name__}")


def coco_semantic_mask(ann_list: Iterable[Mapping], h: int, w: int,
                       coco_to_voc: Mapping[int, int] = COCO_TO_VOC,
                       ignore_index: int = IGNORE_INDEX, overlap: str = "ignore") -> np.ndarray:
    """uint8 HxW VOC-class mask of one image's COCO annotations (rules in the module docstring).

    ``overlap="ignore"`` (the default) sets pixels claimed by objects of different VOC classes
    to ``ignore_index``; ``overlap="last"`` lets a later object cover an earlier one instead.
    """
    if overlap not in ("last", "ignore"):
        raise ValueError(f"overlap must be 'last' or 'ignore', got {overlap!r}")
    label = np.zeros((h, w), dtype=np.uint8)
    crowd = np.zeros((h, w), dtype=bool)
    painted = np.zeros((h, w), dtype=bool)
    clash = np.zeros((h, w), dtype=bool)
    for ann in ann_list:
        cls = int(coco_to_voc.get(int(ann["category_id"]), 0))
        if cls == 0:
            continue
        m = annotation_to_mask(ann, h, w)
        if ann.get("iscrowd", 0):
            crowd |= m
            continue
        clash |= m & painted & (label != cls)
        label[m] = cls
        painted |= m
    label[crowd & ~painted] = ignore_index
    if overlap == "ignore":
        label[clash] = ignore_index
    return label


# ----------------------------------------------------------------------------- instance files
@dataclass
class CocoInstances:
    """An ``instances_*.json`` file indexed by image id."""

    path: Path
    images: dict[int, dict]
    annotations: dict[int, list[dict]]  # image id -> annotations in file order
    categories: dict[int, dict]
    info: dict = field(default_factory=dict)

    def image_ids(self) -> list[int]:
        return sorted(self.images)

    def anns(self, image_id: int) -> list[dict]:
        return self.annotations.get(int(image_id), [])

    def semantic_mask(self, image_id: int, coco_to_voc: Mapping[int, int] = COCO_TO_VOC,
                      **kw) -> np.ndarray:
        img = self.images[int(image_id)]
        return coco_semantic_mask(self.anns(image_id), int(img["height"]), int(img["width"]),
                                  coco_to_voc, **kw)


def load_coco_instances(json_path: PathLike) -> CocoInstances:
    """Read a COCO instances JSON file. Raises FileNotFoundError / ValueError naming the file;
    an annotation whose image_id or category_id is not listed in the file raises
    :class:`~deeplab_core.data.io.DataError` naming the file, the annotation id and the id."""
    json_path = require_file(json_path, "COCO instances JSON")
    data = json_path.read_bytes()
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        problem, line = json_error(json_path, data)
        raise DataError(json_path, problem, JSON_RULE, line, id_kind="line") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in raw]
    if missing:
        raise ValueError(f"{str(json_path)!r} is not a COCO instances file: missing key(s) {missing}")
    images = {int(im["id"]): im for im in raw["images"]}
    cats = {int(c["id"]): c for c in raw["categories"]}
    anns: dict[int, list[dict]] = {}
    for ann in raw["annotations"]:
        for key, known, section in (("image_id", images, "images"),
                                    ("category_id", cats, "categories")):
            if int(ann[key]) not in known:
                raise DataError(json_path, f"{key} {int(ann[key])} is not among the file's "
                                f"{section!r}", f"every annotation's {key} is the id of an entry "
                                f"in {section!r}", ann.get("id"), id_kind="annotation id")
        anns.setdefault(int(ann["image_id"]), []).append(ann)
    return CocoInstances(path=json_path, images=images, annotations=anns, categories=cats,
                         info=raw.get("info", {}) or {})


def images_with_voc_classes(coco: CocoInstances, coco_to_voc: Mapping[int, int] = COCO_TO_VOC,
                            min_area: float = 0.0) -> list[int]:
    """Sorted ids of images holding at least one non-crowd object of a VOC-mapped category
    whose ``area`` field is at least ``min_area`` (0: any). The pretraining rule itself counts
    rasterised VOC-class pixels (see the module docstring); this is its cheap first pass."""
    keep = []
    for image_id in coco.image_ids():
        for ann in coco.anns(image_id):
            if (not ann.get("iscrowd", 0) and int(ann["category_id"]) in coco_to_voc
                    and float(ann.get("area", 1.0)) >= min_area):
                keep.append(image_id)
                break
    return keep


def coco_paths(coco_root: PathLike, split: str) -> tuple[Path, Path]:
    """(image folder, instances JSON) of ``split`` ('train' or 'val') in the 2017 layout."""
    if split not in COCO_SPLITS:
        raise ValueError(f"COCO split must be one of {COCO_SPLITS}, got {split!r}")
    root = Path(coco_root)
    img_dir = root / f"{split}2017"
    ann = root / "annotations" / f"instances_{split}2017.json"
    if not ann.is_file():
        raise FileNotFoundError(f"missing COCO instances JSON {str(ann)!r} (expected COCO 2017 "
                                f"layout: {root}/annotations/instances_{split}2017.json)")
    require_dir(img_dir, f"COCO image folder (expected COCO 2017 layout: {root}/{split}2017/)")
    return img_dir, ann
