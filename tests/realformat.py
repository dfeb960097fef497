"""Small datasets written in the real on-disk formats, built here by hand (not by the project's
synthetic generator): VOC 2012 (JPEG images, palette PNG labels, split files), SBD (``cls/*.mat``
GTcls structs as scipy writes them) and COCO 2017 (an instances JSON with polygons, list RLE
crowds and compressed RLE, as the official files hold them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from deeplab_core.classes import voc_palette


def write_image(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=95)
    return path


def write_palette_png(path: Path, label: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().tobytes())
    img.save(path)
    return path


def scene(seed: int, h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A distinct noisy image and a label with one VOC object (class 1..20) and a void band."""
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), np.uint8)
    cls = 1 + seed % 20
    y, x = int(rng.integers(2, h // 2)), int(rng.integers(2, w // 2))
    label[y:y + h // 3, x:x + w // 3] = cls
    label[y - 1, x:x + w // 3] = 255
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[label == cls] = voc_palette()[cls]
    return image, label


def write_voc(root: Path, train: list[str], val: list[str], seed0: int = 0) -> Path:
    """``root/VOCdevkit/VOC2012`` with JPEGImages, SegmentationClass and the split files."""
    voc = root / "VOCdevkit" / "VOC2012"
    for k, sid in enumerate(train + val):
        image, label = scene(seed0 + k)
        write_image(voc / "JPEGImages" / f"{sid}.jpg", image)
        write_palette_png(voc / "SegmentationClass" / f"{sid}.png", label)
    seg = voc / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True, exist_ok=True)
    (seg / "train.txt").write_text("".join(i + "\n" for i in train))
    (seg / "val.txt").write_text("".join(i + "\n" for i in val))
    (seg / "trainval.txt").write_text("".join(i + "\n" for i in train + val))
    return voc


def write_sbd(root: Path, train: list[str], val: list[str], seed0: int = 100) -> Path:
    """``root/benchmark_RELEASE/dataset`` with img/, cls/*.mat (GTcls) and the split files."""
    ds = root / "benchmark_RELEASE" / "dataset"
    (ds / "cls").mkdir(parents=True, exist_ok=True)
    for k, sid in enumerate(train + val):
        image, label = scene(seed0 + k)
        label[label == 255] = 0  # SBD has no void band
        write_image(ds / "img" / f"{sid}.jpg", image)
        bounds = np.empty((20, 1), dtype=object)
        for c in range(20):
            bounds[c, 0] = np.zeros((0, 0))
        gt = {"Segmentation": label, "Boundaries": bounds,
              "CategoriesPresent": np.unique(label[label > 0]).reshape(-1, 1)}
        scipy.io.savemat(ds / "cls" / f"{sid}.mat", {"GTcls": gt})
    (ds / "train.txt").write_text("".join(i + "\n" for i in train))
    (ds / "val.txt").write_text("".join(i + "\n" for i in val))
    return ds


def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_coco(root: Path, split: str, images: list[dict], anns: list[dict]) -> Path:
    """``root/{split}2017/*.jpg`` and ``root/annotations/instances_{split}2017.json``; ``images``
    are ``{"id", "height", "width"}``, annotations get ids in order."""
    cats = [{"id": c, "name": n, "supercategory": "x"} for c, n in
            ((1, "person"), (18, "dog"), (17, "cat"), (22, "elephant"), (62, "chair"))]
    doc = {"info": {"description": "test"}, "licenses": [], "categories": cats,
           "images": [], "annotations": []}
    for im in images:
        name = f"{im['id']:012d}.jpg"
        rgb = np.random.default_rng(im["id"]).integers(0, 256, (im["height"], im["width"], 3),
                                                       dtype=np.uint8)
        write_image(root / f"{split}2017" / name, rgb)
        doc["images"].append({**im, "file_name": name, "license": 1})
    for k, a in enumerate(anns, start=1):
        doc["annotations"].append({"id": k, "area": 0.0, "bbox": [0, 0, 1, 1], "iscrowd": 0, **a})
    path = root / "annotations" / f"instances_{split}2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


# ----------------------------------------------------------------------------- files as they occur
EXIF_ORIENTATION = 0x0112


def smooth_image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A photo-like image (smooth gradients and a few flat blocks) that JPEG keeps close."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([(xx / w) * 200, (yy / h) * 200, ((xx + yy) / (h + w)) * 120 + 60], -1)
    for _ in range(3):
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        img[y:y + 8, x:x + 8] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


def stored_for_orientation(displayed: np.ndarray, orientation: int) -> np.ndarray:
    """The pixel array a camera stores for an image shown as ``displayed`` under an EXIF
    ``orientation`` (the inverse of what a viewer applies): 3 = stored upside down, 6 = stored
    turned 90 degrees anticlockwise (viewers turn it clockwise), 8 = the other way."""
    return {1: displayed, 3: np.rot90(displayed, 2), 6: np.rot90(displayed, 1),
            8: np.rot90(displayed, -1)}[orientation].copy()


def write_exif_jpeg(path: Path, displayed: np.ndarray, orientation: int) -> Path:
    """A JPEG whose pixels are stored rotated, with the EXIF Orientation tag that turns them
    back to ``displayed``, as phones write them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(stored_for_orientation(displayed, orientation)).save(
        path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def write_grey_jpeg(path: Path, rgb: np.ndarray) -> Path:
    """An 8-bit greyscale JPEG (mode L), as some COCO images are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).convert("L").save(path, format="JPEG", quality=95)
    return path


def write_cmyk_jpeg(path: Path, rgb: np.ndarray) -> Path:
    """A CMYK JPEG (as print workflows export)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG", quality=95)
    return path


def write_permuted_palette_png(path: Path, label: np.ndarray, a: int, b: int) -> Path:
    """The label as an editor that renumbered classes ``a`` and ``b`` but kept their colours
    writes it: indices swapped, palette entries swapped with them (the image looks the same)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lut = np.arange(256, dtype=np.uint8)
    lut[a], lut[b] = b, a
    pal = voc_palette().copy()
    pal[[a, b]] = pal[[b, a]]
    img = Image.fromarray(lut[label.astype(np.uint8)], mode="P")
    img.putpalette(pal.tobytes())
    img.save(path)
    return path
