"""The MLflow UI screenshots in docs/mlops.md, taken in a real headless Chromium from a project's
own store (after `make run`, or any project with an `mlflow.db`):

    python docs/screenshots.py --project . --out docs/img [--model deeplab]

Needs Playwright (a project dependency) and a Chromium build: Debian's
`chromium-headless-shell` (apt) is found on its own; `--browser PATH` names another.
It starts `mlflow server` on the project's sqlite store (from the project root, where the
artifact paths resolve), opens the experiment on its training runs (the link with
`?workflowType=machine_learning`, see docs/mlops.md) and the registered model's page (its
description holds the champion history table), and saves `mlflow_experiment_runs.png` and
`mlflow_champion_history.png`. tests/test_mlflow_ui.py drives the UI with the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BROWSERS = ("chromium-headless-shell", "/usr/lib/chromium/chromium-headless-shell", "chromium")


def browser_path(given: str | None = None) -> str | None:
    """The Chromium to drive: `given`, else the first of BROWSERS found; None when none is."""
    for cand in ([given] if given else BROWSERS):
        path = shutil.which(cand) or (cand if Path(cand).is_file() else None)
        if path:
            return path
    return None


def find_browser(given: str | None) -> str:
    path = browser_path(given)
    if path is None:
        raise SystemExit(f"no Chromium found (tried {', '.join([given] if given else BROWSERS)});"
                         " pass --browser PATH")
    return path


@contextlib.contextmanager
def mlflow_ui(store: str, cwd: Path, log: Path, timeout_s: float = 600,
              app: str | None = "deeplab", extra: tuple[str, ...] = ()) -> Iterator[str]:
    """A real `mlflow server` on `store` (run from `cwd`, where relative artifact paths
    resolve) on a free local port, as the project's app (pipelines/ops/mlflow_ui.py) or,
    with `app=None`, MLflow's stock one (`extra`: more `mlflow server` options); yields its
    URL and stops it on exit."""
    from pipelines.ops.procs import background_service, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("mlflow")
    with background_service([str(exe), "server", "--backend-store-uri", store, "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1",
                             *(["--app-name", app] if app else []), *extra],
                            f"{url}/health", log, timeout_s, cwd=cwd):
        yield url


@contextlib.contextmanager
def chromium(browser: str | None = None) -> Iterator["playwright.sync_api.Browser"]:
    """Headless Chromium under Playwright, from the system's binary (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=find_browser(browser))
        try:
            yield b
        finally:
            b.close()


def show(page, target: str, ready: str, timeout_ms: int = 600_000) -> None:
    """Open `target` and wait until the selector `ready` shows (the page's data has rendered);
    the assistant side panel MLflow opens on its own is closed."""
    page.goto(target, timeout=timeout_ms)
    page.wait_for_selector(ready, timeout=timeout_ms)
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=ROOT)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--model", default="deeplab")
    ap.add_argument("--experiment", default="deeplab")
    ap.add_argument("--browser")
    a = ap.parse_args()
    from mlflow import MlflowClient

    project = a.project.resolve()
    store = f"sqlite:///{project / 'mlflow.db'}"
    exp = MlflowClient(tracking_uri=store).get_experiment_by_name(a.experiment)
    if exp is None:
        raise SystemExit(f"no experiment {a.experiment!r} in {store}")
    a.out.mkdir(parents=True, exist_ok=True)
    with mlflow_ui(store, project, a.out / ".mlflow-screenshots.log") as url, \
            chromium(a.browser) as browser:
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        # (file, page, text that shows once its data has rendered)
        shots = [("mlflow_experiment_runs.png",
                  f"{url}/#/experiments/{exp.experiment_id}?workflowType=machine_learning",
                  "text=finetune"),
                 ("mlflow_champion_history.png", f"{url}/#/models/{a.model}",
                  "text=Champion history")]
        for name, target, ready in shots:
            show(page, target, ready)
            page.wait_for_timeout(2000)
            page.screenshot(path=str(a.out / name), full_page=True)
            print(f"{a.out / name}: {target}")
    (a.out / ".mlflow-screenshots.log").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
