"""One Prefect API for a whole pipeline run.

Every stage is a Prefect flow. Without `PREFECT_API_URL`, each stage process would start Prefect's
temporary server of its own (10-25 s each, with a start-up limit a loaded machine misses). A run of
the whole pipeline therefore starts one real `prefect server` on 127.0.0.1, points every stage at
it through `PREFECT_API_URL`, and stops it afterwards; when `PREFECT_API_URL` is already set (a
server the user runs), that one is used and left alone.

The server keeps its database in the project's `.prefect/` folder (`PREFECT_HOME`), so the flow
runs of earlier pipeline runs are there when you start `prefect server start` with the same
`PREFECT_HOME` to browse them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from pipelines.common import REPO, StageError

START_TIMEOUT_S = float(os.environ.get("DEEPLAB_PREFECT_START_TIMEOUT", "300"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _prefect_executable() -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "prefect"]


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def prefect_api(home: Path | None = None, timeout_s: float = START_TIMEOUT_S,
                services: bool = False, reuse: bool = True,
                env: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the URL of a Prefect API for the duration of the block, with `PREFECT_API_URL` set
    to it in this process's environment (children inherit it).

    Reuses `PREFECT_API_URL` when set (fails clearly if nothing answers there); otherwise starts
    `prefect server start` on a free 127.0.0.1 port with `PREFECT_HOME=home` (default: the
    project's `.prefect/`), waits until `/api/health` answers (no fixed start-up limit short
    enough to trip on a busy machine), and stops the server on exit. `services=False` runs the
    API and UI only (no scheduler), which is all that running flows needs; `services=True` runs
    the scheduler and the other services too. `reuse=False` always starts a server; `env` adds
    settings for it (e.g. PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS).
    """
    existing = os.environ.get("PREFECT_API_URL")
    if existing and reuse:
        if not api_healthy(existing, timeout=10):
            raise StageError(f"PREFECT_API_URL={existing} does not answer at /health; start "
                             "that server or unset PREFECT_API_URL to use a temporary one")
        yield existing
        return

    home = Path(home) if home is not None else REPO / ".prefect"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false", **(env or {}))
    env.pop("PREFECT_API_URL", None)
    cmd = _prefect_executable() + ["server", "start", "--host", "127.0.0.1", "--port", str(port)]
    if not services:
        cmd.append("--no-services")
    log_path = home / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not api_healthy(url):
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise StageError(f"`{' '.join(cmd)}` exited with code {proc.returncode} before "
                                 f"its API answered; last lines of {log_path}:\n{tail}")
            if time.monotonic() > deadline:
                raise StageError(f"Prefect server at {url} did not answer within {timeout_s:.0f}"
                                 f" s (DEEPLAB_PREFECT_START_TIMEOUT); see {log_path}")
            time.sleep(0.25)
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            if existing:
                os.environ["PREFECT_API_URL"] = existing
            else:
                os.environ.pop("PREFECT_API_URL", None)
    finally:
        _stop(proc)
