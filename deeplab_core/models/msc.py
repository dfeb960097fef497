"""Multi-scale inputs with max fusion (DeepLab v2).

The same network processes the image rescaled by each factor in ``scales``; the score maps are
bilinearly resized to the score-map size of the first scale and fused by a per-position maximum.
In training mode ``forward`` returns ``[fused, scale_1, scale_2, ...]``, each upsampled to the
input resolution (a loss is summed over the list); in eval mode only the fused logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .deeplab import DeepLab, aligns_corners, upsample_to


def _scaled_size(size: tuple[int, int], s: float) -> tuple[int, int]:
    return (max(1, int(round(size[0] * s))), max(1, int(round(size[1] * s))))


class MultiScaleInputs(nn.Module):
    def __init__(self, model: DeepLab, scales: tuple[float, ...] = (1.0, 0.75, 0.5)):
        super().__init__()
        if not scales:
            raise ValueError("scales must not be empty")
        self.model = model
        self.scales = tuple(float(s) for s in scales)

    @property
    def config(self):
        return self.model.config

    @property
    def output_stride(self) -> int:
        return self.model.output_stride

    def score_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[fused, per-scale...] score maps, all at the first scale's score-map size."""
        maps = []
        for s in self.scales:
            xs = x if s == 1.0 else F.interpolate(x, size=_scaled_size(x.shape[-2:], s),
                                                  mode="bilinear", align_corners=False)
            maps.append(self.model.score_map(xs))
        size = maps[0].shape[-2:]
        maps = [upsample_to(m, size, aligns_corners(self)) for m in maps]
        fused = maps[0]
        for m in maps[1:]:
            fused = torch.maximum(fused, m)
        return [fused] + maps

    def score_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_maps(x)[0]

    def forward(self, x: torch.Tensor, upsample: bool = True):
        maps = self.score_maps(x) if self.training else [self.score_map(x)]
        if upsample:
            maps = [upsample_to(m, x.shape[-2:], aligns_corners(self)) for m in maps]
        return maps if self.training and len(self.scales) > 1 else maps[0]

    def set_output_stride(self, output_stride: int) -> None:
        self.model.set_output_stride(output_stride)

    def rf_layers(self, pool_2x2: bool = False):
        return self.model.rf_layers(pool_2x2=pool_2x2)
