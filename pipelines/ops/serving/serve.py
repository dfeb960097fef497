"""Serve a registered model locally with a real `mlflow models serve`."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def mlflow_serve(model_uri: str, cwd: Path, env: dict | None = None,
                 start_timeout_s: float = 300.0, log_path: Path | None = None) -> Iterator[str]:
    """Run `mlflow models serve --env-manager local` for `model_uri` on a free 127.0.0.1 port
    from `cwd` (the project root, for the project's store), yield its base URL once `/health`
    answers, and stop it (its whole process group) on exit."""
    from pipelines.ops.procs import background_service, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ if env is None else env)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    cmd = [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager",
           "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log_path = Path(log_path or Path(cwd) / "mlflow_serve.log")
    with background_service(cmd, f"{url}/health", log_path, start_timeout_s, cwd=cwd, env=env):
        yield url


def post_streamed(url: str, chunks, length: int | None, timeout: float = 600) -> tuple[int, bytes]:
    """POST ``chunks`` (bytes) to ``url``/invocations with a Content-Length of ``length``, or
    chunked when None; (status, body). The server may answer and close before the whole body is
    sent (a body over the size limit): the answer is read all the same."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest("POST", "/invocations")
        conn.putheader("Content-Type", "application/json")
        conn.putheader(*(("Content-Length", str(length)) if length is not None
                         else ("Transfer-Encoding", "chunked")))
        conn.endheaders()
        try:
            for c in chunks:
                conn.send(c if length is not None else b"%x\r\n%s\r\n" % (len(c), c))
            if length is None:
                conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed early: the response is waiting
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()

