"""PASCAL VOC 2012 segmentation readers (the official folder layout).

``voc_root`` may be the ``VOC2012`` folder itself, a ``VOCdevkit`` folder holding it, or a folder
holding ``VOCdevkit/VOC2012``; :func:`resolve_voc_root` finds the one that holds
``JPEGImages``::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClass/<id>.png        palette PNG: indices 0..20, 255 = "void" band
    VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deeplab_core.data.io import (DataError, PathLike, read_image_rgb, read_label_png,
                                  read_text_lines, require_file)

VOC_SPLITS = ("train", "val", "trainval")


def resolve_voc_root(voc_root: PathLike) -> Path:
    """The ``VOC2012`` folder under ``voc_root``; FileNotFoundError naming what was expected."""
    root = Path(voc_root)
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise FileNotFoundError(
        f"no VOC2012 dataset at {str(root)!r}: expected VOC2012 layout: {root}/JPEGImages "
        f"(or {root}/VOCdevkit/VOC2012/JPEGImages) with SegmentationClass/ and "
        "ImageSets/Segmentation/")


def split_file(voc_root: PathLike, split: str) -> Path:
    return resolve_voc_root(voc_root) / "ImageSets" / "Segmentation" / f"{split}.txt"


def read_split(voc_root: PathLike, split: str) -> list[str]:
    """Image ids of a segmentation split ('train', 'val', 'trainval'), in file order.

    Raises :class:`DataError` naming the file when the split lists no id or an id twice.
    """
    path = split_file(voc_root, split)
    if not path.is_file():
        raise FileNotFoundError(
            f"missing VOC split file {str(path)!r} (expected VOC2012 layout: "
            f"ImageSets/Segmentation/{split}.txt)")
    ids = read_id_list(path)
    if not ids:
        raise DataError(path, f"VOC {split} split is empty (the file lists no image ids)",
                        "a VOC segmentation split file lists at least one image id")
    return ids


def read_id_list(path: PathLike) -> list[str]:
    """One id per line (first whitespace-separated field); blank lines skipped.

    Raises :class:`DataError` naming the file, the id and both line numbers when an id is
    listed twice.
    """
    path = require_file(path, "id list")
    first_line: dict[str, int] = {}
    for n, line in enumerate(read_text_lines(path, "a split file"), start=1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] in first_line:
            raise DataError(path, f"id listed twice (lines {first_line[parts[0]]} and {n})",
                            "a split file lists each image id once", parts[0])
        first_line[parts[0]] = n
    return list(first_line)


def voc_image_path(voc_root: PathLike, image_id: str) -> Path:
    return resolve_voc_root(voc_root) / "JPEGImages" / f"{image_id}.jpg"


def voc_label_path(voc_root: PathLike, image_id: str) -> Path:
    return resolve_voc_root(voc_root) / "SegmentationClass" / f"{image_id}.png"


def load_voc_image(voc_root: PathLike, image_id: str) -> np.ndarray:
    """uint8 HxWx3 RGB image."""
    path = voc_image_path(voc_root, image_id)
    if not path.is_file():
        raise FileNotFoundError(f"missing VOC image {str(path)!r} (expected VOC2012 layout: "
                                f"JPEGImages/{image_id}.jpg)")
    return read_image_rgb(path)


def load_voc_label(voc_root: PathLike, image_id: str) -> np.ndarray:
    """uint8 HxW class indices (0..20, 255 = void), read from the palette indices directly."""
    path = voc_label_path(voc_root, image_id)
    if not path.is_file():
        raise FileNotFoundError(f"missing VOC label {str(path)!r} (expected VOC2012 layout: "
                                f"SegmentationClass/{image_id}.png)")
    return read_label_png(path, image_id)
