"""Per-sample manifest of a list file, for data validation (one flat record per sample).

Record fields: ``id, image_path, label_path, image_exists, label_exists, image_readable,
label_readable, error, image_md5 (of the file's bytes: the content identity the leakage check
compares across splits), image_phash (perceptual hash: the near-duplicate check), image_format,
image_mode (as stored), image_orientation (EXIF), image_channels, width, height (of the image as
the reader returns it: RGB, displayed orientation), label_mode, label_width, label_height,
size_match, label_palette_ok (None for grayscale labels or without a dataset palette),
n_pixels, label_unique (list of ints), label_num_unique,
label_values_valid (all values are class indices or the ignore index), ignore_fraction,
frac_<class name>`` (the class's share of the label's pixels) for each class of the class list
(VOC's 21 by default); :func:`class_frequencies` sums them over a split. A missing or undecodable file does not raise: it is recorded (``*_readable`` false,
``error`` set) so that a validation suite can report it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from deeplab_core.classes import IGNORE_INDEX, VOC_CLASSES
from deeplab_core.data.io import (PathLike, decode_image, file_palette, palette_moves,
                                  read_list_file, require_file)
from deeplab_core.fileio import atomic_write_text


def _frac_key(name: str) -> str:
    return "frac_" + name


HASH_BASE_SIDE = 64


def perceptual_hash(rgb: np.ndarray) -> str:
    """The image's 128-bit perceptual hash as 32 hex digits: imagehash's pHash (8x8 DCT) then its
    dHash (8x8 gradients), both of the decoded image in greyscale (an image over twice
    :data:`HASH_BASE_SIDE` on its short side box-averaged by an integer factor first: the hashes
    look at 32x32 and 9x8 pixels, and resizing a full photo twice costs more than decoding it). Near-duplicates (re-encoded, resized,
    lightly cropped copies) lie within :data:`NEAR_DUPLICATE_BITS` of each other
    (:func:`near_duplicates`)."""
    import imagehash

    img = Image.fromarray(np.ascontiguousarray(rgb)).convert("L")
    factor = min(img.size) // HASH_BASE_SIDE
    if factor >= 2:  # box-average big images first: both hashes then resize a small image
        img = img.reduce(factor)
    return str(imagehash.phash(img, hash_size=8)) + str(imagehash.dhash(img, hash_size=8))


# Hamming distance (of 128 bits) at or under which two images are near-duplicates. Measured on
# the synthetic default (1820 distinct 96x128 images): copies re-encoded at JPEG quality 90 or
# resized to 60% lie within 5 bits, copies cropped by 3% on every side within 22; the closest
# two distinct images are 28 bits apart.
NEAR_DUPLICATE_BITS = 22


def hash_words(hashes: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) uint64 words of 32-hex-digit hashes and a mask of the valid ones."""
    words = np.zeros((len(hashes), 2), dtype=np.uint64)
    ok = np.zeros(len(hashes), dtype=bool)
    for k, h in enumerate(hashes):
        if isinstance(h, str) and len(h) == 32:
            words[k] = (int(h[:16], 16), int(h[16:], 16))
            ok[k] = True
    return words, ok


def near_duplicates(query: Sequence[str | None], reference: Sequence[str | None],
                    max_bits: int = NEAR_DUPLICATE_BITS, chunk: int = 2048
                    ) -> list[tuple[int, int] | None]:
    """For each hash of ``query``, ``(reference index, Hamming distance)`` of its nearest hash in
    ``reference`` when that lies within ``max_bits``, else None (missing hashes match nothing).
    Brute force over uint64 words, ``chunk`` query rows at a time."""
    q, q_ok = hash_words(query)
    r, r_ok = hash_words(reference)
    out: list = [None] * len(query)
    if not q_ok.any() or not r_ok.any():
        return out
    r_idx = np.flatnonzero(r_ok)
    r = r[r_idx]
    for start in range(0, len(query), chunk):
        block = q[start:start + chunk]
        dist = (np.bitwise_count(block[:, None, 0] ^ r[None, :, 0]).astype(np.int16)
                + np.bitwise_count(block[:, None, 1] ^ r[None, :, 1]))
        best = dist.argmin(axis=1)
        best_d = dist[np.arange(len(block)), best]
        for k in np.flatnonzero((best_d <= max_bits) & q_ok[start:start + chunk]):
            out[start + int(k)] = (int(r_idx[best[k]]), int(best_d[k]))
    return out


