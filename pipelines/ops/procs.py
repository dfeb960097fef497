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


def descendants(pid: int) -> list[int]:
    """Process ids below `pid` (children, grandchildren, ...), read from /proc; [] where there
    is no /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the command name (field 2) may hold spaces: the parent id follows its ')'
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _kill_all(pids: list[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)


def run_group(cmd: list[str], grace_s: float = 30.0) -> int:
    """Run `cmd` in its own session and wait for it, as subprocess.run would, except that
    SIGTERM or SIGINT to this process is passed on: SIGTERM to the child's process group and
    every process below it (torchrun starts its ranks in sessions of their own), SIGKILL to
    what is left after `grace_s`; whatever of the tree survives the child is killed too.
    Returns the child's exit status, or 128 + the signal number when a signal stopped it."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    tree: set[int] = set()
    deadline = None
    try:
        while proc.poll() is None:
            tree.update(descendants(proc.pid))
            if received and deadline is None:
                deadline = time.monotonic() + grace_s
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                _kill_all(sorted(tree), signal.SIGTERM)
            elif deadline is not None and time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                _kill_all(sorted(tree), signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            stop_group(proc, grace_s)
        if received:  # ranks still alive once torchrun is gone would train on, orphaned
            _kill_all(sorted(tree), signal.SIGKILL)
    return 128 + received[0] if received else proc.returncode
