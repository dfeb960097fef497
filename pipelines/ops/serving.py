"""The served model: an MLflow pyfunc wrapping the checkpoint, the CRF parameters chosen by the
search, and the library code, so `mlflow.pyfunc.load_model("models:/deeplab@champion")` (or
`mlflow models serve`) segments raw RGB images into VOC label masks.

Input (`model_input`, or `"inputs"` of a served request):
  * one image: a uint8 HxWx3 array, or in JSON its nested lists `[[[r, g, b], ...], ...]` of
    integers 0..255;
  * several images: a list of those (sizes may differ), or a uint8 NxHxWx3 array;
  * compact: `{"image_b64": "<base64 PNG/JPEG>"}` or `{"image_b64": [...]}` (also a DataFrame
    with an `image_b64` column, in process).
Output: one uint8 HxW mask per image (JSON: nested lists), in the input's arrangement (one image
gives one mask, a list gives a list, an NxHxWx3 array an NxHxW array); with the param
`mask_format="png"` each mask is instead the base64 of a palette PNG (the dataset's colours) whose pixel
values are the class indices. Param `crf` (default true) switches the CRF.

Bad input raises `ServingError`, a one-line message naming what was got and what is expected; the
scoring server answers it with status 400 and a JSON body holding only that message. A failure
inside the network or the CRF is answered 500 with one line too (the traceback goes to the
server's log). Images over MAX_PIXELS are refused. A param of the wrong type (`"crf": "no"`) is
refused by MLflow itself before the model runs; that 400 message repeats the request data.

The signature declares the contract (uint8 (-1, -1, 3) -> uint8 (-1, -1), params `crf` and
`mask_format`), and the model checks its input itself. MLflow's own enforcement of that signature
is off (the signature is stored as one MLflow does not enforce, as for type-hinted models): with
it, MLflow 3 refuses lists of images in process, its scoring server casts JSON floats to uint8
without a word (a [0, 1] float image becomes all zeros), and its errors repeat the request data.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator

import mlflow.pyfunc
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from pipelines.common import REPO

SERVING_REQUIREMENTS = ["torch==2.13.0", "numpy", "scipy", "pillow", "pydensecrf2==1.1", "pydantic>=2",
                        "pyyaml", "mlflow>=3,<4"]
B64_KEY = "image_b64"
MASK_FORMATS = ("array", "png")
# Larger images are refused (resize them first): CPU memory for the class probabilities and the
# CRF grows with the pixel count times the number of classes.
MAX_PIXELS = 2048 * 2048
IMAGE_FORMATS = ("PNG", "JPEG")
EXPECTED = "a uint8 RGB image of shape HxWx3 (values 0..255)"

_logger = logging.getLogger(__name__)


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


def _params(params: dict | None) -> tuple[bool, str]:
    params = params or {}
    use_crf, mask_format = params.get("crf", True), params.get("mask_format", "array")
    if not isinstance(use_crf, (bool, np.bool_)):
        raise ServingError(f"params.crf: got {type(use_crf).__name__}; expected true or false")
    if mask_format not in MASK_FORMATS:
        raise ServingError(f"params.mask_format: got {str(mask_format)[:20]!r}; expected one of "
                           f"{list(MASK_FORMATS)}")
    return bool(use_crf), mask_format


# ----------------------------------------------------------------------------- model
class DeepLabPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from deeplab_core.engine.infer import Segmenter

        self.segmenter = Segmenter.from_files(context.artifacts["checkpoint"],
                                              context.artifacts.get("crf_params"))
        self.palette = None
        if context.artifacts.get("classes"):
            from deeplab_core.classes import load_class_list

            self.palette = load_class_list(context.artifacts["classes"]).full_palette()

    def predict(self, context, model_input, params=None):
        use_crf, mask_format = _params(params)
        images, arrangement = parse_input(model_input)  # every image is checked before any work
        try:
            masks = [self.segmenter(im, use_crf=use_crf) for im in images]
        except Exception as exc:
            _logger.exception("segmentation failed")
            first = (str(exc).splitlines() or [""])[0][:200]
            raise ServingError(f"segmentation failed: {type(exc).__name__}: {first}",
                               error_code=INTERNAL_ERROR) from exc
        if mask_format == "png":
            masks = [encode_mask_png_b64(m, getattr(self, "palette", None)) for m in masks]
        if arrangement == "one":
            return masks[0]
        if arrangement == "stack" and mask_format == "array":
            return np.stack(masks)
        return masks


def model_signature():
    """uint8 (-1, -1, 3) image -> uint8 (-1, -1) mask, params crf and mask_format; stored as a
    signature MLflow does not enforce (the model checks its input; see the module docstring)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1))]),
        params=ParamSchema([ParamSpec("crf", "boolean", True),
                            ParamSpec("mask_format", "string", MASK_FORMATS[0])]))
    signature._is_signature_from_type_hint = True
    return signature


def log_pyfunc_model(checkpoint: Path, crf_params: Path | None, registered_name: str | None,
                     classes: Path | None = None):
    """Log the pyfunc model in the active run (with the dataset's ``classes`` list, whose palette
    colours the PNG masks); returns the ModelInfo."""
    artifacts = {"checkpoint": str(checkpoint)}
    if crf_params is not None:
        artifacts["crf_params"] = str(crf_params)
    if classes is not None:
        artifacts["classes"] = str(classes)
    return mlflow.pyfunc.log_model(
        name="model", python_model=DeepLabPyfunc(), artifacts=artifacts,
        code_paths=[str(REPO / "deeplab_core"), str(REPO / "pipelines")],
        registered_model_name=registered_name, signature=model_signature(),
        pip_requirements=SERVING_REQUIREMENTS,
    )


# ----------------------------------------------------------------------------- local server
@contextlib.contextmanager
def mlflow_serve(model_uri: str, cwd: Path, env: dict | None = None,
                 start_timeout_s: float = 300.0, log_path: Path | None = None) -> Iterator[str]:
    """Run `mlflow models serve --env-manager local` for `model_uri` on a free 127.0.0.1 port
    from `cwd` (the project root, for the project's store), yield its base URL once `/health`
    answers, and stop it (its whole process group) on exit."""
    from pipelines.ops.procs import background_service, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ if env is None else env)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    cmd = [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager",
           "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log_path = Path(log_path or Path(cwd) / "mlflow_serve.log")
    with background_service(cmd, f"{url}/health", log_path, start_timeout_s, cwd=cwd, env=env):
        yield url
