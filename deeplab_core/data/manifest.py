"""Per-sample manifest of a list file, for data validation (one flat record per sample).

Record fields: ``id, image_path, label_path, image_exists, label_exists, image_readable,
label_readable, error, image_md5 (of the file's bytes: the content identity the leakage check
compares across splits), image_format, image_mode, image_channels, width, height, label_mode,
label_width, label_height, size_match, n_pixels, label_unique (list of ints), label_num_unique,
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
from deeplab_core.data.io import PathLike, read_list_file, require_file
from deeplab_core.fileio import atomic_write_text


def _frac_key(name: str) -> str:
    return "frac_" + name


def manifest_record(sample_id: str, image_path: Path, label_path: Path,
                    class_names: Sequence[str] = VOC_CLASSES,
                    ignore_index: int = IGNORE_INDEX) -> dict:
    n_cls = len(class_names)
    rec: dict = {"id": sample_id, "image_path": str(image_path), "label_path": str(label_path),
                 "image_exists": image_path.is_file(), "label_exists": label_path.is_file(),
                 "image_readable": False, "label_readable": False, "error": None,
                 "image_md5": None, "image_format": None, "image_mode": None, "image_channels": None,
                 "width": None, "height": None, "label_mode": None, "label_width": None,
                 "label_height": None, "size_match": False, "n_pixels": None,
                 "label_unique": [], "label_num_unique": 0, "label_values_valid": False,
                 "ignore_fraction": None}
    for name in class_names:
        rec[_frac_key(name)] = None
    errors = []
    try:
        data = image_path.read_bytes()
        rec["image_md5"] = hashlib.md5(data).hexdigest()
        with Image.open(io.BytesIO(data)) as img:
            rec["image_format"], rec["image_mode"] = img.format, img.mode
            rec["image_channels"] = len(img.getbands())
            rec["width"], rec["height"] = img.size
            img.load()
        rec["image_readable"] = True
    except Exception as exc:  # recorded, not raised
        errors.append(f"image {str(image_path)!r}: {type(exc).__name__}: {exc}")
    try:
        with Image.open(label_path) as lab_img:
            rec["label_mode"] = lab_img.mode
            rec["label_width"], rec["label_height"] = lab_img.size
            lab = np.asarray(lab_img, dtype=np.uint8) if lab_img.mode in ("P", "L") else None
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
    except Exception as exc:
        errors.append(f"label {str(label_path)!r}: {type(exc).__name__}: {exc}")
    rec["size_match"] = (rec["width"] is not None and rec["width"] == rec["label_width"]
                         and rec["height"] == rec["label_height"])
    rec["error"] = "; ".join(errors) if errors else None
    return rec


def build_manifest(list_file: PathLike, data_root: PathLike | None = None,
                   class_names: Sequence[str] = VOC_CLASSES,
                   ignore_index: int = IGNORE_INDEX) -> list[dict]:
    """One record per line of ``list_file`` (files resolved as by ``read_list_file``).

    ``image_path`` / ``label_path`` are recorded relative to the folder the paths were resolved
    against (as the list file writes them), so the manifest of the same data is byte-identical
    wherever the project lives; error messages keep the full path of the offending file."""
    base = Path(data_root) if data_root is not None else Path(list_file).parent
    records = []
    for sid, img, lab in read_list_file(list_file, data_root):
        rec = manifest_record(sid, img, lab, class_names, ignore_index)
        rec["image_path"], rec["label_path"] = _relative(img, base), _relative(lab, base)
        records.append(rec)
    return records


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
