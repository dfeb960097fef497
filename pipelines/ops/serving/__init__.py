"""Serving the registered model: ``codec`` (requests in, masks out, the request size limit),
``model`` (the MLflow pyfunc applying the model's inference protocol) and ``serve`` (a local
`mlflow models serve`)."""

from pipelines.ops.serving.codec import (B64_KEY, MAX_PIXELS, MAX_REQUEST_BYTES, RequestSizeLimit,
                                         ServingError, check_image, decode_image_b64,
                                         decode_mask_png_b64, encode_image_b64,
                                         encode_mask_png_b64, max_request_bytes, parse_input,
                                         parse_params)
from pipelines.ops.serving.model import (DeepLabPyfunc, SERVING_REQUIREMENTS, log_pyfunc_model,
                                         model_signature)
from pipelines.ops.serving.serve import mlflow_serve

__all__ = ["B64_KEY", "DeepLabPyfunc", "MAX_PIXELS", "MAX_REQUEST_BYTES", "RequestSizeLimit",
           "SERVING_REQUIREMENTS", "ServingError", "check_image", "decode_image_b64",
           "decode_mask_png_b64", "encode_image_b64", "encode_mask_png_b64", "log_pyfunc_model",
           "max_request_bytes", "mlflow_serve", "model_signature", "parse_input", "parse_params"]
