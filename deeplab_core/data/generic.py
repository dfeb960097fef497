"""A generic dataset source: any segmentation dataset laid out as images, index masks and a
class-list file, run through the same stages as VOC::

    root/classes.json        {"names": ["background", ...],          class k = names[k]
                              "palette": [[r, g, b], ...],           optional (VOC colours)
                              "ignore_index": 255}                   optional (255)
    root/images/<id>.jpg     (or .png / .jpeg, in any case: .JPG) images, decoded by the one
                             reader (greyscale/CMYK/alpha converted, EXIF orientation applied)
    root/masks/<id>.png      palette ('P') or grayscale ('L') PNG of class indices, or an RGB
                             colour mask painted with classes.json's palette
    root/train.txt           training ids, one per line
    root/val.txt             evaluation ids, one per line

Index masks are listed as they are (no conversion), so a mask that breaks a rule (values outside
the class list, another size than its image, a palette whose colours moved) reaches the validate
stage, which fails or quarantines it. Two exceptions, written as palette PNGs under
``labels/generic/``: an RGB (or RGBA) colour mask is mapped to class indices through the palette
(class k's colour -> k, the palette's colour at the ignore index -> ignore; any other colour is a
:class:`DataError` naming the colour and its pixel count, or with ``on_error="quarantine"`` the
mask is listed as it is for validate to quarantine, and ``rejected.json`` says why); and an ignore
index other than 255 is swapped with 255 (the stages mark unlabelled pixels with 255), the
prepared ``classes.json`` then saying 255. ``python -m deeplab_core.data.generic example DIR`` writes a tiny example.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from deeplab_core.classes import ClassList, load_class_list, parse_class_list
from deeplab_core.data.io import (DataError, PathLike, format_list_line, list_path, relocated,
                                  require_dir, write_jpeg, write_label_png)
from deeplab_core.data.voc import read_id_list
from deeplab_core.fileio import atomic_write_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class GenericSources:
    root: Path
    classes: ClassList
    ids: dict[str, list[str]]                  # split -> ids in file order
    files: dict[str, tuple[Path, Path]]        # id -> (image, mask)


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """stem -> file of ``folder``'s files whose suffix, in any case, is one of ``suffixes``
    (the first in ``suffixes`` order when a stem has several)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    rank = {s: k for k, s in enumerate(suffixes)}
    for p in sorted(folder.iterdir()):
        suf = p.suffix.lower()
        if suf in rank and p.is_file():
            if p.stem not in found or rank[suf] < rank[found[p.stem].suffix.lower()]:
                found[p.stem] = p
    return found


def _image_for(images: dict[str, Path], root: Path, sid: str) -> Path:
    if sid in images:
        return images[sid]
    raise FileNotFoundError(f"no image for id {sid!r}: expected {root}/images/{sid}"
                            f"{{{','.join(IMAGE_SUFFIXES)}}} (any case)")


def read_generic_sources(root: PathLike) -> GenericSources:
    """Check the layout, the class list, the split files (non-empty, no id twice, train and val
    disjoint) and that every listed id has an image and a mask, writing nothing. Raises
    FileNotFoundError naming a missing path, ValueError naming a bad class-list key and
    :class:`DataError` naming the file, the id and the rule."""
    root = require_dir(root, "generic dataset folder (expected classes.json, images/, masks/, "
                             "train.txt, val.txt)")
    classes = load_class_list(root / "classes.json")
    ids = {}
    for split in SPLITS:
        path = root / f"{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"missing split file {str(path)!r} (expected generic "
                                    f"layout: {root}/{split}.txt, one id per line)")
        ids[split] = read_id_list(path)
        if not ids[split]:
            raise DataError(path, f"{split} split is empty", "each split lists at least one id")
    train = set(ids["train"])
    shared = [i for i in ids["val"] if i in train]
    if shared:
        raise DataError(root / "val.txt", f"id is also listed in {str(root / 'train.txt')!r}",
                        "the train and val splits share no id", shared[0])
    files = {}
    images = _files_by_stem(root / "images", IMAGE_SUFFIXES)
    masks = _files_by_stem(root / "masks", (".png",))
    for sid in ids["train"] + ids["val"]:
        if sid not in masks:
            raise FileNotFoundError(f"missing mask {str(root / 'masks' / (sid + '.png'))!r} for "
                                    f"id {sid!r} (expected generic layout: masks/<id>.png)")
        files[sid] = (_image_for(images, root, sid), masks[sid])
    return GenericSources(root, classes, ids, files)


