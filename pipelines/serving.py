"""The served model: an MLflow pyfunc wrapping the checkpoint, the CRF parameters chosen by the
search, and the library code, so `mlflow.pyfunc.load_model("models:/deeplab@champion")` segments
raw RGB images (uint8 HxWx3 arrays, one or a list) into VOC label masks."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np

from pipelines.common import REPO


SERVING_REQUIREMENTS = ["torch==2.13.0", "numpy", "scipy", "pillow", "pydensecrf2==1.1", "pydantic>=2",
                        "pyyaml", "mlflow>=3,<4"]


class DeepLabPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from deeplab_core.engine.infer import Segmenter

        self.segmenter = Segmenter.from_files(context.artifacts["checkpoint"],
                                              context.artifacts.get("crf_params"))

    def predict(self, context, model_input, params=None):
        use_crf = bool((params or {}).get("crf", True))
        if isinstance(model_input, np.ndarray) and model_input.ndim == 3:
            return self.segmenter(model_input, use_crf=use_crf)
        return [self.segmenter(np.asarray(img, dtype=np.uint8), use_crf=use_crf)
                for img in model_input]


def log_pyfunc_model(checkpoint: Path, crf_params: Path | None, registered_name: str | None):
    """Log the pyfunc model in the active run; returns the ModelInfo."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    # Images vary in size, so no input schema; the one inference parameter is declared.
    signature = ModelSignature(inputs=None, outputs=None,
                               params=ParamSchema([ParamSpec("crf", "boolean", True)]))
    artifacts = {"checkpoint": str(checkpoint)}
    if crf_params is not None:
        artifacts["crf_params"] = str(crf_params)
    return mlflow.pyfunc.log_model(
        name="model", python_model=DeepLabPyfunc(), artifacts=artifacts,
        code_paths=[str(REPO / "deeplab_core"), str(REPO / "pipelines")],
        registered_model_name=registered_name, signature=signature,
        pip_requirements=SERVING_REQUIREMENTS,
    )
