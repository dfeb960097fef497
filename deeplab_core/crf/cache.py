"""The CRF search's cache of softmax probabilities.

A cache is a directory of ``<image_id>.npz`` files, each holding ``image`` (uint8 H x W x 3 RGB),
``probs`` (float16 C x H x W softmax at full image resolution) and ``label`` (uint8 H x W,
255 = ignore).

A probability cache built from a model (``deeplab_core.engine.probability_cache``) is a folder with those items
in ``probs/`` and a ``meta.json`` holding the key they were computed for (e.g. the model's md5, the
image ids and the inference setting). Everything else kept in that folder, such as a search's
results journal, belongs to the same key: a rebuild for another key wipes it all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from deeplab_core.crf.densecrf import check_image, check_probs
from deeplab_core.fileio import atomic_write_bytes

CACHE_KEYS = frozenset({"image", "probs", "label"})


def _check_image_id(image_id: str) -> str:
    image_id = str(image_id)
    if not image_id or "/" in image_id or "\\" in image_id or image_id.startswith("."):
        raise ValueError(f"bad image id {image_id!r}: must be a plain file name stem")
    return image_id


def _check_label(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    label = np.asarray(label)
    if label.shape != hw:
        raise ValueError(f"label shape {label.shape} does not match image size {hw}")
    if label.dtype != np.uint8:
        if not np.issubdtype(label.dtype, np.integer) or label.min() < 0 or label.max() > 255:
            raise ValueError(f"label must hold uint8 class ids (255 = ignore), got dtype {label.dtype}")
        label = label.astype(np.uint8)
    return label


def write_cache_item(cache_dir: str | os.PathLike, image_id: str, image: np.ndarray,
                     probs: np.ndarray, label: np.ndarray) -> Path:
    """Write ``<cache_dir>/<image_id>.npz`` atomically (temporary file in the same dir, then rename).

    ``probs`` (C, H, W) softmax probabilities are stored as float16; ``label`` is uint8 (255 ignore).
    """
    image_id = _check_image_id(image_id)
    img = check_image(image)
    p = check_probs(np.asarray(probs), hw=img.shape[:2], tol=5e-3)
    label = _check_label(label, img.shape[:2])
    buf = io.BytesIO()
    np.savez_compressed(buf, image=img, probs=p.astype(np.float16), label=label)
    return atomic_write_bytes(Path(cache_dir) / f"{image_id}.npz", buf.getvalue())


def probs_to_f32(probs16: np.ndarray) -> np.ndarray:
    """float16 cache probabilities -> float32, renormalised (float16 rounding breaks sum == 1)."""
    p = probs16.astype(np.float32)
    s = p.sum(axis=0, keepdims=True)
    np.maximum(s, np.float32(1e-12), out=s)
    p /= s
    return p


def load_cache_item(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one cache file -> (image uint8 HxWx3, probs float32 CxHxW renormalised, label uint8 HxW)."""
    with np.load(path) as z:
        image, probs, label = z["image"], z["probs"], z["label"]
    return image, probs_to_f32(probs), label


def list_cache(cache_dir: str | os.PathLike) -> list[Path]:
    """The cache files of a directory, sorted by name."""
    return sorted(p for p in Path(cache_dir).glob("*.npz") if not p.name.startswith("."))


def cache_paths(cache_files: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """A cache directory's files, or the given files; ValueError when there are none."""
    if isinstance(cache_files, (str, os.PathLike)) and Path(cache_files).is_dir():
        return list_cache(cache_files)
    files = [Path(p) for p in cache_files]  # type: ignore[union-attr]
    if not files:
        raise ValueError("no cache files given")
    return files


def images_key(cache_files: Sequence[Path]) -> str:
    """Identity of a set of cache files (ids and sizes), so results rows match their image set."""
    parts = sorted(f"{Path(p).stem}:{os.stat(p).st_size}" for p in cache_files)
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def probability_cache_files(cache_dir: str | os.PathLike, ids: Sequence[str]) -> list[Path]:
    """The item files of a probability cache folder for ``ids``, in order."""
    return [Path(cache_dir) / "probs" / f"{i}.npz" for i in ids]


def cache_is_current(cache_dir: str | os.PathLike, key, ids: Sequence[str]) -> bool:
    """True when ``<cache_dir>/meta.json`` records ``key`` (compared as JSON) and the items of
    all ``ids`` are there, so the cache can be used as it is."""
    meta_path = Path(cache_dir) / "meta.json"
    if not meta_path.is_file() or json.loads(meta_path.read_text()).get("key") != key:
        return False
    return all(f.is_file() for f in probability_cache_files(cache_dir, ids))
