"""The served model over real HTTP: a micro model logged and registered in a scratch MLflow store,
served by `mlflow models serve --env-manager local`, asked with VOC-sized images as JSON arrays
and as base64 JPEG, with and without the CRF, and with bad images (400, one-line message)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import requests
import torch

from deeplab_core.crf.densecrf import CRFParams
from deeplab_core.data.io import encode_jpeg
from deeplab_core.data.synthetic.scenes import render_scene
from deeplab_core.engine.checkpoint import model_spec, save_checkpoint
from deeplab_core.models import build_model
from pipelines.ops.serving import (decode_mask_png_b64, encode_image_b64, mlflow_serve,
                               log_pyfunc_model)

NUM_CLASSES = 21
MODEL = "deeplab-serve"
H, W = 375, 500  # a PASCAL VOC-sized image
LIMIT = 8_000_000  # request body bytes the test server accepts


def voc_sized_image(seed: int = 0) -> np.ndarray:
    """A synthetic VOC-style scene: textured background, objects, noise (compresses like a photo)."""
    return render_scene(np.random.default_rng(seed), H, W).image


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """(project dir, model URI): a micro network with a CRF, registered as version 1 in the
    store `mlflow.db` of a scratch project (artifact paths relative to it, as in the project)."""
    import mlflow

    root = tmp_path_factory.mktemp("serve_project")
    torch.manual_seed(0)
    save_checkpoint(root / "model.pt", build_model("micro", num_classes=NUM_CLASSES).eval(),
                    model_spec("micro", NUM_CLASSES, 16))
    (root / "best_params.json").write_text(json.dumps({"params": CRFParams(iterations=5).to_dict()}))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before_cwd, before_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("serving-test")
        with mlflow.start_run():
            log_pyfunc_model(root / "model.pt", root / "best_params.json", MODEL)
        yield root, f"models:/{MODEL}/1"
    finally:
        mlflow.set_tracking_uri(None)
        os.chdir(before_cwd)
        if before_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before_uri


@pytest.fixture(scope="module")
def server(registered):
    root, model_uri = registered
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
               OMP_NUM_THREADS="1", DEEPLAB_SERVE_MAX_REQUEST_BYTES=str(LIMIT))
    with mlflow_serve(model_uri, root, env=env) as url:
        yield url


@pytest.fixture(scope="module")
def loaded(registered):
    import mlflow

    return mlflow.pyfunc.load_model(registered[1])


def _post(url: str, body: dict) -> tuple[requests.Response, int]:
    data = json.dumps(body)
    resp = requests.post(f"{url}/invocations", data=data, timeout=300,
                         headers={"Content-Type": "application/json"})
    return resp, len(data)


def _check_mask(mask, shape=(H, W)) -> np.ndarray:
    mask = np.asarray(mask)
    assert mask.shape == shape and mask.dtype.kind in "iu"
    assert 0 <= mask.min() and mask.max() < NUM_CLASSES
    return mask


def test_signature_declares_image_to_mask_and_crf_param(loaded):
    sig = loaded.metadata.signature
    (inp,), (out,) = sig.inputs.inputs, sig.outputs.inputs
    assert (inp.type, inp.shape) == (np.dtype(np.uint8), (-1, -1, 3))
    assert (out.type, out.shape) == (np.dtype(np.uint8), (-1, -1))
    params = {p.name: (p.dtype.name, p.default) for p in sig.params.params}
    assert params == {"crf": ("boolean", True), "mask_format": ("string", "array")}


def test_in_process_list_of_sizes_and_read_only_images(loaded):
    from PIL import Image

    image = voc_sized_image(1)
    decoded = np.asarray(Image.open(io.BytesIO(encode_jpeg(image))))
    assert not decoded.flags.writeable  # what np.asarray(Image.open(...)) gives
    small = image[:40, :56].copy()
    small.flags.writeable = False
    for crf in (True, False):
        masks = loaded.predict([decoded, small], params={"crf": crf})
        assert [m.shape for m in masks] == [(H, W), (40, 56)]
        assert all(m.dtype == np.uint8 and m.max() < NUM_CLASSES for m in masks)
    assert loaded.predict(small).shape == (40, 56)


def test_http_array_with_and_without_crf(server, loaded):
    image = voc_sized_image()
    crf_resp, nbytes = _post(server, {"inputs": image.tolist()})
    assert crf_resp.status_code == 200, crf_resp.text[:500]
    assert nbytes > 2_000_000  # why the base64 form exists
    with_crf = _check_mask(crf_resp.json()["predictions"])
    plain_resp, _ = _post(server, {"inputs": image.tolist(), "params": {"crf": False}})
    assert plain_resp.status_code == 200, plain_resp.text[:500]
    plain = _check_mask(plain_resp.json()["predictions"])
    np.testing.assert_array_equal(plain, loaded.predict(image, params={"crf": False}))
    assert not np.array_equal(with_crf, plain)  # the CRF ran on the server


def test_http_base64_jpeg_with_png_masks_is_small(server, loaded):
    image = voc_sized_image()
    body = {"inputs": {"image_b64": [encode_image_b64(image, quality=90)]}}
    for crf in (True, False):
        resp, nbytes = _post(server, {**body, "params": {"crf": crf, "mask_format": "png"}})
        assert resp.status_code == 200, resp.text[:500]
        assert nbytes < 120_000 and len(resp.content) < 60_000  # the array body: ~3 MB
        (png,) = resp.json()["predictions"]
        mask = _check_mask(decode_mask_png_b64(png))
        # the server decodes the JPEG exactly as the client library does
        expected = loaded.predict(body["inputs"], params={"crf": crf})[0]
        assert np.mean(mask == expected) > 0.999
    plain, _ = _post(server, {"inputs": {"image_b64": body["inputs"]["image_b64"][0]}})
    assert plain.status_code == 200
    _check_mask(plain.json()["predictions"])


def test_http_batch_of_different_sizes(server):
    image = voc_sized_image()
    resp, _ = _post(server, {"inputs": [image[:60, :80].tolist(), image[:33, :45].tolist()],
                             "params": {"crf": False}})
    assert resp.status_code == 200, resp.text[:500]
    first, second = resp.json()["predictions"]
    _check_mask(first, (60, 80))
    _check_mask(second, (33, 45))


@pytest.mark.parametrize("make,got", [
    (lambda im: (im / 255.0).round(4), "got float values, max "),
    (lambda im: np.dstack([im, np.full(im.shape[:2], 255, np.uint8)]), f"got shape ({H}, {W}, 4)"),
], ids=["float01", "rgba"])
def test_http_bad_image_is_400_with_one_line_and_no_echo(server, make, got):
    resp, _ = _post(server, {"inputs": make(voc_sized_image()).tolist()})
    assert resp.status_code == 400
    assert len(resp.content) < 500, resp.text[:1000]  # neither the input nor a stack trace
    body = resp.json()
    assert set(body) == {"error_code", "message"} and body["error_code"] == "INVALID_PARAMETER_VALUE"
    message = body["message"]
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"image: {got}") and "expected a uint8 RGB image of shape HxWx3" in message


def _raw_post(url: str, chunks, length: int | None) -> tuple[int, dict]:
    from pipelines.ops.serving.serve import post_streamed

    status, body = post_streamed(url, chunks, length, timeout=120)
    return status, json.loads(body)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_http_body_over_the_limit_is_413_before_parsing(server, declared):
    """A body over DEEPLAB_SERVE_MAX_REQUEST_BYTES is refused with 413 and a one-line message,
    whether its length is declared or it streams in chunked; the server keeps serving."""
    size = LIMIT + 1_000_000
    chunk = b"0," * 500_000
    chunks = [b'{"inputs": ['] + [chunk] * (size // len(chunk)) + [b"0]}"]
    length = sum(len(c) for c in chunks)
    status, body = _raw_post(server, chunks, length if declared else None)
    assert status == 413
    assert body["error_code"] == "REQUEST_TOO_LARGE"
    assert f"over the limit of {LIMIT} bytes" in body["message"] and "\n" not in body["message"]
    assert requests.get(f"{server}/health", timeout=30).status_code == 200
    resp, nbytes = _post(server, {"inputs": voc_sized_image()[:40, :56].tolist(),
                                  "params": {"crf": False}})
    assert resp.status_code == 200 and nbytes < LIMIT
