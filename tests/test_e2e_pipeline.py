"""End to end: the real DVC pipeline (every stage a Prefect flow against one real Prefect server,
MLflow tracking, GX validation, registry) on a micro synthetic config, in a scratch copy of the
project: `python -m pipelines.ops.repro` as `make run` calls it, then plain `dvc repro` and stages
started by hand."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import GIT, git_project as _git_project, scratch_project

pytestmark = pytest.mark.e2e


def _run(args, cwd, env, check=True):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def _ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def _clean_env() -> dict:
    """The environment of a new user's shell: the project's venv on PATH, and no tracking,
    Prefect or params overrides (the project's own defaults apply)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for key in ("DEEPLAB_PARAMS", "MLFLOW_TRACKING_URI", "DEEPLAB_ARTIFACT_ROOT",
                "PREFECT_API_URL", "DEEPLAB_PIPELINE_RUN"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api_url):
    """The micro project after its first `python -m pipelines.ops.repro` (which starts and stops
    a Prefect server of its own), with dvc.lock committed. Later runs use the session's server."""
    root = scratch_project(tmp_path_factory.mktemp("proj"))
    env = _clean_env()
    _git_project(root, env)
    first = _run([sys.executable, "-m", "pipelines.ops.repro"], root, env)
    _run(GIT + ["add", "dvc.lock", "data/metrics", "data/plots"], root, env)
    _run(GIT + ["commit", "-qm", "first run"], root, env)
    return root, dict(env, PREFECT_API_URL=prefect_api_url), first


STAGES = ["prepare", "validate", "bootstrap", "pretrain", "finetune", "crf_search", "evaluate",
          "register"]


def test_first_repro_runs_every_stage_in_order_on_one_server(project):
    root, _, first = project
    stages = [line.split("'")[1] for line in first.stdout.splitlines()
              if line.startswith("Running stage")]
    assert stages == STAGES
    # one server for the whole run: the stages reported their flow runs to it, none started
    # Prefect's temporary server, and the server is gone afterwards
    api = [line for line in first.stdout.splitlines() if line.startswith("Prefect API: ")]
    assert len(api) == 1 and api[0].startswith("Prefect API: http://127.0.0.1:")
    assert "Starting temporary server" not in first.stdout + first.stderr
    from pipelines.ops.prefect_server import api_healthy
    assert not api_healthy(api[0].split(": ", 1)[1])
    assert (root / ".prefect" / "server.log").is_file()
    # the timing table: every stage with wall, compute, data and overhead seconds
    lines = first.stdout.splitlines()
    head = next(i for i, line in enumerate(lines)
                if line.split() == ["stage", "wall", "s", "compute", "s", "data", "s",
                                    "overhead", "s"])
    rows = {r.split()[0]: [float(x) for x in r.split()[1:]] for r in lines[head + 1:head + 10]}
    assert list(rows) == STAGES + ["total"]
    for stage, (wall, compute, data, overhead) in rows.items():
        assert abs(wall - compute - data - overhead) < 0.25, stage
        assert compute > 0 if stage in ("pretrain", "finetune", "crf_search", "evaluate", "total")\
            else compute == 0, stage
        assert data > 0 if stage in ("prepare", "validate", "total") else data == 0, stage
        assert overhead > 0, stage


def _mlflow_runs(root: Path) -> list:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["deeplab"], output_format="list")


