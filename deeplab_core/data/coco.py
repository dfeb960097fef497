"""COCO 2017 instance annotations: reading, RLE / polygon rasterisation, VOC semantic masks.

Everything pycocotools would normally do is implemented here with numpy:

* RLE as COCO stores it: column-major (Fortran order) run lengths that start with a run of
  zeros, either as a plain list (``{"counts": [..], "size": [h, w]}``, used by ``iscrowd=1``
  objects in the instance files) or as the compressed string form (``"counts": "..."``: delta
  coded, 5-bit groups with a continuation bit, offset by 48, as in ``maskApi.c``);
* polygons (``[[x1, y1, x2, y2, ...], ...]``) are rasterised by sampling pixel centres: pixel
  ``(r, c)`` is inside when the point ``(c + 0.5, r + 0.5)`` is inside the polygon (even-odd
  rule). An axis-aligned square with integer corners ``(x0, y0)``-``(x0 + n, y0 + n)`` covers
  exactly ``n * n`` pixels. Several polygons of one object are united.

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

from deeplab_core.classes import COCO_TO_VOC, IGNORE_INDEX
from deeplab_core.data.io import DataError, PathLike, read_image_rgb, require_dir, require_file

COCO_SPLITS = ("train", "val")


# ----------------------------------------------------------------------------- RLE
def rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE ``{"counts": [int, ...], "size": [h, w]}`` of a boolean HxW mask."""
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


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """Compressed COCO string form of a list of run lengths (``rleToString`` in maskApi.c)."""
    out = bytearray()
    counts = [int(c) for c in counts]
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5  # arithmetic shift, as for the signed long in the C code
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(ch + 48)
    return out.decode("ascii")


def rle_string_to_counts(s: str | bytes) -> list[int]:
    """Decode the compressed COCO string form into run lengths (``rleFrString`` in maskApi.c)."""
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated compressed RLE string")
            c = data[p] - 48
            if c < 0 or c > 63:
                raise ValueError(f"invalid character {chr(data[p])!r} in compressed RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_to_compressed(rle: Mapping) -> dict:
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return {"counts": counts if isinstance(counts, str) else counts.decode("ascii"),
                "size": list(rle["size"])}
    return {"counts": rle_counts_to_string(counts), "size": list(rle["size"])}


def rle_decode(rle: Mapping) -> np.ndarray:
    """Boolean HxW mask of an RLE with list counts or compressed string counts."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed RLE (need 'counts' and 'size'=[h, w]): {exc}") from exc
    if isinstance(counts, (str, bytes)):
        counts = rle_string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size and counts.min() < 0:
        raise ValueError("RLE holds a negative run length")
    total = int(counts.sum())
    if total > h * w:
        raise ValueError(f"RLE run lengths sum to {total} > h*w = {h * w}")
    vals = np.zeros(counts.size, dtype=bool)
    vals[1::2] = True
    flat = np.repeat(vals, counts)
    if total < h * w:  # tolerate a missing final run of zeros
        flat = np.concatenate((flat, np.zeros(h * w - total, dtype=bool)))
    return np.ascontiguousarray(flat.reshape((h, w), order="F"))


def rle_area(rle: Mapping) -> int:
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_string_to_counts(counts)
    return int(sum(counts[1::2]))


# ----------------------------------------------------------------------------- polygons
def polygon_to_mask(polygon: Sequence[float] | np.ndarray, h: int, w: int,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Rasterise one polygon (flat ``[x1, y1, x2, y2, ...]`` or an (N, 2) array of x, y).

    A pixel is inside when its centre is inside (even-odd rule). Scanline fill: every edge gives
    the x of its crossing with each pixel-centre row it spans (half-open in y, so a vertex is
    counted once); the sorted crossings of a row pair up into runs ``[x_1, x_2), [x_3, x_4), ...``
    that are filled. Cost grows with the perimeter and the bounding box, not with
    vertices x area. With ``out`` given, the polygon is OR-ed into it and it is returned.
    """
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    mask = np.zeros((h, w), dtype=bool) if out is None else out
    if len(xy) < 3 or h <= 0 or w <= 0 or not np.isfinite(xy).all():
        return mask
    xa, ya = xy[:, 0], xy[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    ylo, yhi = np.minimum(ya, yb), np.maximum(ya, yb)
    # rows r whose centre r + 0.5 lies in [ylo, yhi)
    r0 = np.clip(np.ceil(ylo - 0.5), 0, h).astype(np.int64)
    r1 = np.clip(np.ceil(yhi - 0.5), 0, h).astype(np.int64)
    n = np.maximum(r1 - r0, 0)
    total = int(n.sum())
    if total == 0:
        return mask
    edge = np.repeat(np.arange(len(n)), n)
    start = np.repeat(np.cumsum(n) - n, n)
    rows = r0[edge] + (np.arange(total) - start)
    py = rows + 0.5
    e_xa, e_ya = xa[edge], ya[edge]
    xs = e_xa + (py - e_ya) * (xb[edge] - e_xa) / (yb[edge] - e_ya)
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    if rows.size % 2:  # cannot happen for a closed polygon; guard against float oddities
        return mask
    rr = rows[0::2]
    c0 = np.clip(np.ceil(xs[0::2] - 0.5), 0, w).astype(np.int64)
    c1 = np.clip(np.ceil(xs[1::2] - 0.5), 0, w).astype(np.int64)
    keep = c1 > c0
    if not keep.any():
        return mask
    rr, c0, c1 = rr[keep], c0[keep], c1[keep]
    top, bottom = int(rr.min()), int(rr.max()) + 1
    diff = np.zeros((bottom - top, w + 1), dtype=np.int32)
    np.add.at(diff, (rr - top, c0), 1)
    np.add.at(diff, (rr - top, c1), -1)
    mask[top:bottom] |= np.cumsum(diff, axis=1)[:, :w] > 0
    return mask


def polygons_to_mask(polygons: Iterable, h: int, w: int) -> np.ndarray:
    """Union of several polygons (a COCO ``segmentation`` list)."""
    mask = np.zeros((h, w), dtype=bool)
    for poly in polygons:
        polygon_to_mask(poly, h, w, out=mask)
    return mask


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, width, height]`` of the pixels set in ``mask`` (zeros if empty)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1),
            float(rows[-1] - rows[0] + 1)]


