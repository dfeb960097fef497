"""The served model's request and response codec: images in (JSON arrays, base64 PNG/JPEG), masks
out (arrays or base64 palette PNGs), the request params, and the size limit that refuses an
oversized request body before anything reads or parses it.

Input (`model_input`, or `"inputs"` of a served request):
  * one image: a uint8 HxWx3 array, or in JSON its nested lists `[[[r, g, b], ...], ...]` of
    integers 0..255;
  * several images: a list of those (sizes may differ), or a uint8 NxHxWx3 array;
  * compact: `{"image_b64": "<base64 PNG/JPEG>"}` or `{"image_b64": [...]}` (also a DataFrame
    with an `image_b64` column, in process).
Output: one uint8 HxW mask per image (JSON: nested lists), in the input's arrangement (one image
gives one mask, a list gives a list, an NxHxWx3 array an NxHxW array); with the param
`mask_format="png"` each mask is instead the base64 of a palette PNG (the dataset's colours) whose pixel
values are the class indices. Param `crf` (true/false) overrides the model's inference protocol,
which decides by default.

Bad input raises `ServingError`, a one-line message naming what was got and what is expected; the
scoring server answers it with status 400 and a JSON body holding only that message. Images over
MAX_PIXELS are refused. A request body over the limit (`DEEPLAB_SERVE_MAX_REQUEST_BYTES`, default
MAX_REQUEST_BYTES) is answered 413 by `RequestSizeLimit` before it is read: by its Content-Length,
or while it streams in, so the server never holds more than the limit of it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import warnings

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

B64_KEY = "image_b64"
MASK_FORMATS = ("array", "png")
# Larger images are refused (resize them first): CPU memory for the class probabilities and the
# CRF grows with the pixel count times the number of classes.
MAX_PIXELS = 2048 * 2048
IMAGE_FORMATS = ("PNG", "JPEG")
EXPECTED = "a uint8 RGB image of shape HxWx3 (values 0..255)"

# Request bodies above this many bytes are refused unread (DEEPLAB_SERVE_MAX_REQUEST_BYTES
# replaces it): a 1000x1000 image as a JSON array is about 12 MB, as base64 PNG/JPEG far less.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_REQUEST_BYTES_ENV = "DEEPLAB_SERVE_MAX_REQUEST_BYTES"


class ServingError(MlflowException):
    """A request the model refuses, with a one-line message. The scoring server prefixes the
    message of an MlflowException with the request data before answering; the JSON body of this
    one keeps the message as raised."""

    def __init__(self, message: str, error_code: int = INVALID_PARAMETER_VALUE) -> None:
        super().__init__(message, error_code=error_code)
        self.reason = message

    def serialize_as_json(self) -> str:
        return json.dumps({"error_code": self.error_code, "message": self.reason})


# ----------------------------------------------------------------------------- input
def _dtype_detail(arr: np.ndarray) -> str:
    if arr.dtype.kind == "f":
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            hi = float(np.nanmax(arr))
        return (f"float values, max {hi:.4g}: scale a [0, 1] image by 255, round and cast to "
                "uint8")
    if arr.dtype.kind in "iu":
        return f"integers, min {int(arr.min())}, max {int(arr.max())}: uint8 holds 0..255"
    return f"values of type {arr.dtype}"


def check_image(obj, where: str = "image") -> np.ndarray:
    """A uint8 HxWx3 array for `obj` (a uint8 array, or nested lists of integers 0..255), or a
    ServingError naming what `obj` is. Read-only arrays are accepted as they are."""
    if isinstance(obj, np.ndarray):
        arr = obj
        if arr.dtype != np.uint8 and arr.size:
            raise ServingError(f"{where}: got a {arr.dtype} array ({_dtype_detail(arr)}); "
                               f"expected {EXPECTED}")
    elif isinstance(obj, (list, tuple)):
        try:
            arr = np.asarray(obj)
        except (ValueError, TypeError):
            raise ServingError(f"{where}: got nested lists of unequal lengths; expected {EXPECTED}"
                               ) from None
        if arr.size and arr.dtype != np.uint8:
            if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
                raise ServingError(f"{where}: got {_dtype_detail(arr)}; expected {EXPECTED}")
            arr = arr.astype(np.uint8)
    else:
        raise ServingError(f"{where}: got a {type(obj).__name__}; expected {EXPECTED}")
    shape = tuple(arr.shape)
    if arr.size == 0:
        raise ServingError(f"{where}: got an empty image of shape {shape}; expected {EXPECTED}")
    if arr.ndim != 3 or shape[2] != 3:
        hint = (" (grayscale? repeat it into 3 channels)" if arr.ndim == 2 else
                " (RGBA? drop the alpha channel)" if arr.ndim == 3 and shape[2] == 4 else "")
        raise ServingError(f"{where}: got shape {shape}{hint}; expected {EXPECTED}")
    if shape[0] * shape[1] > MAX_PIXELS:
        raise ServingError(f"{where}: got {shape[0]}x{shape[1]} pixels; at most {MAX_PIXELS} "
                           "pixels are accepted (resize the image)")
    return arr


def decode_image_b64(data: str | bytes, where: str = B64_KEY) -> np.ndarray:
    """The uint8 HxWx3 RGB array of a base64-encoded PNG or JPEG file (a `data:` URL prefix is
    allowed), or a ServingError. The array is read-only. Decoded by the one rule of
    :func:`deeplab_core.data.io.decode_image` (EXIF orientation applied, converted to RGB)."""
    from PIL import Image, UnidentifiedImageError

    from deeplab_core.data.io import ImageReadError, decode_image

    if isinstance(data, str):
        data = data.split(",", 1)[1] if data.startswith("data:") else data
        data = data.encode("ascii", errors="replace")
    if not isinstance(data, bytes):
        raise ServingError(f"{where}: got a {type(data).__name__}; expected a base64 string of "
                           "PNG or JPEG file bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ServingError(f"{where}: not valid base64; expected a base64 string of PNG or JPEG "
                           "file bytes") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as img:  # the header: format and size
                fmt, (w, h) = img.format, img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ServingError(f"{where}: cannot decode the file ({type(exc).__name__}); expected "
                           "a complete PNG or JPEG file") from None
    if fmt not in IMAGE_FORMATS:
        raise ServingError(f"{where}: got a {fmt} file; expected PNG or JPEG")
    if w * h > MAX_PIXELS:
        raise ServingError(f"{where}: got {h}x{w} pixels; at most {MAX_PIXELS} pixels "
                           "are accepted (resize the image)")
    try:
        rgb = decode_image(raw, name=where).rgb
    except ImageReadError as exc:
        cause = exc.__cause__
        if cause is not None:
            raise ServingError(f"{where}: cannot decode the file ({type(cause).__name__}); "
                               "expected a complete PNG or JPEG file") from None
        raise ServingError(f"{where}: got a {fmt} image: {exc.problem}; expected an 8-bit "
                           "RGB, greyscale, palette, CMYK or alpha image") from None
    rgb.flags.writeable = False
    return rgb


def encode_image_b64(image: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> str:
    """Client side: base64 of a uint8 HxWx3 image encoded as JPEG or PNG."""
    from PIL import Image

    buf = io.BytesIO()
    opts = {"quality": int(quality)} if fmt.upper() == "JPEG" else {}
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format=fmt.upper(), **opts)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def encode_mask_png_b64(mask: np.ndarray, palette: np.ndarray | None = None) -> str:
    """Base64 of the mask as a palette PNG (VOC colours, or ``palette``: (256, 3) uint8)."""
    from deeplab_core.data.io import encode_label_png

    return base64.b64encode(encode_label_png(mask, palette)).decode("ascii")


def decode_mask_png_b64(data: str) -> np.ndarray:
    """Client side: the uint8 HxW label mask of a `mask_format="png"` prediction."""
    from PIL import Image

    return np.array(Image.open(io.BytesIO(base64.b64decode(data))), dtype=np.uint8)


def _nesting(obj) -> tuple[int, object]:
    """(depth of nested lists along the first elements, the first non-list found)."""
    depth = 0
    while isinstance(obj, (list, tuple)) and len(obj):
        obj, depth = obj[0], depth + 1
    return depth, obj


def parse_input(model_input) -> tuple[list[np.ndarray], str]:
    """The images of a request, each a uint8 HxWx3 array (checked, not yet copied), and the
    arrangement of the answer: "one", "list" or "stack" (an NxHxW array)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if B64_KEY not in model_input.columns:
            raise ServingError(f"got a DataFrame with columns {list(model_input.columns)[:5]}; "
                               f"expected a column {B64_KEY!r} of base64 PNG/JPEG strings")
        model_input = {B64_KEY: model_input[B64_KEY].tolist()}
    if isinstance(model_input, dict):
        if set(model_input) != {B64_KEY}:
            raise ServingError(f"got a mapping with keys {sorted(map(str, model_input))[:5]}; "
                               f"expected only {B64_KEY!r} (base64 PNG/JPEG strings)")
        files = model_input[B64_KEY]
        if isinstance(files, (str, bytes)):
            return [decode_image_b64(files)], "one"
        if isinstance(files, np.ndarray):
            files = files.tolist()
        if not isinstance(files, (list, tuple)) or not files:
            raise ServingError(f"{B64_KEY}: got {type(files).__name__ if files else 'nothing'}; "
                               "expected a base64 string or a non-empty list of them")
        return [decode_image_b64(f, f"{B64_KEY}[{i}]") for i, f in enumerate(files)], "list"
    if isinstance(model_input, np.ndarray):
        if model_input.dtype == object and model_input.ndim == 1:
            model_input = list(model_input)
        elif model_input.ndim == 4:
            if not len(model_input):
                raise ServingError(f"got an empty batch of shape {model_input.shape}; expected "
                                   f"at least one image")
            return [check_image(im, f"images[{i}]") for i, im in enumerate(model_input)], "stack"
        else:
            return [check_image(model_input)], "one"
    if isinstance(model_input, (list, tuple)):
        if not len(model_input):
            raise ServingError(f"got an empty list; expected {EXPECTED} or a list of them")
        depth, leaf = _nesting(model_input)
        if isinstance(leaf, (str, bytes)):
            raise ServingError(f"got a list of strings; expected base64 PNG/JPEG strings as "
                               f"{{\"{B64_KEY}\": [...]}}")
        if isinstance(leaf, np.ndarray) or depth == 4:
            return [check_image(im, f"images[{i}]") for i, im in enumerate(model_input)], "list"
        if depth > 4:
            raise ServingError(f"got lists nested {depth} deep; expected {EXPECTED} (3 deep) or "
                               "a list of them (4 deep)")
        return [check_image(model_input)], "one"
    raise ServingError(f"got a {type(model_input).__name__}; expected {EXPECTED}, a list of "
                       f"them, or {{\"{B64_KEY}\": [...]}}")


