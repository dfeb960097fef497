"""The real pipeline against the shared services (PostgreSQL, an MLflow tracking server with
proxied artifacts, a Prefect server: `python -m pipelines.ops.services start --temp`), as a team
uses them. A git clone of a micro project runs the scheduled deployment's flow (`python -m
pipelines.ops.retrain run --allow-cpu`) with MLFLOW_TRACKING_URI and PREFECT_API_URL set: its
runs, the registered version and the `champion` alias land in the server's PostgreSQL, the model's
artifacts in the server's artifact store, nothing of MLflow's in the clone, and the retrain's
`dvc push` fills the clone's DVC remote. Then, from other empty directories with another checkout
of the code (as on another machine): `mlflow models serve -m models:/…@champion` answers with
the masks `deeplab-predict --model models:/…@champion` writes, and the model loaded where the
project's code is not importable, and they score exactly evaluate's mIoU; the registry CLI walks
and moves the champion on the server. Last, the `retrain-local` deployment, run by a real
process worker on the PostgreSQL-backed Prefect server, finds nothing new and leaves MLflow as it
was."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import REPO, git_project, scratch_project
from heldout import holdout, miou
from prefect_runs import api, stop, wait_final
from team_services import code_env, require_postgres, running_services

pytestmark = pytest.mark.e2e
require_postgres()

STAGES = ["prepare", "validate", "bootstrap", "pretrain", "finetune", "crf_search", "evaluate",
          "register"]
MODEL = "deeplab-micro"  # register.model_name of tests/micro_params.yaml
SLOW_S = 2400  # the whole micro pipeline on two shared cores
# A client with mlflow and torch but without the project's code (no PYTHONPATH, the editable
# install's finder dropped): the model brings deeplab_core and pipelines as its code paths.
LOAD_WITHOUT_PROJECT = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path  # the finder is a class or an instance
                   if "editable" not in getattr(f, "__module__", "") + type(f).__module__]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in getattr(h, "__module__", "")]
sys.path_importer_cache.clear()
try:
    import pipelines
    sys.exit("the project's code is importable: " + str(pipelines.__path__))
except ModuleNotFoundError:
    pass
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
print(json.dumps(model.predict(json.loads(sys.stdin.read()), params={"mask_format": "png"})))
"""


def _run(args, cwd, env, timeout=900):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{args} in {cwd} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def _empty_dir(base: Path, name: str) -> Path:
    d = base / name
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """The services, and a clone of a micro project (with a local DVC remote) after one
    retrain against them: (services, base dir, clone, clone's env, retrain output)."""
    base = tmp_path_factory.mktemp("team")
    with running_services(base, code_env()) as svc:
        origin = scratch_project(base / "origin", {"base": {"torch_threads": 1}})
        shutil.copy(REPO / "prefect.yaml", origin / "prefect.yaml")
        remote = base / "dvc-remote"
        git_project(origin, code_env(origin), ["remote", "add", "-d", "shared", str(remote)])
        clone = base / "clone"
        _run(["git", "clone", "-q", str(origin), str(clone)], base, code_env(origin))
        env = svc.client_env(code_env(clone))
        env["OMP_NUM_THREADS"] = "1"
        out = _run([sys.executable, "-m", "pipelines.ops.retrain", "run", "--allow-cpu"], clone,
                   env, timeout=SLOW_S)
        yield svc, base, clone, env, out


