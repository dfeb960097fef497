"""The MLflow UI screenshots in docs/mlops.md, taken in a real headless Chromium from a project's
own store (after `make run`, or any project with an `mlflow.db`):

    python docs/screenshots.py --project . --out docs/img [--model deeplab]

Needs Playwright (`pip install playwright`) and a Chromium build: Debian's
`chromium-headless-shell` (apt) is found on its own; `--browser PATH` names another.
It starts `mlflow server` on the project's sqlite store (from the project root, where the
artifact paths resolve), opens the experiment (which MLflow 3 shows on its training runs) and the
registered model's page (its description holds the champion history table), and saves
`mlflow_experiment_runs.png` and `mlflow_champion_history.png`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BROWSERS = ("chromium-headless-shell", "/usr/lib/chromium/chromium-headless-shell", "chromium")


def find_browser(given: str | None) -> str:
    for cand in ([given] if given else BROWSERS):
        path = shutil.which(cand) or (cand if Path(cand).is_file() else None)
        if path:
            return path
    raise SystemExit(f"no Chromium found (tried {', '.join(BROWSERS)}); pass --browser PATH")


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
    from playwright.sync_api import sync_playwright

    from pipelines.ops.procs import background_service, free_port

    project = a.project.resolve()
    store = f"sqlite:///{project / 'mlflow.db'}"
    exp = MlflowClient(tracking_uri=store).get_experiment_by_name(a.experiment)
    if exp is None:
        raise SystemExit(f"no experiment {a.experiment!r} in {store}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    exe = Path(sys.executable).with_name("mlflow")
    a.out.mkdir(parents=True, exist_ok=True)
    with background_service([str(exe), "server", "--backend-store-uri", store, "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1"],
                            f"{url}/health", a.out / ".mlflow-screenshots.log", 600,
                            cwd=project):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=find_browser(a.browser))
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            # (file, page, text that shows once its data has rendered)
            shots = [("mlflow_experiment_runs.png",
                      f"{url}/#/experiments/{exp.experiment_id}?workflowType=machine_learning",
                      "text=finetune"),
                     ("mlflow_champion_history.png", f"{url}/#/models/{a.model}",
                      "text=Champion history")]
            for name, target, ready in shots:
                page.goto(target, timeout=600_000)
                page.wait_for_selector(ready, timeout=600_000)
                close = page.get_by_role("button", name="Close")
                if close.count():  # the assistant side panel
                    close.first.click()
                page.wait_for_timeout(2000)
                page.screenshot(path=str(a.out / name), full_page=True)
                print(f"{a.out / name}: {target}")
            browser.close()
    (a.out / ".mlflow-screenshots.log").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
