"""The served model: an MLflow pyfunc wrapping the checkpoint, the inference protocol the evaluate
stage measured it under, the CRF parameters the search found, and the library code, so
`mlflow.pyfunc.load_model("models:/deeplab@champion")` (or `mlflow models serve`) segments raw RGB
images into label masks exactly as the model was evaluated (request format: ``codec``).

The protocol (artifact ``protocol``, protocol.json) decides by default: scales, flip, output stride,
tiles, precision, and the CRF when it beat no CRF on the CV images. The request param `crf`
overrides it explicitly (true: the searched CRF; false: none). The network runs on CUDA when torch
sees a device (DEEPLAB_SERVE_DEVICE=cpu|cuda chooses); the CRFs of a batch run in parallel worker
processes (DEEPLAB_SERVE_CRF_WORKERS, default up to 4).

The signature declares the contract (uint8 (-1, -1, 3) -> uint8 (-1, -1), params `crf`, whose
default is the protocol's choice, and `mask_format`), and the model checks its input itself.
MLflow's own enforcement of that signature is off (the signature is stored as one MLflow does not
enforce, as for type-hinted models): with it, MLflow 3 refuses lists of images in process, its
scoring server casts JSON floats to uint8 without a word (a [0, 1] float image becomes all zeros),
and its errors repeat the request data.

Under `mlflow models serve`, loading the model also puts `codec.RequestSizeLimit` in front of the
scoring server's application (MLflow has no setting for a body limit): the scoring server builds its
FastAPI application right after loading the model, and this module hands it one that refuses
oversized bodies before they are read.
"""

from __future__ import annotations

import logging
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mlflow.pyfunc
import numpy as np
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from pipelines.common import REPO
from pipelines.ops.serving.codec import (MASK_FORMATS, RequestSizeLimit, ServingError,
                                         arrange, max_request_bytes, parse_input, parse_params)

SERVING_REQUIREMENTS = ["torch==2.13.0", "numpy", "scipy", "pillow", "pydensecrf2==1.1", "pydantic>=2",
                        "pyyaml", "mlflow>=3,<4"]
DEVICE_ENV = "DEEPLAB_SERVE_DEVICE"
CRF_WORKERS_ENV = "DEEPLAB_SERVE_CRF_WORKERS"

_logger = logging.getLogger(__name__)


def _limit_scoring_server_requests() -> None:
    """When the scoring server of `mlflow models serve` is loading this model (its module
    mlflow.pyfunc.scoring_server.app is being imported and has no application yet), make the one
    FastAPI application it creates next start with RequestSizeLimit in front."""
    import sys

    app_module = sys.modules.get("mlflow.pyfunc.scoring_server.app")
    if app_module is None or hasattr(app_module, "app"):
        return
    import fastapi

    original = fastapi.FastAPI
    limit = max_request_bytes()

    class LimitedFastAPI(original):
        def __init__(self, *args, **kwargs):
            fastapi.FastAPI = original  # one application only
            super().__init__(*args, **kwargs)
            self.add_middleware(RequestSizeLimit, max_bytes=limit)

    fastapi.FastAPI = LimitedFastAPI
    _logger.info("request bodies over %d bytes are refused (%s)", limit,
                 "DEEPLAB_SERVE_MAX_REQUEST_BYTES")


def _crf_workers() -> int:
    raw = os.environ.get(CRF_WORKERS_ENV, "")
    if raw.strip():
        if not raw.strip().isdigit() or int(raw) < 1:
            raise ValueError(f"{CRF_WORKERS_ENV} = {raw!r}: expected a number of processes >= 1")
        return int(raw)
    return max(1, min(4, os.cpu_count() or 1))