def prepare_generic(root: PathLike, out_dir: PathLike, build_dir: PathLike | None = None,
                    moved: Mapping[PathLike, PathLike] | None = None,
                    on_error: str = "fail") -> dict:
    """The prepared output of a generic dataset (same files as the VOC prepare step:
    ``train_aug.txt`` = train, ``val.txt``, empty COCO lists, ``classes.json``,
    ``rejected.json``, ``summary.json``), built in ``build_dir`` or aside and swapped in for
    ``out_dir``."""
    from deeplab_core.fileio import atomic_directory, clean_stale_temporaries

    src = read_generic_sources(root)
    out_dir = Path(out_dir).absolute()

    def write(tmp: Path) -> dict:
        files, rejected = _index_masks(src, tmp, on_error == "quarantine")
        for split, name in (("train", "train_aug"), ("val", "val")):
            lines = [format_list_line(i, list_path(relocated(files[i][0], moved or {}), out_dir),
                                      files[i][1] if isinstance(files[i][1], str) else
                                      list_path(relocated(files[i][1], moved or {}), out_dir))
                     for i in src.ids[split]]
            (tmp / f"{name}.txt").write_text("".join(x + "\n" for x in lines))
        for name in ("coco_train", "coco_val"):
            (tmp / f"{name}.txt").write_text("")
        summary = {"source": "generic", "root": list_path(relocated(src.root, moved or {}),
                                                           out_dir),
                   "classes": list(src.classes.names),
                   "train_aug": {"total": len(src.ids["train"])},
                   "val": {"total": len(src.ids["val"])}}
        if rejected:
            summary["rejected"] = len(rejected)
            split_of = {i: ("train_aug" if split == "train" else split)
                        for split, ids in src.ids.items() for i in ids}
            atomic_write_json(tmp / "rejected.json", {"on_error": on_error, "samples": [
                {"split": split_of[sid], "id": sid,
                 "file": list_path(relocated(err.path, moved or {}), out_dir),
                 "problem": err.problem, "rule": err.rule} for sid, err in rejected]})
        atomic_write_json(tmp / "classes.json", {**src.classes.to_dict(), "ignore_index": 255})
        atomic_write_json(tmp / "summary.json", summary)
        return summary

    if build_dir is not None:
        return write(Path(build_dir))
    clean_stale_temporaries(out_dir.parent, out_dir.name)
    with atomic_directory(out_dir) as tmp:
        return write(tmp)


COLOUR_RULE = ("an RGB colour mask paints every pixel with a colour of classes.json's palette "
               "(class k's colour) or the ignore colour")


def colour_mask_to_index(rgb: np.ndarray, classes: ClassList, path: PathLike,
                         item_id: str | None = None) -> np.ndarray:
    """uint8 HxW class indices of an HxWx3 colour mask: class k's palette colour -> k, the
    palette's colour at the ignore index -> the ignore index. Any other colour raises
    :class:`DataError` naming the file, the id, the colours (most frequent first) and their
    pixel counts."""
    full = classes.full_palette().astype(np.int64)
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    keys = (full[:, 0] << 16) | (full[:, 1] << 8) | full[:, 2]
    lut: dict[int, int] = {}
    for k in [classes.ignore_index] + list(range(classes.num_classes - 1, -1, -1)):
        lut[int(keys[k])] = k  # class colours win over the ignore colour when they coincide
    colours, inverse, counts = np.unique(code.ravel(), return_inverse=True, return_counts=True)
    known = np.array([int(c) in lut for c in colours], dtype=bool)
    if not known.all():
        bad = np.flatnonzero(~known)
        bad = bad[np.argsort(-counts[bad], kind="stable")]
        shown = ", ".join(f"{((int(colours[b]) >> 16) & 255, (int(colours[b]) >> 8) & 255, int(colours[b]) & 255)}"
                          f" x {int(counts[b])} px" for b in bad[:5])
        more = f" and {bad.size - 5} more" if bad.size > 5 else ""
        raise DataError(path, f"colour mask holds {bad.size} colour(s) not in the palette: "
                        f"{shown}{more}", COLOUR_RULE, item_id)
    index = np.array([lut[int(c)] for c in colours], dtype=np.uint8)
    return index[inverse].reshape(code.shape)


