"""The project's experiment in a real MLflow UI (`mlflow server` on a sqlite store) in a real
headless Chromium, driven by Playwright through docs/screenshots.py's browser code: which view
the experiment opens on, on MLflow's stock server (why the project's app exists, and the
`?workflowType=machine_learning` link) and on `mlflow server --app-name deeplab`
(pipelines/ops/mlflow_ui.py), which changes the UI's page and nothing else."""

from __future__ import annotations

import importlib.util
import re
import urllib.error
import urllib.request
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
def store(tmp_path_factory):
    """A fresh sqlite store holding the project's experiment, created by
    pipelines.tracking.configure() as every stage creates it, with one finished run; yields
    (store URI, its directory, the experiment's id)."""
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
        yield store, tmp, exp.experiment_id


@pytest.fixture(scope="module")
def browser():
    with shots.chromium() as b:
        yield b


def _server(store, app):
    uri, tmp, exp_id = store
    with shots.mlflow_ui(uri, tmp, tmp / f"server-{app or 'stock'}.log", app=app) as url:
        yield url, f"{url}/#/experiments/{exp_id}"


@pytest.fixture(scope="module")
def stock(store):
    """MLflow's own server (no --app-name): (its URL, the plain experiment link)."""
    yield from _server(store, None)


@pytest.fixture(scope="module")
def deeplab(store):
    """`mlflow server --app-name deeplab` (pipelines/ops/mlflow_ui.py), same store."""
    from pipelines.ops import mlflow_ui

    mlflow_ui.require_installed()
    yield from _server(store, mlflow_ui.APP_NAME)


@pytest.fixture(scope="module")
def ui(stock, browser):
    yield stock[1], browser


def _open(browser, url: str, tab: str):
    """A fresh browser profile (nothing remembered) on `url`, once the UI has redirected the
    experiment page to `tab` (its path segment)."""
    page = browser.new_context(viewport={"width": 1500, "height": 900}).new_page()
    page.goto(url, timeout=WAIT_MS)
    page.wait_for_url(f"**/#/experiments/*/{tab}**", timeout=WAIT_MS)
    return page


