"""Training loop to the papers' recipes (see ``recipe``), on one process or data-parallel under
torchrun (see ``distributed``): each optimizer step's global batch is drawn from a generator seeded
by (seed, step), split among the processes and accumulation steps, and its loss is the mean over
all labelled pixels of the global batch, so any split takes the same steps. Checkpoints (model,
optimizer, gradient scaler, every process's CPU and CUDA RNG, data position) are written
atomically; a resumed run is the same run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from deeplab_core.config import TrainConfig
from deeplab_core.engine import distributed
from deeplab_core.engine.distributed import DistContext
from deeplab_core.engine.recipe import (bn_momentum_per_step, freeze_batch_norm, loss_sum,
                                        lr_at, make_optimizer, set_bn_momentum, set_group_lrs)
from deeplab_core.fileio import atomic_torch_save
from deeplab_core.runtime import (kernel_settings, loader_options, loader_workers,
                                  seed_everything)

MetricLogger = Callable[[int, dict], None]
# Settings that change nothing computed: a checkpoint written under other values still resumes.
# ``deterministic`` picks kernels, not the computation: a run may be resumed with it switched.
_NOT_RUN_DEFINING = {"enabled", "log_every", "checkpoint_every", "deterministic"}


class ResumeMismatch(ValueError):
    """A checkpoint of this run was written under another precision or device."""


def run_fingerprint(cfg: TrainConfig, seed: int, run_key: str = "") -> str:
    """Identifies the run a checkpoint belongs to (a resume only continues the same run): every
    TrainConfig field that changes what is computed, the seed and ``run_key`` (e.g. a hash of
    the data). Fields of subclasses (a stage's own switches) do not count."""
    d = {k: getattr(cfg, k) for k in TrainConfig.model_fields if k not in _NOT_RUN_DEFINING}
    blob = json.dumps({"cfg": d, "seed": seed, "run_key": run_key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0
    final_loss: float = math.nan


def micro_steps(batch_size: int, accumulate_steps: int, world_size: int) -> int:
    """Micro-batches each process runs per optimizer step: ``accumulate_steps``, or fewer when
    the global batch has fewer samples than processes x accumulate_steps (v2's batch 10 in 2
    micro-batches is 1 micro-batch a process on 8 processes). ValueError when the batch has
    fewer samples than processes."""
    if batch_size < world_size:
        raise ValueError(f"batch_size {batch_size} is smaller than the {world_size} training "
                         f"processes: every process needs at least one sample a step")
    return max(1, min(accumulate_steps, batch_size // world_size))


def batch_shares(batch_size: int, accumulate_steps: int, world_size: int
                 ) -> list[list[tuple[int, int]]]:
    """[micro-batch j][rank r] -> (first slot, number of slots) of the global batch: the batch is
    cut into micro_steps x world_size parts in the order (j, r), their sizes differing by at most
    one (the first batch_size % parts parts one larger). Any partition takes the same optimizer
    step, since the loss is normalised by the global batch's labelled pixels."""
    micro = micro_steps(batch_size, accumulate_steps, world_size)
    parts = micro * world_size
    base, extra = divmod(batch_size, parts)
    sizes = [base + (k < extra) for k in range(parts)]
    starts = [sum(sizes[:k]) for k in range(parts)]
    return [[(starts[j * world_size + r], sizes[j * world_size + r]) for r in range(world_size)]
            for j in range(micro)]


class _StepBatches(Sampler):
    """Micro-batches of (sample index, step, slot) for steps start..stop-1. Step t's global batch
    comes from a generator seeded by (seed, t) alone, so a resumed run draws exactly the batches
    that the uninterrupted run would have drawn. Each step yields this process's micro-batches,
    its shares of the global batch (``batch_shares``; equal shares when the batch divides)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int,
                 micro: int = 1, ctx: DistContext = DistContext()) -> None:
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.shares = [row[ctx.rank] for row in batch_shares(batch_size, micro, ctx.world_size)]
        self.micro = len(self.shares)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.micro

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.stop):
            idx = np.random.default_rng([self.seed & 0xFFFFFFFF, step]).integers(
                0, self.n, self.batch_size)
            for lo, size in self.shares:
                yield [(int(idx[s]), step, s) for s in range(lo, lo + size)]


class _StepSamples(Dataset):
    """Sample i at (step, slot) with its random augmentation drawn from a generator seeded by
    (seed, step, slot): augmentations are independent of worker layout and exact on resume.
    Datasets without `get_raw`/`transform` (plain map-style datasets) are indexed as they are."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed
        self.exact = hasattr(dataset, "get_raw") and hasattr(dataset, "transform")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        i, step, slot = key
        if not self.exact:
            return self.dataset[i]
        image, label = self.dataset.get_raw(i)
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, step, slot])
        img_t, lab_t = self.dataset.transform(image, label, rng=rng)
        return {"image": img_t, "label": lab_t}



@dataclass
class _Precision:
    dtype: torch.dtype | None          # autocast dtype; None = float32
    scaler: torch.amp.GradScaler       # enabled for float16 only

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype or torch.bfloat16,
                              enabled=self.dtype is not None)

    def runtime(self, device: torch.device) -> dict:
        """What ``amp``/``amp_dtype: auto`` and ``device: auto`` resolved to: part of the run's
        identity (a checkpoint resumes only under the same)."""
        return {"dtype": str(self.dtype or torch.float32).removeprefix("torch."),
                "device": device.type}


def _precision(cfg: TrainConfig, device: torch.device) -> _Precision:
    """bfloat16 autocast on CPU; on CUDA bfloat16 where supported (auto) or float16 with a
    gradient scaler; nothing unless ``cfg.amp``."""
    dtype = None
    if cfg.amp and device.type == "cpu":
        if cfg.amp_dtype == "float16":
            raise ValueError("amp_dtype 'float16' needs a CUDA device; on CPU use 'bfloat16' "
                             "(or 'auto')")
        dtype = torch.bfloat16
    elif cfg.amp and device.type == "cuda":
        bf16 = cfg.amp_dtype == "bfloat16" or (cfg.amp_dtype == "auto"
                                               and torch.cuda.is_bf16_supported())
        dtype = torch.bfloat16 if bf16 else torch.float16
    scaler = torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu",
                                  enabled=dtype == torch.float16)
    return _Precision(dtype, scaler)


def _read_resume(path: Path | None, fingerprint: str, iterations: int,
                 runtime: dict | None = None) -> dict | None:
    """The checkpoint at ``path`` when it continues this run (same fingerprint, unfinished).
    ResumeMismatch when it does but was written under another resolved precision or device
    (an fp16 run's scaler cannot continue in bf16, nor a bf16 run as fp16)."""
    if path is None or not path.is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if (ckpt.get("fingerprint") != fingerprint or "model" not in ckpt
            or ckpt.get("iteration", 0) >= iterations):
        return None
    saved = ckpt.get("runtime")
    if runtime is not None and saved is not None and saved != runtime:
        raise ResumeMismatch(
            f"{path}: this run's checkpoint (iteration {ckpt['iteration']}) was written with "
            f"{saved['dtype']} on {saved['device']}, but this process would continue with "
            f"{runtime['dtype']} on {runtime['device']}; set amp / amp_dtype / base.device so "
            f"they resolve as before, or delete {path} to start the run afresh")
    return ckpt


def _restore_rng(ckpt: dict, ctx: DistContext) -> None:
    """This process's CPU (and CUDA) RNG state, when the checkpoint has one per process; a
    warning when it was written by another number of processes (the run then continues with
    this process's freshly seeded generators: data order and augmentations are unaffected,
    being seeded by step, but dropout masks differ from the uninterrupted run's)."""
    cpu, cuda = ckpt.get("torch_rng"), ckpt.get("cuda_rng")
    if isinstance(cpu, torch.Tensor):  # written by a single process
        cpu = [cpu]
    if cpu and len(cpu) != ctx.world_size:
        warnings.warn(f"checkpoint of iteration {ckpt.get('iteration')} was written by "
                      f"{len(cpu)} process(es) and is resumed by {ctx.world_size}: random states "
                      f"not restored, so dropout masks differ from the uninterrupted run's",
                      RuntimeWarning, stacklevel=2)
        return
    if cpu:
        torch.set_rng_state(cpu[ctx.rank])
    if cuda and len(cuda) == ctx.world_size and cuda[ctx.rank] is not None \
            and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda[ctx.rank])


