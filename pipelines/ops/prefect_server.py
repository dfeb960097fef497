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
import sys
from pathlib import Path
from typing import Iterator

from pipelines.common import REPO, StageError
from pipelines.ops.procs import background_service, free_port, url_ok

START_TIMEOUT_S = float(os.environ.get("DEEPLAB_PREFECT_START_TIMEOUT", "300"))


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    return url_ok(f"{api_url.rstrip('/')}/health", timeout=timeout)


def _prefect_executable() -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "prefect"]


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
    with background_service(cmd, f"{url}/health", home / "server.log", timeout_s, env=env,
                            hint=" (DEEPLAB_PREFECT_START_TIMEOUT)"):
        os.environ["PREFECT_API_URL"] = url
        try:
            yield url
        finally:
            if existing:
                os.environ["PREFECT_API_URL"] = existing
            else:
                os.environ.pop("PREFECT_API_URL", None)
