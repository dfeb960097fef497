"""Local helper services run as child processes (a Prefect server, `mlflow models serve`):
a free port, a health probe, start-and-wait, and a stop that takes the whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from pipelines.common import StageError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def url_ok(url: str, timeout: float = 2.0) -> bool:
    """True when GET `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the process group of `proc` (started with start_new_session=True), SIGKILL it
    after `grace_s`."""
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
def background_service(cmd: list[str], health_url: str, log_path: Path, timeout_s: float,
                       cwd: Path | None = None, env: dict | None = None,
                       hint: str = "") -> Iterator[subprocess.Popen]:
    """Start `cmd` in its own session with its output appended to `log_path`, wait until
    `health_url` answers (failing with the log's tail if the process exits first or after
    `timeout_s`), yield the process, and stop its process group on exit."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not url_ok(health_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                state = (f"exited with code {proc.returncode}" if proc.poll() is not None
                         else f"did not answer at {health_url} within {timeout_s:.0f} s{hint}")
                tail = log_path.read_text(errors="replace")[-2000:]
                raise StageError(f"`{' '.join(cmd)}` {state}; end of {log_path}:\n{tail}")
            time.sleep(0.25)
        yield proc
    finally:
        stop_group(proc)
