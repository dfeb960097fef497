"""benchmarks/gpu_acceptance.py where no GPU is: its arguments, its peak table and its refusal
to measure anything without CUDA (the checks themselves need a GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_acceptance.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_acceptance as ga  # noqa: E402


def test_arguments_default_to_every_check_and_the_v3_crop():
    a = ga.parse_args([])
    assert a.checks == ["fp16", "bf16", "deterministic", "ddp"]
    assert (a.batch, a.crop, a.steps, a.peak_tflops, a.no_throughput) == (8, 513, 20, None, False)
    a = ga.parse_args(["--checks", "bf16", "ddp", "--batch", "4", "--peak-tflops", "500"])
    assert a.checks == ["bf16", "ddp"] and a.batch == 4 and a.peak_tflops == 500.0
    assert ga.parse_args(["--checks"]).checks == []


@pytest.mark.parametrize("argv,message", [
    (["--checks", "fp8"], "invalid choice: 'fp8'"),
    (["--batch", "1"], "--batch 1: batch norm needs at least 2 images"),
    (["--steps", "0"], "--steps 0 / --warmup 5: expected steps >= 1"),
    (["--crop", "32"], "--crop 32: expected at least 65 pixels"),
    (["--peak-tflops", "-3"], "--peak-tflops -3.0: expected a positive number"),
])
def test_bad_arguments_exit_2_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ga.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_peak_comes_from_the_device_name_or_the_flag():
    assert ga.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert ga.peak_tflops("NVIDIA H100 PCIe", None) == 756.0
    assert ga.peak_tflops("NVIDIA H200", None) == 989.0
    assert ga.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert ga.peak_tflops("Some Future GPU", None) is None
    assert ga.peak_tflops("NVIDIA H100 PCIe", 700.0) == 700.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path taken without CUDA")
def test_without_cuda_the_script_says_so_and_measures_nothing():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == ga.NO_CUDA_EXIT == 2
    assert "gpu_acceptance: CUDA is not available here" in proc.stderr
    assert "nothing was measured" in proc.stderr
    assert "PASS" not in proc.stdout and "throughput" not in proc.stdout


def test_the_synthetic_shapes_dataset_is_deterministic_and_labelled():
    ds = ga.Shapes(n=3, size=64, classes=4)
    a, b = ds[1], ds[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert a["image"].shape == (3, 64, 64) and a["label"].shape == (64, 64)
    assert set(a["label"].unique().tolist()) <= {0, 1, 2, 3} and a["label"].max() > 0
