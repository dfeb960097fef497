"""Training loop: SGD with momentum (or AdamW), poly learning rate with an optional linear warmup, cross-entropy with the VOC ignore label,
periodic atomic checkpoints and resumption after an interruption."""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from deeplab_core.classes import IGNORE_INDEX
from deeplab_core.data.io import atomic_write_bytes

MetricLogger = Callable[[int, dict], None]


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


def poly_lr(base_lr: float, it: int, max_it: int, power: float) -> float:
    """DeepLab's 'poly' policy: lr = base_lr * (1 - it / max_it) ** power."""
    return base_lr * (1.0 - min(it, max_it) / max_it) ** power


def scheduled_lr(base_lr: float, it: int, max_it: int, power: float, warmup: int = 0) -> float:
    """Poly policy, preceded by a linear ramp from base_lr / warmup up to base_lr over the first
    ``warmup`` iterations (0 = no warmup, plain poly)."""
    if warmup > 0 and it < warmup:
        return base_lr * (it + 1) / warmup
    return poly_lr(base_lr, it, max_it, power)


def make_optimizer(params, settings: "TrainSettings") -> torch.optim.Optimizer:
    """SGD with momentum (the papers' recipe) or AdamW (betas (momentum, 0.999)); weight decay is
    L2 for SGD and decoupled for AdamW."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, betas=(settings.momentum, 0.999),
                                 weight_decay=settings.weight_decay)
    raise ValueError(f"unknown optimizer {settings.optimizer!r} (expected 'sgd' or 'adamw')")


def segmentation_loss(outputs: torch.Tensor | list | tuple, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ignoring label 255; a list of outputs (multi-scale training) sums the losses."""
    if isinstance(outputs, (list, tuple)):
        return sum(segmentation_loss(o, target) for o in outputs)
    return nn.functional.cross_entropy(outputs, target, ignore_index=IGNORE_INDEX)


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save that never leaves a truncated file behind (written aside, then swapped in)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


@dataclass
class TrainSettings:
    iterations: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    log_every: int = 20
    checkpoint_every: int = 100
    num_workers: int = 0
    amp: bool = False
    seed: int = 0
    run_key: str = ""  # e.g. a hash of the data and config; a resume only continues the same run
    optimizer: str = "sgd"  # sgd | adamw
    warmup_iters: int = 0   # linear lr warmup before the poly decay

    def fingerprint(self) -> str:
        """Identifies the run a checkpoint belongs to (a resume only continues the same run)."""
        keys = ("iterations", "batch_size", "lr", "momentum", "weight_decay", "poly_power", "seed",
                "run_key")
        d = {k: getattr(self, k) for k in keys}
        # left out at their defaults, so fingerprints of plain SGD runs stay as they were
        if self.optimizer != "sgd":
            d["optimizer"] = self.optimizer
        if self.warmup_iters:
            d["warmup_iters"] = self.warmup_iters
        blob = json.dumps(d, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0
    final_loss: float = math.nan


class _StepBatches(Sampler):
    """Batches of (sample index, step, slot) for steps start..stop-1. Step t's indices come from a
    generator seeded by (seed, t) alone, so a resumed run draws exactly the batches that the
    uninterrupted run would have drawn, whatever happened before."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.stop):
            idx = np.random.default_rng([self.seed & 0xFFFFFFFF, step]).integers(
                0, self.n, self.batch_size)
            yield [(int(i), step, slot) for slot, i in enumerate(idx)]


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


def train(model: nn.Module, dataset: Dataset, settings: TrainSettings, device: torch.device,
          checkpoint_path: Path | None = None, log_metrics: MetricLogger | None = None,
          progress: bool = True) -> TrainResult:
    """Train `model` in place for `settings.iterations` optimizer steps.

    If `checkpoint_path` is given, a checkpoint (model, optimizer, iteration, RNG state, history)
    is written there atomically every `checkpoint_every` steps; a later call with the same path and
    the same settings resumes from it instead of starting again.
    """
    if len(dataset) == 0:
        raise ValueError("training dataset is empty")
    seed_everything(settings.seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, settings)
    result = TrainResult()
    start_it = 0
    fp = settings.fingerprint()
    if checkpoint_path is not None and checkpoint_path.is_file():
        ckpt = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if ckpt.get("fingerprint") == fp and ckpt.get("iteration", 0) < settings.iterations:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            torch.set_rng_state(ckpt["torch_rng"])
            start_it = ckpt["iteration"]
            result.history = ckpt["history"]
            result.resumed_from = start_it
    use_amp = settings.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    # The loader's own generator keeps DataLoader seeding off torch's global RNG (dropout uses it).
    loader = DataLoader(_StepSamples(dataset, settings.seed),
                        batch_sampler=_StepBatches(len(dataset), settings.batch_size,
                                                   settings.seed, start_it, settings.iterations),
                        num_workers=settings.num_workers,
                        generator=torch.Generator().manual_seed(settings.seed))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=settings.iterations, initial=start_it, desc="train", unit="it",
                   mininterval=2.0)
    t0 = time.perf_counter()
    batches = iter(loader)
    running, n_running = 0.0, 0
    loss_val = math.nan
    for it in range(start_it, settings.iterations):
        lr = scheduled_lr(settings.lr, it, settings.iterations, settings.poly_power,
                          settings.warmup_iters)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = next(batches)
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            loss = segmentation_loss(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at iteration {it} (lr {lr:.3g}); "
                                     "lower the learning rate")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss_val = float(loss.detach())
        running += loss_val
        n_running += 1
        step = it + 1
        if step % settings.log_every == 0 or step == settings.iterations:
            row = {"iteration": step, "loss": running / n_running, "lr": lr}
            result.history.append(row)
            running, n_running = 0.0, 0
            if log_metrics:
                log_metrics(step, {"train_loss": row["loss"], "lr": lr})
        if checkpoint_path is not None and (step % settings.checkpoint_every == 0
                                            and step < settings.iterations):
            atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                               "iteration": step, "fingerprint": fp,
                               "torch_rng": torch.get_rng_state(),
                               "history": result.history}, checkpoint_path)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{lr:.2e}", refresh=False)
    if bar is not None:
        bar.close()
    if checkpoint_path is not None:
        # Mark the run finished so a later call with the same settings starts afresh.
        atomic_torch_save({"iteration": settings.iterations, "fingerprint": fp, "complete": True},
                          checkpoint_path)
    result.seconds = time.perf_counter() - t0
    result.final_loss = result.history[-1]["loss"] if result.history else loss_val
    model.eval()
    return result
