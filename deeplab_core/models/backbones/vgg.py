"""VGG-16 re-purposed for dense prediction as in DeepLab v1.

The module keeps torchvision's ``features.N`` indexing, so ImageNet convolution weights load
by name. At output stride 8 (the DeepLab setting) pool4 and pool5 do not subsample (3x3 kernel,
stride 1, pad 1, as in the released DeepLab prototxt) and the conv5 layers run at rate 2; fc6/fc7
live in the head as convolutions.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import RFLayer, init_weights, set_conv_geometry

_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
POOL_INDICES = (4, 9, 16, 23, 30)
CONV5_INDICES = (24, 26, 28)
LOW_LEVEL_INDEX = 15  # ReLU after conv3_3: stride 4, 256 channels


class VGG16(nn.Module):
    """VGG-16 convolutional trunk (conv1_1 .. pool5) with a configurable output stride (8/16/32)."""

    def __init__(self, output_stride: int = 8, width_mult: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(3, 2, 1))
            else:
                cout = max(8, int(round(v * width_mult)))
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.out_channels = cin
        self.low_level_channels = self.features[LOW_LEVEL_INDEX - 1].out_channels
        self.tap_channels = (3,) + tuple(self.features[i - 2].out_channels for i in POOL_INDICES[:4])
        init_weights(self)
        self.set_output_stride(output_stride)

    def set_output_stride(self, output_stride: int) -> None:
        if output_stride not in (8, 16, 32):
            raise ValueError(f"VGG-16 supports output stride 8, 16 or 32, got {output_stride}")
        pool4, pool5 = self.features[POOL_INDICES[3]], self.features[POOL_INDICES[4]]
        pool4.stride = 1 if output_stride == 8 else 2
        pool5.stride = 2 if output_stride == 32 else 1
        for i in CONV5_INDICES:
            set_conv_geometry(self.features[i], dilation=2 if output_stride == 8 else 1)
        self.output_stride = output_stride

    def tap_strides(self) -> tuple[int, ...]:
        """Strides of the image and of pool1..pool4 outputs (the DeepLab-MSc taps)."""
        strides, cur = [1], 1
        for i in POOL_INDICES[:4]:
            cur *= self.features[i].stride if isinstance(self.features[i].stride, int) else self.features[i].stride[0]
            strides.append(cur)
        return tuple(strides)

    def forward(self, x: torch.Tensor, taps: bool = False) -> dict[str, torch.Tensor | list]:
        out: dict[str, torch.Tensor | list] = {}
        tap_list = [x] if taps else []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == LOW_LEVEL_INDEX:
                out["low_level"] = x
            if taps and i in POOL_INDICES[:4]:
                tap_list.append(x)
        out["out"] = x
        if taps:
            out["taps"] = tap_list
        return out

    def rf_layers(self, pool_2x2: bool = False) -> list[RFLayer]:
        """Receptive-field chain. ``pool_2x2`` uses VGG-16's original 2x2 pools; a pool whose
        subsampling was removed is then dilated by the current rate (hole algorithm)."""
        layers: list[RFLayer] = []
        rate = 1
        for i, m in enumerate(self.features):
            if isinstance(m, nn.Conv2d):
                layers.append((3, 1, m.dilation[0]))
            elif isinstance(m, nn.MaxPool2d):
                s = m.stride if isinstance(m.stride, int) else m.stride[0]
                if pool_2x2:
                    layers.append((2, s, 1 if s == 2 else rate))
                    if s == 1:
                        rate *= 2
                else:
                    layers.append((3, s, 1))
        return layers