def _default_signals() -> None:
    """In a CRF worker: SIGTERM and SIGINT back to their defaults. Forked from the server's
    process (uvicorn), a worker inherits handlers that only flag the server's loop, which it
    does not run, so a SIGTERM to the server's process group would leave it running, orphaned."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def crf_pool() -> ProcessPoolExecutor:
    """The worker processes that run a batch's CRFs; they die with the server's process group."""
    return ProcessPoolExecutor(max_workers=_crf_workers(), initializer=_default_signals)


class DeepLabPyfunc(mlflow.pyfunc.PythonModel):
    searched_crf = None   # the CRF a request's crf: true applies (None: the protocol's)
    palette = None        # the dataset's colours for PNG masks (None: VOC's)
    _pool: ProcessPoolExecutor | None = None

    def load_context(self, context) -> None:
        from deeplab_core.crf.densecrf import CRFParams
        from deeplab_core.engine.checkpoint import load_checkpoint
        from deeplab_core.engine.infer import Segmenter
        from deeplab_core.engine.protocol import InferenceProtocol
        from deeplab_core.runtime import resolve_device

        _limit_scoring_server_requests()
        art = context.artifacts
        searched = CRFParams.from_file(art["crf_params"]) if art.get("crf_params") else None
        if art.get("protocol"):
            protocol = InferenceProtocol.from_file(art["protocol"])
        else:  # a model logged before protocols travelled with it: one scale, the searched CRF
            protocol = InferenceProtocol(crf=searched)
        self.searched_crf = searched or protocol.crf
        model, _ = load_checkpoint(Path(art["checkpoint"]))
        device = resolve_device(os.environ.get(DEVICE_ENV, "auto"))
        self.segmenter = Segmenter(model, protocol=protocol, device=device)
        self._pool: ProcessPoolExecutor | None = None
        if art.get("classes"):
            from deeplab_core.classes import load_class_list

            self.palette = load_class_list(art["classes"]).full_palette()

    @property
    def protocol(self):
        return self.segmenter.protocol

    def protocol_for(self, use_crf: bool | None):
        """The model's protocol, with the CRF as the request asks (None: as the protocol says)."""
        if use_crf is None:
            return self.protocol
        crf = (self.searched_crf or self.protocol.crf) if use_crf else None
        return self.protocol.with_overrides(crf=crf)

    def _refine_all(self, protocol, images: list[np.ndarray], probs: list[np.ndarray]):
        from deeplab_core.engine.protocol import refine_labels

        if protocol.crf is None or len(images) == 1:
            return [protocol.refine(im, p)[0] for im, p in zip(images, probs)]
        if self._pool is None:
            self._pool = crf_pool()
        futures = [self._pool.submit(refine_labels, protocol, im, p) for im, p in zip(images, probs)]
        return [f.result() for f in futures]

    def segment(self, images: list[np.ndarray], use_crf: bool | None = None) -> list[np.ndarray]:
        """One uint8 mask per image under the model's protocol (``use_crf`` overrides its CRF):
        the network image by image, the CRFs of the batch in parallel worker processes."""
        protocol = self.protocol_for(use_crf)
        probs = [self.segmenter.probabilities(im) for im in images]
        return [m.astype(np.uint8) for m in self._refine_all(protocol, images, probs)]

    def predict(self, context, model_input, params=None):
        use_crf, mask_format = parse_params(params)
        images, arrangement = parse_input(model_input)  # every image is checked before any work
        if use_crf and (self.searched_crf or self.protocol.crf) is None:
            raise ServingError("params.crf: true, but this model has no CRF parameters")
        try:
            masks = self.segment(images, use_crf)
        except Exception as exc:
            _logger.exception("segmentation failed")
            first = (str(exc).splitlines() or [""])[0][:200]
            raise ServingError(f"segmentation failed: {type(exc).__name__}: {first}",
                               error_code=INTERNAL_ERROR) from exc
        return arrange(masks, arrangement, mask_format, self.palette)


def model_signature(crf_default: bool = True):
    """uint8 (-1, -1, 3) image -> uint8 (-1, -1) mask, params crf (default: whether the
    protocol applies the CRF) and mask_format; stored as a signature MLflow does not enforce
    (the model checks its input; see the module docstring)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1))]),
        params=ParamSchema([ParamSpec("crf", "boolean", bool(crf_default)),
                            ParamSpec("mask_format", "string", MASK_FORMATS[0])]))
    signature._is_signature_from_type_hint = True
    return signature


def log_pyfunc_model(checkpoint: Path, crf_params: Path | None, registered_name: str | None,
                     protocol_file: Path | None = None, classes: Path | None = None):
    """Log the pyfunc model in the active run, with the inference protocol it applies
    (``protocol_file``, written by the evaluate stage; without it: one scale, the CRF of
    ``crf_params``), the searched CRF parameters and the dataset's ``classes`` list (whose
    palette colours the PNG masks); returns the ModelInfo."""
    from deeplab_core.engine.protocol import InferenceProtocol

    artifacts = {"checkpoint": str(checkpoint)}
    if crf_params is not None:
        artifacts["crf_params"] = str(crf_params)
    if classes is not None:
        artifacts["classes"] = str(classes)
    if protocol_file is not None:
        artifacts["protocol"] = str(protocol_file)
        crf_default = InferenceProtocol.from_file(protocol_file).crf is not None
    else:
        crf_default = crf_params is not None
    return mlflow.pyfunc.log_model(
        name="model", python_model=DeepLabPyfunc(), artifacts=artifacts,
        code_paths=[str(REPO / "deeplab_core"), str(REPO / "pipelines")],
        registered_model_name=registered_name, signature=model_signature(crf_default),
        pip_requirements=SERVING_REQUIREMENTS,
    )
