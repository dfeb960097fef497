"""The papers' training recipes as functions of a TrainConfig: learning-rate policies (poly, step,
linear warmup), optimizer parameter groups (classifier/head at a higher rate, biases at 2x, no
weight decay on norms and biases), batch-norm modes (frozen or fine-tuned) and the segmentation
loss at the input or at the score-map resolution."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from deeplab_core.classes import IGNORE_INDEX
from deeplab_core.config import TrainConfig

CLASSIFIER_ATTR = "is_classifier"  # set on the final class-score convolutions by the model


def poly_lr(base_lr: float, it: int, max_it: int, power: float) -> float:
    """DeepLab's 'poly' policy: lr = base_lr * (1 - it / max_it) ** power."""
    return base_lr * (1.0 - min(it, max_it) / max_it) ** power


def step_lr(base_lr: float, it: int, step_size: int, gamma: float) -> float:
    """Caffe's 'step' policy (DeepLab v1): lr = base_lr * gamma ** floor(it / step_size)."""
    return base_lr * gamma ** (it // step_size)


def scheduled_lr(base_lr: float, it: int, max_it: int, power: float, warmup: int = 0,
                 policy: str = "poly", step_size: int = 2000, gamma: float = 0.1) -> float:
    """The policy's rate at iteration ``it``, preceded by a linear ramp from base_lr / warmup up
    to base_lr over the first ``warmup`` iterations (0 = no warmup)."""
    if warmup > 0 and it < warmup:
        return base_lr * (it + 1) / warmup
    if policy == "poly":
        return poly_lr(base_lr, it, max_it, power)
    if policy == "step":
        return step_lr(base_lr, it, step_size, gamma)
    raise ValueError(f"unknown lr_policy {policy!r} (expected 'poly' or 'step')")


def lr_at(cfg: TrainConfig, it: int) -> float:
    """Base learning rate of iteration ``it`` under the config's policy and warmup."""
    return scheduled_lr(cfg.lr, it, cfg.iterations, cfg.poly_power, cfg.warmup_iters,
                        cfg.lr_policy, cfg.lr_step_size, cfg.lr_gamma)


def _norm_param_ids(model: nn.Module) -> set[int]:
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    return {id(p) for m in model.modules() if isinstance(m, norms) for p in m.parameters()}


def _head_param_ids(model: nn.Module, scope: str) -> set[int]:
    if scope == "classifier":
        return {id(p) for m in model.modules() if getattr(m, CLASSIFIER_ATTR, False)
                for p in m.parameters()}
    from deeplab_core.models.deeplab import unwrap

    try:
        backbone = unwrap(model).backbone
    except TypeError:  # not a DeepLab model: nothing is 'head'
        return set()
    body = {id(p) for p in backbone.parameters()}
    return {id(p) for p in model.parameters() if id(p) not in body}


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Trainable parameters in groups of equal (lr_mult, weight_decay), in model order. Each
    group carries 'name' and 'lr_mult' (its rate is lr_mult x the scheduled rate)."""
    norms, head = _norm_param_ids(model), _head_param_ids(model, cfg.head_lr_scope)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_norm, is_bias = id(p) in norms, name.endswith("bias") and id(p) not in norms
        mult = cfg.head_lr_mult if id(p) in head else 1.0
        mult *= cfg.bias_lr_mult if is_bias else 1.0
        decay = cfg.weight_decay
        if (is_norm and not cfg.norm_weight_decay) or (is_bias and not cfg.bias_weight_decay):
            decay = 0.0
        kind = "norm" if is_norm else "bias" if is_bias else "weight"
        key = (mult, decay)
        label = f"{'head' if id(p) in head else 'body'}.{kind}"
        g = groups.setdefault(key, {"params": [], "lr_mult": mult, "weight_decay": decay,
                                    "name": label})
        if label not in g["name"].split("+"):
            g["name"] += f"+{label}"
        g["params"].append(p)
    return list(groups.values())


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the papers' recipe) or AdamW (betas (momentum, 0.999)) over the
    config's parameter groups; weight decay is L2 for SGD and decoupled for AdamW."""
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (expected 'sgd' or 'adamw')")


def set_group_lrs(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_batch_norm(model: nn.Module) -> list[nn.Parameter]:
    """v2's frozen batch norm: running statistics used (eval mode) and the affine parameters fixed.
    Call after ``model.train()``; returns the parameters it froze (to thaw them afterwards)."""
    frozen = []
    for m in batch_norms(model):
        m.eval()
        for p in m.parameters():
            if p.requires_grad:
                p.requires_grad_(False)
                frozen.append(p)
    return frozen


def per_micro_batch_momentum(momentum: float, micro: int) -> float:
    """The running-statistics momentum m' whose ``micro`` updates decay the old statistics as
    one update of ``momentum`` does: (1 - m')^micro = 1 - momentum."""
    return 1.0 - (1.0 - momentum) ** (1.0 / micro)


@contextlib.contextmanager
def bn_momentum_per_step(model: nn.Module, micro: int) -> Iterator[None]:
    """Batch norms updated once per micro-batch keep the recipe's decay per optimizer step:
    v3's 0.9997 stays 0.9997 per step with 2 micro-batches (not 0.9997^2). Each micro-batch
    moves the statistics by per_micro_batch_momentum towards its own batch statistics (with
    equal micro-batch statistics, exactly one update of the recipe's momentum). Momenta are
    restored by module name afterwards (the modules may have been swapped meanwhile)."""
    saved = {name: m.momentum for name, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if micro > 1:
        for m in batch_norms(model):
            if m.momentum is not None:  # None: cumulative average, no decay to keep
                m.momentum = per_micro_batch_momentum(m.momentum, micro)
    try:
        yield
    finally:
        for name, m in model.named_modules():
            if name in saved:
                m.momentum = saved[name]


def set_bn_momentum(model: nn.Module, momentum: float | None) -> None:
    if momentum is not None:
        for m in batch_norms(model):
            m.momentum = momentum


def score_map_positions(size: int, cells: int) -> torch.Tensor:
    """Input rows (or columns) the ``cells`` score-map cells of a ``size``-pixel side sit over:
    cell i at stride * i (Caffe's label shrinking), the stride being the power of two nearest
    size / cells, clipped to the last pixel. For the papers' stride * k + 1 crops (321 and 513:
    41 cells at stride 8, 33 at stride 16) that is exactly i * (size - 1) / (cells - 1), the
    positions align_corners=True upsampling maps the cells back to; for other sizes (v1's 306:
    39 cells, the last one at 304) it is the cell's position in the network, at most one
    pixel from where Caffe's interpolating label shrink would read."""
    if not 1 <= cells <= size:
        raise ValueError(f"a score map of {cells} cells cannot sit over {size} pixels "
                         f"(expected 1 <= cells <= {size})")
    stride = 2 ** round(math.log2(size / cells))
    return torch.clamp(torch.arange(cells) * stride, max=size - 1)


def score_map_labels(target: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Labels (N, H, W) subsampled to a score map of ``size`` (h, w) at the pixels the cells sit
    over (``score_map_positions``): v1/v2's training against the score map."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    rows = score_map_positions(target.shape[-2], size[0]).to(target.device)
    cols = score_map_positions(target.shape[-1], size[1]).to(target.device)
    return target.index_select(-2, rows).index_select(-1, cols)


def loss_sum(outputs: torch.Tensor | list | tuple, target: torch.Tensor
             ) -> tuple[torch.Tensor, int]:
    """(sum of per-pixel cross-entropies, number of labelled pixels), ignoring label 255, with
    the labels subsampled to each output's size (``score_map_labels``). A list of outputs (multi-scale training) sums
    the losses; the count is that of the first output."""
    if isinstance(outputs, (list, tuple)):
        parts = [loss_sum(o, target) for o in outputs]
        return sum(p[0] for p in parts), parts[0][1]
    y = score_map_labels(target, outputs.shape[-2:])
    if outputs.is_cuda and torch.are_deterministic_algorithms_enabled():
        return _gathered_loss_sum(outputs.float(), y)
    total = F.cross_entropy(outputs.float(), y, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, int((y != IGNORE_INDEX).sum())


def _gathered_loss_sum(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """loss_sum's cross-entropy from log_softmax and gather, whose CUDA kernels are
    deterministic (nll_loss's CUDA sum is refused under torch.use_deterministic_algorithms)."""
    keep = y != IGNORE_INDEX
    logp = torch.log_softmax(logits, dim=1)
    picked = logp.gather(1, y.masked_fill(~keep, 0)[:, None])[:, 0]
    return -(picked * keep).sum(), int(keep.sum())


def segmentation_loss(outputs: torch.Tensor | list | tuple, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels (255 ignored); a list of outputs (multi-scale
    training) sums the losses."""
    total, count = loss_sum(outputs, target)
    return total / count if count else total * math.nan
