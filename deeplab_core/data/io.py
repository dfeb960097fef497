"""File helpers shared by the data modules.

* image / label reading with errors that name the offending file, the sample id and the rule
  broken (:class:`DataError`, a ValueError that survives pickling, so it crosses process pools);
* palette (mode ``"P"``) PNG writing with the VOC colour map;
* the list-file format shared by the prepared lists (``<id> <image_path> <label_path>``).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from deeplab_core.classes import voc_palette
from deeplab_core.fileio import atomic_write_bytes, atomic_write_text

PathLike = str | os.PathLike


def _rebuild_error(cls: type, args: tuple, state: dict) -> BaseException:
    err = cls.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class PicklableErrorMixin:
    """Pickles an exception as its class, ``args`` and attributes, without calling ``__init__``.

    The default pickling of an exception calls ``cls(*self.args)`` on load, which fails for a
    class whose ``__init__`` takes other arguments than the message -- and an exception that
    cannot be unpickled breaks a process pool (``BrokenProcessPool``) instead of reaching the
    caller. Put this mixin first in the bases of every exception class with its own ``__init__``.
    """

    def __reduce__(self):
        return _rebuild_error, (type(self), self.args, dict(self.__dict__))


class DataError(PicklableErrorMixin, ValueError):
    """A dataset file breaks a rule of its format.

    ``path`` is the file, ``item_id`` the sample or annotation concerned (None when the problem
    is the file as a whole), ``problem`` what was found and ``rule`` the rule it breaks; the
    message names all of them::

        '<path>' (<id_kind> <item_id>): <problem>; rule: <rule>
    """

    def __init__(self, path: PathLike, problem: str, rule: str, item_id: str | int | None = None,
                 id_kind: str = "id"):
        self.path = Path(path)
        self.problem, self.rule = problem, rule
        self.item_id, self.id_kind = item_id, id_kind
        where = repr(str(path)) + (f" ({id_kind} {item_id!r})" if item_id is not None else "")
        super().__init__(f"{where}: {problem}; rule: {rule}")


DECODE_RULE = "every image and label file must decode in full"
LABEL_MODE_RULE = ("VOC labels must be palette ('P') or grayscale ('L') index images holding "
                   "class indices, not RGB renderings")


class ImageReadError(DataError):
    """An image or label file exists but cannot be decoded (corrupt, truncated, wrong format)."""

    def __init__(self, path: PathLike, reason: str, item_id: str | None = None,
                 rule: str = DECODE_RULE):
        self.reason = reason
        super().__init__(path, reason, rule, item_id)


# ----------------------------------------------------------------------------- reading
def require_file(path: PathLike, what: str) -> Path:
    """Return ``path`` if it is a file, else raise FileNotFoundError naming it and ``what``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing {what}: {str(path)!r} does not exist or is not a file")
    return path


def require_dir(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"missing {what}: {str(path)!r} does not exist or is not a folder")
    return path


def _open_decoded(path: Path, what: str, item_id: str | None = None) -> Image.Image:
    require_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()  # force a full decode: truncated / corrupt data fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise _decode_error(path, what, exc, item_id) from exc
    return img


def _decode_error(path: Path, what: str, exc: BaseException,
                  item_id: str | None = None) -> ImageReadError:
    return ImageReadError(path, f"cannot read {what}: {type(exc).__name__}: {exc}", item_id)


def read_image_rgb(path: PathLike) -> np.ndarray:
    """Decode an image file to a uint8 HxWx3 RGB array.

    Raises FileNotFoundError if the file is missing and :class:`ImageReadError` (a ValueError)
    naming the file if it cannot be decoded.
    """
    path = Path(path)
    img = _open_decoded(path, "image file")
    try:
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise _decode_error(path, "image file", exc) from exc
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ImageReadError(path, f"cannot read image file: decoded to an unexpected shape "
                                   f"{arr.shape}")
    return np.ascontiguousarray(arr)


