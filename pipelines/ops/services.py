"""Shared services for a team, started with one command: PostgreSQL, an MLflow tracking server on
it with proxied artifact storage, and a Prefect server (API, UI, scheduler) on it.

    python -m pipelines.ops.services start [--dir .services] [--host 127.0.0.1]
                                           [--pg-port 5433] [--mlflow-port 5000]
                                           [--prefect-port 4200] [--workers 2]
    python -m pipelines.ops.services start --temp     # a throw-away cluster, removed at exit

It runs in the foreground (a terminal, tmux or a service manager) until Ctrl-C or SIGTERM, then
stops the three in reverse order. `--dir` keeps everything between starts: the PostgreSQL
cluster (`<dir>/postgres/data`, made by `initdb` on the first start, as the `postgres` user when
run as root, since initdb refuses root), the artifacts (`<dir>/artifacts`) and the logs. Once
all three answer it prints the two variables clients need:

    export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
    export PREFECT_API_URL=http://127.0.0.1:4200/api

With those set, `dvc repro`, `python -m pipelines.ops.repro`, the retrain flow, the registry CLI,
`mlflow models serve -m models:/deeplab@champion` and `deeplab-predict --model models:/...` log to
and load from the server from any directory: artifacts travel through the server
(`mlflow-artifacts:/`), never as paths of one machine. MLflow talks to PostgreSQL through
psycopg (requirements.lock), Prefect through asyncpg. MLflow runs as the project's app
(`--app-name deeplab`, pipelines/ops/mlflow_ui.py): its UI opens the experiment on its training
runs. PostgreSQL listens on `--host` only, with
`trust` authentication for the `deeplab` role: put it on a private network or change
`pg_hba.conf` before exposing it.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from pipelines.common import REPO, StageError
from pipelines.ops.mlflow_ui import APP_NAME, require_installed
from pipelines.ops.prefect_server import _prefect_executable
from pipelines.ops.procs import background_service

PG_USER, PG_OS_USER = "deeplab", "postgres"
DATABASES = ("mlflow", "prefect")
START_TIMEOUT_S = float(os.environ.get("DEEPLAB_SERVICES_START_TIMEOUT", "300"))


def pg_bin(name: str) -> str:
    """A PostgreSQL server program (initdb, pg_ctl, createdb): on PATH or in Debian's
    /usr/lib/postgresql/<version>/bin, newest first."""
    found = shutil.which(name) or next(iter(sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
        reverse=True)), None)
    if found is None:
        raise StageError(f"PostgreSQL's {name} not found on PATH or in /usr/lib/postgresql/*/bin; "
                         "expected a PostgreSQL server install (apt install postgresql)")
    return found


def _as_db_owner(cmd: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: as root, run them as `postgres`."""
    return ["runuser", "-u", PG_OS_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise StageError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc


def _own(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(path, PG_OS_USER, PG_OS_USER)


@contextlib.contextmanager
def postgres(root: Path, host: str, port: int) -> Iterator[str]:
    """A PostgreSQL cluster in `root/postgres` (initdb on first use) serving `host:port`, with
    the databases mlflow and prefect; yields `deeplab@host:port`; stopped on exit."""
    base = root / "postgres"
    data, sock = base / "data", base / "socket"
    for path in (base, sock):
        _own(path)
    if not (data / "PG_VERSION").is_file():
        _own(data)
        _run(_as_db_owner([pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "-A", "trust",
                           "-E", "UTF8", "--no-instructions"]), f"initdb of {data}")
    pg_ctl = pg_bin("pg_ctl")
    _run(_as_db_owner([pg_ctl, "-D", str(data), "-l", str(base / "postgres.log"), "-w",
                       "-t", str(int(START_TIMEOUT_S)),
                       "-o", f"-p {port} -h {host} -k {sock}", "start"]),
         f"starting PostgreSQL on {host}:{port} (log: {base / 'postgres.log'})")
    try:
        for db in DATABASES:
            proc = subprocess.run([pg_bin("createdb"), "-h", host, "-p", str(port), "-U",
                                   PG_USER, db], capture_output=True, text=True)
            if proc.returncode != 0 and "already exists" not in proc.stderr:
                raise StageError(f"createdb {db} on {host}:{port} failed: "
                                 f"{proc.stderr.strip()}")
        yield f"{PG_USER}@{host}:{port}"
    finally:
        subprocess.run(_as_db_owner([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)


def _venv_program(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", name]


@contextlib.contextmanager
def services(root: Path, host: str, pg_port: int, mlflow_port: int, prefect_port: int,
             workers: int = 2) -> Iterator[dict[str, str]]:
    """PostgreSQL, then the MLflow tracking server and the Prefect server on it; yields the
    URLs clients use ({"MLFLOW_TRACKING_URI": ..., "PREFECT_API_URL": ...})."""
    root = Path(root).absolute()
    logs = root / "logs"
    with contextlib.ExitStack() as stack:
        require_installed()
        pg = stack.enter_context(postgres(root, host, pg_port))
        mlflow_url = f"http://{host}:{mlflow_port}"
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
        stack.enter_context(background_service(
            _venv_program("mlflow") + [
                "server", "--backend-store-uri", f"postgresql+psycopg://{pg}/mlflow",
                "--artifacts-destination", str(root / "artifacts"),
                "--host", host, "--port", str(mlflow_port), "--workers", str(workers),
                "--app-name", APP_NAME],
            f"{mlflow_url}/health", logs / "mlflow.log", START_TIMEOUT_S, cwd=root, env=env,
            hint=" (DEEPLAB_SERVICES_START_TIMEOUT)"))
        prefect_url = f"http://{host}:{prefect_port}/api"
        env = dict(os.environ, PREFECT_HOME=str(root / "prefect"),
                   PREFECT_API_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://{pg}/prefect",
                   PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false")
        env.pop("PREFECT_API_URL", None)
        stack.enter_context(background_service(
            _prefect_executable() + ["server", "start", "--host", host,
                                     "--port", str(prefect_port)],
            f"{prefect_url}/health", logs / "prefect.log", START_TIMEOUT_S, cwd=root, env=env,
            hint=" (DEEPLAB_SERVICES_START_TIMEOUT)"))
        yield {"MLFLOW_TRACKING_URI": mlflow_url, "PREFECT_API_URL": prefect_url}


def _wait_for_signal() -> None:
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    while not stop:
        signal.pause()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.ops.services", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start PostgreSQL, MLflow and Prefect; stop on Ctrl-C")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--dir", type=Path, default=REPO / ".services",
                       help="cluster, artifacts and logs (default: .services in the project)")
    where.add_argument("--temp", action="store_true", help="a throw-away cluster")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--pg-port", type=int, default=5433)
    s.add_argument("--mlflow-port", type=int, default=5000)
    s.add_argument("--prefect-port", type=int, default=4200)
    s.add_argument("--workers", type=int, default=2, help="MLflow server worker processes")
    a = ap.parse_args(argv)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deeplab-services-"))
                    ) if a.temp else a.dir
        if a.temp and os.geteuid() == 0:
            os.chmod(root, 0o755)  # the postgres user walks into it
        try:
            urls = stack.enter_context(services(root, a.host, a.pg_port, a.mlflow_port,
                                                a.prefect_port, a.workers))
        except StageError as err:
            print(f"ERROR [services]: {err}", file=sys.stderr)
            return 2
        print(f"services ready in {root} (Ctrl-C stops them):", flush=True)
        for key, url in urls.items():
            print(f"export {key}={url}", flush=True)
        _wait_for_signal()
        print("stopping services", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
