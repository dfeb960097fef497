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