def _save_resume(path: Path, model: nn.Module, opt, prec: _Precision, step: int,
                 batch_size: int, fingerprint: str, history: list, ctx: DistContext,
                 runtime: dict) -> None:
    """Collective under DDP (every process hands over its RNG states); rank 0 writes."""
    cpu_rng = distributed.all_gather_objects(torch.get_rng_state())
    cuda_rng = distributed.all_gather_objects(
        torch.cuda.get_rng_state() if torch.cuda.is_available() else None)
    if ctx.is_main:
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scaler": prec.scaler.state_dict(), "iteration": step,
                           "fingerprint": fingerprint, "torch_rng": cpu_rng, "cuda_rng": cuda_rng,
                           "data_position": {"step": step, "samples_seen": step * batch_size},
                           "world_size": ctx.world_size, "history": history,
                           "runtime": runtime}, path)


def _to_device(batch: dict, device: torch.device, channels_last: bool):
    x = batch["image"].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, batch["label"].to(device, non_blocking=True)


def _optimizer_step(net: nn.Module, opt, micro_batches: list[dict], cfg: TrainConfig,
                    prec: _Precision, device: torch.device, it: int) -> float:
    """One optimizer step over this process's micro-batches; returns the global batch's loss.
    Each micro-batch back-propagates its loss sum over C = (label positions of one sample) x
    batch_size / (processes x micro-batches), a mean-sized value (safe for float16) that is the
    same constant on every process and micro-batch, uneven shares included. Once the gradients
    are summed (and averaged over the processes by DDP) they are rescaled by world_size * C /
    (labelled pixels of the global batch), which makes them the gradient of the global batch's
    mean loss whatever the split (exactly so when every sample has the same shape, as
    fixed-size training crops do)."""
    ctx = distributed.current()
    opt.zero_grad(set_to_none=True)
    stats = torch.zeros(2, dtype=torch.float64)
    norm = 1.0
    for j, batch in enumerate(micro_batches):
        x, y = _to_device(batch, device, cfg.channels_last)
        last = j == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not ctx.enabled else net.no_sync()
        with sync:
            with prec.autocast(device):
                out = net(x) if cfg.loss_at == "input" else net(x, upsample=False)
            total, count = loss_sum(out, y)
            first = out[0] if isinstance(out, (list, tuple)) else out
            norm = first.shape[-2] * first.shape[-1] * cfg.batch_size / (
                ctx.world_size * len(micro_batches))
            prec.scaler.scale(total / norm).backward()
        stats += torch.tensor([float(total.detach()), count], dtype=torch.float64)
    total_sum, total_count = distributed.all_reduce_sum(stats).tolist()
    loss = total_sum / max(total_count, 1.0)
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss became {loss} at iteration {it} (lr "
                                 f"{opt.param_groups[0]['lr']:.3g}); lower the learning rate")
    prec.scaler.unscale_(opt)
    factor = ctx.world_size * norm / max(total_count, 1.0)
    for g in opt.param_groups:
        for p in g["params"]:
            if p.grad is not None:
                p.grad.mul_(factor)
    prec.scaler.step(opt)
    prec.scaler.update()
    return loss


