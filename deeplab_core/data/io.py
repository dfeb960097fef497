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
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def _open_decoded(source: Path | bytes, what: str, item_id: str | None = None,
                  name: PathLike | None = None) -> Image.Image:
    """The fully decoded image of a file (``source`` a path) or of file bytes (``name`` then
    names them in errors)."""
    where = Path(name) if name is not None else source
    if not isinstance(source, bytes):
        require_file(source, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            img.load()  # force a full decode: truncated / corrupt data fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise _decode_error(where, what, exc, item_id) from exc
    return img


def _decode_error(path: Path, what: str, exc: BaseException,
                  item_id: str | None = None) -> ImageReadError:
    return ImageReadError(path, f"cannot read {what}: {type(exc).__name__}: {exc}", item_id)


# The one rule every reader of photos follows (prepare, validate, training, evaluation,
# deeplab-predict, serving): decode in full, apply the EXIF orientation, convert to 8-bit RGB.
IMAGE_RULE = ("an image decodes in full to 8-bit RGB (greyscale, palette, CMYK and alpha images "
              "are converted; EXIF orientation is applied)")
ORIENTATION_RULE = ("a label has the size of its image as displayed, i.e. after the image's "
                    "EXIF orientation is applied (labels carry no EXIF)")
# Modes whose conversion to 8-bit RGB is exact or standard; 16-bit and float images are refused
# (their conversion clips, which silently gives garbage).
RGB_CONVERTIBLE = ("RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "P", "PA", "1", "CMYK",
                   "YCbCr", "LAB", "HSV")
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodedImage:
    """An image as every stage sees it: ``rgb`` uint8 HxWx3 in displayed orientation, plus what
    the file held (``format``, ``mode``, ``orientation``: the EXIF tag, 1 when absent)."""

    rgb: np.ndarray
    format: str | None
    mode: str
    orientation: int

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def _to_rgb(img: Image.Image, where: Path, item_id: str | None) -> np.ndarray:
    mode = img.mode
    if mode not in RGB_CONVERTIBLE:
        raise ImageReadError(where, f"image has mode {mode!r} (bit depth or colour model with "
                                    f"no exact 8-bit RGB form)", item_id, rule=IMAGE_RULE)
    if mode in ("P", "PA") and "transparency" in img.info or mode == "PA":
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ImageReadError(where, f"cannot read image file: decoded to an unexpected shape "
                                    f"{arr.shape}", item_id, rule=IMAGE_RULE)
    return np.ascontiguousarray(arr)


def decode_image(source: PathLike | bytes, item_id: str | None = None,
                 name: PathLike | None = None) -> DecodedImage:
    """Decode an image file (a path, or file bytes named by ``name``) by the project's one rule
    (:data:`IMAGE_RULE`): full decode, EXIF orientation applied, colour mode converted to 8-bit
    RGB. Raises FileNotFoundError for a missing file and :class:`ImageReadError` (a
    ValueError) naming the file, ``item_id`` and the rule when it cannot be done right."""
    src = source if isinstance(source, bytes) else Path(source)
    where = Path(name) if name is not None else (Path("<bytes>") if isinstance(src, bytes)
                                                 else src)
    img = _open_decoded(src, "image file", item_id, where)
    fmt, mode = img.format, img.mode
    try:
        orientation = int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except (OSError, ValueError, TypeError, SyntaxError):
        orientation = 1
    try:
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img, where, item_id)
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise _decode_error(where, "image file", exc, item_id) from exc
    return DecodedImage(rgb, fmt, mode, orientation)


def read_image_rgb(path: PathLike, item_id: str | None = None) -> np.ndarray:
    """Decode an image file to a uint8 HxWx3 RGB array in displayed orientation (see
    :func:`decode_image`).

    Raises FileNotFoundError if the file is missing and :class:`ImageReadError` (a ValueError)
    naming the file if it cannot be decoded.
    """
    return decode_image(path, item_id).rgb


PALETTE_RULE = ("a palette label's colour map is the dataset's palette: index k holds class k's "
                "colour (an editor that renumbered the indices but kept the colours changed the "
                "classes)")


