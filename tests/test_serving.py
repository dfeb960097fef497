"""The serving contract in process (no MLflow store, no server): input forms and arrangements,
one-line errors for bad input, compact PNG masks, and read-only arrays through the library."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import TINY_NUM_CLASSES
from deeplab_core.crf.densecrf import CRFParams, check_image, dense_crf
from deeplab_core.data.io import encode_jpeg, encode_label_png
from deeplab_core.engine.infer import Segmenter
from deeplab_core.models import build_model
from pipelines.ops.serving import (DeepLabPyfunc, ServingError, decode_mask_png_b64,
                               encode_image_b64, parse_input)

RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
SMALL = RNG.integers(0, 256, (16, 20, 3), dtype=np.uint8)


def _read_only(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a.flags.writeable = False
    return a


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pyfunc() -> DeepLabPyfunc:
    torch.manual_seed(0)
    model = DeepLabPyfunc()
    model.segmenter = Segmenter(build_model("micro", num_classes=TINY_NUM_CLASSES).eval(),
                                CRFParams(iterations=2))
    return model


@pytest.mark.parametrize("model_input,arrangement,shapes", [
    (IMG, "one", [(24, 32, 3)]),
    (IMG.tolist(), "one", [(24, 32, 3)]),
    (np.stack([IMG, IMG]), "stack", [(24, 32, 3)] * 2),
    ([IMG, SMALL], "list", [(24, 32, 3), (16, 20, 3)]),
    ([IMG.tolist(), SMALL.tolist()], "list", [(24, 32, 3), (16, 20, 3)]),
    ({"image_b64": _b64(encode_jpeg(IMG))}, "one", [(24, 32, 3)]),
    ({"image_b64": [_b64(encode_jpeg(IMG)), _b64(_png(SMALL, "RGB"))]}, "list",
     [(24, 32, 3), (16, 20, 3)]),
    (pd.DataFrame({"image_b64": [_b64(_png(SMALL[..., 0], "L"))]}), "list", [(16, 20, 3)]),
], ids=["array", "nested-lists", "4d-array", "list-of-arrays", "list-of-nested-lists",
        "b64-one", "b64-list", "b64-dataframe-gray-png"])
def test_input_forms(model_input, arrangement, shapes):
    images, got = parse_input(model_input)
    assert got == arrangement
    assert [im.shape for im in images] == shapes
    assert all(im.dtype == np.uint8 for im in images)


def test_nested_lists_are_the_same_pixels():
    (image,), _ = parse_input(IMG.tolist())
    np.testing.assert_array_equal(image, IMG)
    (png,), _ = parse_input({"image_b64": _b64(_png(IMG, "RGB"))})
    np.testing.assert_array_equal(png, IMG)


def _tiny_gif() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(SMALL).save(buf, format="GIF")
    return buf.getvalue()


BAD = [
    (IMG / 255.0, "image: got a float64 array (float values, max 1: scale a [0, 1] image by 255"),
    ((IMG / 255.0).tolist(), "image: got float values, max 1: scale"),
    (IMG.astype(np.int16), "image: got a int16 array (integers, min 0, max 255: uint8 holds 0..255)"),
    ((IMG.astype(np.int64) + 1).tolist(), "image: got integers, min 1, max 256: uint8 holds 0..255"),
    (IMG[..., 0], "image: got shape (24, 32) (grayscale? repeat it into 3 channels)"),
    (np.dstack([IMG, IMG[..., :1]]), "image: got shape (24, 32, 4) (RGBA? drop the alpha channel)"),
    (np.zeros((0, 5, 3), np.uint8), "image: got an empty image of shape (0, 5, 3)"),
    ([[[1, 2, 3]], [[1, 2, 3], [4, 5, 6]]], "image: got nested lists of unequal lengths"),
    ([IMG, IMG[..., :2]], "images[1]: got shape (24, 32, 2)"),
    ([], "got an empty list"),
    (np.zeros((0, 4, 4, 3), np.uint8), "got an empty batch of shape (0, 4, 4, 3)"),
    (["abc"], "got a list of strings; expected base64 PNG/JPEG strings as {\"image_b64\": [...]}"),
    ({"image": IMG.tolist()}, "got a mapping with keys ['image']; expected only 'image_b64'"),
    ({"image_b64": "not base64!"}, "image_b64: not valid base64"),
    ({"image_b64": [_b64(b"plain text, not an image")]},
     "image_b64[0]: cannot decode the file (UnidentifiedImageError)"),
    ({"image_b64": [_b64(encode_jpeg(IMG)[:200])]}, "image_b64[0]: cannot decode the file (OSError)"),
    ({"image_b64": _b64(_png((IMG[..., 0].astype(np.uint16) * 257), None))},
     "image_b64: got a PNG image: image has mode 'I;16'"),
    ({"image_b64": _b64(_tiny_gif())}, "image_b64: got a GIF file; expected PNG or JPEG"),
    (pd.DataFrame({"x": [1]}), "got a DataFrame with columns ['x']; expected a column 'image_b64'"),
    ("abc", "got a str; expected a uint8 RGB image"),
]


@pytest.mark.parametrize("model_input,start", BAD, ids=range(len(BAD)))
def test_bad_input_one_line_naming_got_and_expected(pyfunc, model_input, start):
    with pytest.raises(ServingError) as exc:
        pyfunc.predict(None, model_input)
    message = str(exc.value)
    assert message.startswith(start), message
    assert "\n" not in message and len(message) < 220 and "expected" in message
    assert exc.value.error_code == "INVALID_PARAMETER_VALUE"


def test_too_many_pixels_refused_before_decoding(monkeypatch):
    monkeypatch.setattr("pipelines.ops.serving.codec.MAX_PIXELS", 100)
    with pytest.raises(ServingError, match=r"image: got 24x32 pixels; at most 100"):
        parse_input(IMG)
    with pytest.raises(ServingError, match=r"image_b64: got 24x32 pixels; at most 100"):
        parse_input({"image_b64": _b64(encode_jpeg(IMG))})


def test_error_body_keeps_the_message_when_the_server_prefixes_the_data():
    err = ServingError("image: got shape (2, 2); expected something")
    err.message = f"Failed to predict data '{IMG.tolist()}'. \nError: {err.message}"  # as MLflow does
    assert json.loads(err.serialize_as_json()) == {
        "error_code": "INVALID_PARAMETER_VALUE", "message": "image: got shape (2, 2); expected something"}
    assert err.get_http_status_code() == 400


@pytest.mark.parametrize("params,start", [
    ({"crf": "no"}, "params.crf: got str; expected true or false"),
    ({"mask_format": "jpeg"}, "params.mask_format: got 'jpeg'; expected one of ['array', 'png']"),
])
def test_bad_params(pyfunc, params, start):
    with pytest.raises(ServingError) as exc:
        pyfunc.predict(None, IMG, params=params)
    assert str(exc.value) == start


def test_failure_inside_the_model_is_one_line_internal_error(pyfunc, monkeypatch):
    def broken(image):
        raise RuntimeError("out of memory\nsecond line")

    monkeypatch.setattr(pyfunc.segmenter, "probabilities", broken)
    with pytest.raises(ServingError) as exc:
        pyfunc.predict(None, IMG)
    assert str(exc.value) == "segmentation failed: RuntimeError: out of memory"
    assert exc.value.get_http_status_code() == 500


def test_output_arrangements_and_png_masks(pyfunc):
    one = pyfunc.predict(None, IMG, params={"crf": False})
    assert one.shape == (24, 32) and one.dtype == np.uint8
    stacked = pyfunc.predict(None, np.stack([IMG, IMG]), params={"crf": False})
    assert stacked.shape == (2, 24, 32) and stacked.dtype == np.uint8
    listed = pyfunc.predict(None, [IMG, SMALL])
    assert [m.shape for m in listed] == [(24, 32), (16, 20)]
    pngs = pyfunc.predict(None, [IMG, SMALL], params={"mask_format": "png"})
    assert all(isinstance(p, str) for p in pngs)
    for png, mask in zip(pngs, listed):
        np.testing.assert_array_equal(decode_mask_png_b64(png), mask)
    png_one = pyfunc.predict(None, IMG, params={"crf": False, "mask_format": "png"})
    np.testing.assert_array_equal(decode_mask_png_b64(png_one), one)


def test_read_only_images_everywhere(pyfunc):
    ro = _read_only(IMG)
    for crf in (True, False):
        np.testing.assert_array_equal(pyfunc.predict(None, ro, params={"crf": crf}),
                                      pyfunc.predict(None, IMG.copy(), params={"crf": crf}))
    decoded = np.asarray(Image.open(io.BytesIO(encode_jpeg(IMG))))
    assert not decoded.flags.writeable
    assert pyfunc.segmenter(decoded).shape == (24, 32)
    probs = np.full((3, 24, 32), 1 / 3, dtype=np.float32)
    labels, q = dense_crf(ro, probs, CRFParams(iterations=1))
    assert labels.shape == (24, 32) and q.shape == (3, 24, 32)
    assert check_image(ro).flags.writeable and check_image(IMG) is IMG


def test_client_helpers_round_trip():
    png = _b64(encode_label_png(IMG[..., 0] % 21))
    np.testing.assert_array_equal(decode_mask_png_b64(png), IMG[..., 0] % 21)
    (decoded,), _ = parse_input({"image_b64": encode_image_b64(IMG, "PNG")})
    np.testing.assert_array_equal(decoded, IMG)


def test_logged_model_colours_png_masks_with_the_dataset_palette(tmp_path, monkeypatch):
    """The register stage logs the dataset's classes.json with the model: the served PNG masks
    carry its palette (a generic dataset's colours, not VOC's); an EXIF-rotated JPEG is
    segmented in its displayed orientation."""
    import mlflow

    from deeplab_core.engine.checkpoint import model_spec, save_checkpoint
    from pipelines.ops.serving import log_pyfunc_model
    from realformat import smooth_image, write_exif_jpeg

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model.pt", build_model("micro", num_classes=4).eval(),
                    model_spec("micro", 4, 16))
    colours = [[10, 20, 30], [200, 0, 0], [0, 200, 0], [0, 0, 200]]
    (tmp_path / "classes.json").write_text(json.dumps({"names": ["bg", "a", "b", "c"],
                                                      "palette": colours}))
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment(
        "serving-palette", artifact_location=(tmp_path / "artifacts").as_uri()))
    with mlflow.start_run():
        info = log_pyfunc_model(tmp_path / "model.pt", None, None,
                                classes=tmp_path / "classes.json")
    model = mlflow.pyfunc.load_model(info.model_uri)
    sideways = write_exif_jpeg(tmp_path / "p.jpg", smooth_image(3, 24, 40), 6)
    png = model.predict({"image_b64": base64.b64encode(sideways.read_bytes()).decode()},
                        params={"crf": False, "mask_format": "png"})
    with Image.open(io.BytesIO(base64.b64decode(png))) as mask:
        assert mask.size == (40, 24)  # displayed: 24 high, 40 wide (stored 40 x 24)
        pal = np.array(mask.getpalette()[:12], dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(pal, np.array(colours, dtype=np.uint8))


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie awaiting its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states in /proc")
def test_crf_workers_die_on_sigterm_under_a_server_that_catches_it():
    """A served model's CRF workers are forked from the server's process, whose SIGTERM handler
    (uvicorn's) only flags a loop they do not run: they take SIGTERM's default back, so stopping
    the server's process group stops them; a plain pool's worker would live on."""
    import os
    import signal
    import time
    from concurrent.futures import ProcessPoolExecutor

    from pipelines.ops.serving import model as served

    pools, pids = {}, {}
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # as the server does
    try:
        pools = {"project": served.crf_pool(), "plain": ProcessPoolExecutor(max_workers=1)}
        pids = {k: p.submit(os.getpid).result(timeout=120) for k, p in pools.items()}
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while _alive(pids["project"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pids["project"])
        assert _alive(pids["plain"])  # the inherited handler swallowed it
    finally:
        signal.signal(signal.SIGTERM, previous)
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in pools.values():
            p.shutdown(wait=False, cancel_futures=True)
