"""Bootstrapping of hard classes (DeepLab v3): images holding the rare, thin classes are listed
again in the training list so that they are seen more often."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


import numpy as np

from deeplab_core.classes import HARD_CLASS_IDS, VOC_CLASSES
from deeplab_core.data.io import PathLike, read_label_png, read_list_file, require_file
from deeplab_core.fileio import atomic_write_json, read_json


def hard_class_pixels(list_file: PathLike, data_root: PathLike | None = None,
                      hard_class_ids: Sequence[int] = HARD_CLASS_IDS) -> dict[str, dict[int, int]]:
    """id -> {hard class id: pixel count} for every sample of the list (zero counts omitted)."""
    out: dict[str, dict[int, int]] = {}
    ids = np.asarray(list(hard_class_ids), dtype=np.int64)
    for sid, _, lab_path in read_list_file(list_file, data_root):
        cnt = np.bincount(read_label_png(lab_path).ravel(), minlength=256)[ids]
        out[sid] = {int(c): int(n) for c, n in zip(ids, cnt) if n > 0}
    return out


def hard_image_list(list_file: PathLike, data_root: PathLike | None = None,
                    hard_class_ids: Sequence[int] = HARD_CLASS_IDS, min_pixels: int = 1,
                    repeats: int = 1) -> list[str]:
    """Ids of the list's images with at least ``min_pixels`` pixels of some hard class, each
    repeated ``repeats`` times (in list order), ready for ``SegmentationListDataset(repeat_ids=)``.
    """
    if repeats < 0 or min_pixels < 1:
        raise ValueError("repeats must be >= 0 and min_pixels >= 1")
    if not list(hard_class_ids):
        return []
    out: list[str] = []
    for sid, counts in hard_class_pixels(list_file, data_root, hard_class_ids).items():
        if any(n >= min_pixels for n in counts.values()):
            out.extend([sid] * repeats)
    return out


def write_hard_list(path: PathLike, ids: Sequence[str], hard_class_ids: Sequence[int] = HARD_CLASS_IDS,
                    min_pixels: int | None = None, repeats: int | None = None,
                    source: str | None = None,
                    class_names: Sequence[str] = VOC_CLASSES) -> Path:
    """Write the bootstrap list as JSON: ``{"ids": [...], "count", "unique", "hard_class_ids",
    "hard_classes", "min_pixels", "repeats", "source"}``."""
    doc = {"ids": list(ids), "count": len(ids), "unique": len(set(ids)),
           "hard_class_ids": [int(c) for c in hard_class_ids],
           "hard_classes": [class_names[int(c)] for c in hard_class_ids],
           "min_pixels": min_pixels, "repeats": repeats, "source": source}
    return atomic_write_json(path, doc)


def read_hard_list(path: PathLike) -> list[str]:
    """The ``ids`` of a JSON file written by :func:`write_hard_list` (a bare JSON list works too)."""
    path = require_file(path, "bootstrap list (JSON)")
    doc = read_json(path, "a bootstrap list")
    ids = doc["ids"] if isinstance(doc, dict) else doc
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"{str(path)!r}: 'ids' must be a list of strings")
    return ids