def _index_masks(src: GenericSources, tmp: Path, keep_going: bool = False
                 ) -> tuple[dict[str, tuple], list[tuple[str, DataError]]]:
    """id -> (image, mask) and the masks rejected. A colour mask becomes a palette copy under
    ``labels/generic/`` (its path then relative to the prepared folder), as does every mask when
    the ignore index is not 255 (ignore and 255 swapped). A mask that cannot be read is left as
    it is, for validate to flag; a colour mask with unknown colours raises its DataError, or
    with ``keep_going`` is left as it is and returned among the rejected."""
    from PIL import Image

    from deeplab_core.data.io import read_label_png

    ignore = src.classes.ignore_index
    lut = np.arange(256, dtype=np.uint8)
    lut[ignore], lut[255] = 255, ignore
    out, rejected = dict(src.files), []
    for sid, (image, mask) in src.files.items():
        try:
            with Image.open(mask) as img:
                colour = img.mode in ("RGB", "RGBA")
                rgb = np.asarray(img.convert("RGB")) if colour else None
            if colour:
                label = colour_mask_to_index(rgb, src.classes, mask, sid)
            elif ignore != 255:
                label = read_label_png(mask, sid)
            else:
                continue
        except DataError as err:
            if err.rule != COLOUR_RULE:
                continue  # an unreadable mask: validate flags it
            if not keep_going:
                raise
            rejected.append((sid, err))
            continue
        except (OSError, ValueError):
            continue
        write_label_png(tmp / "labels" / "generic" / f"{sid}.png", lut[label],
                        src.classes.full_palette())
        out[sid] = (image, f"labels/generic/{sid}.png")
    return out, rejected


# ----------------------------------------------------------------------------- tiny example
EXAMPLE_CLASSES = {"names": ["background", "disc", "bar", "ring"],
                   "palette": [[0, 0, 0], [230, 160, 20], [30, 120, 220], [200, 40, 160]],
                   "ignore_index": 255}


def _example_sample(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured background with a disc, a bar and a ring (classes 1..3); a one-pixel ignore
    band around the disc, as VOC outlines objects."""
    yy, xx = np.mgrid[0:h, 0:w]
    label = np.zeros((h, w), dtype=np.uint8)
    cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), h // 5
    ry, rx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
    d_ring = np.hypot(yy - ry, xx - rx)
    label[(d_ring >= h / 8) & (d_ring < h / 5)] = 3
    by, bx = int(rng.integers(0, h - h // 6)), int(rng.integers(0, w // 2))
    label[by:by + h // 6, bx:bx + w // 2] = 2
    d_disc = np.hypot(yy - cy, xx - cx)
    label[(d_disc >= r) & (d_disc < r + 1)] = 255
    label[d_disc < r] = 1
    pal = np.asarray(EXAMPLE_CLASSES["palette"], dtype=np.int16)
    image = np.where(label[..., None] == 255, pal[1], pal[np.minimum(label, 3)])
    image = image + rng.integers(-25, 26, size=image.shape) + 40 * ((xx + yy) % 8 < 4)[..., None]
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_example_dataset(root: PathLike, n_train: int = 12, n_val: int = 6,
                          size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """Write a tiny dataset in the generic layout (4 classes, palette masks) and return ``root``.
    The same arguments give the same bytes."""
    root = Path(root)
    classes = parse_class_list(EXAMPLE_CLASSES, "example classes")
    rng = np.random.default_rng(seed)
    ids = {"train": [f"ex_{i:03d}" for i in range(n_train)],
           "val": [f"ex_{i:03d}" for i in range(n_train, n_train + n_val)]}
    for sid in ids["train"] + ids["val"]:
        image, label = _example_sample(rng, *size)
        write_jpeg(root / "images" / f"{sid}.jpg", image, quality=92)
        write_label_png(root / "masks" / f"{sid}.png", label, classes.full_palette())
    for split, split_ids in ids.items():
        (root / f"{split}.txt").write_text("".join(i + "\n" for i in split_ids))
    atomic_write_json(root / "classes.json", EXAMPLE_CLASSES)
    return root


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "example":
        print("usage: python -m deeplab_core.data.generic example DIR", file=sys.stderr)
        return 2
    print(write_example_dataset(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