def test_mlflow_lineage_holds_dvc_hashes_and_groups_the_run(project):
    root, _, _ = project
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    runs = _mlflow_runs(root)
    parent = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    pid = parent[0].info.run_id
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags.get("pipeline_run") == pid
                and r.info.run_id != pid}
    assert sorted(children) == sorted(STAGES)
    for stage, run in children.items():
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == pid
        assert len(tags["git_commit"]) == 40, tags["git_commit"]  # a clean tree: not "-dirty"
        # DVC's own hashes, exactly as dvc.lock recorded them for this stage
        for dep in lock[stage]["deps"]:
            assert tags[f"dvc.dep.{dep['path']}"] == dep["md5"], (stage, dep["path"])
        for out in lock[stage]["outs"]:
            assert tags[f"dvc.out.{out['path']}"] == out["md5"], (stage, out["path"])
        values = lock[stage]["params"]["params.yaml"]
        assert tags["dvc.params_md5"] == hashlib.md5(
            json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()
        assert run.data.metrics["stage_seconds"] >= run.data.metrics["compute_seconds"] >= 0
    # the registered version leads back to the finetune run that wrote its weights
    from mlflow import MlflowClient
    version = MlflowClient().get_model_version("deeplab-micro", "1")
    assert version.tags["finetune_run_id"] == children["finetune"].info.run_id
    assert version.tags["pipeline_run"] == pid


def test_outputs_metrics_and_registry(project, monkeypatch):
    root, env, _ = project
    d = root / "data"
    ev = json.loads((d / "metrics" / "evaluate.json").read_text())
    for key in ("miou", "miou_crf", "pixel_acc", "pixel_acc_crf"):
        assert 0.0 <= ev[key] <= 1.0, key
    assert ev["n_images"] + ev["crf_cv_subset"]["n_images"] == ev["val_full"]["n_images"] == 8
    best = json.loads((d / "crf_search" / "best_params.json").read_text())
    assert best["params"]["w2"] == 3 and best["params"]["iterations"] == 3
    assert len(best["cv_images"]) == 3
    assert best["objective"] == "miou_gt" and 0 <= best["cv_miou_gt"] <= 1
    assert 0 < best["crf_runs"] <= 2 * 2 * 2 * 3  # within the micro grid's full cost
    trimap = json.loads((d / "plots" / "trimap.json").read_text())
    assert [r["band_width"] for r in trimap] == [1, 4, 8]
    assert all(0 <= r[k] <= 1 for r in trimap for k in ("miou", "miou_crf", "pixel_acc_crf"))
    assert (d / "plots" / "trimap.png").stat().st_size > 1000
    for stage, iterations in (("pretrain", 6), ("finetune", 8)):
        losses = json.loads((d / "plots" / f"{stage}_loss.json").read_text())
        assert [r["iteration"] for r in losses] == list(range(2, iterations + 1, 2))
        png = (d / "plots" / f"{stage}_loss.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 1000
    for png in ("per_class_iou.png", "examples.png"):
        assert (d / "eval" / png).stat().st_size > 1000
    per_class = json.loads((d / "eval" / "per_class.json").read_text())
    assert len(per_class) == 21 and {"iou", "precision", "recall", "f1_crf"} <= set(per_class[0])
    assert (d / "crf_search" / "heatmaps.png").is_file()
    assert (d / "crf_search" / "search_trace.png").is_file()
    reg = json.loads((d / "register" / "registration.json").read_text())
    assert reg["version"] == "1" and reg["promoted"] and "champion" in reg["aliases"]
    # the registered champion serves raw RGB images, with and without the CRF (artifact paths
    # in the project's store are relative to the project root)
    import mlflow
    import numpy as np
    monkeypatch.chdir(root)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/deeplab-micro@champion")
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    masks = served.predict([img])
    plain = served.predict([img], params={"crf": False})
    assert masks[0].shape == plain[0].shape == (40, 56) and masks[0].dtype == np.uint8
    assert int(masks[0].max()) < 21
    # metrics readable by `dvc metrics show`
    shown = _run(["dvc", "metrics", "show", "--json"], root, env).stdout
    assert "miou_crf" in shown


def test_fresh_clone_elsewhere_reproduces_byte_identical_outputs_and_moves(project,
                                                                          tmp_path):
    """A fresh clone at another path re-runs every stage and ends with a clean `git status`
    (dvc.lock unchanged: outputs are byte-identical for the same inputs). Then the clone is
    moved: its MLflow store still resolves runs and models, with MLflow's own CLI from the
    project root and no MLFLOW_TRACKING_URI."""
    root, env, _ = project
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    out = _run([sys.executable, "-m", "pipelines.ops.repro"], clone, env).stdout
    assert [line.split("'")[1] for line in out.splitlines()
            if line.startswith("Running stage")] == STAGES
    status = _run(["git", "status", "--porcelain"], clone, env).stdout
    assert status == "", status + _run(["git", "diff"], clone, env).stdout
    moved = tmp_path / "moved" / "project"
    moved.parent.mkdir()
    clone.rename(moved)
    cli_env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    got = _run(["mlflow", "artifacts", "download", "-u", "models:/deeplab-micro@champion",
                "-d", str(tmp_path / "dl")], moved, cli_env)
    assert (tmp_path / "dl" / "MLmodel").is_file(), got.stdout + got.stderr
    assert not (moved.parent / "mlflow.db").exists()
    run_id = [r for r in _mlflow_runs(moved) if r.data.tags["stage"] == "evaluate"][0].info.run_id
    _run(["mlflow", "artifacts", "download", "-r", run_id, "-a", "eval/trimap.png",
          "-d", str(tmp_path / "art")], moved, cli_env)
    assert (tmp_path / "art" / "trimap.png").stat().st_size > 1000


def test_second_repro_runs_nothing_then_crf_change_reruns_only_downstream(project):
    root, env, _ = project
    again = _run(["dvc", "repro"], root, env)
    assert _ran_stages(again.stdout) == set()
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["crf_search"]["sigma_gamma"] = 4
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    changed = _run(["dvc", "repro"], root, env)
    assert _ran_stages(changed.stdout) == {"crf_search", "evaluate", "register"}
    best = json.loads((root / "data" / "crf_search" / "best_params.json").read_text())
    assert best["params"]["sigma_gamma"] == 4
    reg = json.loads((root / "data" / "register" / "registration.json").read_text())
    assert reg["version"] == "2"  # a new version; promoted only if it beat version 1


def _back_to_baseline(root: Path, env: dict) -> None:
    """git restores params, dvc.lock and the scores, plots and registration record; dvc checkout
    the cached outputs: nothing is left for `dvc status` or `git status` to report."""
    _run(["git", "checkout", "--", "."], root, env)
    _run(["dvc", "checkout", "-q"], root, env)
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], root, env).stdout
    assert _run(["git", "status", "--porcelain"], root, env).stdout == ""


