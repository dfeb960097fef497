"""Aligned Xception-65 (DeepLab v3+ variant).

Entry flow (3 blocks), middle flow (16 blocks), exit flow (2 blocks). Every max-pool of the
original Xception is replaced by a depthwise-separable convolution with stride 2. Output stride
8/16/32 is set by atrous convolution: once the target stride is reached, later strided units run
at stride 1 and the rate of the following units is multiplied by that stride.

Two placements of the activations, over the same parameters (``relu_placement``):

* ``"paper"``: as the v3+ paper's figure describes it, BatchNorm + ReLU after every 3x3 depthwise
  convolution; ReLU after the pointwise BatchNorm of a block's first two separable convolutions
  and after the residual sum (the last exit-flow block, without residual: after all three).
* ``"tf"``: the network of DeepLab's TensorFlow code, which the public ImageNet checkpoint (and
  timm's ``xception65``) was trained as: in every block but the last, a ReLU before each of the
  three separable convolutions, none inside them (depthwise -> BN -> pointwise -> BN), and the
  block's un-activated input (or its 1x1 conv + BN shortcut) added to the result with no ReLU
  after the sum; the last exit-flow block has ReLU after both BatchNorms of each separable
  convolution and no residual. BatchNorm epsilon is 1e-3 (TensorFlow's) instead of 1e-5.

Both tap the stride-4 low-level feature at the same point: the ReLU output that enters the third
separable convolution of entry block 2 (timm's ``blocks.1.stack.act3``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvBNReLU, RFLayer, SeparableConv2d, init_weights, stride_rate_schedule


RELU_PLACEMENTS = ("paper", "tf")
_BN_EPS = {"paper": 1e-5, "tf": 1e-3}


class XceptionBlock(nn.Module):
    """Three separable convs; the last may subsample. Skip: 'conv' (1x1 + BN), 'sum' or 'none'.

    ``pre_relu`` (the TensorFlow placement of a block with a skip): ReLU before each separable
    conv instead of inside it, and none after the residual sum."""

    def __init__(self, cin: int, depths: tuple[int, int, int], stride: int = 1, skip: str = "conv"):
        super().__init__()
        self.nominal_stride = stride
        self.sep1 = SeparableConv2d(cin, depths[0], 3)
        self.sep2 = SeparableConv2d(depths[0], depths[1], 3)
        self.sep3 = SeparableConv2d(depths[1], depths[2], 3, stride, last_relu=skip == "none")
        self.skip_type = skip
        self.skip = None
        if skip == "conv":
            self.skip = nn.Sequential(nn.Conv2d(cin, depths[2], 1, stride, bias=False),
                                      nn.BatchNorm2d(depths[2]))
        elif skip == "sum" and (cin != depths[2] or stride != 1):
            raise ValueError("a 'sum' skip needs equal channels and stride 1")
        self.out_channels = depths[2]
        self.pre_relu = False

    def set_relu_placement(self, placement: str) -> None:
        self.pre_relu = placement == "tf" and self.skip_type != "none"
        for sep in (self.sep1, self.sep2, self.sep3):
            sep.inner_relu = not self.pre_relu
        self.sep1.last_relu = self.sep2.last_relu = not self.pre_relu
        self.sep3.last_relu = self.skip_type == "none"

    def set_geometry(self, stride: int, rates: tuple[int, int, int]) -> None:
        self.sep1.set_geometry(1, rates[0])
        self.sep2.set_geometry(1, rates[1])
        self.sep3.set_geometry(stride, rates[2])
        if self.skip is not None:
            self.skip[0].stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pre_relu:
            y = self.sep2(F.relu(self.sep1(F.relu(x)), inplace=True))
            mid = F.relu(y, inplace=True)
            y = self.sep3(mid)
            return y + (self.skip(x) if self.skip is not None else x), mid
        y = self.sep1(x)
        mid = self.sep2(y)
        y = self.sep3(mid)
        if self.skip_type == "conv":
            y = F.relu(y + self.skip(x), inplace=True)
        elif self.skip_type == "sum":
            y = F.relu(y + x, inplace=True)
        return y, mid

    def rf_layers(self) -> list[RFLayer]:
        return [(3, s.depthwise.stride[0], s.depthwise.dilation[0]) for s in (self.sep1, self.sep2, self.sep3)]


class Xception65(nn.Module):
    def __init__(self, output_stride: int = 16, multi_grid: tuple[int, int, int] = (1, 1, 1),
                 middle_blocks: int = 16, width_mult: float = 1.0, relu_placement: str = "paper"):
        super().__init__()

        def c(v: int) -> int:
            return max(8, int(round(v * width_mult)))

        self.conv1 = ConvBNReLU(3, c(32), 3, stride=2)
        self.conv2 = ConvBNReLU(c(32), c(64), 3)
        self.entry = nn.ModuleList([
            XceptionBlock(c(64), (c(128),) * 3, 2),
            XceptionBlock(c(128), (c(256),) * 3, 2),
            XceptionBlock(c(256), (c(728),) * 3, 2),
        ])
        self.middle = nn.ModuleList([XceptionBlock(c(728), (c(728),) * 3, 1, "sum")
                                     for _ in range(middle_blocks)])
        self.exit = nn.ModuleList([
            XceptionBlock(c(728), (c(728), c(1024), c(1024)), 2),
            XceptionBlock(c(1024), (c(1536), c(1536), c(2048)), 1, "none"),
        ])
        self.out_channels = c(2048)
        self.low_level_channels = c(256)  # entry block2, before its strided conv (stride 4)
        self.multi_grid = tuple(multi_grid)
        init_weights(self)
        self.set_output_stride(output_stride)
        self.set_relu_placement(relu_placement)

    def set_relu_placement(self, placement: str) -> None:
        """Switch between the paper's and TensorFlow's activation placement (module docstring)
        in place; parameters and buffers are untouched, BatchNorm epsilon follows."""
        if placement not in RELU_PLACEMENTS:
            raise ValueError(f"relu_placement must be one of {', '.join(RELU_PLACEMENTS)}, "
                             f"got {placement!r}")
        for unit in self._units():
            unit.set_relu_placement(placement)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = _BN_EPS[placement]
        self.relu_placement = placement

    def _units(self) -> list[XceptionBlock]:
        return list(self.entry) + list(self.middle) + list(self.exit)

    def set_output_stride(self, output_stride: int, multi_grid: tuple[int, ...] | None = None) -> None:
        if output_stride not in (8, 16, 32):
            raise ValueError(f"Xception-65 supports output stride 8, 16 or 32, got {output_stride}")
        if multi_grid is not None:
            self.multi_grid = tuple(multi_grid)
        units = self._units()
        plan = stride_rate_schedule([u.nominal_stride for u in units], output_stride, start_stride=2)
        for k, (unit, (stride, rate)) in enumerate(zip(units, plan)):
            grid = self.multi_grid if k == len(units) - 1 else (1, 1, 1)
            unit.set_geometry(stride, tuple(rate * g for g in grid))
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor, taps: bool = False) -> dict[str, torch.Tensor]:
        x = self.conv2(self.conv1(x))
        x, _ = self.entry[0](x)
        x, low = self.entry[1](x)
        x, _ = self.entry[2](x)
        for unit in self.middle:
            x, _ = unit(x)
        for unit in self.exit:
            x, _ = unit(x)
        return {"out": x, "low_level": low}

    def rf_layers(self, **_: object) -> list[RFLayer]:
        layers: list[RFLayer] = [(3, 2, 1), (3, 1, 1)]
        for unit in self._units():
            layers += unit.rf_layers()
        return layers
