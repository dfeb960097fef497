"""benchmarks/gpu_acceptance.py where no GPU is: its arguments, its peak table, its refusal
to measure anything without CUDA, and every check's code run on the CPU (--device cpu)."""

from __future__ import annotations

import os
import re
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
    assert a.checks == ["fp16", "bf16", "deterministic", "ddp", "eval"]
    assert (a.batch, a.crop, a.steps, a.peak_tflops, a.no_throughput) == (8, 513, 20, None, False)
    assert a.device == "cuda" and ga.parse_args(["--device", "cpu"]).device == "cpu"
    a = ga.parse_args(["--checks", "bf16", "ddp", "--batch", "4", "--peak-tflops", "500"])
    assert a.checks == ["bf16", "ddp"] and a.batch == 4 and a.peak_tflops == 500.0
    assert ga.parse_args(["--checks"]).checks == []


@pytest.mark.parametrize("argv,message", [
    (["--checks", "fp8"], "invalid choice: 'fp8'"),
    (["--batch", "1"], "--batch 1: batch norm needs at least 2 images"),
    (["--steps", "0"], "--steps 0 / --warmup 5: expected steps >= 1"),
    (["--crop", "32"], "--crop 32: expected at least 65 pixels"),
    (["--peak-tflops", "-3"], "--peak-tflops -3.0: expected a positive number"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
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


@pytest.mark.e2e
def test_cpu_mode_runs_every_check_and_the_throughput_to_pass():
    """The script as CI can run it: each check's code (fp16 with a CPU GradScaler and 2
    micro-batches, bf16, deterministic resume, 2-process gloo DDP, evaluation at float16 and
    bfloat16 against float32) and the ResNet-101 throughput at a tiny crop."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--crop", "65",
                           "--batch", "2", "--steps", "1", "--warmup", "0"],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert out.startswith("device: CPU (--device cpu)")
    lines = {m.group(2): m.group(1) + " " + m.group(3)
             for m in re.finditer(r"^(PASS|FAIL) (\w+) \(\d+ s\): (.*)$", out, re.M)}
    assert sorted(lines) == sorted(ga.CHECKS)
    assert all(v.startswith("PASS ") for v in lines.values()), lines
    number = r"\d+\.\d{4}"
    losses = rf"\[{number}(, {number}){{7}}\]"
    assert re.search(rf"fp16 losses {losses} vs fp32 {losses} \(2 accumulated micro-batches, "
                     r"own loop, GradScaler\('cpu'\), final scale \d+", lines["fp16"])
    assert re.search(rf"bf16 losses {losses} vs fp32 {losses}", lines["bf16"])
    assert "resumed after step 4 of 8: 164/164 tensors bit-identical" in lines["deterministic"]
    assert re.search(rf"gloo, 2 processes on the CPU, batch norm frozen .*losses {losses} vs "
                     rf"one process {losses}", lines["ddp"])
    m = re.search(r"float32 mIoU (\d+\.\d+) % on 16 images; float16 ([-+]\d\.\d+) pt, labels "
                  r"changed (\d\.\d+) %, .*; bfloat16 ([-+]\d\.\d+) pt, labels changed "
                  r"(\d\.\d+) %, .*\(tolerance 0.5 pt\)", lines["eval"])
    assert m, lines["eval"]
    assert 0 < float(m.group(1)) <= 100
    assert abs(float(m.group(2))) <= 0.5 and abs(float(m.group(4))) <= 0.5
    assert 0 <= float(m.group(3)) < 5 and 0 <= float(m.group(5)) < 5
    m = re.search(r"^throughput: v3_resnet101_os16_mg124, 65x65, batch 2, bf16 \+ channels_last: "
                  r"(\d+\.\d+) images/s \(1 steps in .* (\d+\.\d) GFLOP per image .*"
                  r"no peak share on the CPU$", out, re.M)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, out