def _exp_rows(root: Path, env: dict) -> dict[str, dict]:
    """`dvc exp show --csv`: {experiment name or "workspace"/branch: row}."""
    import csv
    import io

    out = _run(["dvc", "exp", "show", "--csv", "--no-pager"], root, env).stdout
    return {(r.get("Experiment") or r["rev"]): r for r in csv.DictReader(io.StringIO(out))}


def _experiment_stage_runs(store: str, name: str) -> dict:
    """The stage runs of `dvc exp run` experiment `name` in the MLflow store, by stage, after
    checking that they sit under one parent run named and tagged after the experiment."""
    import mlflow

    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["deeplab"], output_format="list",
                              filter_string=f"tags.dvc_exp = '{name}'")
    parents = [r for r in runs if r.data.tags["stage"] == "experiment"]
    assert len(parents) == 1 and parents[0].info.run_name == f"exp {name}", \
        [r.info.run_name for r in runs]
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags["stage"] != "experiment"}
    assert {r.data.tags["mlflow.parentRunId"] for r in children.values()} == \
        {parents[0].info.run_id}
    return children


def _assert_only_challengers_added(before: dict, after: dict, names) -> None:
    """`champion` and `challenger` are where they were; each experiment in `names` has its
    own `challenger-<name>` alias on a version that is neither of them."""
    production = ("champion", "challenger")
    assert {k: str(v) for k, v in after.items() if k in production} == \
        {k: str(v) for k, v in before.items() if k in production}
    for name in names:
        assert str(after[f"challenger-{name}"]) not in {str(before.get(k)) for k in production}


