"""Segment image files: find the inputs (a folder, a file or a glob), run a Segmenter on each and
write a palette label PNG (VOC colours unless a dataset's palette is given), a colour overlay and optionally the class probabilities per image.
An unreadable image is reported by name and the others are still processed."""

from __future__ import annotations

import glob
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from deeplab_core.data.io import ImageReadError, encode_jpeg, encode_label_png, read_image_rgb
from deeplab_core.engine.infer import Segmenter
from deeplab_core.fileio import atomic_write_bytes
from deeplab_core.viz import overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")


def find_inputs(spec: str | Path) -> list[Path]:
    """The image files named by `spec`: every file with an image suffix directly in a folder
    (sorted), one file (whatever its suffix), or the files a glob pattern matches (sorted).
    Raises FileNotFoundError naming `spec` when it gives no file."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder "
                                    f"{str(path)!r}")
        return files
    if path.is_file():
        return [path]
    if glob.has_magic(str(spec)):
        files = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"the pattern {str(spec)!r} matches no file")
        return files
    raise FileNotFoundError(f"input {str(spec)!r} is not a file, a folder or a glob pattern "
                            f"matching files")


def output_names(files: list[Path]) -> dict[Path, str]:
    """Output base name per input: its stem; where stems repeat (photo.jpg and photo.png, or
    a/photo.jpg and b/photo.jpg), the suffix and then as many parent folders as tell them apart."""
    def name(p: Path, depth: int) -> str:
        if depth == 0:
            return p.stem
        parents = list(p.parent.parts[len(p.parent.parts) - depth + 1:]) if depth > 1 else []
        return "_".join(parents + [p.stem, p.suffix.lstrip(".")])

    names = {p: p.stem for p in files}
    for depth in range(1, 66):
        taken = list(names.values())
        clash = {p for p, n in names.items() if taken.count(n) > 1}
        if not clash:
            return names
        names.update({p: name(p, depth) for p in clash})
    raise ValueError("cannot give the inputs distinct output names")


@dataclass
class PredictSummary:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, one-line reason)


def write_outputs(out_dir: Path, name: str, image: np.ndarray, mask: np.ndarray,
                  probs: np.ndarray | None, palette: np.ndarray | None = None) -> Path:
    """<name>.png (palette label: pixel values are class ids), <name>_overlay.jpg and, when
    `probs` is given, <name>_probs.npy (float16 C x H x W), coloured with ``palette`` ((256, 3);
    default VOC's). Returns the label PNG's path."""
    label_png = atomic_write_bytes(out_dir / f"{name}.png", encode_label_png(mask, palette))
    atomic_write_bytes(out_dir / f"{name}_overlay.jpg",
                       encode_jpeg(overlay(image, mask, palette=palette)))
    if probs is not None:
        buf = io.BytesIO()
        np.save(buf, probs.astype(np.float16))
        atomic_write_bytes(out_dir / f"{name}_probs.npy", buf.getvalue())
    return label_png


def predict_files(segmenter: Segmenter, files: Iterable[Path], out_dir: Path, use_crf: bool,
                  save_probs: bool = False, progress: bool = True,
                  on_error: Callable[[Path, str], None] | None = None,
                  palette: np.ndarray | None = None) -> PredictSummary:
    """Segment each file (decoded by the one reader: RGB, EXIF orientation applied, so masks
    are in the orientation viewers show) and write its outputs into `out_dir`, coloured with
    ``palette`` (default VOC's). A file that cannot be read or segmented is recorded in the
    summary (and passed to `on_error`) and the next one is done."""
    files = list(files)
    names = output_names(files)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    iterator: Iterable[Path] = files
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(files, desc="predict", unit="img")
    for path in iterator:
        try:
            image = read_image_rgb(path)
            mask, probs = segmenter.predict(image, use_crf=use_crf)
            summary.written.append(write_outputs(out_dir, names[path], image, mask,
                                                 probs if save_probs else None, palette))
        except (ImageReadError, FileNotFoundError, ValueError, MemoryError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, ImageReadError) and str(path) not in reason:
                reason = f"{str(path)!r}: {type(exc).__name__}: {reason}"
            summary.failed.append((path, reason))
            if on_error is not None:
                on_error(path, reason)
    return summary