def annotation_to_mask(ann: Mapping, h: int, w: int) -> np.ndarray:
    """Boolean HxW mask of one COCO annotation (polygons, list RLE or compressed RLE)."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        if seg and not isinstance(seg[0], (list, tuple, np.ndarray)):
            seg = [seg]  # a single flat polygon
        return polygons_to_mask(seg, h, w)
    if isinstance(seg, Mapping):
        mask = rle_decode(seg)
        if mask.shape != (h, w):
            raise ValueError(f"annotation {ann.get('id')}: RLE size {list(mask.shape)} does not "
                             f"match the image size {[h, w]}")
        return mask
    raise ValueError(f"annotation {ann.get('id')}: unsupported segmentation of type "
                     f"{type(seg).__name__}")


def coco_semantic_mask(ann_list: Iterable[Mapping], h: int, w: int,
                       coco_to_voc: Mapping[int, int] = COCO_TO_VOC,
                       ignore_index: int = IGNORE_INDEX, overlap: str = "last") -> np.ndarray:
    """uint8 HxW VOC-class mask of one image's COCO annotations.

    * annotations of categories in ``coco_to_voc`` are painted with their VOC class id, in list
      order (a later object covers an earlier one) -- with ``overlap="ignore"`` pixels claimed by
      two or more objects of different classes become ``ignore_index`` instead;
    * categories outside ``coco_to_voc`` are not painted: they are background (0);
    * ``iscrowd=1`` regions of VOC categories become ``ignore_index`` where no single object
      was painted (crowds of non-VOC categories stay background).
    """
    if overlap not in ("last", "ignore"):
        raise ValueError("overlap must be 'last' or 'ignore'")
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
        if overlap == "ignore":
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
    try:
        with open(json_path, "rb") as fh:
            raw = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(json_path)!r} is not valid JSON: {exc}") from exc
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
                            min_area: float = 1.0) -> list[int]:
    """Sorted ids of images holding at least one non-crowd object of a VOC-mapped category
    with ``area >= min_area`` (the DeepLab recipe pretrains on these COCO images only)."""
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


def coco_image_path(coco_root: PathLike, split: str, image: Mapping | int) -> Path:
    name = image["file_name"] if isinstance(image, Mapping) else f"{int(image):012d}.jpg"
    return Path(coco_root) / f"{split}2017" / name


def load_coco_image(coco_root: PathLike, split: str, image: Mapping | int) -> np.ndarray:
    return read_image_rgb(coco_image_path(coco_root, split, image))
