"""PASCAL VOC class names and palette, the COCO->VOC category map, the hard classes, and the
class lists (names, palette, ignore index) that every dataset source carries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
NUM_VOC_CLASSES = len(VOC_CLASSES)  # 21
IGNORE_INDEX = 255

# Classes DeepLab's bootstrapping duplicates because they are rare and thin (v2/v3 papers).
HARD_CLASSES: tuple[str, ...] = ("bicycle", "chair", "diningtable", "pottedplant", "sofa")
HARD_CLASS_IDS: tuple[int, ...] = tuple(VOC_CLASSES.index(n) for n in HARD_CLASSES)


def voc_palette() -> np.ndarray:
    """The standard 256-entry VOC colour map, shape (256, 3) uint8 (bit-interleaved label bits)."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


# The 80 COCO 2017 "things" categories with their real (non-contiguous) ids.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"),
    (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"),
    (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"),
    (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)

# COCO category id -> VOC class index for the 20 shared categories; all others map to background.
COCO_TO_VOC: dict[int, int] = {
    5: 1, 2: 2, 16: 3, 9: 4, 44: 5, 6: 6, 3: 7, 17: 8, 62: 9, 21: 10,
    67: 11, 18: 12, 19: 13, 4: 14, 1: 15, 64: 16, 20: 17, 63: 18, 7: 19, 72: 20,
}


# ----------------------------------------------------------------------------- class lists
@dataclass(frozen=True)
class ClassList:
    """The classes of a dataset: ``names[k]`` is class index ``k``; ``palette`` an (n, 3) uint8
    colour per class; ``ignore_index`` the label value that marks unlabelled pixels."""

    names: tuple[str, ...]
    palette: np.ndarray
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def full_palette(self) -> np.ndarray:
        """(256, 3) uint8: the class colours, then the VOC colour map for the other values (so
        the ignore value keeps VOC's cream when it is 255)."""
        pal = voc_palette()
        pal[: self.num_classes] = self.palette
        return pal

    def to_dict(self) -> dict:
        return {"names": list(self.names), "palette": self.palette.astype(int).tolist(),
                "ignore_index": int(self.ignore_index)}


def voc_class_list() -> ClassList:
    return ClassList(VOC_CLASSES, voc_palette()[:NUM_VOC_CLASSES].copy(), IGNORE_INDEX)


def parse_class_list(doc, source: str) -> ClassList:
    """A :class:`ClassList` from ``{"names": [...], "palette": [[r, g, b], ...] (optional),
    "ignore_index": 255 (optional)}``; ValueError naming ``source``, the key and the value."""
    if not isinstance(doc, dict) or "names" not in doc:
        raise ValueError(f"{source}: expected a mapping with a 'names' list")
    names, ignore = doc["names"], doc.get("ignore_index", IGNORE_INDEX)
    if (not isinstance(names, list) or len(names) < 2
            or not all(isinstance(n, str) and n.strip() for n in names)):
        raise ValueError(f"{source}: 'names' = {names!r}: expected a list of at least 2 "
                         "non-empty class names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{source}: 'names' lists {dup} more than once")
    if not isinstance(ignore, int) or not 0 <= ignore <= 255 or ignore < len(names):
        raise ValueError(f"{source}: 'ignore_index' = {ignore!r}: expected an integer in "
                         f"{len(names)}..255 (not a class index)")
    pal = doc.get("palette")
    if pal is None:
        palette = voc_palette()[: len(names)].copy()
    else:
        palette = np.asarray(pal)
        if palette.shape != (len(names), 3) or palette.min() < 0 or palette.max() > 255:
            raise ValueError(f"{source}: 'palette' must hold one [r, g, b] (0..255) per class "
                             f"({len(names)}), got shape {list(palette.shape)}")
        palette = palette.astype(np.uint8)
    return ClassList(tuple(names), palette, int(ignore))


def load_class_list(path, num_classes: int | None = None) -> ClassList:
    """Read a class-list JSON file (see :func:`parse_class_list`). With ``num_classes``, a list of
    another length raises ValueError naming both (``base.num_classes`` must agree with the data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list not found: {path} (written by the prepare stage)")
    data = path.read_bytes()
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        at = getattr(exc, "start", None)  # a byte that is not UTF-8, else JSON's own line
        line = data.count(b"\n", 0, at) + 1 if at is not None else exc.lineno
        raise ValueError(f"{str(path)!r} (line {line}): {exc}; rule: a class list is UTF-8 "
                         f"JSON") from None
    classes = parse_class_list(doc, repr(str(path)))
    if num_classes is not None and classes.num_classes != num_classes:
        raise ValueError(f"base.num_classes = {num_classes} but the class list {str(path)!r} "
                         f"names {classes.num_classes} classes {list(classes.names)}: set "
                         f"base.num_classes to {classes.num_classes}")
    return classes
