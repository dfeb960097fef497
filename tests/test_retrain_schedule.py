"""Scheduled retraining against a real Prefect server with its scheduler: the project's
prefect.yaml deployed with `prefect deploy` to a process work pool, the scheduler creating the
scheduled runs, a real `prefect worker` completing a triggered run (the micro pipeline, on CPU)
with the DVC output and the registry decision in the run log, a second run reporting honestly
that nothing changed, and SIGTERM stopping the worker and `retrain serve`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, scratch_project

pytestmark = pytest.mark.e2e
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _api(url: str, path: str, body: dict | None = None):
    req = urllib.request.Request(f"{url}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def _run(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _wait_final(url: str, run_id: str, timeout_s: float) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        run = _api(url, f"/flow_runs/{run_id}")
        if run["state_type"] in FINAL:
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} not finished after {timeout_s} s: "
                         f"{run['state_type']}")


def _logs(url: str, run_id: str, expect: str, timeout_s: float = 120) -> str:
    """The run's log (first and last 200 lines) once it holds `expect`: a flow run's logs reach
    the API in batches, and may arrive after its final state."""
    deadline = time.time() + timeout_s
    while True:
        rows = _api(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}},
                                          "sort": "TIMESTAMP_ASC", "limit": 200, "offset": 0})
        more = _api(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}},
                                          "sort": "TIMESTAMP_DESC", "limit": 200, "offset": 0})
        text = "\n".join(r["message"] for r in rows + more)
        if expect in text or time.time() > deadline:
            return text
        time.sleep(2)


def _stop(proc: subprocess.Popen, timeout_s: float = 60) -> float:
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{proc.args} ignored SIGTERM for {timeout_s} s")
    return time.time() - t0


def test_scheduled_deployment_worker_and_honest_reports(tmp_path):
    from pipelines.ops.prefect_server import prefect_api

    root = scratch_project(tmp_path / "proj")
    shutil.copy(REPO / "prefect.yaml", root / "prefect.yaml")
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for key in ("DEEPLAB_PARAMS", "MLFLOW_TRACKING_URI", "DEEPLAB_PIPELINE_RUN"):
        env.pop(key, None)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], GIT + ["add", "-A"],
                GIT + ["commit", "-qm", "init"]):
        _run(cmd, root, env)

    with prefect_api(home=tmp_path / "prefect", services=True, reuse=False,
                     env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}) as url:
        env["PREFECT_API_URL"] = url
        _run(["prefect", "work-pool", "create", "deeplab-cpu", "--type", "process"], root, env)
        _run(["prefect", "--no-prompt", "deploy", "--name", "retrain-local"], root,
             dict(env, DEEPLAB_RETRAIN_CRON="0 3 * * 0", PWD=str(root)))
        dep = _api(url, "/deployments/name/retrain/retrain-local")
        assert dep["schedules"][0]["schedule"]["cron"] == "0 3 * * 0"
        assert dep["work_pool_name"] == "deeplab-cpu"

        # the scheduler (not us) creates the upcoming runs
        deadline, scheduled = time.time() + 120, []
        while time.time() < deadline and not scheduled:
            scheduled = _api(url, "/flow_runs/filter", {
                "flow_runs": {"deployment_id": {"any_": [dep["id"]]},
                              "state": {"type": {"any_": ["SCHEDULED"]}}},
                "limit": 50, "offset": 0})
            time.sleep(2)
        assert scheduled and all(r["auto_scheduled"] for r in scheduled)

        worker = subprocess.Popen(["prefect", "worker", "start", "--pool", "deeplab-cpu",
                                   "--type", "process"], cwd=root, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            first = _api(url, f"/deployments/{dep['id']}/create_flow_run", {})
            run = _wait_final(url, first["id"], 600)
            logs = _logs(url, first["id"], "registry: ")
            assert run["state_type"] == "COMPLETED", logs[-3000:]
            assert "dvc | Running stage 'prepare':" in logs
            assert ("stages that ran: prepare, validate, bootstrap, pretrain, finetune, "
                    "crf_search, evaluate, register") in logs
            assert "registry: models:/deeplab-micro/1 promoted to champion" in logs
            assert (root / "data" / "register" / "registration.json").is_file()

            second = _api(url, f"/deployments/{dep['id']}/create_flow_run", {})
            run = _wait_final(url, second["id"], 300)
            logs = _logs(url, second["id"], "nothing changed")
            assert run["state_type"] == "COMPLETED", logs[-3000:]
            assert "nothing changed: no stage ran" in logs and "registry:" not in logs
        finally:
            took = _stop(worker)
        assert took < 60

        serve = subprocess.Popen([sys.executable, "-m", "pipelines.ops.retrain", "serve",
                                  "--allow-cpu", "--name", "serve-test"], cwd=root, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                _api(url, "/deployments/name/retrain/serve-test")
                break
            except urllib.error.HTTPError:
                assert serve.poll() is None, serve.stderr.read()
                time.sleep(1)
        assert _stop(serve) < 60
