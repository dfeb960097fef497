"""End to end: the real DVC pipeline (every stage a Prefect flow, MLflow tracking, GX validation,
registry) on a micro synthetic config, in a scratch copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


def _run(args, cwd, env, check=True):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def _ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    for name in ("deeplab_core", "pipelines"):
        shutil.copytree(REPO / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    # DVC needs every tracked key present: write the defaults with the micro overlay on top.
    from deeplab_core.config import deep_merge
    full = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                      yaml.safe_load((REPO / "tests" / "micro_params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    (root / ".gitignore").write_text("/data/*\nmlruns/\n__pycache__/\n")
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    env["DEEPLAB_ARTIFACT_ROOT"] = (root / "mlruns" / "artifacts").as_uri()
    (root / "mlruns").mkdir()
    env.pop("DEEPLAB_PARAMS", None)
    _run(["git", "init", "-q"], root, env)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], root, env)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], root, env)
    _run(["dvc", "init", "-q"], root, env)
    _run(["dvc", "config", "core.analytics", "false"], root, env)
    first = _run(["dvc", "repro"], root, env)
    return root, env, first


def test_first_repro_runs_every_stage_in_order(project):
    _, _, first = project
    stages = [line.split("'")[1] for line in first.stdout.splitlines()
              if line.startswith("Running stage")]
    assert stages == ["prepare", "validate", "bootstrap", "pretrain", "finetune", "crf_search",
                      "evaluate", "register"]


def test_outputs_metrics_and_registry(project):
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
    for png in ("trimap.png", "per_class_iou.png", "examples.png"):
        assert (d / "eval" / png).stat().st_size > 1000
    assert (d / "crf_search" / "heatmaps.png").is_file()
    assert (d / "crf_search" / "search_trace.png").is_file()
    reg = json.loads((d / "register" / "registration.json").read_text())
    assert reg["version"] == "1" and reg["promoted"] and "champion" in reg["aliases"]
    # every stage logged an MLflow run tagged with the git commit and its DVC inputs' hash
    import mlflow
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["deeplab"])
    assert set(runs["tags.stage"]) == {"prepare", "validate", "bootstrap", "pretrain", "finetune",
                                       "crf_search", "evaluate", "register"}
    assert runs["tags.dvc_inputs_md5"].str.len().eq(32).all()
    assert runs["tags.git_commit"].str.len().ge(40).all()
    # the registered champion serves raw RGB images, with and without the CRF
    import numpy as np
    served = mlflow.pyfunc.load_model("models:/deeplab-micro@champion")
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    masks = served.predict([img])
    plain = served.predict([img], params={"crf": False})
    assert masks[0].shape == plain[0].shape == (40, 56) and masks[0].dtype == np.uint8
    assert int(masks[0].max()) < 21
    # metrics readable by `dvc metrics show`
    shown = _run(["dvc", "metrics", "show", "--json"], root, env).stdout
    assert "miou_crf" in shown


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


def test_params_typo_fails_before_any_work(project):
    root, env, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"]["learning_rate"] = 0.1
    bad = root / "bad_params.yaml"
    bad.write_text(yaml.safe_dump(params))
    env2 = dict(env, DEEPLAB_PARAMS=str(bad))
    proc = _run([sys.executable, "-m", "pipelines.finetune"], root, env2, check=False)
    assert proc.returncode == 2
    assert "finetune.learning_rate: unknown key" in proc.stderr


def test_missing_dataset_directory_is_named(project, tmp_path):
    root, env, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prepare"].update(source="real", voc_root=str(tmp_path / "no" / "VOC2012"))
    bad = tmp_path / "params_real.yaml"
    bad.write_text(yaml.safe_dump(params))
    before = sorted(p.name for p in (root / "data" / "prepared").iterdir())
    proc = _run([sys.executable, "-m", "pipelines.prepare"], root,
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
        proc = _run([sys.executable, "-m", "pipelines.validate"], root, env, check=False)
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
    import time

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
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.finetune"], cwd=root, env=env2,
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
    _run([sys.executable, "-m", "pipelines.finetune"], root, env2)
    metrics = json.loads((root / "data" / "metrics" / "finetune.json").read_text())
    assert metrics["resumed_from"] >= killed_at and metrics["iterations"] == 1000
    assert torch.load(ckpt, weights_only=False)["complete"] is True
    assert hashlib.md5(model.read_bytes()).hexdigest() != before
