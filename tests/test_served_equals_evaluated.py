"""The model the registry promotes is the model it serves: the micro pipeline run by real DVC with a
non-default inference protocol (three scales, flips, output stride 8), its registered champion
served by a real `mlflow models serve`, every held-out val image sent over HTTP as base64, the
returned masks scored with the project's metrics: exactly evaluate's mIoU, with and without the
CRF and as served. `deeplab-predict --model models:/…@champion` without flags gives the same."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import scratch_project
from heldout import holdout as _holdout, miou as _miou

pytestmark = pytest.mark.e2e
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
PROTOCOL = {"scales": [0.75, 1.0, 1.25], "flip": True, "output_stride": 8}
MODEL = "deeplab-micro"


def _run(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api_url):
    root = scratch_project(tmp_path_factory.mktemp("served"), {"inference": PROTOCOL})
    env = dict(os.environ, PREFECT_API_URL=prefect_api_url, PYTHONPATH=str(root))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for key in ("DEEPLAB_PARAMS", "MLFLOW_TRACKING_URI", "DEEPLAB_ARTIFACT_ROOT"):
        env.pop(key, None)
    _run(["git", "init", "-q"], root, env)
    _run(["dvc", "init", "-q"], root, env)
    _run(GIT + ["add", "-A"], root, env)
    _run(GIT + ["commit", "-qm", "init"], root, env)
    _run(["dvc", "repro"], root, env)
    return root, env


def test_served_model_scores_exactly_what_evaluate_measured(project):
    from deeplab_core.data.io import read_list_file
    from pipelines.ops.serving import decode_mask_png_b64, mlflow_serve
    from pipelines.stages.eval_data import eval_dataset

    root, env = project
    ev = json.loads((root / "data" / "metrics" / "evaluate.json").read_text())
    assert {k: ev["protocol"][k] for k in PROTOCOL} == PROTOCOL
    holdout, val_list, num_classes = _holdout(root)
    assert ev["n_images"] == len(holdout) == 5
    files = {sid: img for sid, img, _ in read_list_file(val_list)}
    labels = [np.asarray(item["label"]) for item in eval_dataset(val_list, holdout)]
    body = {"image_b64": [base64.b64encode(Path(files[i]).read_bytes()).decode() for i in holdout]}

    serve_env = dict(env, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
                     OMP_NUM_THREADS="1")
    scores = {}
    with mlflow_serve(f"models:/{MODEL}@champion", root, env=serve_env) as url:
        for name, params in (("miou", {}), ("miou_no_crf", {"crf": False}),
                             ("miou_crf", {"crf": True})):
            resp = requests.post(f"{url}/invocations", timeout=600, json={
                "inputs": body, "params": {"mask_format": "png", **params}})
            assert resp.status_code == 200, resp.text[:500]
            masks = [decode_mask_png_b64(m) for m in resp.json()["predictions"]]
            assert [m.shape for m in masks] == [lab.shape for lab in labels]
            scores[name] = _miou(masks, labels, num_classes)
    assert scores == {k: ev[k] for k in scores}
    assert ev["miou"] == (ev["miou_crf"] if ev["crf_applied"] else ev["miou_no_crf"])

    # deeplab-predict with the registered model and no flags: the same masks as served
    out = root / "predicted"
    inputs = root / "holdout_images"
    inputs.mkdir()
    for i in holdout:
        (inputs / f"{i}{Path(files[i]).suffix}").write_bytes(Path(files[i]).read_bytes())
    _run([sys.executable, "-m", "pipelines.tools.predict", "--model",
          f"models:/{MODEL}@champion", "--input", str(inputs), "--output", str(out),
          "--no-progress"], root, dict(serve_env))
    from PIL import Image
    masks = [np.array(Image.open(out / f"{i}.png")) for i in holdout]
    assert _miou(masks, labels, num_classes) == ev["miou"]


def test_registered_version_carries_the_protocol_and_a_model_card(project):
    from mlflow import MlflowClient

    root, _ = project
    reg = json.loads((root / "data" / "register" / "registration.json").read_text())
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    mv = client.get_model_version(MODEL, reg["version"])
    assert (mv.tags["protocol.scales"], mv.tags["protocol.flip"],
            mv.tags["protocol.output_stride"]) == ("[0.75, 1.0, 1.25]", "True", "8")
    assert "scales 0.75, 1, 1.25; flip on; output stride 8" in mv.description
    ev = json.loads((root / "data" / "metrics" / "evaluate.json").read_text())
    assert f"mIoU as served (miou): {100 * ev['miou']:.2f} %" in mv.description
    assert reg["protocol"] == json.loads((root / "data" / "eval" / "protocol.json").read_text())
