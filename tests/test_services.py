"""The shared services for real: `python -m pipelines.ops.services start --temp` starts a
throw-away PostgreSQL cluster (initdb/pg_ctl, as the postgres user when run as root), an MLflow
tracking server on it with proxied artifacts and a Prefect server on it. With
MLFLOW_TRACKING_URI set, a model logged and registered from one directory is promoted by the
registry CLI from a second and loaded as `models:/...@champion` from a third; a flow run reaches
Prefect's PostgreSQL database; SIGTERM stops all three and removes the cluster."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from pipelines.ops import mlflow_ui
from team_services import code_env, python_json, require_postgres, running_services

pytestmark = pytest.mark.e2e
require_postgres()

LOG_AND_REGISTER = """
import mlflow, mlflow.pyfunc
from pipelines import tracking

class Lengths(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [len(x) for x in model_input]

tracking.configure()
exp = mlflow.get_experiment_by_name(tracking.EXPERIMENT)
with mlflow.start_run():
    info = mlflow.pyfunc.log_model(name="model", python_model=Lengths(), pip_requirements=[],
                                   registered_model_name="team-model")
print(json.dumps({"artifact_location": exp.artifact_location, "kind":
                  exp.tags.get("mlflow.experimentKind"),
                  "version": str(info.registered_model_version)}))
"""

LOAD = """
import mlflow.pyfunc
print(json.dumps(mlflow.pyfunc.load_model("models:/team-model@champion").predict([[1, 2, 3]])))
"""

FLOW = """
from prefect import flow

@flow(name="services-check")
def check() -> int:
    return 7

print(json.dumps(check()))
"""


def test_services_on_postgres_serve_clients_in_any_directory(tmp_path):
    with running_services(tmp_path, code_env()) as svc:
        text = svc.log.read_text()
        root, ml, pf = svc.root, svc.mlflow, svc.prefect
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{ml}" in text
        assert f"export PREFECT_API_URL=http://127.0.0.1:{pf}/api" in text
        # MLflow runs as the project's app: its UI page opens experiments on the training runs
        with urllib.request.urlopen(f"http://127.0.0.1:{ml}/", timeout=120) as page:
            assert mlflow_ui.SCRIPT in page.read()

        client_env = svc.client_env(code_env())
        dirs = [tmp_path / d for d in ("one", "two", "three")]
        for d in dirs:
            d.mkdir()
        logged = python_json(LOG_AND_REGISTER, dirs[0], client_env)
        assert logged["artifact_location"].startswith("mlflow-artifacts:/"), logged
        assert logged["kind"] == "custom_model_development"
        promote = subprocess.run([sys.executable, "-m", "pipelines.ops.registry", "promote",
                                  logged["version"], "--model", "team-model"], cwd=dirs[1],
                                 env=client_env, capture_output=True, text=True, timeout=300)
        assert promote.returncode == 0, promote.stderr[-3000:]
        assert promote.stdout.strip() == f"team-model: v{logged['version']} is champion (was none)"
        assert python_json(LOAD, dirs[2], client_env) == [3]
        # the artifacts went through the server into its destination, not into any client's cwd
        assert list((root / "artifacts").rglob("MLmodel"))
        assert not any((d / "mlruns").exists() for d in dirs)
        # both servers keep their state in PostgreSQL
        assert svc.psql("mlflow", "SELECT alias FROM registered_model_aliases "
                                  "WHERE name = 'team-model'") == "champion"
        assert python_json(FLOW, dirs[1], client_env) == 7
        assert svc.psql("prefect", "SELECT count(*) FROM flow_run fr JOIN flow f ON "
                                   "f.id = fr.flow_id WHERE f.name = 'services-check' AND "
                                   "fr.state_type = 'COMPLETED'") == "1"
    assert svc.exit_code == 0, svc.log.read_text()[-3000:]
    assert "stopping services" in svc.log.read_text()
    assert not root.exists()
    probe = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{svc.pg}"],
                           capture_output=True)
    assert probe.returncode != 0  # PostgreSQL no longer listens
