"""Where and how reproducibly a run computes: the torch device and the global seeds."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def kernel_settings(device: torch.device, deterministic: bool = False,
                    fixed_shapes: bool = True) -> Iterator[None]:
    """Kernel choices for a block of work, restored afterwards. ``deterministic``:
    torch.use_deterministic_algorithms(True), cuDNN deterministic and not benchmarking, and
    CUBLAS_WORKSPACE_CONFIG=:4096:8 when unset (it must be set before the process's first
    cuBLAS call to take effect: export it when the run starts); the models and the loss then
    take their deterministic paths on CUDA (layers.resize_bilinear, recipe.loss_sum), which
    makes a resumed CUDA run bit-exact with the uninterrupted one. Otherwise, on CUDA with
    ``fixed_shapes`` (training crops), cudnn.benchmark picks the fastest convolutions. On the
    CPU without ``deterministic`` nothing changes."""
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        cudnn.deterministic, cudnn.benchmark = True, False
    elif device.type == "cuda" and fixed_shapes:
        cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark = saved[2], saved[3]


AUTO = "auto"


def loader_workers(setting: int | str, device: torch.device, processes: int = 1) -> int:
    """DataLoader worker processes for ``setting`` (an int, or "auto"): "auto" is 0 on the CPU
    (the loader would compete with the model for the same cores) and, on CUDA, the machine's
    cores shared among the ``processes`` training processes less one for the main process,
    1 to 8."""
    if setting != AUTO:
        return int(setting)
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 1) // max(1, processes) - 1))


def pool_workers(setting: int | str) -> int:
    """Worker processes of a CPU pool (CRF, data conversion) for an int or "auto" (every core
    but one, at least 1)."""
    if setting != AUTO:
        return int(setting)
    return max(1, (os.cpu_count() or 1) - 1)


def loader_options(num_workers: int, device: torch.device) -> dict:
    """What keeps a device fed: pinned host memory on CUDA (with non-blocking copies), and with
    worker processes, workers kept alive between epochs and 4 batches prefetched each."""
    opts: dict = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if num_workers > 0:
        opts.update(persistent_workers=True, prefetch_factor=4)
    return opts


def eval_autocast(amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of evaluation with ``amp``: bfloat16 on the CPU and on CUDA devices
    that support it, else float16; None without ``amp``."""
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16
