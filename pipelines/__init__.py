"""Pipeline layer: one Prefect flow per DVC stage, with MLflow tracking, Great Expectations data
validation and the MLflow model registry. Entry points: `python -m pipelines.<stage>`."""

import os as _os

# Telemetry off for every stage; users can still override these in their environment.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("DO_NOT_TRACK", "1")
_os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
_os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
_os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# A stage started by hand (no PREFECT_API_URL) runs Prefect's temporary server of its own; its
# default 20 s start-up limit is missed on a busy machine. `python -m pipelines.ops.repro` avoids the
# per-stage server altogether (see pipelines/ops/prefect_server.py).
_os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
