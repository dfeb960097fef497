"""The shared services started for real, for the tests that use them: `python -m
pipelines.ops.services start --temp` (a throw-away PostgreSQL cluster, an MLflow tracking server
on it with proxied artifacts, a Prefect server on it) as a subprocess, its URLs once it says
"services ready", psql against its cluster, and SIGTERM at the end."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO

START_DEADLINE_S = 900  # initdb, MLflow's migrations and Prefect's, on a busy CPU


def require_postgres() -> None:
    """Skip the calling module where the services cannot start here."""
    pytest.importorskip("psycopg", reason="psycopg (requirements.lock) drives MLflow on "
                                          "PostgreSQL")
    if shutil.which("pg_ctl") is None and not list(
            Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")):
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not installed",
                    allow_module_level=True)


def code_env(code_root: Path = REPO) -> dict:
    """This environment with `code_root` first on PYTHONPATH and the venv's programs on PATH,
    without any tracking, Prefect, params or pipeline-run overrides."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(code_root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "DEEPLAB_PIPELINE_RUN",
                "DEEPLAB_PARAMS", "DEEPLAB_ARTIFACT_ROOT"):
        env.pop(key, None)
    return env


@dataclass
class Services:
    """A running `services start --temp`: its ports, its temp dir (`root`, with `artifacts/`),
    its log, and after the `with` block its exit code."""
    proc: subprocess.Popen
    log: Path
    pg: int
    mlflow: int
    prefect: int
    root: Path | None = None
    exit_code: int | None = field(default=None)

    @property
    def urls(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.mlflow}",
                "PREFECT_API_URL": f"http://127.0.0.1:{self.prefect}/api"}

    def client_env(self, base: dict) -> dict:
        return dict(base, **self.urls)

    def psql(self, db: str, sql: str) -> str:
        psql = shutil.which("psql") or str(next(Path("/usr/lib/postgresql").glob("*/bin/psql")))
        proc = subprocess.run([psql, "-h", "127.0.0.1", "-p", str(self.pg), "-U", "deeplab",
                               "-d", db, "-tAc", sql], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()


@contextlib.contextmanager
def running_services(workdir: Path, env: dict) -> Iterator[Services]:
    """Start the services from `workdir` and yield them once ready; SIGTERM on exit, the exit
    code in `exit_code`."""
    from pipelines.ops.procs import free_port

    svc = Services(proc=None, log=Path(workdir) / "services.log", pg=free_port(),
                   mlflow=free_port(), prefect=free_port())
    with open(svc.log, "w") as out:
        svc.proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.ops.services", "start", "--temp",
             "--pg-port", str(svc.pg), "--mlflow-port", str(svc.mlflow),
             "--prefect-port", str(svc.prefect), "--workers", "1"],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + START_DEADLINE_S
        while "services ready" not in svc.log.read_text() and time.time() < deadline:
            assert svc.proc.poll() is None, svc.log.read_text()[-4000:]
            time.sleep(1)
        text = svc.log.read_text()
        assert "services ready" in text, text[-4000:]
        svc.root = Path(text.split("services ready in ", 1)[1].split(" ", 1)[0])
        yield svc
    finally:
        svc.proc.send_signal(signal.SIGTERM)
        try:
            svc.exit_code = svc.proc.wait(180)
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            raise


def python_json(code: str, cwd: Path, env: dict) -> object:
    """Run `code` in a fresh interpreter in `cwd`; the JSON its last output line holds."""
    proc = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