def test_dvc_experiments_compare_log_to_the_project_and_never_promote(project):
    """Two `dvc exp run -S` (one --temp, one in the workspace) after a change left in the
    workspace: both rows in `dvc exp show` with their scores, their stage runs in the project's
    MLflow store nested under one parent per experiment, versions registered under
    `challenger-<exp>` with `champion` and `challenger` untouched, and `dvc checkout` back to
    the baseline with nothing dirty."""
    from mlflow import MlflowClient

    root, env, _ = project
    _back_to_baseline(root, env)
    store = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    aliases = dict(client.get_registered_model("deeplab-micro").aliases)
    exps = {"exp-flip": ["--temp", "-S", "inference.flip=true"],
            "exp-scales": ["-S", "inference.scales=[0.75,1.0]"]}
    for name, args in exps.items():
        ran = _run(["dvc", "exp", "run", "-n", name, *args], root, env)
        # both settings reach crf_search (its logits cache follows evaluate's inference)
        assert _ran_stages(ran.stdout) == {"crf_search", "evaluate", "register"}, \
            ran.stdout[-3000:]
    assert not list((root / ".dvc" / "tmp").rglob("mlflow.db"))

    rows = _exp_rows(root, env)
    scores = {}
    for name in exps:
        row = rows[name]
        key = next(k for k in row if k.endswith("miou_crf"))
        scores[name] = float(row[key])
        assert 0.0 <= scores[name] <= 1.0
    assert rows["exp-flip"]["inference.flip"] == "True"
    assert rows["exp-scales"]["inference.scales"] == "[0.75, 1.0]"

    now = client.get_registered_model("deeplab-micro").aliases
    _assert_only_challengers_added(aliases, now, exps)
    for name in exps:
        children = _experiment_stage_runs(store, name)
        assert sorted(children) == ["crf_search", "evaluate", "register"]
        assert children["register"].data.metrics["promoted"] == 0.0
    reg = json.loads((root / "data" / "register" / "registration.json").read_text())
    assert reg["aliases"] == ["challenger-exp-scales"] and reg["promoted"] is False
    assert "experiments never promote" in reg["reason"]

    # the workspace experiment's scores against the committed baseline
    diff = json.loads(_run(["dvc", "metrics", "diff", "HEAD", "--all", "--json"], root,
                           env).stdout)["data/metrics/evaluate.json"]
    assert set(diff["miou_crf"]) >= {"old", "new"}
    assert diff["eval_set_md5"]["old"] != diff["eval_set_md5"]["new"]  # scales are in the set
    _back_to_baseline(root, env)


# settings no earlier run used (DVC would restore a repeated one from its run cache, running
# nothing); both reach register through `inference`
QUEUED = {"queued-flip": ["-S", "inference.flip=true", "-S", "inference.scales=[0.75,1.0]"],
          "queued-trimap": ["-S", "inference.scales=[1.0,1.25]",
                            "-S", "evaluate.trimap_widths=[2,6]"]}


@pytest.fixture(scope="module")
def queued(project):
    """Two experiments queued with `dvc exp run --queue -S` and run by `dvc queue start` (one
    worker, each in DVC's temporary copy under .dvc/tmp/exps), waited for through `dvc queue
    status`, with MLFLOW_TRACKING_URI=sqlite:///mlflow.db as MLflow's docs write it (a path
    MLflow takes from the working directory, here the copy). Returns the project and the
    registry aliases from before the queue ran."""
    from mlflow import MlflowClient

    root, env, _ = project
    env = dict(env, MLFLOW_TRACKING_URI="sqlite:///mlflow.db")
    _back_to_baseline(root, env)
    store = f"sqlite:///{root / 'mlflow.db'}"
    before = dict(MlflowClient(tracking_uri=store, registry_uri=store)
                  .get_registered_model("deeplab-micro").aliases)
    for name, args in QUEUED.items():
        _run(["dvc", "exp", "run", "--queue", "-n", name, *args], root, env)
    _run(["dvc", "queue", "start"], root, env)
    try:
        deadline = time.time() + 1500
        while True:
            status = _run(["dvc", "queue", "status"], root, env).stdout
            states = {line.split()[1]: line.split()[-1] for line in status.splitlines()
                      if line.split()[1:2] and line.split()[1] in QUEUED}
            if states and all(state in ("Success", "Failed") for state in states.values()):
                break
            assert time.time() < deadline, status
            time.sleep(5)
    finally:
        _run(["dvc", "queue", "stop"], root, env, check=False)
    for name, state in states.items():
        assert state == "Success", (name, _run(["dvc", "queue", "logs", name], root, env,
                                               check=False).stdout[-4000:])
    return root, env, store, before


