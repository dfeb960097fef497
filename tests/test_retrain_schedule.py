"""Scheduled retraining against a real Prefect server with its scheduler: the project's
prefect.yaml deployed with `prefect deploy` to a process work pool, the scheduler creating the
scheduled runs (the weekly default cron when DEEPLAB_RETRAIN_CRON is unset; the docker deployment
refused without DEEPLAB_IMAGE), a real `prefect worker` completing a triggered run (the micro
pipeline, on CPU) with the DVC output and the registry decision in the run log, a second run
triggered while the first runs waiting for it (concurrency limit one, ENQUEUE) and then reporting
honestly that nothing changed, without an empty MLflow parent run; the retrain's `dvc push` to a
DVC remote from which a second clone elsewhere pulls and has nothing to recompute; and SIGTERM
stopping the worker and `retrain serve`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from conftest import REPO, scratch_project
from prefect_runs import FINAL, api as _api, stop as _stop, wait_final as _wait_final

pytestmark = pytest.mark.e2e
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def _run(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


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


def _wait_state(url: str, run_id: str, types: set[str], timeout_s: float) -> dict:
    deadline = time.time() + timeout_s
    while True:
        run = _api(url, f"/flow_runs/{run_id}")
        if run["state_type"] in types or time.time() > deadline:
            return run
        time.sleep(1)


def _mlflow_runs(root: Path) -> list[tuple[str, str, str]]:
    """(name, lifecycle stage, stage tag) of every run in the scratch project's store."""
    import sqlite3

    con = sqlite3.connect(root / "mlflow.db")
    try:
        return con.execute("SELECT r.name, r.lifecycle_stage, t.value FROM runs r LEFT JOIN "
                           "tags t ON t.run_uuid = r.run_uuid AND t.key = 'stage'").fetchall()
    finally:
        con.close()


def test_scheduled_deployment_worker_and_honest_reports(tmp_path):
    from pipelines.ops.prefect_server import prefect_api

    root = scratch_project(tmp_path / "proj")
    shutil.copy(REPO / "prefect.yaml", root / "prefect.yaml")
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for key in ("DEEPLAB_PARAMS", "MLFLOW_TRACKING_URI", "DEEPLAB_PIPELINE_RUN",
                "DEEPLAB_RETRAIN_CRON", "DEEPLAB_IMAGE"):
        env.pop(key, None)
    remote = tmp_path / "dvc-remote"  # the shared directory a second machine pulls from
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                ["dvc", "remote", "add", "-d", "shared", str(remote)], GIT + ["add", "-A"],
                GIT + ["commit", "-qm", "init"]):
        _run(cmd, root, env)

    with prefect_api(home=tmp_path / "prefect", services=True, reuse=False,
                     env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}) as url:
        env["PREFECT_API_URL"] = url
        _run(["prefect", "work-pool", "create", "deeplab-cpu", "--type", "process"], root, env)
        _run(["prefect", "--no-prompt", "deploy", "--name", "retrain-local"], root,
             dict(env, PWD=str(root)))  # no DEEPLAB_RETRAIN_CRON: the weekly default
        dep = _api(url, "/deployments/name/retrain/retrain-local")
        assert dep["schedules"][0]["schedule"]["cron"] == "0 3 * * 0"
        assert dep["work_pool_name"] == "deeplab-cpu"
        assert dep["global_concurrency_limit"]["limit"] == 1
        assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE"

        _run(["prefect", "work-pool", "create", "deeplab-gpu-docker", "--type", "process"],
             root, env)
        for image in (None, " "):
            refused = subprocess.run(
                ["prefect", "--no-prompt", "deploy", "--name", "retrain-gpu-docker"], cwd=root,
                env=dict(env, PWD=str(root), **({"DEEPLAB_IMAGE": image} if image else {})),
                capture_output=True, text=True, timeout=300)
            assert refused.returncode != 0
            assert ("ERROR [deploy]: DEEPLAB_IMAGE is unset or empty; expected the image"
                    in refused.stdout + refused.stderr)
            with pytest.raises(urllib.error.HTTPError):
                _api(url, "/deployments/name/retrain/retrain-gpu-docker")

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
            run = _wait_state(url, first["id"], {"RUNNING"} | FINAL, 600)
            assert run["state_type"] == "RUNNING", run["state_name"]
            # a second run while the first runs: it waits for the slot, never overlaps or fails
            second = _api(url, f"/deployments/{dep['id']}/create_flow_run", {})
            seen, deadline = set(), time.time() + 900
            while time.time() < deadline:
                one = _api(url, f"/flow_runs/{first['id']}")
                two = _api(url, f"/flow_runs/{second['id']}")
                seen.add(two["state_name"])
                if one["state_type"] in FINAL:
                    break
                assert two["state_type"] not in ({"RUNNING"} | FINAL), two["state_name"]
                time.sleep(2)
            assert "AwaitingConcurrencySlot" in seen, seen
            run = _wait_final(url, first["id"], 60)
            logs = _logs(url, first["id"], "registry: ")
            assert run["state_type"] == "COMPLETED", logs[-3000:]
            assert "dvc | Running stage 'prepare':" in logs
            assert ("stages that ran: prepare, validate, bootstrap, pretrain, finetune, "
                    "crf_search, evaluate, register") in logs
            assert "registry: models:/deeplab-micro/1 promoted to champion" in logs
            assert (root / "data" / "register" / "registration.json").is_file()
            assert "pushed the pipeline's data to DVC remote 'shared'" in logs
            assert any(p.is_file() for p in remote.rglob("*"))
            assert run["name"].startswith("retrain 20") and run["name"].endswith(
                " · 8 stages: prepare,validate,bootstrap,pretrain,finetune,crf_search,"
                "evaluate,register · v1 champion"), run["name"]

            run = _wait_final(url, second["id"], 600)
            logs = _logs(url, second["id"], "nothing changed")
            assert run["state_type"] == "COMPLETED", logs[-3000:]
            assert "nothing changed: no stage ran" in logs and "registry:" not in logs
            assert run["name"].endswith(" · nothing changed"), run["name"]
            # one kept parent run in MLflow, named after what ran; the no-op left none
            parents = [(n, life) for n, life, stage in _mlflow_runs(root)
                       if stage == "pipeline"]
            assert [life for _, life in parents].count("active") == 1, parents
            assert [n for n, life in parents if life == "active"][0].endswith(
                " · v1 champion")
        finally:
            took = _stop(worker)
        assert took < 60

        # a second clone elsewhere: `dvc pull` from the remote, then nothing to recompute
        _run(GIT + ["add", "dvc.lock", "data/metrics", "data/plots"], root, env)
        _run(GIT + ["commit", "-qm", "retrained"], root, env)
        clone = tmp_path / "elsewhere" / "clone"
        _run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
        _run(["dvc", "pull", "-q"], clone, env)
        model = Path("data/models/finetune/model.pt")
        assert (clone / model).read_bytes() == (root / model).read_bytes()
        assert "Data and pipelines are up to date" in _run(["dvc", "status"], clone, env).stdout
        again = _run(["dvc", "repro"], clone, env).stdout
        assert "Running stage" not in again and "up to date" in again, again[-2000:]

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
