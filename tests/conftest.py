"""Shared fixtures: one intra-op torch thread for every test, a tiny hand-made segmentation
list (JPEG images + palette PNG labels), scratch copies of the project on the micro config, and
one real Prefect server for every test that runs stages."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolate_mlflow():
    """mlflow.set_tracking_uri / set_experiment export MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_ID
    and remember the active experiment in-process; a test that points MLflow at a scratch store
    must leak none of it into later tests (an experiment id of another store) or their stage
    subprocesses."""
    import os
    import sys

    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    before = {k: os.environ.get(k) for k in keys}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None:
        fluent._active_experiment_id = None


@pytest.fixture(autouse=True)
def _single_thread():
    """Test inputs are small: one intra-op thread avoids OpenMP oversubscription (which slows small
    convolutions by orders of magnitude) when test processes share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# Colour of each object class in the tiny dataset (class 0 is a grey background).
TINY_COLOURS = {1: (220, 30, 30), 2: (30, 200, 40), 3: (40, 60, 230)}
TINY_NUM_CLASSES = 4


def tiny_sample(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxWx3 image and uint8 HxW label: one or two coloured rectangles on grey."""
    label = np.zeros((h, w), dtype=np.uint8)
    image = np.full((h, w, 3), 120, dtype=np.uint8)
    for cls in rng.choice(list(TINY_COLOURS), size=2, replace=False):
        rh, rw = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
        y, x = int(rng.integers(0, h - rh)), int(rng.integers(0, w - rw))
        label[y:y + rh, x:x + rw] = cls
        image[y:y + rh, x:x + rw] = TINY_COLOURS[int(cls)]
    noise = rng.integers(-8, 9, size=image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8), label


@pytest.fixture(scope="session")
def tiny_list(tmp_path_factory) -> Path:
    """A list file of 6 samples (32x40) with paths relative to its folder."""
    from deeplab_core.data.io import write_jpeg, write_label_png, write_list_file

    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(123)
    entries = []
    for i in range(6):
        image, label = tiny_sample(rng, 32, 40)
        write_jpeg(root / "images" / f"s{i}.jpg", image, quality=95)
        write_label_png(root / "labels" / f"s{i}.png", label)
        entries.append((f"s{i}", f"images/s{i}.jpg", f"labels/s{i}.png"))
    return write_list_file(root / "list.txt", entries)


def scratch_project(root: Path, *overlays: dict) -> Path:
    """A copy of the project's code, dvc.yaml and ignore files at ``root`` with params.yaml =
    the defaults, the micro config (tests/micro_params.yaml) and ``overlays`` merged in order
    (DVC needs every tracked key present). No git, DVC or data: callers add what they need."""
    from deeplab_core.config import deep_merge

    for name in ("deeplab_core", "pipelines"):
        shutil.copytree(REPO / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                        yaml.safe_load((REPO / "tests" / "micro_params.yaml").read_text()))
    for overlay in overlays:
        params = deep_merge(params, overlay)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def git_project(root: Path, env: dict, *dvc_commands: list[str]) -> None:
    """Make the scratch project at ``root`` a git + DVC repository (DVC analytics off, then each
    of ``dvc_commands``, e.g. ["remote", "add", "-d", ...]) with everything in a first commit."""
    import subprocess

    cmds = [["git", "init", "-q"], ["dvc", "init", "-q"],
            ["dvc", "config", "core.analytics", "false"], *(["dvc", *c] for c in dvc_commands),
            GIT + ["add", "-A"], GIT + ["commit", "-qm", "init"]]
    for cmd in cmds:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{cmd} failed: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory):
    """One real `prefect server` on 127.0.0.1 for the whole session (or PREFECT_API_URL when
    set), exported as PREFECT_API_URL so stage subprocesses use it instead of starting
    Prefect's temporary server each."""
    from pipelines.ops.prefect_server import prefect_api

    with prefect_api(home=tmp_path_factory.mktemp("prefect_home")) as url:
        yield url


def confident_micro_model(num_classes: int, seed: int = 0) -> "torch.nn.Module":
    """An untrained `micro` network whose softmax is far from uniform (He-initialised
    convolutions), so that tests comparing predictions compare something."""
    from deeplab_core.models import build_model

    torch.manual_seed(seed)
    model = build_model("micro", num_classes=num_classes, output_stride=16)
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight)
    return model.eval()