def _prepare_model(model: nn.Module, cfg: TrainConfig, device: torch.device,
                   resume: dict | None) -> tuple[nn.Module, list]:
    """Model on the device in training mode, batch norm per the recipe, resumed weights loaded;
    returns (the model DDP-wrapped when distributed, the parameters frozen here)."""
    model.to(device).train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    set_bn_momentum(model, cfg.bn_momentum)
    frozen = freeze_batch_norm(model) if cfg.batch_norm == "frozen" else []
    if resume is not None:
        model.load_state_dict(resume["model"])
    net = distributed.wrap(model, device, cfg.sync_batch_norm and cfg.batch_norm == "finetune")
    return net, frozen


def _loader(dataset: Dataset, cfg: TrainConfig, seed: int, start: int, num_workers: int,
            ctx: DistContext, device: torch.device) -> DataLoader:
    # The loader's own generator keeps DataLoader seeding off torch's global RNG (dropout uses it).
    sampler = _StepBatches(len(dataset), cfg.batch_size, seed, start, cfg.iterations,
                           cfg.accumulate_steps, ctx)
    return DataLoader(_StepSamples(dataset, seed), batch_sampler=sampler,
                      generator=torch.Generator().manual_seed(seed),
                      **loader_options(num_workers, device))


def train(model: nn.Module, dataset: Dataset, cfg: TrainConfig, device: torch.device, *,
          seed: int = 0, run_key: str = "", num_workers: int | str = 0,
          checkpoint_path: Path | None = None, log_metrics: MetricLogger | None = None,
          progress: bool = True) -> TrainResult:
    """Train ``model`` in place for ``cfg.iterations`` optimizer steps (under torchrun: with
    DistributedDataParallel, this process taking its share of every global batch).

    With ``checkpoint_path``, a checkpoint is written there atomically (by rank 0) every
    ``cfg.checkpoint_every`` steps; a later call with the same path, config, seed and run_key
    resumes from it. Metrics go to ``log_metrics(step, values)`` on rank 0 only.
    ``num_workers``: DataLoader workers, or "auto" (``runtime.loader_workers``).
    """
    if len(dataset) == 0:
        raise ValueError("training dataset is empty")
    ctx, device = distributed.setup(device)
    seed_everything(seed + ctx.rank)  # dropout masks differ between ranks, rank 0 as one process
    fp, prec = run_fingerprint(cfg, seed, run_key), _precision(cfg, device)
    resume = _read_resume(checkpoint_path, fp, cfg.iterations, prec.runtime(device))
    net, frozen = _prepare_model(model, cfg, device, resume)
    opt = make_optimizer(model, cfg)
    result = TrainResult()
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        if "scaler" in resume:
            prec.scaler.load_state_dict(resume["scaler"])
        _restore_rng(resume, ctx)
        result.resumed_from, result.history = resume["iteration"], resume["history"]
    micro = micro_steps(cfg.batch_size, cfg.accumulate_steps, ctx.world_size)
    try:
        with kernel_settings(device, cfg.deterministic), bn_momentum_per_step(model, micro):
            _run_loop(net, model, opt, prec, dataset, cfg, device, ctx, result,
                      dict(seed=seed, fp=fp, ckpt=checkpoint_path,
                           num_workers=loader_workers(num_workers, device, ctx.world_size),
                           log=log_metrics if ctx.is_main else None,
                           progress=progress and ctx.is_main, micro=micro))
    finally:
        distributed.unwrap_model(net)
        for p in frozen:
            p.requires_grad_(True)
    model.eval()
    return result


