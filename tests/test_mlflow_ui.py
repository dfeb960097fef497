"""The project's experiment in a real MLflow UI (`mlflow server` on a sqlite store) in a real
headless Chromium, driven by Playwright through docs/screenshots.py's browser code: which view
the experiment opens on, and the two ways docs/mlops.md gives to land on its training runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_NAME = "finetune-ui-check"
WAIT_MS = 180_000  # a deadline for a busy machine, not a speed target


def _screenshots():
    spec = importlib.util.spec_from_file_location("screenshots", REPO / "docs" / "screenshots.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


shots = _screenshots()
pytestmark = pytest.mark.skipif(shots.browser_path() is None,
                                reason="no Chromium binary found (tried "
                                       f"{', '.join(shots.BROWSERS)})")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """`mlflow server` on a fresh sqlite store holding the project's experiment, created by
    pipelines.tracking.configure() as every stage creates it, with one finished run."""
    tmp = tmp_path_factory.mktemp("mlflow_ui")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store)
        mp.setenv("DEEPLAB_ARTIFACT_ROOT", str(tmp / "artifacts"))
        from pipelines import tracking

        mlflow = tracking.configure()
        with mlflow.start_run(run_name=RUN_NAME, tags={"stage": "finetune"}):
            mlflow.log_metric("finetune_loss", 0.5)
        exp = mlflow.get_experiment_by_name(tracking.EXPERIMENT)
        assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
        with shots.mlflow_ui(store, tmp, tmp / "server.log") as url, shots.chromium() as browser:
            yield f"{url}/#/experiments/{exp.experiment_id}", browser


def _open(browser, url: str, tab: str):
    """A fresh browser profile (nothing remembered) on `url`, once the UI has redirected the
    experiment page to `tab` (its path segment)."""
    page = browser.new_context(viewport={"width": 1500, "height": 900}).new_page()
    page.goto(url, timeout=WAIT_MS)
    page.wait_for_url(f"**/#/experiments/*/{tab}**", timeout=WAIT_MS)
    return page


def _shows_training_runs(page) -> None:
    assert "workflowType=machine_learning" in page.url
    page.wait_for_selector(f"text={RUN_NAME}", timeout=WAIT_MS)  # the runs table's row


def test_documented_link_opens_the_experiment_on_its_training_runs(ui):
    exp_url, browser = ui
    page = _open(browser, f"{exp_url}?workflowType=machine_learning", "runs")
    _shows_training_runs(page)
    page.context.close()


def test_plain_link_opens_training_runs_once_model_training_is_picked(ui):
    """The plain experiment link in a new browser lands on the GenAI overview: MLflow 3.17's UI
    reads the experiment's view from its "GenAI | Model training" switch (the URL's
    `workflowType`, else the choice the browser remembers, GenAI by default) and not from the
    `mlflow.experimentKind` tag the experiment carries, so no tag or server setting can change
    it. Picking "Model training" once makes the same plain link open the training runs."""
    exp_url, browser = ui
    page = _open(browser, exp_url, "overview")
    assert "workflowType=genai" in page.url, page.url
    page.get_by_text("Model training", exact=True).first.click()
    page.wait_for_url("**/#/experiments/*/runs**", timeout=WAIT_MS)
    again = page.context.new_page()  # the same browser profile
    again.goto(exp_url, timeout=WAIT_MS)
    again.wait_for_url("**/#/experiments/*/runs**", timeout=WAIT_MS)
    _shows_training_runs(again)
    page.context.close()
