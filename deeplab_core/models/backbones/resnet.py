"""ResNet-50/101 (bottleneck, torchvision parameter layout) with atrous output stride control.

Output stride 8/16/32 is set by running the later blocks at stride 1 and multiplying their atrous
rate instead (``set_output_stride``). Multi-grid unit rates scale the rates of the three units of
block4 (and of the cascaded blocks): at OS16 block4 has base rate 2, so Multi_Grid (1, 2, 4) gives
rates (2, 4, 8). DeepLab v3's cascade appends blocks 5..7 (``layer5``..``layer7``), replicas of
block4 whose base rate doubles at each block.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import RFLayer, init_weights, set_conv_geometry

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def set_geometry(self, stride: int, dilation: int) -> None:
        set_conv_geometry(self.conv2, stride, dilation)
        if self.downsample is not None:
            self.downsample[0].stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_layer(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
    downsample = None
    if inplanes != planes * 4:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, 2, bias=False),
                                   nn.BatchNorm2d(planes * 4))
    units = [Bottleneck(inplanes, planes, 2, 1, downsample)]
    units += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*units)


class ResNet(nn.Module):
    """Bottleneck ResNet trunk: conv1/bn1/maxpool, layer1..layer4 [, layer5..layer7 cascade]."""

    def __init__(self, depth: int | tuple[int, int, int, int] = 101, output_stride: int = 16,
                 multi_grid: tuple[int, ...] = (1, 1, 1), cascade_blocks: int = 0,
                 width: int = 64):
        super().__init__()
        blocks = DEPTHS[depth] if isinstance(depth, int) else tuple(depth)
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = width
        for i, (n, mult) in enumerate(zip(blocks, (1, 2, 4, 8)), start=1):
            setattr(self, f"layer{i}", _make_layer(inplanes, width * mult, n))
            inplanes = width * mult * 4
        self.cascade_blocks = cascade_blocks
        for i in range(cascade_blocks):
            setattr(self, f"layer{5 + i}", _make_layer(inplanes, width * 8, blocks[3]))
        self.out_channels = inplanes
        self.low_level_channels = width * 4
        init_weights(self)
        self.multi_grid = tuple(multi_grid)
        self.set_output_stride(output_stride)

    @property
    def layer_names(self) -> list[str]:
        return [f"layer{i}" for i in range(1, 5 + self.cascade_blocks)]

    def set_output_stride(self, output_stride: int, multi_grid: tuple[int, ...] | None = None) -> None:
        """Set strides and atrous rates in place; weights are untouched."""
        if output_stride not in (8, 16, 32):
            raise ValueError(f"ResNet supports output stride 8, 16 or 32, got {output_stride}")
        if multi_grid is not None:
            self.multi_grid = tuple(multi_grid)
        cur, rate = 4, 1
        self.layer_rates: dict[str, tuple[int, ...]] = {}
        for i, name in enumerate(self.layer_names, start=1):
            layer = getattr(self, name)
            nominal = 1 if i == 1 else 2
            if cur * nominal <= output_stride:
                stride = nominal
                cur *= nominal
            else:
                stride = 1
                rate *= nominal
            grid = self.multi_grid if i >= 4 and set(self.multi_grid) != {1} else (1,) * len(layer)
            if len(grid) != len(layer):
                raise ValueError(f"multi_grid {grid} needs {len(layer)} entries for {name}")
            rates = tuple(rate * g for g in grid)
            for j, unit in enumerate(layer):
                unit.set_geometry(stride if j == 0 else 1, rates[j])
            self.layer_rates[name] = rates
        if cur != output_stride:
            raise ValueError(f"output stride {output_stride} is not reachable with this ResNet")
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor, taps: bool = False) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        out = {"low_level": x}
        for name in self.layer_names[1:]:
            x = getattr(self, name)(x)
        out["out"] = x
        return out

    def rf_layers(self, **_: object) -> list[RFLayer]:
        layers: list[RFLayer] = [(7, 2, 1), (3, 2, 1)]
        for name in self.layer_names:
            for unit in getattr(self, name):
                layers.append((3, unit.conv2.stride[0], unit.conv2.dilation[0]))
        return layers
