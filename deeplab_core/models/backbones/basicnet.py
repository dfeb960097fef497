"""A small ResNet-style trunk of dense 3x3 BasicBlocks for CPU training from scratch.

Depthwise convolutions save FLOPs but run slowly per FLOP on CPUs and, at small widths, learn
slowly from random initialisation; a narrow trunk of dense 3x3 convolutions trains faster there.
Layout: a stride-2 stem of two 3x3 convs, then four stages of BasicBlocks (two 3x3 convs with an
identity or 1x1 projection shortcut), each halving the resolution (strides 4, 8, 16, 32). Output
stride 8/16/32 by running the later stages at stride 1 with atrous rates instead; the low-level
feature for the decoder is the stem output (stride 2) or the first stage output (stride 4).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import BlockTrunk, ConvBNReLU, RFLayer, init_weights, set_conv_geometry

# (channels, blocks) of the four stages
STAGES = ((32, 1), (64, 2), (96, 2), (128, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.nominal_stride = stride
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def set_geometry(self, stride: int, dilation: int) -> None:
        # the first conv carries the stride (its rate is the one before this unit), the second
        # runs at the rate after it, as in the bottleneck ResNet's atrous schedule
        set_conv_geometry(self.conv1, stride, dilation)
        set_conv_geometry(self.conv2, 1, dilation * (self.nominal_stride // stride))
        if self.shortcut is not None:
            self.shortcut[0].stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class BasicNet(BlockTrunk):
    def __init__(self, output_stride: int = 16, width_mult: float = 1.0,
                 stages: tuple[tuple[int, int], ...] = STAGES, low_level_stride: int = 4):
        super().__init__()
        if low_level_stride not in (2, 4):
            raise ValueError("low_level_stride must be 2 or 4")
        if len(stages) != 4:
            raise ValueError("BasicNet has four stages")
        widths = [max(8, int(round(c * width_mult / 8)) * 8) for c, _ in stages]
        c0 = max(8, int(round(24 * width_mult / 8)) * 8)
        self.stem = nn.Sequential(ConvBNReLU(3, c0, 3, stride=2), ConvBNReLU(c0, c0, 3))
        blocks: list[BasicBlock] = []
        cin = c0
        self.low_level_index = -1
        self.low_level_channels = c0
        for s, (cout, (_, n)) in enumerate(zip(widths, stages)):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if i == 0 else 1))
                cin = cout
            if s == 0 and low_level_stride == 4:
                self.low_level_index = len(blocks) - 1
                self.low_level_channels = cout
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = cin
        init_weights(self)
        for b in self.blocks:  # zero-init the last BN of each residual branch
            nn.init.zeros_(b.bn2.weight)
        self.set_output_stride(output_stride)

    def rf_layers(self, **_: object) -> list[RFLayer]:
        layers: list[RFLayer] = [(3, 2, 1), (3, 1, 1)]
        for b in self.blocks:
            layers.append((3, b.conv1.stride[0], b.conv1.dilation[0]))
            layers.append((3, 1, b.conv2.dilation[0]))
        return layers
