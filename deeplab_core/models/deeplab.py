"""The DeepLab model: backbone + head [+ v3+ decoder] [+ DeepLab-MSc branches]."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
from torch import nn

from .layers import RFLayer, resize_bilinear


def upsample_to(x: torch.Tensor, size: tuple[int, int] | torch.Size,
                align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize to ``size``, a no-op when it already matches. ``align_corners`` is the
    model's convention (``ArchSpec.align_corners``; True for the papers' models)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return resize_bilinear(x, size, align_corners)


def aligns_corners(model: nn.Module) -> bool:
    """The upsampling convention of a (possibly wrapped) model's architecture; False for
    models that are not DeepLab models."""
    try:
        return bool(getattr(unwrap(model).config, "align_corners", False))
    except TypeError:
        return False


class DeepLab(nn.Module):
    """``forward(x)`` returns logits at the input resolution; ``score_map(x)`` the raw score map
    at the network's output stride (stride 4 with the v3+ decoder)."""

    def __init__(self, config: Any, backbone: nn.Module, head: nn.Module,
                 decoder: nn.Module | None = None, msc_branches: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.head = head
        self.decoder = decoder
        self.msc_branches = msc_branches
        self.base_output_stride = config.output_stride

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x, taps=self.msc_branches is not None)
        y = self.head(feats["out"])
        if self.decoder is not None:
            y = self.decoder(y, feats["low_level"])
        if self.msc_branches is not None:
            y = y + self.msc_branches(feats["taps"], y.shape[-2:])
        return y

    def forward(self, x: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        y = self.score_map(x)
        return upsample_to(y, x.shape[-2:], aligns_corners(self)) if upsample else y

    def set_output_stride(self, output_stride: int) -> None:
        self.backbone.set_output_stride(output_stride)
        self.head.set_rate_scale(self.base_output_stride / output_stride)

    def rf_layers(self, pool_2x2: bool = False) -> list[RFLayer]:
        """(kernel, stride, dilation) chain of the longest path. With the v3+ decoder the encoder
        output is bilinearly upsampled (a 2-tap kernel at the output stride) to stride 4, where the
        decoder convolutions run (a fractional stride 4 / output_stride)."""
        layers = self.backbone.rf_layers(pool_2x2=pool_2x2) + self.head.rf_layers()
        if self.decoder is not None:
            layers.append((2, Fraction(4, self.output_stride), 1))
            layers += self.decoder.rf_layers()
        return layers

    @property
    def has_image_pooling(self) -> bool:
        return any(type(m).__name__ == "ImagePooling" for m in self.head.modules())


def unwrap(model: nn.Module) -> DeepLab:
    """The ``DeepLab`` inside a (possibly multi-scale-wrapped) model."""
    seen = model
    while not isinstance(seen, DeepLab):
        inner = getattr(seen, "model", None) or getattr(seen, "module", None)
        if inner is None:
            raise TypeError(f"{type(model).__name__} does not contain a DeepLab model")
        seen = inner
    return seen


def set_output_stride(model: nn.Module, output_stride: int) -> nn.Module:
    """Change the output stride in place (e.g. train at 16, evaluate at 8) without touching the
    weights: backbone strides become atrous rates and head rates scale with base_stride / stride
    (v3 ASPP rates (6, 12, 18) at OS16 become (12, 24, 36) at OS8). Returns the model."""
    unwrap(model).set_output_stride(output_stride)
    return model
