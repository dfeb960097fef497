"""MobileNetV2 trunk with a width multiplier, used by the ``micro`` CPU preset.

The final 1x1 expansion to 1280 channels is dropped (as in DeepLab's MobileNetV2 feature
extractor). Output stride 8/16/32 by atrous depthwise convolutions; the low-level feature for the
decoder is the output of the stride-4 stage.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import BlockTrunk, ConvBNReLU, RFLayer, init_weights, set_conv_geometry

# expansion t, channels c, repeats n, first stride s
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
            (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.nominal_stride = stride
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, 1, relu6=True))
        self._dw_index = len(layers)
        layers += [ConvBNReLU(hidden, hidden, 3, stride, groups=hidden, relu6=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    @property
    def dw(self) -> ConvBNReLU:
        return self.conv[self._dw_index]

    def set_geometry(self, stride: int, dilation: int) -> None:
        set_conv_geometry(self.dw.conv, stride, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y


class MobileNetV2(BlockTrunk):
    def __init__(self, output_stride: int = 16, width_mult: float = 1.0,
                 settings: tuple[tuple[int, int, int, int], ...] = SETTINGS,
                 low_level_stride: int = 4):
        super().__init__()
        cin = make_divisible(32 * width_mult)
        self.stem = ConvBNReLU(3, cin, 3, stride=2, relu6=True)
        blocks: list[InvertedResidual] = []
        if low_level_stride not in (2, 4):
            raise ValueError("low_level_stride must be 2 or 4")
        self.low_level_index = -1
        stride = 2
        for t, c, n, s in settings:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            stride *= s
            if stride == low_level_stride:
                self.low_level_index = len(blocks) - 1
                self.low_level_channels = cout
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = cin
        init_weights(self)
        self.set_output_stride(output_stride)

    def rf_layers(self, **_: object) -> list[RFLayer]:
        return [(3, 2, 1)] + [(3, b.dw.conv.stride[0], b.dw.conv.dilation[0]) for b in self.blocks]
