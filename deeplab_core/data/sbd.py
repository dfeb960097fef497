"""Semantic Boundaries Dataset (SBD, Hariharan et al. 2011) readers and an encoder of its format.

``sbd_root`` may be the ``dataset`` folder, or ``benchmark_RELEASE`` holding it, or a folder
holding ``benchmark_RELEASE/dataset``::

    dataset/img/<id>.jpg
    dataset/cls/<id>.mat     MATLAB struct GTcls with fields
                               Segmentation       uint8 HxW class ids 0..20 (no void band)
                               Boundaries         20x1 cell of sparse HxW logical matrices
                               CategoriesPresent  column of the class ids present
    dataset/train.txt, dataset/val.txt
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse

from deeplab_core.data.io import PathLike, read_image_rgb, require_file
from deeplab_core.data.voc import read_id_list

SBD_SPLITS = ("train", "val")
NUM_SBD_CLASSES = 20  # foreground classes with a boundary map each


def resolve_sbd_root(sbd_root: PathLike) -> Path:
    """The SBD ``dataset`` folder under ``sbd_root``; FileNotFoundError naming what was expected."""
    root = Path(sbd_root)
    for cand in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir() and (cand / "img").is_dir():
            return cand
    raise FileNotFoundError(
        f"no SBD dataset at {str(root)!r}: expected SBD layout: {root}/cls and {root}/img "
        f"(or {root}/benchmark_RELEASE/dataset/cls and .../img) with train.txt and val.txt")


def read_sbd_split(sbd_root: PathLike, split: str) -> list[str]:
    """Image ids of an SBD split ('train' or 'val')."""
    root = resolve_sbd_root(sbd_root)
    path = root / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"missing SBD split file {str(path)!r} (expected SBD layout: "
                                f"dataset/{split}.txt)")
    return read_id_list(path)


def sbd_image_path(sbd_root: PathLike, image_id: str) -> Path:
    return resolve_sbd_root(sbd_root) / "img" / f"{image_id}.jpg"


def sbd_mat_path(sbd_root: PathLike, image_id: str) -> Path:
    return resolve_sbd_root(sbd_root) / "cls" / f"{image_id}.mat"


def load_sbd_image(sbd_root: PathLike, image_id: str) -> np.ndarray:
    path = sbd_image_path(sbd_root, image_id)
    if not path.is_file():
        raise FileNotFoundError(f"missing SBD image {str(path)!r} (expected SBD layout: "
                                f"dataset/img/{image_id}.jpg)")
    return read_image_rgb(path)


def read_gtcls(path: PathLike):
    """The ``GTcls`` struct of an SBD ``cls/*.mat`` file (numpy structured scalar)."""
    path = require_file(path, "SBD class annotation (.mat)")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise ValueError(f"cannot read SBD annotation {str(path)!r}: {type(exc).__name__}: {exc}"
                         ) from exc
    if "GTcls" not in mat:
        raise ValueError(f"{str(path)!r} holds no 'GTcls' struct (keys: "
                         f"{sorted(k for k in mat if not k.startswith('__'))})")
    return mat["GTcls"][0, 0]


def load_sbd_label(sbd_root: PathLike, image_id: str) -> np.ndarray:
    """uint8 HxW class ids from ``GTcls.Segmentation``."""
    path = sbd_mat_path(sbd_root, image_id)
    if not path.is_file():
        raise FileNotFoundError(f"missing SBD annotation {str(path)!r} (expected SBD layout: "
                                f"dataset/cls/{image_id}.mat)")
    return label_from_mat(path)


def label_from_mat(path: PathLike) -> np.ndarray:
    gt = read_gtcls(path)
    seg = np.asarray(gt["Segmentation"])
    if seg.ndim != 2:
        raise ValueError(f"{str(path)!r}: GTcls.Segmentation has shape {seg.shape}, expected HxW")
    if seg.size and (seg.min() < 0 or seg.max() > 255):
        raise ValueError(f"{str(path)!r}: GTcls.Segmentation values outside 0..255")
    return np.ascontiguousarray(seg.astype(np.uint8))


def class_boundaries(seg: np.ndarray, num_classes: int = NUM_SBD_CLASSES) -> list[np.ndarray]:
    """Per-class boolean boundary maps: pixels of class k with a 4-neighbour of another class."""
    seg = np.asarray(seg)
    diff = np.zeros(seg.shape, dtype=bool)
    diff[1:, :] |= seg[1:, :] != seg[:-1, :]
    diff[:-1, :] |= seg[:-1, :] != seg[1:, :]
    diff[:, 1:] |= seg[:, 1:] != seg[:, :-1]
    diff[:, :-1] |= seg[:, :-1] != seg[:, 1:]
    return [diff & (seg == k) for k in range(1, num_classes + 1)]


_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created by: deeplab_core.data.sbd"


def encode_gtcls_mat(seg: np.ndarray) -> bytes:
    """Bytes of a ``cls/*.mat`` file in the SBD layout for a class-id map (no void band).

    The 116-byte descriptive header is fixed (scipy would stamp the time) so that equal
    annotations give equal bytes.
    """
    seg = np.ascontiguousarray(np.asarray(seg, dtype=np.uint8))
    bounds = np.empty((NUM_SBD_CLASSES, 1), dtype=object)
    for k, b in enumerate(class_boundaries(seg)):
        bounds[k, 0] = scipy.sparse.csc_matrix(b)
    present = np.unique(seg)
    present = present[(present > 0) & (present <= NUM_SBD_CLASSES)].astype(np.uint8)
    gtcls = {"Segmentation": seg, "Boundaries": bounds,
             "CategoriesPresent": present.reshape(-1, 1)}
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"GTcls": gtcls}, format="5", do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")
    return bytes(data)
