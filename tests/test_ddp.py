"""Data-parallel training with the real torchrun CLI, 2 CPU processes, gloo: the same optimizer
steps as one process with the same global batch, and an interrupted run that resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deeplab_core.engine import distributed

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "ddp_train_script.py"
# BN frozen: batch statistics would differ between one batch of 4 and two of 2 (SyncBatchNorm,
# which would make them equal, runs on GPUs only).
CFG = {"iterations": 6, "batch_size": 4, "lr": 0.05, "log_every": 1, "checkpoint_every": 3,
       "batch_norm": "frozen"}


def _torchrun() -> str:
    exe = Path(sys.executable).parent / "torchrun"
    if not exe.is_file():
        pytest.skip("torchrun is not installed beside this Python")
    return str(exe)


def _run(list_file: Path, out: Path, nproc: int, cfg: dict, ckpt: Path | None = None,
         fail_after: int | None = None, *extra: str) -> subprocess.CompletedProcess:
    args = ["--list", str(list_file), "--out", str(out), "--cfg", json.dumps(cfg), *extra]
    if ckpt is not None:
        args += ["--ckpt", str(ckpt)]
    if fail_after is not None:
        args += ["--fail-after-samples", str(fail_after)]
    cmd = ([_torchrun(), "--standalone", f"--nproc_per_node={nproc}", str(SCRIPT)] if nproc > 1
           else [sys.executable, str(SCRIPT)])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd + args, capture_output=True, text=True, env=env, timeout=300)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in json.loads((out / "history.json").read_text())["history"]]


def _weights(out: Path) -> dict:
    return torch.load(out / "model.pt", weights_only=True)


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol), k


@pytest.fixture(scope="module")
def reference(tiny_list, tmp_path_factory) -> dict:
    """One process, global batch 4, and two processes with 2 each (uninterrupted)."""
    root = tmp_path_factory.mktemp("ddp")
    _ok(_run(tiny_list, root / "one", 1, CFG))
    _ok(_run(tiny_list, root / "two", 2, CFG))
    return {"one": root / "one", "two": root / "two"}


def test_two_processes_take_the_single_process_steps(reference):
    one, two = _losses(reference["one"]), _losses(reference["two"])
    meta = json.loads((reference["two"] / "history.json").read_text())
    assert meta["world_size"] == 2
    assert len(one) == len(two) == CFG["iterations"]
    assert two == pytest.approx(one, rel=1e-5)
    assert one[-1] < one[0]  # it trains: the comparison is not between two idle runs
    _assert_close(_weights(reference["one"]), _weights(reference["two"]), atol=1e-5)


def test_uneven_shares_on_two_processes_take_the_single_process_steps(tiny_list, tmp_path):
    """A global batch of 5 in 2 micro-batches on 2 processes: shares 2 + 1 (rank 0) and 1 + 1
    (rank 1), the same steps as 5 at once in one process."""
    cfg = {**CFG, "iterations": 3, "batch_size": 5, "checkpoint_every": 10}
    _ok(_run(tiny_list, tmp_path / "one", 1, cfg))
    _ok(_run(tiny_list, tmp_path / "two", 2, {**cfg, "accumulate_steps": 2}))
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == 3 and two == pytest.approx(one, rel=1e-5)
    _assert_close(_weights(tmp_path / "one"), _weights(tmp_path / "two"), atol=1e-5)


def test_interrupted_two_process_run_resumes_exactly(reference, tiny_list, tmp_path):
    ckpt = tmp_path / "resume.pt"
    # each rank reads 2 samples a step: failing on the 9th read stops both ranks in step 5,
    # after the checkpoint of step 3 (checkpoint_every 3) and before that of step 6
    failed = _run(tiny_list, tmp_path / "failed", 2, CFG, ckpt, fail_after=8)
    assert failed.returncode != 0
    assert "simulated failure after 8 samples" in failed.stderr + failed.stdout
    state = torch.load(ckpt, weights_only=False)
    assert state["iteration"] == 3 and state["world_size"] == 2
    assert len(state["torch_rng"]) == 2
    assert state["data_position"] == {"step": 3, "samples_seen": 12}
    assert not (tmp_path / "failed").exists()
    _ok(_run(tiny_list, tmp_path / "resumed", 2, CFG, ckpt))
    meta = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert meta["resumed_from"] == 3
    assert _losses(tmp_path / "resumed") == _losses(reference["two"])
    _assert_close(_weights(tmp_path / "resumed"), _weights(reference["two"]), atol=0.0)
    assert torch.load(ckpt, weights_only=False)["complete"] is True


def test_evaluation_confusion_is_summed_over_processes(tiny_list, tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    import ddp_train_script as script

    _ok(_run(tiny_list, tmp_path / "two", 2, CFG, None, None, "--eval-only"))
    two = np.load(tmp_path / "two" / "confusion.npz")
    script.evaluate_only(script.seeded_model(), tiny_list, tmp_path / "one")
    one = np.load(tmp_path / "one" / "confusion.npz")
    assert one["conf"].sum() == 6 * 32 * 40  # every pixel of the 6 images, once
    assert np.array_equal(two["conf"], one["conf"])
    assert np.array_equal(two["trimap"], one["trimap"])


def test_outside_torchrun_everything_is_one_process():
    ctx = distributed.current()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.enabled) == (0, 1, True, False)
    arr = np.arange(6).reshape(2, 3)
    assert distributed.all_reduce_array(arr) is arr
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert list(distributed.shard(5)) == [0, 1, 2, 3, 4]
    model = torch.nn.Conv2d(1, 1, 1)
    assert distributed.wrap(model, torch.device("cpu"), sync_batch_norm=True) is model


def test_sync_batch_norm_swap_round_trips_classes_and_state():
    from deeplab_core.models.layers import PooledBatchNorm2d

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4),
                                torch.nn.Sequential(PooledBatchNorm2d(4)))
    model[1].running_mean.add_(torch.arange(4.0))
    model[2][0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    distributed._swap_batch_norms(model, to_sync=True)
    assert isinstance(model[1], torch.nn.SyncBatchNorm)
    assert isinstance(model[2][0], torch.nn.SyncBatchNorm)
    assert not model[2][0].weight.requires_grad
    distributed._swap_batch_norms(model, to_sync=False)
    assert type(model[1]) is torch.nn.BatchNorm2d and type(model[2][0]) is PooledBatchNorm2d
    _assert_close(before, model.state_dict(), atol=0.0)


def _stage_env(prefect_api_url: str) -> dict:
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "OMP_NUM_THREADS": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    for key in ("DEEPLAB_PARAMS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


def _run_stages(root: Path, env: dict) -> subprocess.CompletedProcess:
    """prepare, validate and finetune in the scratch project; the finetune run is returned."""
    for stage in ("prepare", "validate", "finetune"):
        proc = subprocess.run([sys.executable, "-m", f"pipelines.stages.{stage}"], cwd=root,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.e2e
def test_finetune_stage_with_nproc_2_runs_under_torchrun(tmp_path, prefect_api_url):
    """`python -m pipelines.stages.finetune` (the DVC stage's command) with base.nproc 2 relaunches
    itself under torchrun; rank 0 alone writes the outputs and the one MLflow run."""
    import mlflow
    import yaml

    from conftest import scratch_project

    root = scratch_project(tmp_path / "proj", {
        "base": {"nproc": 2},
        "finetune": {"init_from_pretrain": False, "use_bootstrap": False, "iterations": 4,
                     "checkpoint_every": 2, "batch_norm": "frozen"}})
    env = _stage_env(prefect_api_url)
    proc = _run_stages(root, env)
    assert "--nproc_per_node=2 -m pipelines.stages.finetune" in proc.stdout
    metrics = json.loads((root / "data" / "metrics" / "finetune.json").read_text())
    assert metrics["iterations"] == 4 and metrics["resumed_from"] == 0
    assert (root / "data" / "models" / "finetune" / "model.pt").is_file()
    assert torch.load(root / "data" / "checkpoints" / "finetune.pt",
                      weights_only=False)["complete"] is True
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "tags.stage = 'finetune'")
    assert len(runs) == 1
    assert runs[0].data.metrics["train_processes"] == 2
    assert yaml.safe_load((root / "params.yaml").read_text())["base"]["nproc"] == 2


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.e2e
def test_sigterm_to_a_two_process_stage_stops_torchrun_and_every_rank(tmp_path, prefect_api_url):
    """SIGTERM to `python -m pipelines.stages.finetune` with base.nproc 2, while both ranks
    train: the stage exits 143, no torchrun agent or rank is left, and the outputs of the earlier
    finetune run are byte-identical."""
    import signal
    import time

    import yaml

    from conftest import scratch_project
    from pipelines.ops.procs import descendants

    root = scratch_project(tmp_path / "proj", {
        "finetune": {"init_from_pretrain": False, "use_bootstrap": False, "iterations": 2,
                     "checkpoint_every": 2, "batch_norm": "frozen"}})
    env = _stage_env(prefect_api_url)
    _run_stages(root, env)
    outputs = [root / "data" / "models" / "finetune" / "model.pt",
               root / "data" / "metrics" / "finetune.json"]
    before = [p.read_bytes() for p in outputs]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["base"]["nproc"] = 2
    params["finetune"]["iterations"] = 100000  # far longer than the test waits
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    log = (tmp_path / "stage.log").open("w")
    stage = subprocess.Popen([sys.executable, "-m", "pipelines.stages.finetune"], cwd=root,
                             env=env, stdout=log, stderr=subprocess.STDOUT)
    seen: set[int] = set()
    deadline = time.monotonic() + 300
    try:
        # torchrun and its two ranks, the ranks past their start (a checkpoint-free wait)
        while time.monotonic() < deadline and stage.poll() is None:
            tree = descendants(stage.pid)
            seen.update(tree)
            ranks = [p for p in tree if b"RANK=1" in _environ(p)]
            if len(tree) >= 3 and ranks:
                break
            time.sleep(0.5)
        assert stage.poll() is None and len(seen) >= 3, (tmp_path / "stage.log").read_text()
        time.sleep(5)  # let the ranks get into training
        seen.update(descendants(stage.pid))
        stage.send_signal(signal.SIGTERM)
        assert stage.wait(120) == 128 + signal.SIGTERM
    finally:
        if stage.poll() is None:
            stage.kill()
        log.close()
    time.sleep(1)
    assert [p for p in sorted(seen) if _alive(p)] == []
    assert [p.read_bytes() for p in outputs] == before


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""