def test_retrain_logs_registers_and_promotes_on_the_server(team):
    svc, base, clone, _, out = team
    text = out.stdout + out.stderr
    for stage in STAGES:
        assert f"Running stage '{stage}'" in text, stage
    # the runs: one pipeline parent and its eight stage runs, in the server's PostgreSQL
    runs = svc.psql("mlflow", "SELECT t.value, r.status FROM runs r JOIN experiments e ON "
                              "e.experiment_id = r.experiment_id JOIN tags t ON "
                              "t.run_uuid = r.run_uuid AND t.key = 'stage' WHERE "
                              "e.name = 'deeplab' AND r.lifecycle_stage = 'active' ORDER BY 1")
    assert sorted(runs.splitlines()) == sorted(f"{s}|FINISHED" for s in STAGES + ["pipeline"])
    location = svc.psql("mlflow", "SELECT artifact_location FROM experiments "
                                  "WHERE name = 'deeplab'")
    assert location.startswith("mlflow-artifacts:/"), location
    # every run's and the logged model's artifacts: the server's proxied store, no client path
    uris = svc.psql("mlflow", "SELECT artifact_uri FROM runs UNION ALL SELECT "
                              "artifact_location FROM logged_models").splitlines()
    assert len(uris) == len(STAGES) + 2, uris
    assert all(u.startswith("mlflow-artifacts:/") for u in uris), uris
    assert svc.psql("mlflow", f"SELECT version FROM model_versions WHERE name = '{MODEL}'") == "1"
    aliases = svc.psql("mlflow", "SELECT alias || '=' || version FROM registered_model_aliases "
                                 f"WHERE name = '{MODEL}' ORDER BY alias")
    assert aliases.splitlines() == ["challenger=1", "champion=1"]
    reg = json.loads((clone / "data" / "register" / "registration.json").read_text())
    assert reg["version"] == "1" and reg["promoted"] and reg["model_uri"] == f"models:/{MODEL}/1"
    # the retrain flow run, renamed after what it did, in Prefect's PostgreSQL
    name = svc.psql("prefect", "SELECT fr.name FROM flow_run fr JOIN flow f ON "
                               "f.id = fr.flow_id WHERE f.name = 'retrain' AND "
                               "fr.state_type = 'COMPLETED'")
    assert name.startswith("retrain ") and name.endswith("8 stages: " + ",".join(STAGES)
                                                         + " · v1 champion"), name
    # the model's artifacts went through the server into its store; none in the clone
    art = svc.root / "artifacts"
    for name in ("MLmodel", "model.pt", "protocol.json", "best_params.json"):
        assert list(art.rglob(name)), name
    assert not (clone / "mlruns").exists() and not (clone / "mlflow.db").exists()
    assert not list(clone.rglob("MLmodel"))
    # the retrain pushed the pipeline's outputs to the clone's DVC remote
    assert "pushed the pipeline's data to DVC remote 'shared'" in text
    assert list((base / "dvc-remote").rglob("*")), "nothing pushed"
    status = _run(["dvc", "status", "--cloud"], clone, code_env(clone)).stdout
    assert "new:" not in status, status


