"""Theoretical receptive fields, parameter counts and the valid-weight statistics of atrous
filters (DeepLab v3, Figure 4)."""

from __future__ import annotations

import pathlib
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .layers import RFLayer, rf_of


def _meta_model(preset: str, num_classes: int = 21, **overrides: object) -> nn.Module:
    from .presets import build_model
    with torch.device("meta"):
        return build_model(preset, num_classes=num_classes, **overrides)


def receptive_field(model_or_preset: nn.Module | str | Iterable[RFLayer], pool_2x2: bool = False,
                    **overrides: object) -> int:
    """Theoretical receptive field (input pixels) of the longest convolutional path.

    Accepts a model, a preset name (built on the meta device, no memory used) or a chain of
    (kernel, stride, dilation). Image-level pooling (v3 ASPP), whose field is the whole image, is
    not counted. ``pool_2x2`` evaluates VGG-16 with its original 2x2 max-pools (pools that no
    longer subsample are dilated, as in the hole algorithm), the convention of the v1 paper's
    "convolutional mode" figures (404 for the 7x7 fc6, 308 for the 4x4 fc6 at rate 4).
    """
    if isinstance(model_or_preset, str):
        model_or_preset = _meta_model(model_or_preset, **overrides)
    if isinstance(model_or_preset, nn.Module):
        return rf_of(model_or_preset.rf_layers(pool_2x2=pool_2x2))
    return rf_of(model_or_preset)


def count_parameters(model_or_preset: nn.Module | str, num_classes: int = 21,
                     trainable_only: bool = False, **overrides: object) -> int:
    """Number of parameters; a preset name is built on the meta device (instant, no memory)."""
    model = (_meta_model(model_or_preset, num_classes, **overrides)
             if isinstance(model_or_preset, str) else model_or_preset)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def valid_weight_counts(size: int, rate: int, kernel: int = 3) -> np.ndarray:
    """(size, size) array: how many taps of a k x k filter at ``rate`` fall inside a size x size
    map (zero padding elsewhere), for the filter centred at each position."""
    offsets = (np.arange(kernel) - kernel // 2) * rate
    pos = np.arange(size)[:, None] + offsets[None, :]
    per_axis = ((pos >= 0) & (pos < size)).sum(1)
    return per_axis[:, None] * per_axis[None, :]


def valid_weight_fractions(rate: int, size: int = 65, kernel: int = 3) -> dict[str, float]:
    """Fractions of positions where all k*k weights, 4-6 weights (3x3 edges) or only the centre
    weight are applied to valid features."""
    counts = valid_weight_counts(size, rate, kernel)
    n = counts.size
    return {"all": float((counts == kernel * kernel).sum() / n),
            "4-6": float(((counts >= 4) & (counts <= 6)).sum() / n),
            "1": float((counts == 1).sum() / n)}


def valid_weight_curve(size: int = 65, rates: Iterable[int] | None = None,
                       kernel: int = 3) -> dict[str, np.ndarray]:
    rates = np.arange(1, size + 1) if rates is None else np.asarray(list(rates))
    rows = [valid_weight_fractions(int(r), size, kernel) for r in rates]
    return {"rate": rates, **{k: np.array([r[k] for r in rows]) for k in ("all", "4-6", "1")}}


def plot_valid_weights(path: str | pathlib.Path, size: int = 65, kernel: int = 3) -> pathlib.Path:
    """Write the Figure-4-style plot (normalised count vs atrous rate) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = valid_weight_curve(size, kernel=kernel)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(curve["rate"], curve["all"], label=f"{kernel * kernel} valid weights")
    ax.plot(curve["rate"], curve["4-6"], label="4-6 valid weights")
    ax.plot(curve["rate"], curve["1"], label="1 valid weight")
    ax.set_xlabel("atrous rate")
    ax.set_ylabel("normalised count")
    ax.set_title(f"{kernel}x{kernel} filter on a {size}x{size} feature map")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of Conv2d and Linear layers in one forward pass (forward hooks)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() * k

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total