def manifest_record(sample_id: str, image_path: Path, label_path: Path,
                    class_names: Sequence[str] = VOC_CLASSES,
                    ignore_index: int = IGNORE_INDEX, palette: np.ndarray | None = None,
                    phash: bool = True) -> dict:
    """One sample's record. The image is decoded by the one reader every stage uses
    (:func:`~deeplab_core.data.io.decode_image`), so ``image_channels``, ``width`` and
    ``height`` are those of what training sees (RGB, in displayed orientation); ``image_mode``
    and ``image_orientation`` say what the file held. With ``palette`` (the dataset's (256, 3)
    colours) a palette label's colours are checked (``label_palette_ok``)."""
    n_cls = len(class_names)
    rec: dict = {"id": sample_id, "image_path": str(image_path), "label_path": str(label_path),
                 "image_exists": image_path.is_file(), "label_exists": label_path.is_file(),
                 "image_readable": False, "label_readable": False, "error": None,
                 "image_md5": None, "image_phash": None, "image_format": None,
                 "image_mode": None, "image_orientation": None, "image_channels": None,
                 "width": None, "height": None, "label_mode": None, "label_width": None,
                 "label_height": None, "size_match": False, "label_palette_ok": None,
                 "n_pixels": None, "label_unique": [], "label_num_unique": 0,
                 "label_values_valid": False, "ignore_fraction": None}
    for name in class_names:
        rec[_frac_key(name)] = None
    errors = []
    try:
        data = image_path.read_bytes()
        rec["image_md5"] = hashlib.md5(data).hexdigest()
        dec = decode_image(data, sample_id, name=image_path)
        rec["image_format"], rec["image_mode"] = dec.format, dec.mode
        rec["image_orientation"] = dec.orientation
        rec["image_channels"] = int(dec.rgb.shape[2])
        rec["width"], rec["height"] = dec.width, dec.height
        if phash:
            rec["image_phash"] = perceptual_hash(dec.rgb)
        rec["image_readable"] = True
    except Exception as exc:  # recorded, not raised
        errors.append(f"image {str(image_path)!r}: {type(exc).__name__}: {exc}")
    try:
        with Image.open(label_path) as lab_img:
            rec["label_mode"] = lab_img.mode
            rec["label_width"], rec["label_height"] = lab_img.size
            lab = np.asarray(lab_img, dtype=np.uint8) if lab_img.mode in ("P", "L") else None
            colours = file_palette(lab_img) if lab_img.mode == "P" else None
        if lab is None:
            errors.append(f"label {str(label_path)!r}: mode {rec['label_mode']!r} is not P or L")
        else:
            rec["label_readable"] = True
            cnt = np.bincount(lab.ravel(), minlength=256)
            total = int(cnt.sum())
            vals = np.flatnonzero(cnt)
            rec["n_pixels"] = total
            rec["label_unique"] = [int(v) for v in vals]
            rec["label_num_unique"] = int(vals.size)
            rec["label_values_valid"] = bool(np.all((vals < n_cls) | (vals == ignore_index)))
            rec["ignore_fraction"] = float(cnt[ignore_index] / total) if total else 0.0
            for k, name in enumerate(class_names):
                rec[_frac_key(name)] = float(cnt[k] / total) if total else 0.0
            if palette is not None:
                moves = ([] if colours is None else
                         palette_moves(colours, palette, vals[vals < n_cls], class_names))
                rec["label_palette_ok"] = not moves
                if moves:
                    errors.append(f"label {str(label_path)!r}: palette colours moved: "
                                  + "; ".join(moves))
    except Exception as exc:
        errors.append(f"label {str(label_path)!r}: {type(exc).__name__}: {exc}")
    rec["size_match"] = (rec["width"] is not None and rec["width"] == rec["label_width"]
                         and rec["height"] == rec["label_height"])
    if rec["image_readable"] and rec["label_readable"] and not rec["size_match"]:
        turned = (f" (after EXIF orientation {rec['image_orientation']})"
                  if rec["image_orientation"] not in (None, 1) else "")
        errors.append(f"label {str(label_path)!r} is {rec['label_height']}x{rec['label_width']} "
                      f"but its image is {rec['height']}x{rec['width']}{turned}")
    rec["error"] = "; ".join(errors) if errors else None
    return rec


