"""MLflow's tracking server and UI, opening the project's experiment on its training runs.

    mlflow server --app-name deeplab --backend-store-uri sqlite:///mlflow.db   # or `mlflow ui`

MLflow 3's UI picks an experiment's view from its "GenAI | Model training" switch: the URL's
`?workflowType=`, else the choice the browser remembers in its localStorage
(`mlflow.workflowType_v1`, a JSON string), else GenAI; the experiment's `mlflow.experimentKind`
tag is not read. This app is MLflow's own server with one change: the UI's page (the HTML of
`GET /`) starts with a script that stores "machine_learning" as that choice when the browser
has none, so a plain experiment link opens the training runs; a browser whose user later
picks GenAI keeps GenAI. Every other response (REST API, artifacts, static files) is MLflow's,
byte for byte.

`mlflow server --app-name deeplab` finds `create_app` through the `mlflow.app` entry point in
pyproject.toml (installed by `make setup`). Under uvicorn (MLflow's default) it builds the ASGI
app the way MLflow builds its own, around the wrapped Flask app; under `--gunicorn-opts` or
`--waitress-opts` it is the wrapped Flask (WSGI) app.
"""

from __future__ import annotations

import json
import os
import re
from importlib.metadata import entry_points
from typing import Callable, Iterable

from pipelines.common import StageError

APP_NAME = "deeplab"  # the `mlflow.app` entry point's name in pyproject.toml
STORAGE_KEY = "mlflow.workflowType_v1"
WORKFLOW = "machine_learning"
SCRIPT = ("<script>try{if(localStorage.getItem(%s)===null)localStorage.setItem(%s,%s)}"
          "catch(e){}</script>" % (json.dumps(STORAGE_KEY), json.dumps(STORAGE_KEY),
                                   json.dumps(json.dumps(WORKFLOW)))).encode()
_HEAD = re.compile(rb"<head\b[^>]*>", re.IGNORECASE)
# The page is rewritten, so the file's validators no longer describe it.
_DROPPED = {"content-length", "etag", "last-modified", "cache-control"}
_CONDITIONAL = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE")


def inject(html: bytes) -> bytes:
    """`html` with SCRIPT right after its `<head>` tag; unchanged when it has none."""
    m = _HEAD.search(html)
    return html if m is None else html[:m.end()] + SCRIPT + html[m.end():]


class TrainingRunsByDefault:
    """WSGI middleware around MLflow's Flask app: the UI's page (a 200 text/html answer to
    GET `index_path`, not encoded) gets SCRIPT at the start of its head, a matching
    Content-Length and `Cache-Control: no-cache`; every other request passes straight through."""

    def __init__(self, app: Callable, index_path: str = "/"):
        self.app = app
        self.index_path = index_path

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("PATH_INFO") != self.index_path:
            return self.app(environ, start_response)
        # Always the whole page: a 304 would let a browser keep a page without the script.
        environ = {k: v for k, v in environ.items() if k not in _CONDITIONAL}
        answer: dict = {}
        chunks: list[bytes] = []

        def capture(status, headers, exc_info=None):
            answer.update(status=status, headers=headers, exc_info=exc_info)
            return chunks.append

        result = self.app(environ, capture)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        status, headers = answer["status"], list(answer["headers"])
        body = b"".join(chunks)
        kind = {k.lower(): v for k, v in headers}
        if (status.startswith("200") and kind.get("content-type", "").startswith("text/html")
                and kind.get("content-encoding", "identity") == "identity"):
            body = inject(body)
            headers = [(k, v) for k, v in headers if k.lower() not in _DROPPED]
            headers += [("Content-Length", str(len(body))), ("Cache-Control", "no-cache")]
        start_response(status, headers, answer["exc_info"])
        return [body]


def require_installed() -> None:
    """A one-line error unless `mlflow server --app-name deeplab` can find this app: the
    entry point comes with the project's install (`make setup` reinstalls it when
    pyproject.toml changes)."""
    found = [e.value for e in entry_points(group="mlflow.app") if e.name == APP_NAME]
    if f"{__name__}:create_app" not in found:
        raise StageError(f"the MLflow app {APP_NAME!r} is not installed (entry point group "
                         f"'mlflow.app' has {found or 'no such name'}); expected "
                         f"{__name__}:create_app from pyproject.toml: run `make setup`")


def create_app():
    """The `mlflow.app` factory: ASGI under uvicorn, WSGI under gunicorn or waitress (MLflow
    names the server in `_MLFLOW_SGI_NAME` for the processes it starts)."""
    from mlflow.server import app as flask_app
    from mlflow.server.handlers import STATIC_PREFIX_ENV_VAR

    prefix = os.environ.get(STATIC_PREFIX_ENV_VAR, "").rstrip("/")
    wsgi = TrainingRunsByDefault(flask_app, f"{prefix}/")
    if os.environ.get("_MLFLOW_SGI_NAME", "uvicorn") != "uvicorn":
        return wsgi
    from mlflow.server.fastapi_app import create_fastapi_app

    return create_fastapi_app(wsgi)