def parse_params(params: dict | None) -> tuple[bool | None, str]:
    """(crf: True/False as asked, None when not given; mask_format)."""
    params = params or {}
    use_crf, mask_format = params.get("crf"), params.get("mask_format", "array")
    if use_crf is not None and not isinstance(use_crf, (bool, np.bool_)):
        raise ServingError(f"params.crf: got {type(use_crf).__name__}; expected true or false")
    if mask_format not in MASK_FORMATS:
        raise ServingError(f"params.mask_format: got {str(mask_format)[:20]!r}; expected one of "
                           f"{list(MASK_FORMATS)}")
    return (None if use_crf is None else bool(use_crf)), mask_format


def arrange(masks: list[np.ndarray], arrangement: str, mask_format: str,
            palette: np.ndarray | None = None):
    """The response: the masks (or their base64 PNGs, coloured with ``palette``: the dataset's,
    (256, 3) uint8; None: VOC's) in the request's arrangement."""
    if mask_format == "png":
        masks = [encode_mask_png_b64(m, palette) for m in masks]
    if arrangement == "one":
        return masks[0]
    if arrangement == "stack" and mask_format == "array":
        return np.stack(masks)
    return masks


# ----------------------------------------------------------------------------- size limit
def max_request_bytes() -> int:
    """The request body limit: DEEPLAB_SERVE_MAX_REQUEST_BYTES, else MAX_REQUEST_BYTES."""
    raw = os.environ.get(MAX_REQUEST_BYTES_ENV)
    if raw is None or not raw.strip():
        return MAX_REQUEST_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_REQUEST_BYTES_ENV} = {raw!r}: expected a positive number of bytes")
    return value


class RequestSizeLimit:
    """ASGI middleware: a POST whose body is over ``max_bytes`` is answered 413 with a one-line
    JSON message before the application sees it. A declared Content-Length over the limit is
    refused without reading a byte; a body without one (chunked) is read up to the limit and
    refused as soon as it goes over, so at most ``max_bytes`` of it is ever held."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def _refuse(self, send, got: str) -> None:
        body = json.dumps({"error_code": "REQUEST_TOO_LARGE",
                           "message": f"request body of {got} is over the limit of "
                                      f"{self.max_bytes} bytes; send a smaller image (base64 "
                                      f"PNG/JPEG is far smaller than a JSON array) or fewer "
                                      f"images per request"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.strip().isdigit():
            if int(length) > self.max_bytes:
                return await self._refuse(send, f"{int(length)} bytes")
            return await self.app(scope, receive, send)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                return await self._refuse(send, f"more than {total} bytes")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