def read_label_png(path: PathLike, item_id: str | None = None) -> np.ndarray:
    """Read a segmentation label PNG as a uint8 HxW array of class indices.

    Palette (mode ``"P"``) images give their palette indices directly (the colours are never
    looked at); 8-bit grayscale (mode ``"L"``) images give their values. Any other mode (an RGB
    rendering of the label, for instance) raises :class:`ImageReadError`, as does a file that
    does not decode in full; ``item_id`` (the sample id) is named in the message.
    """
    path = Path(path)
    img = _open_decoded(path, "label file", item_id)
    if img.mode not in ("P", "L"):
        raise ImageReadError(path, f"label image has mode {img.mode!r}", item_id,
                             rule=LABEL_MODE_RULE)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) read from the file header only."""
    path = require_file(path, "image file")
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise _decode_error(path, "image file", exc) from exc
    return h, w


# ----------------------------------------------------------------------------- writing images
_PALETTE_BYTES = voc_palette().tobytes()


def encode_label_png(label: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """PNG bytes of a uint8 HxW label as a mode ``"P"`` image with the VOC palette (or
    ``palette``, a (256, 3) uint8 colour map)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be HxW, got shape {label.shape}")
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError("label values must lie in [0, 255]")
        label = label.astype(np.uint8)
    h, w = label.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(label).tobytes())
    img.putpalette(_PALETTE_BYTES if palette is None
                   else np.asarray(palette, dtype=np.uint8).reshape(256, 3).tobytes())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_label_png(path: PathLike, label: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write a palette label PNG atomically (VOC palette unless ``palette`` is given)."""
    return atomic_write_bytes(path, encode_label_png(label, palette))


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 HxWx3, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def write_jpeg(path: PathLike, image: np.ndarray, quality: int = 90) -> Path:
    return atomic_write_bytes(path, encode_jpeg(image, quality))


# ----------------------------------------------------------------------------- list files
def format_list_line(sample_id: str, image_path: str, label_path: str) -> str:
    for field in (sample_id, image_path, label_path):
        if any(c.isspace() for c in field) or not field:
            raise ValueError(f"list-file fields must be non-empty and hold no whitespace: {field!r}")
    return f"{sample_id} {image_path} {label_path}"


def write_list_file(path: PathLike, entries: Iterable[tuple[str, str, str]]) -> Path:
    """Write ``<id> <image_path> <label_path>`` lines (one per sample) atomically."""
    lines = [format_list_line(*e) for e in entries]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def list_path(path: PathLike, base: PathLike) -> str:
    """``path`` relative to ``base`` (lexically, so symlinked trees keep their names); absolute
    when no relative path exists."""
    a, b = os.path.abspath(path), os.path.abspath(base)
    try:
        rel = os.path.relpath(a, b)
    except ValueError:
        return Path(a).as_posix()
    return Path(rel).as_posix()


def relocated(path: PathLike, moved: Mapping[PathLike, PathLike]) -> Path:
    """Where ``path`` will be once each folder ``now`` in ``moved`` has been moved to
    ``moved[now]`` (``path`` itself when it lies in none of them)."""
    path = Path(os.path.abspath(path))
    for now, final in moved.items():
        try:
            rest = path.relative_to(os.path.abspath(now))
        except ValueError:
            continue
        return Path(os.path.abspath(final)) / rest
    return path


def read_list_file(list_file: PathLike, data_root: PathLike | None = None
                   ) -> list[tuple[str, Path, Path]]:
    """Parse a list file into ``(id, image_path, label_path)`` with the paths resolved.

    Relative paths in the file are joined to ``data_root``; when ``data_root`` is None they are
    relative to the folder that holds the list file (the convention the prepare step writes).
    Absolute paths are used as they are. Blank lines and lines starting with ``#`` are skipped.
    """
    list_file = require_file(list_file, "list file")
    base = Path(data_root) if data_root is not None else list_file.parent
    out: list[tuple[str, Path, Path]] = []
    for n, raw in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"{list_file}:{n}: expected '<id> <image_path> <label_path>', "
                             f"got {len(parts)} field(s): {raw!r}")
        sid, img, lab = parts
        out.append((sid, base / img, base / lab))
    return out
