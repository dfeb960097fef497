"""End to end on the generic source: the shipped tiny example (images, index masks and a
4-class list) through every DVC stage, CRF and evaluation included, with its own class names
in the reports and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, scratch_project

pytestmark = pytest.mark.e2e
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
NAMES = ["background", "disc", "bar", "ring"]


def _run(args, cwd, env):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_generic_example_runs_every_stage_with_its_class_names(tmp_path, prefect_api_url):
    root = scratch_project(tmp_path / "proj", {
        "base": {"num_classes": 4},
        "prepare": {"source": "generic", "generic_root": str(REPO / "examples" / "generic_tiny")},
        "bootstrap": {"hard_classes": ["bar"]},
        "pretrain": {"enabled": False},
        "finetune": {"iterations": 4},
        "register": {"model_name": "generic-micro"}})
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep
               + os.environ["PATH"], PREFECT_API_URL=prefect_api_url)
    env.pop("DEEPLAB_PARAMS", None)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], GIT + ["add", "-A"],
                GIT + ["commit", "-qm", "init"]):
        _run(cmd, root, env)
    _run(["dvc", "repro"], root, env)
    d = root / "data"
    assert json.loads((d / "prepared" / "classes.json").read_text())["names"] == NAMES
    rows = json.loads((d / "eval" / "per_class.json").read_text())
    assert [r["class"] for r in rows] == NAMES
    assert all(r["iou_crf"] is not None for r in rows if r["iou"] is not None)
    metrics = json.loads((d / "metrics" / "evaluate.json").read_text())
    assert 0.0 <= metrics["miou"] <= 1.0 and "miou_crf" in metrics
    for png in ("eval/per_class_iou.png", "eval/examples.png", "plots/trimap.png"):
        assert (d / png).stat().st_size > 0
    hard = json.loads((d / "bootstrap" / "hard_images.json").read_text())
    assert hard["hard_classes"] == ["bar"] and hard["count"] > 0
    freq = json.loads((d / "validation" / "class_frequencies.json").read_text())
    assert list(freq["train_aug"]["classes"]) == NAMES
    report = _run([sys.executable, "-m", "pipelines.tools.report"], root, env).stdout
    assert all(f"  {n}" in report for n in NAMES) and "aeroplane" not in report
    # an ablation on the same dataset: evaluated with its own 4 class names
    grid = REPO / "ablations" / "v3_inference.yaml"
    out = _run([sys.executable, "-m", "pipelines.tools.ablate", str(grid), "--out",
                str(tmp_path / "ablation")], root, env).stdout
    table = (tmp_path / "ablation" / "table.csv").read_text().splitlines()
    assert table[0].startswith("config,") and "miou_no_crf" in table[0]
    assert [r.split(",")[0] for r in table[1:]] == ["OS16", "OS8", "+ MS", "+ flip", "+ CRF"]
    assert "aeroplane" not in out