def test_queued_experiments_log_to_the_project_and_never_promote(queued, tmp_path):
    """Queued experiments (`dvc exp run --queue` + `dvc queue start`), which DVC runs in a
    throw-away copy of the project: their rows in `dvc exp show`, their stage runs in the
    project's own MLflow store under one parent per experiment (nothing left under
    .dvc/tmp), their models loadable from the project, `challenger-<exp>` registered and
    `champion` untouched, and the workspace as it was."""
    from mlflow import MlflowClient

    root, env, store, before = queued
    rows = _exp_rows(root, env)
    for name in QUEUED:
        assert rows[name]["State"] == "Success", rows[name]
        score = next(v for k, v in rows[name].items() if k.endswith("miou_crf"))
        assert 0.0 <= float(score) <= 1.0
    assert rows["queued-flip"]["inference.flip"] == "True"
    assert rows["queued-flip"]["inference.scales"] == "[0.75, 1.0]"
    assert rows["queued-trimap"]["evaluate.trimap_widths"] == "[2, 6]"
    tmp = root / ".dvc" / "tmp"
    assert not [p for p in tmp.rglob("*") if p.name in ("mlflow.db", "mlruns")]

    after = MlflowClient(tracking_uri=store, registry_uri=store) \
        .get_registered_model("deeplab-micro").aliases
    _assert_only_challengers_added(before, after, QUEUED)
    cli_env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"}
    for name in QUEUED:
        children = _experiment_stage_runs(store, name)
        assert sorted(children) == ["crf_search", "evaluate", "register"]
        assert children["register"].data.metrics["promoted"] == 0.0
        # logged to the project's mlruns/, not into the copy DVC has deleted since
        dest = tmp_path / name
        _run(["mlflow", "artifacts", "download", "-u",
              f"models:/deeplab-micro@challenger-{name}", "-d", str(dest)], root, cli_env)
        assert (dest / "MLmodel").is_file()
    assert _run(["git", "status", "--porcelain"], root, env).stdout == ""


