"""The shared services for real: `python -m pipelines.ops.services start --temp` starts a
throw-away PostgreSQL cluster (initdb/pg_ctl, as the postgres user when run as root), an MLflow
tracking server on it with proxied artifacts and a Prefect server on it. With
MLFLOW_TRACKING_URI set, a model logged and registered from one directory is promoted by the
registry CLI from a second and loaded as `models:/...@champion` from a third; a flow run reaches
Prefect's PostgreSQL database; SIGTERM stops all three and removes the cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO
from pipelines.ops import mlflow_ui

pytestmark = pytest.mark.e2e
pytest.importorskip("psycopg", reason="psycopg (requirements.lock) drives MLflow on PostgreSQL")
if shutil.which("pg_ctl") is None and not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
    pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not installed",
                allow_module_level=True)

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


def _python(code: str, cwd: Path, env: dict) -> object:
    proc = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _psql(port: int, db: str, sql: str) -> str:
    psql = shutil.which("psql") or str(next(Path("/usr/lib/postgresql").glob("*/bin/psql")))
    proc = subprocess.run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", "deeplab", "-d", db,
                           "-tAc", sql], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_services_on_postgres_serve_clients_in_any_directory(tmp_path):
    from pipelines.ops.procs import free_port

    pg, ml, pf = free_port(), free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "DEEPLAB_PIPELINE_RUN"):
        env.pop(key, None)
    log = tmp_path / "services.log"
    with open(log, "w") as out:
        svc = subprocess.Popen([sys.executable, "-m", "pipelines.ops.services", "start", "--temp",
                                "--pg-port", str(pg), "--mlflow-port", str(ml),
                                "--prefect-port", str(pf), "--workers", "1"],
                               cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 900  # initdb, MLflow's migrations and Prefect's, on a busy CPU
        while "services ready" not in log.read_text() and time.time() < deadline:
            assert svc.poll() is None, log.read_text()[-4000:]
            time.sleep(1)
        text = log.read_text()
        assert "services ready" in text, text[-4000:]
        root = Path(text.split("services ready in ", 1)[1].split(" ", 1)[0])
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{ml}" in text
        assert f"export PREFECT_API_URL=http://127.0.0.1:{pf}/api" in text
        # MLflow runs as the project's app: its UI page opens experiments on the training runs
        with urllib.request.urlopen(f"http://127.0.0.1:{ml}/", timeout=120) as page:
            assert mlflow_ui.SCRIPT in page.read()

        client_env = dict(env, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{ml}",
                          PREFECT_API_URL=f"http://127.0.0.1:{pf}/api")
        dirs = [tmp_path / d for d in ("one", "two", "three")]
        for d in dirs:
            d.mkdir()
        logged = _python(LOG_AND_REGISTER, dirs[0], client_env)
        assert logged["artifact_location"].startswith("mlflow-artifacts:/"), logged
        assert logged["kind"] == "custom_model_development"
        promote = subprocess.run([sys.executable, "-m", "pipelines.ops.registry", "promote",
                                  logged["version"], "--model", "team-model"], cwd=dirs[1],
                                 env=client_env, capture_output=True, text=True, timeout=300)
        assert promote.returncode == 0, promote.stderr[-3000:]
        assert promote.stdout.strip() == f"team-model: v{logged['version']} is champion (was none)"
        assert _python(LOAD, dirs[2], client_env) == [3]
        # the artifacts went through the server into its destination, not into any client's cwd
        assert list((root / "artifacts").rglob("MLmodel"))
        assert not any((d / "mlruns").exists() for d in dirs)
        # both servers keep their state in PostgreSQL
        assert _psql(pg, "mlflow", "SELECT alias FROM registered_model_aliases "
                                   "WHERE name = 'team-model'") == "champion"
        assert _python(FLOW, dirs[1], client_env) == 7
        assert _psql(pg, "prefect", "SELECT count(*) FROM flow_run fr JOIN flow f ON "
                                    "f.id = fr.flow_id WHERE f.name = 'services-check' AND "
                                    "fr.state_type = 'COMPLETED'") == "1"
    finally:
        svc.send_signal(signal.SIGTERM)
        try:
            code = svc.wait(180)
        except subprocess.TimeoutExpired:
            svc.kill()
            raise
    assert code == 0, log.read_text()[-3000:]
    assert "stopping services" in log.read_text()
    assert not root.exists()
    probe = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{pg}"],
                           capture_output=True)
    assert probe.returncode != 0  # PostgreSQL no longer listens