def palette_moves(file_palette: np.ndarray, expected: np.ndarray, used: Iterable[int],
                  class_names: Sequence[str] | None = None) -> list[str]:
    """Where a label file's palette disagrees with the dataset's ``expected`` (256, 3) palette at
    the indices ``used`` by its pixels: one phrase per index, naming the class whose colour it
    holds instead when that colour belongs to another index (a permuted palette). Indices the
    file's palette does not define are not judged."""
    expected = np.asarray(expected, dtype=np.uint8).reshape(-1, 3)
    moves = []

    def cls(k: int) -> str:
        name = class_names[k] if class_names is not None and k < len(class_names) else None
        return f"{k} ({name})" if name else str(k)

    for k in sorted(int(v) for v in used):
        if k >= len(file_palette) or k >= len(expected):
            continue
        got = file_palette[k]
        if np.array_equal(got, expected[k]):
            continue
        colour = tuple(int(c) for c in got)
        owners = np.flatnonzero((expected == got).all(axis=1))
        if owners.size:
            moves.append(f"index {cls(k)} holds the colour {colour} of class {cls(int(owners[0]))}")
        else:
            moves.append(f"index {cls(k)} holds the colour {colour}, expected "
                         f"{tuple(int(c) for c in expected[k])}")
    return moves


def file_palette(img: Image.Image) -> np.ndarray:
    """The (n, 3) uint8 colour map of a palette image (n entries as stored)."""
    pal = img.getpalette() or []
    return np.asarray(pal[: len(pal) // 3 * 3], dtype=np.uint8).reshape(-1, 3)


def read_label_png(path: PathLike, item_id: str | None = None,
                   palette: np.ndarray | None = None,
                   class_names: Sequence[str] | None = None) -> np.ndarray:
    """Read a segmentation label PNG as a uint8 HxW array of class indices.

    Palette (mode ``"P"``) images give their palette indices directly; with ``palette`` (the
    dataset's (256, 3) colour map) the file's colours at the indices it uses must be that
    palette's (:data:`PALETTE_RULE`; a permuted palette is an error naming the colours that
    moved). 8-bit grayscale (mode ``"L"``) images give their values. Any other mode (an RGB
    rendering of the label, for instance) raises :class:`ImageReadError`, as does a file that
    does not decode in full; ``item_id`` (the sample id) is named in the message.
    """
    path = Path(path)
    img = _open_decoded(path, "label file", item_id)
    if img.mode not in ("P", "L"):
        raise ImageReadError(path, f"label image has mode {img.mode!r}", item_id,
                             rule=LABEL_MODE_RULE)
    label = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if palette is not None and img.mode == "P":
        moves = palette_moves(file_palette(img), palette, np.unique(label), class_names)
        if moves:
            raise DataError(path, "palette colours moved: " + "; ".join(moves), PALETTE_RULE,
                            item_id)
    return label


def read_sample(image_path: PathLike, label_path: PathLike, item_id: str | None = None,
                palette: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 HxWx3 image in displayed orientation, uint8 HxW label) of one sample; a label
    whose size is not the displayed image's raises :class:`DataError` (:data:`ORIENTATION_RULE`),
    saying when the EXIF orientation is what turned the image."""
    dec = decode_image(image_path, item_id)
    label = read_label_png(label_path, item_id, palette)
    if (dec.height, dec.width) != label.shape:
        turned = (f" after its EXIF orientation {dec.orientation} is applied"
                  if dec.orientation != 1 else "")
        raise DataError(label_path, f"label is {label.shape[0]}x{label.shape[1]} (HxW) but image "
                        f"{str(image_path)!r} is {dec.height}x{dec.width}{turned}",
                        ORIENTATION_RULE, item_id)
    return dec.rgb, label


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) as displayed (EXIF orientation applied), read from the file header only."""
    path = require_file(path, "image file")
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise _decode_error(path, "image file", exc) from exc
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


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
TEXT_RULE = "{what} is UTF-8 text, one entry per line"


def read_text_lines(path: PathLike, what: str) -> list[str]:
    """The lines of a text file (split file, list file), decoded as UTF-8 line by line: a line
    that is not raises :class:`DataError` naming the file, the line number, the offending byte
    and its column, and the rule (:data:`TEXT_RULE`)."""
    path = Path(path)
    lines = []
    for n, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            bad = raw[exc.start:exc.start + 1]
            raise DataError(path, f"byte 0x{bad.hex()} at column {exc.start + 1} is not UTF-8 "
                            f"({exc.reason})", TEXT_RULE.format(what=what), n,
                            id_kind="line") from None
    return lines


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
    for n, raw in enumerate(read_text_lines(list_file, "a list file"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise DataError(list_file, f"got {len(parts)} field(s), expected 3: {raw!r}",
                            "a list-file line is '<id> <image_path> <label_path>'", n,
                            id_kind="line")
        sid, img, lab = parts
        out.append((sid, base / img, base / lab))
    return out