def _pick(page, view: str) -> None:
    """Click the sidebar's "GenAI | Model training" switch. MLflow's GenAI overview may pop up
    a feature tour over the page (a "Got it" dialog, at a time of its own); dismiss it first."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(20):
        tour = page.get_by_role("button", name="Got it")
        if tour.count() and tour.first.is_visible():
            tour.first.click()
        try:
            page.get_by_text(view, exact=True).first.click(timeout=10_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    raise AssertionError(f"could not click {view!r} in the MLflow UI's sidebar")


def _shows_training_runs(page) -> None:
    assert "workflowType=machine_learning" in page.url
    page.wait_for_selector(f"text={RUN_NAME}", timeout=WAIT_MS)  # the runs table's row


def test_documented_link_opens_the_experiment_on_its_training_runs(ui):
    exp_url, browser = ui
    page = _open(browser, f"{exp_url}?workflowType=machine_learning", "runs")
    _shows_training_runs(page)
    page.context.close()


def test_plain_link_opens_training_runs_once_model_training_is_picked(ui):
    """On MLflow's stock server the plain experiment link in a new browser lands on the GenAI
    overview: MLflow 3.17's UI reads the experiment's view from its "GenAI | Model training"
    switch (the URL's `workflowType`, else the choice the browser remembers, GenAI by default)
    and not from the `mlflow.experimentKind` tag the experiment carries, so no tag or server
    setting changes it; the project's app sets the remembered choice instead (tests below).
    Picking "Model training" once makes the same plain link open the training runs."""
    exp_url, browser = ui
    page = _open(browser, exp_url, "overview")
    assert "workflowType=genai" in page.url, page.url
    _pick(page, "Model training")
    page.wait_for_url("**/#/experiments/*/runs**", timeout=WAIT_MS)
    again = page.context.new_page()  # the same browser profile
    again.goto(exp_url, timeout=WAIT_MS)
    again.wait_for_url("**/#/experiments/*/runs**", timeout=WAIT_MS)
    _shows_training_runs(again)
    page.context.close()


def test_project_app_opens_plain_link_on_training_runs(deeplab, browser):
    """With the project's app, the plain link in a new browser (nothing remembered) opens the
    training runs, the run's row showing; the browser now remembers "Model training"."""
    page = _open(browser, deeplab[1], "runs")
    _shows_training_runs(page)
    assert page.evaluate("localStorage.getItem('mlflow.workflowType_v1')") == '"machine_learning"'
    page.context.close()


def test_project_app_keeps_a_browser_choosing_genai(deeplab, browser):
    """A user who switches to GenAI keeps it: reloading the plain link (the page, script
    included, served again) stays on the GenAI overview."""
    page = _open(browser, deeplab[1], "runs")
    _shows_training_runs(page)
    _pick(page, "GenAI")
    page.wait_for_url("**/#/experiments/*/overview**", timeout=WAIT_MS)
    again = page.context.new_page()  # the same browser profile
    again.goto(deeplab[1], timeout=WAIT_MS)
    again.wait_for_url("**/#/experiments/*/overview**", timeout=WAIT_MS)
    assert "workflowType=genai" in again.url, again.url
    assert again.evaluate("localStorage.getItem('mlflow.workflowType_v1')") == '"genai"'
    again.reload(timeout=WAIT_MS)
    again.wait_for_url("**/#/experiments/*/overview**", timeout=WAIT_MS)
    assert "workflowType=genai" in again.url, again.url
    page.context.close()


def _get(url: str, headers: dict | None = None, header: str = "Content-Type"
         ) -> tuple[int, bytes, str]:
    """(status, body, the `header` answered) of a GET, errors included."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=WAIT_MS / 1000) as r:
            return r.status, r.read(), r.headers[header]
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers[header]


def test_project_app_changes_only_the_page(stock, deeplab):
    """The UI's page is MLflow's with the one script at the start of its head; the REST API,
    a static asset the page loads and an unknown path answer byte for byte as MLflow's own
    server does, with the same content type."""
    from pipelines import tracking
    from pipelines.ops import mlflow_ui

    status, page, kind = _get(f"{deeplab[0]}/")
    stock_status, stock_page, stock_kind = _get(f"{stock[0]}/")
    assert status == stock_status == 200
    assert kind == stock_kind and kind.startswith("text/html")
    assert mlflow_ui.SCRIPT not in stock_page
    assert page == stock_page.replace(b"<head>", b"<head>" + mlflow_ui.SCRIPT, 1)
    asset = re.search(rb'src="(static-files/[^"]+\.js)"', stock_page).group(1).decode()
    api = f"api/2.0/mlflow/experiments/get-by-name?experiment_name={tracking.EXPERIMENT}"
    answers = {}
    for path in (api, asset, "static-files/favicon.ico", "version", "no-such-page"):
        answers[path] = _get(f"{deeplab[0]}/{path}")
        assert answers[path] == _get(f"{stock[0]}/{path}"), path
    assert answers[api][0] == 200 and b'"experiment_id"' in answers[api][1]
    assert answers[asset][0] == 200 and len(answers[asset][1]) > 100_000  # the UI's bundle
    assert answers["no-such-page"][0] == 404


def test_project_app_never_lets_a_browser_keep_a_stock_page(stock, deeplab):
    """A browser revalidating a page it cached from MLflow's own server (same ETag: same file)
    gets the whole page with the script, not a 304 that would keep the stock page."""
    from pipelines.ops import mlflow_ui

    _, stock_page, etag = _get(f"{stock[0]}/", header="ETag")
    assert etag and _get(f"{stock[0]}/", {"If-None-Match": etag})[0] == 304
    status, page, _ = _get(f"{deeplab[0]}/", {"If-None-Match": etag})
    assert status == 200 and page.startswith(stock_page.split(b"<head>")[0] + b"<head>"
                                             + mlflow_ui.SCRIPT)


def test_project_app_under_gunicorn_changes_only_the_page(store, stock):
    """`--gunicorn-opts` makes MLflow serve a WSGI app: the project's app is then the wrapped
    Flask app, with the same page and the same pass-through."""
    from pipelines.ops import mlflow_ui

    uri, tmp, _ = store
    with shots.mlflow_ui(uri, tmp, tmp / "server-gunicorn.log", app=mlflow_ui.APP_NAME,
                         extra=("--gunicorn-opts", "--timeout 300")) as url:
        status, page, kind = _get(f"{url}/")
        assert (tmp / "server-gunicorn.log").read_text().count("Starting gunicorn") == 1
        _, stock_page, stock_kind = _get(f"{stock[0]}/")
        assert status == 200 and kind == stock_kind
        assert page == stock_page.replace(b"<head>", b"<head>" + mlflow_ui.SCRIPT, 1)
        for path in ("version", "static-files/favicon.ico"):
            assert _get(f"{url}/{path}") == _get(f"{stock[0]}/{path}"), path