def test_served_champion_equals_predict_and_evaluate_from_other_directories(team):
    from deeplab_core.data.io import read_list_file
    from pipelines.ops.serving import decode_mask_png_b64, mlflow_serve
    from pipelines.stages.eval_data import eval_dataset
    from PIL import Image

    svc, base, clone, _, _ = team
    ids, val_list, num_classes = holdout(clone)
    files = {sid: Path(img) for sid, img, _ in read_list_file(val_list)}
    labels = [np.asarray(item["label"]) for item in eval_dataset(val_list, ids)]
    ev = json.loads((clone / "data" / "metrics" / "evaluate.json").read_text())
    # another checkout of the code (this one), in directories that hold nothing of the project
    env = dict(svc.client_env(code_env(REPO)), OMP_NUM_THREADS="1")
    serve_dir, predict_dir = _empty_dir(base, "serve_here"), _empty_dir(base, "predict_here")
    body = {"image_b64": [base64.b64encode(files[i].read_bytes()).decode() for i in ids]}
    with mlflow_serve(f"models:/{MODEL}@champion", serve_dir, env=env,
                      start_timeout_s=900, log_path=base / "serve.log") as url:
        resp = requests.post(f"{url}/invocations", timeout=900,
                             json={"inputs": body, "params": {"mask_format": "png"}})
        assert resp.status_code == 200, resp.text[:500]
        served = [decode_mask_png_b64(m) for m in resp.json()["predictions"]]
    assert [m.shape for m in served] == [lab.shape for lab in labels]
    assert miou(served, labels, num_classes) == ev["miou"]

    # the same model loaded in process where the project's code is not installed
    bare_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    bare_dir = _empty_dir(base, "no_project_here")
    proc = subprocess.run([sys.executable, "-c", "import json\n" + LOAD_WITHOUT_PROJECT,
                           f"models:/{MODEL}@champion"], input=json.dumps(body), cwd=bare_dir,
                          env=bare_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded = [decode_mask_png_b64(m) for m in json.loads(proc.stdout.strip().splitlines()[-1])]
    for i, a, b in zip(ids, served, loaded):
        assert np.array_equal(a, b), i

    inputs = _empty_dir(base, "images")
    for i in ids:
        (inputs / f"{i}{files[i].suffix}").write_bytes(files[i].read_bytes())
    out = base / "predicted"
    _run([str(Path(sys.executable).with_name("deeplab-predict")), "--model",
          f"models:/{MODEL}@champion", "--input", str(inputs), "--output", str(out),
          "--no-progress"], predict_dir, env)
    predicted = [np.array(Image.open(out / f"{i}.png")) for i in ids]
    for i, a, b in zip(ids, served, predicted):
        assert np.array_equal(a, b), i
    for d in (serve_dir, predict_dir, bare_dir):
        assert sorted(p.name for p in d.iterdir()) == [], d


def test_registry_cli_walks_and_moves_the_champion_from_another_directory(team):
    svc, base, clone, env, _ = team
    # a second version of the same model: registered, not promoted (not better than v1)
    _run([sys.executable, "-m", "pipelines.ops.repro", "-f", "-s", "register"], clone, env)
    reg = json.loads((clone / "data" / "register" / "registration.json").read_text())
    assert reg["version"] == "2" and not reg["promoted"], reg

    cli_dir = _empty_dir(base, "registry_here")
    cli_env = svc.client_env(code_env(REPO))

    def registry(*args: str) -> str:
        return _run([sys.executable, "-m", "pipelines.ops.registry", *args, "--model", MODEL],
                    cli_dir, cli_env).stdout

    shown = registry("history")
    assert f"model '{MODEL}': 2 version(s)" in shown, shown
    assert "champion stack (oldest first, rollback pops): v1" in shown, shown
    assert registry("promote", "2", "--reason", "team check").strip() == \
        f"{MODEL}: v2 is champion (was v1)"
    assert svc.psql("mlflow", "SELECT version FROM registered_model_aliases WHERE "
                              f"name = '{MODEL}' AND alias = 'champion'") == "2"
    assert registry("rollback").strip() == f"{MODEL}: champion rolled back from v2 to v1"
    assert svc.psql("mlflow", "SELECT version FROM registered_model_aliases WHERE "
                              f"name = '{MODEL}' AND alias = 'champion'") == "1"
    assert "champion stack (oldest first, rollback pops): v1" in registry("history")
    assert sorted(p.name for p in cli_dir.iterdir()) == []


def test_a_retrain_deployment_run_by_a_worker_with_nothing_new_leaves_mlflow_as_it_was(team):
    """The project's `retrain-local` deployment (prefect.yaml) deployed to the PostgreSQL-backed
    Prefect server and run by a real process worker in the clone, when nothing changed: it
    completes as "nothing changed", no run stays active in MLflow (the empty pipeline parent is
    deleted) and the registry is untouched."""
    svc, _, clone, env, _ = team
    url = svc.urls["PREFECT_API_URL"]
    count = ("SELECT count(*) FROM runs r JOIN experiments e ON e.experiment_id = "
             "r.experiment_id WHERE e.name = 'deeplab' AND r.lifecycle_stage = 'active'")
    aliases = ("SELECT alias || '=' || version FROM registered_model_aliases "
               f"WHERE name = '{MODEL}' ORDER BY alias")
    before = svc.psql("mlflow", count), svc.psql("mlflow", aliases)
    _run(["prefect", "work-pool", "create", "deeplab-cpu", "--type", "process"], clone, env)
    _run(["prefect", "--no-prompt", "deploy", "--name", "retrain-local"], clone,
         dict(env, PWD=str(clone)))
    dep = api(url, "/deployments/name/retrain/retrain-local")
    worker = subprocess.Popen(["prefect", "worker", "start", "--pool", "deeplab-cpu", "--type",
                               "process"], cwd=clone, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        run = api(url, f"/deployments/{dep['id']}/create_flow_run", {})
        run = wait_final(url, run["id"], SLOW_S)
    finally:
        stop(worker)
    assert run["state_type"] == "COMPLETED", run["state_name"]
    assert run["name"].startswith("retrain ") and run["name"].endswith(" · nothing changed"), \
        run["name"]
    assert svc.psql("prefect", "SELECT fr.state_type FROM flow_run fr JOIN deployment d ON "
                               "d.id = fr.deployment_id WHERE d.name = 'retrain-local' AND "
                               f"fr.id = '{run['id']}'") == "COMPLETED"
    assert (svc.psql("mlflow", count), svc.psql("mlflow", aliases)) == before
