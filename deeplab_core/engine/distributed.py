"""Data-parallel training across processes started by torchrun (one per GPU, or several CPU
processes with the gloo backend): process-group set-up from torchrun's environment, the
reductions the training loop and evaluation need, and gathering per-rank state for checkpoints.
Outside torchrun every function behaves as the single process it is."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def current() -> DistContext:
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", "0")))


BACKEND_ENV = "DEEPLAB_DIST_BACKEND"


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun described in the environment (nccl on CUDA, gloo on CPU,
    or the backend named by $DEEPLAB_DIST_BACKEND, e.g. gloo over CUDA tensors where NCCL cannot
    run, such as two processes on one GPU); a no-op outside torchrun. Returns the context and
    this process's device (cuda:LOCAL_RANK)."""
    if launched_world_size() <= 1:
        return DistContext(), device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(os.environ.get(BACKEND_ENV)
                                or ("nccl" if device.type == "cuda" else "gloo"))
    return current(), device


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over all processes (returned, the input is left alone)."""
    if not current().enabled:
        return values.clone()
    # NCCL reduces CUDA tensors only; gloo takes CPU tensors
    on = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    out = values.to(on, copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def all_reduce_array(arr: np.ndarray) -> np.ndarray:
    """Element-wise sum of a numpy array (e.g. a confusion matrix) over all processes."""
    if not current().enabled:
        return arr
    return all_reduce_sum(torch.from_numpy(np.ascontiguousarray(arr))).numpy()


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (picklable objects; [obj] in one process)."""
    ctx = current()
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group once every process is done: a rank that exits while another is
    still inside a collective aborts gloo's threads ("terminate called without an active
    exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(n: int) -> range:
    """This process's share of n items (every world_size-th, from its rank)."""
    ctx = current()
    return range(ctx.rank, n, ctx.world_size)


def wrap(model: torch.nn.Module, device: torch.device, sync_batch_norm: bool
         ) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when running under torchrun, with its batch norms
    made SyncBatchNorm when asked and on CUDA (PyTorch's SyncBatchNorm runs on GPUs only); else
    the model itself. ``unwrap_model`` gives the plain network back."""
    ctx = current()
    if not ctx.enabled:
        return model
    if sync_batch_norm and device.type == "cuda":
        _swap_batch_norms(model, to_sync=True)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside ``wrap``'s result, with its original batch-norm classes back."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    _swap_batch_norms(inner, to_sync=False)
    return inner


def _swap_batch_norms(module: torch.nn.Module, to_sync: bool) -> None:
    """Replace batch norms by SyncBatchNorm (remembering each one's class) or back, in place;
    the state-dict keys and values stay the same."""
    bn_base = torch.nn.modules.batchnorm._BatchNorm
    for name, child in module.named_children():
        is_sync = isinstance(child, torch.nn.SyncBatchNorm)
        if to_sync and isinstance(child, bn_base) and not is_sync:
            new, new.plain_type = torch.nn.SyncBatchNorm(child.num_features), type(child)
        elif not to_sync and is_sync:
            new = child.plain_type(child.num_features)
        else:
            _swap_batch_norms(child, to_sync)
            continue
        new.eps, new.momentum = child.eps, child.momentum
        new.load_state_dict(child.state_dict())
        new.train(child.training)
        for p_new, p_old in zip(new.parameters(), child.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        setattr(module, name, new.to(child.running_mean.device))