def _run_loop(net, model, opt, prec, dataset, cfg: TrainConfig, device, ctx: DistContext,
              result: TrainResult, run: dict) -> None:
    start = result.resumed_from
    micro = run["micro"]
    micro_batches = iter(_loader(dataset, cfg, run["seed"], start, run["num_workers"], ctx,
                                 device))
    bar = None
    if run["progress"]:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.iterations, initial=start, desc="train", unit="it", mininterval=2.0)
    t0 = time.perf_counter()
    running, n_running, loss = 0.0, 0, math.nan
    for it in range(start, cfg.iterations):
        lr = lr_at(cfg, it)
        set_group_lrs(opt, lr)
        batches = [next(micro_batches) for _ in range(micro)]
        loss = _optimizer_step(net, opt, batches, cfg, prec, device, it)
        running, n_running, step = running + loss, n_running + 1, it + 1
        if step % cfg.log_every == 0 or step == cfg.iterations:
            row = {"iteration": step, "loss": running / n_running, "lr": lr}
            result.history.append(row)
            running, n_running = 0.0, 0
            if run["log"]:
                run["log"](step, {"train_loss": row["loss"], "lr": lr})
        if run["ckpt"] is not None and step % cfg.checkpoint_every == 0 and step < cfg.iterations:
            _save_resume(run["ckpt"], model, opt, prec, step, cfg.batch_size, run["fp"],
                         result.history, ctx, prec.runtime(device))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
    if bar is not None:
        bar.close()
    if run["ckpt"] is not None and ctx.is_main:
        # Mark the run finished so a later call with the same settings starts afresh.
        atomic_torch_save({"iteration": cfg.iterations, "fingerprint": run["fp"],
                           "complete": True}, run["ckpt"])
    result.seconds = time.perf_counter() - t0
    result.final_loss = result.history[-1]["loss"] if result.history else loss