def _record_job(job: tuple) -> dict:
    sid, img, lab, base, class_names, ignore_index, palette = job
    rec = manifest_record(sid, img, lab, class_names, ignore_index, palette)
    rec["image_path"], rec["label_path"] = _relative(img, base), _relative(lab, base)
    return rec


def default_workers(n_jobs: int) -> int:
    """Worker processes for ``n_jobs`` decodes: one per core (at most 8), none for few jobs."""
    return 1 if n_jobs < 256 else max(1, min(8, os.cpu_count() or 1))


def build_manifest(list_file: PathLike, data_root: PathLike | None = None,
                   class_names: Sequence[str] = VOC_CLASSES,
                   ignore_index: int = IGNORE_INDEX, palette: np.ndarray | None = None,
                   workers: int | None = None) -> list[dict]:
    """One record per line of ``list_file`` (files resolved as by ``read_list_file``), in list
    order, decoded in ``workers`` processes (default: :func:`default_workers`).

    ``image_path`` / ``label_path`` are recorded relative to the folder the paths were resolved
    against (as the list file writes them), so the manifest of the same data is byte-identical
    wherever the project lives; error messages keep the full path of the offending file."""
    base = Path(data_root) if data_root is not None else Path(list_file).parent
    jobs = [(sid, img, lab, base, tuple(class_names), ignore_index, palette)
            for sid, img, lab in read_list_file(list_file, data_root)]
    workers = default_workers(len(jobs)) if workers is None else int(workers)
    if workers <= 1:
        return [_record_job(j) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(_record_job, jobs, chunksize=max(1, min(64, len(jobs) // (4 * workers)))))


def class_frequencies(records: Sequence[dict], class_names: Sequence[str]) -> dict:
    """Per-class frequencies of a split: ``pixels`` (share of all label pixels, ignore
    included in the total), ``images`` (share of samples holding the class) and the totals."""
    n_pix = [r["n_pixels"] or 0 for r in records if r.get("label_readable")]
    total = sum(n_pix)
    out = {"samples": len(records), "pixels": total, "classes": {}}
    readable = [r for r in records if r.get("label_readable")]
    for name in class_names:
        key = _frac_key(name)
        pix = sum((r[key] or 0.0) * (r["n_pixels"] or 0) for r in readable)
        out["classes"][name] = {
            "pixels": round(pix / total, 6) if total else 0.0,
            "images": round(sum(1 for r in readable if (r[key] or 0) > 0) / len(readable), 6)
            if readable else 0.0}
    return out


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base``, lexically (``..`` kept); absolute when it has no relative
    form."""
    try:
        return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(base))).as_posix()
    except ValueError:
        return Path(path).as_posix()


def write_manifest_jsonl(records: Sequence[dict], path: PathLike) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_manifest_jsonl(path: PathLike) -> list[dict]:
    path = require_file(path, "manifest (JSON lines)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def write_manifest_csv(records: Sequence[dict], path: PathLike) -> Path:
    """CSV with one column per field; ``label_unique`` joined with spaces, None as empty."""
    buf = io.StringIO()
    if records:
        fields = list(records[0].keys())
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in records:
            row = dict(r)
            row["label_unique"] = " ".join(str(v) for v in r.get("label_unique") or [])
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())