def test_dvc_plots_diff_shows_baseline_and_experiment_offline(queued, tmp_path):
    """`dvc plots diff HEAD <exp>`: every plot for both revisions, each image the one that
    revision committed (the experiment's trimap drawn for its own widths), and the HTML page
    shows them from files beside it, with no script or address to fetch."""
    root, env, _, _ = queued
    exp_rev = _exp_rows(root, env)["queued-trimap"]["rev"]
    out = json.loads(_run(["dvc", "plots", "diff", "HEAD", "queued-trimap", "--json", "-o",
                           str(tmp_path / "json")], root, env).stdout)["data"]
    assert sorted(out) == ["data/plots/finetune_loss.png", "data/plots/pretrain_loss.png",
                           "data/plots/trimap.png"]
    images = {}
    for plot, entries in out.items():
        assert sorted(e["revisions"][0] for e in entries) == ["HEAD", "queued-trimap"], entries
        for entry in entries:
            rev = {"HEAD": "HEAD", "queued-trimap": exp_rev}[entry["revisions"][0]]
            committed = subprocess.run(["git", "show", f"{rev}:{plot}"], cwd=root,
                                       capture_output=True, check=True).stdout
            images[plot, rev] = Path(entry["url"]).read_bytes()
            assert images[plot, rev] == committed and committed[:4] == b"\x89PNG"
    assert images["data/plots/trimap.png", "HEAD"] != \
        images["data/plots/trimap.png", exp_rev]

    _run(["dvc", "plots", "diff", "HEAD", "queued-trimap", "-o", str(tmp_path / "html")],
         root, env)
    page = (tmp_path / "html" / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert len(srcs) == 6 and all((tmp_path / "html" / s).stat().st_size > 1000 for s in srcs)
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_params_typo_fails_before_any_work(project):
    """Also a stage started by hand with no Prefect server: it falls back to Prefect's
    temporary server of its own (with a start-up limit a busy machine meets) and still ends
    with the one-line error."""
    root, env, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"]["learning_rate"] = 0.1
    bad = root / "bad_params.yaml"
    bad.write_text(yaml.safe_dump(params))
    env2 = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    env2["DEEPLAB_PARAMS"] = str(bad)
    proc = _run([sys.executable, "-m", "pipelines.stages.finetune"], root, env2, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "finetune.learning_rate: unknown key" in proc.stderr


def test_missing_dataset_directory_is_named(project, tmp_path):
    root, env, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prepare"].update(source="real", voc_root=str(tmp_path / "no" / "VOC2012"))
    bad = tmp_path / "params_real.yaml"
    bad.write_text(yaml.safe_dump(params))
    before = sorted(p.name for p in (root / "data" / "prepared").iterdir())
    proc = _run([sys.executable, "-m", "pipelines.stages.prepare"], root,
                dict(env, DEEPLAB_PARAMS=str(bad)), check=False)
    assert proc.returncode == 2
    assert str(tmp_path / "no" / "VOC2012") in proc.stderr and "does not exist" in proc.stderr
    assert sorted(p.name for p in (root / "data" / "prepared").iterdir()) == before


def test_unreadable_image_fails_validation_and_keeps_previous_outputs(project):
    root, env, _ = project
    first_line = (root / "data" / "prepared" / "val.txt").read_text().splitlines()[0]
    sample_id, image_rel, _ = first_line.split()
    image = (root / "data" / "prepared" / image_rel).resolve()
    report = root / "data" / "validation" / "report.json"
    report_before = report.read_bytes()
    original = image.read_bytes()
    image.write_bytes(b"this is not a jpeg")
    try:
        proc = _run([sys.executable, "-m", "pipelines.stages.validate"], root, env, check=False)
    finally:
        image.write_bytes(original)
    assert proc.returncode == 2
    assert "data validation failed" in proc.stderr
    assert "image_readable" in proc.stderr and sample_id in proc.stderr
    assert report.read_bytes() == report_before  # no half-written validation output


def test_killed_training_leaves_outputs_intact_and_resumes(project, tmp_path):
    """SIGKILL the finetune stage mid-training: its previous model stays as it was, and the next
    run resumes from the last checkpoint instead of starting over."""
    import hashlib
    import signal

    import torch

    root, env, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"].update(iterations=1000, checkpoint_every=20, log_every=20)
    longer = tmp_path / "params_long.yaml"
    longer.write_text(yaml.safe_dump(params))
    env2 = dict(env, DEEPLAB_PARAMS=str(longer))
    model = root / "data" / "models" / "finetune" / "model.pt"
    before = hashlib.md5(model.read_bytes()).hexdigest()
    ckpt = root / "data" / "checkpoints" / "finetune.pt"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.stages.finetune"], cwd=root, env=env2,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            time.sleep(0.5)
            if proc.poll() is not None:
                break
            try:
                state = torch.load(ckpt, weights_only=False)
            except Exception:  # not written yet, or being replaced
                continue
            if not state.get("complete") and state.get("iteration", 0) >= 20:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert hashlib.md5(model.read_bytes()).hexdigest() == before
    killed_at = torch.load(ckpt, weights_only=False)["iteration"]
    assert killed_at >= 20
    _run([sys.executable, "-m", "pipelines.stages.finetune"], root, env2)
    metrics = json.loads((root / "data" / "metrics" / "finetune.json").read_text())
    assert metrics["resumed_from"] >= killed_at and metrics["iterations"] == 1000
    assert torch.load(ckpt, weights_only=False)["complete"] is True
    assert hashlib.md5(model.read_bytes()).hexdigest() != before
