"""MLflow tracking for the stages: a sqlite store inside the project by default
(MLFLOW_TRACKING_URI overrides), each run tagged with the git commit and its DVC inputs' hash."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipelines.common import REPO, git_commit, stage_inputs_hash

EXPERIMENT = os.environ.get("DEEPLAB_EXPERIMENT", "deeplab")
MLFLOW_DIR = REPO / "mlruns"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    MLFLOW_DIR.mkdir(exist_ok=True)
    return f"sqlite:///{MLFLOW_DIR / 'mlflow.db'}"


def configure() -> "module":
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        art = os.environ.get("DEEPLAB_ARTIFACT_ROOT") or (MLFLOW_DIR / "artifacts").as_uri()
        try:
            mlflow.create_experiment(EXPERIMENT, artifact_location=art)
        except Exception:  # created concurrently by another stage
            pass
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextmanager
def stage_run(stage: str, params_sections: dict) -> Iterator["mlflow.ActiveRun"]:
    """An MLflow run for one stage execution, with params, git commit and DVC-inputs hash."""
    mlflow = configure()
    tags = {"stage": stage, "git_commit": git_commit(), "dvc_inputs_md5": stage_inputs_hash(stage)}
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        flat = {k: str(v)[:500] for k, v in flatten(params_sections).items()}
        if flat:
            mlflow.log_params(flat)
        yield run


def metric_logger(prefix: str = ""):
    """A `log_metrics(step, dict)` callable for the library's training/eval hooks."""
    import mlflow

    def log(step: int, values: dict) -> None:
        mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in values.items()}, step=step)

    return log


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    import mlflow

    for p in paths:
        p = Path(p)
        if p.is_dir():
            mlflow.log_artifacts(str(p), artifact_path=artifact_path)
        elif p.is_file():
            mlflow.log_artifact(str(p), artifact_path=artifact_path)
