"""Heads of the DeepLab family.

* ``V1Head``: fc6 (atrous k x k) - fc7 (1x1) - fc8 (1x1 classifier), DeepLab v1.
* ``ASPPv2``: parallel fc6-fc7-fc8 branches (VGG-16) or single atrous 3x3 classifiers (ResNet),
  one per rate, with their score maps summed (DeepLab v2).
* ``ASPP``: v3 ASPP (1x1 + three atrous 3x3 + image-level pooling, concat, 1x1 projection).
* ``Decoder``: v3+ decoder refining the encoder output with stride-4 low-level features.
* ``MSCFeatureBranches``: DeepLab-MSc two-layer MLPs on the image and pool1..pool4 outputs.

Atrous rates are stored as base rates (at the model's base output stride); ``set_rate_scale``
multiplies them in place when the output stride changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (ConvBNReLU, PooledBatchNorm2d, RFLayer, conv3x3_block, global_avg_pool,
                     init_classifier, init_weights, resize_bilinear, set_conv_geometry)


def _scaled_rate(rate: int, scale: float) -> int:
    r = rate * scale
    if abs(r - round(r)) > 1e-6 or round(r) < 1:
        raise ValueError(f"atrous rate {rate} x {scale} is not a positive integer")
    return int(round(r))


class V1Head(nn.Module):
    """fc6 (k x k conv, rate r) - ReLU - dropout - fc7 (1x1) - ReLU - dropout - fc8 (1x1)."""

    def __init__(self, cin: int, num_classes: int, kernel: int = 3, rate: int = 12,
                 channels: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.kernel, self.base_rate = kernel, rate
        self.fc6 = nn.Conv2d(cin, channels, kernel)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.fc8 = nn.Conv2d(channels, num_classes, 1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        init_weights(self)
        init_classifier(self.fc8)
        self.set_rate_scale(1.0)

    def set_rate_scale(self, scale: float) -> None:
        set_conv_geometry(self.fc6, dilation=_scaled_rate(self.base_rate, scale))

    def fc_pairs(self) -> list[tuple[nn.Conv2d, nn.Conv2d]]:
        return [(self.fc6, self.fc7)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.relu(self.fc6(x), inplace=True))
        x = self.drop(F.relu(self.fc7(x), inplace=True))
        return self.fc8(x)

    def rf_layers(self) -> list[RFLayer]:
        return [(self.kernel, 1, self.fc6.dilation[0])]


class AtrousClassifier(nn.Module):
    """A single 3x3 atrous convolution straight to class scores (v2 ASPP branch on ResNet)."""

    def __init__(self, cin: int, num_classes: int, rate: int):
        super().__init__()
        self.base_rate = rate
        self.conv = nn.Conv2d(cin, num_classes, 3)
        init_classifier(self.conv)
        self.set_rate_scale(1.0)

    def set_rate_scale(self, scale: float) -> None:
        set_conv_geometry(self.conv, dilation=_scaled_rate(self.base_rate, scale))

    def fc_pairs(self) -> list:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def rf_layers(self) -> list[RFLayer]:
        return [(3, 1, self.conv.dilation[0])]


class ASPPv2(nn.Module):
    """DeepLab v2 ASPP: one branch per rate, score maps summed."""

    def __init__(self, cin: int, num_classes: int, rates: tuple[int, ...] = (6, 12, 18, 24),
                 hidden: int | None = 1024, dropout: float = 0.5):
        super().__init__()
        self.rates = tuple(rates)
        if hidden:
            self.branches = nn.ModuleList(
                V1Head(cin, num_classes, 3, r, hidden, dropout) for r in rates)
        else:
            self.branches = nn.ModuleList(AtrousClassifier(cin, num_classes, r) for r in rates)

    def set_rate_scale(self, scale: float) -> None:
        for b in self.branches:
            b.set_rate_scale(scale)

    def fc_pairs(self) -> list[tuple[nn.Conv2d, nn.Conv2d]]:
        return [p for b in self.branches for p in b.fc_pairs()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for b in self.branches[1:]:
            out = out + b(x)
        return out

    def rf_layers(self) -> list[RFLayer]:
        return max((b.rf_layers() for b in self.branches), key=lambda ls: ls[0][0] * ls[0][2])


class ImagePooling(nn.Module):
    """Image-level features: global average pool, 1x1 conv, BN, ReLU, bilinear upsampling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = PooledBatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(global_avg_pool(x))), inplace=True)
        return resize_bilinear(y, x.shape[-2:])


class ASPP(nn.Module):
    """DeepLab v3 ASPP (optionally with depthwise-separable atrous branches, as in v3+)."""

    def __init__(self, cin: int, channels: int = 256, rates: tuple[int, ...] = (6, 12, 18),
                 image_pooling: bool = True, separable: bool = False, dropout: float = 0.1):
        super().__init__()
        self.base_rates = tuple(rates)
        self.conv1x1 = ConvBNReLU(cin, channels, 1)
        self.atrous = nn.ModuleList(conv3x3_block(cin, channels, r, separable) for r in rates)
        self.pool = ImagePooling(cin, channels) if image_pooling else None
        n = 1 + len(rates) + (1 if image_pooling else 0)
        self.project = ConvBNReLU(n * channels, channels, 1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_channels = channels
        init_weights(self)

    def set_rate_scale(self, scale: float) -> None:
        for m, r in zip(self.atrous, self.base_rates):
            conv = m.depthwise if hasattr(m, "depthwise") else m[0]
            set_conv_geometry(conv, dilation=_scaled_rate(r, scale))

    @property
    def rates(self) -> tuple[int, ...]:
        return tuple((m.depthwise if hasattr(m, "depthwise") else m[0]).dilation[0] for m in self.atrous)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.conv1x1(x)] + [m(x) for m in self.atrous]
        if self.pool is not None:
            feats.append(self.pool(x))
        return self.drop(self.project(torch.cat(feats, 1)))

    def rf_layers(self) -> list[RFLayer]:
        return [(3, 1, max(self.rates))] if self.rates else []


class V3Head(nn.Module):
    """ASPP followed by a 1x1 classifier (DeepLab v3)."""

    def __init__(self, cin: int, num_classes: int, **aspp_kwargs: object):
        super().__init__()
        self.aspp = ASPP(cin, **aspp_kwargs)
        self.classifier = nn.Conv2d(self.aspp.out_channels, num_classes, 1)
        init_classifier(self.classifier)

    def set_rate_scale(self, scale: float) -> None:
        self.aspp.set_rate_scale(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.aspp(x))

    def rf_layers(self) -> list[RFLayer]:
        return self.aspp.rf_layers()


class ClassifierHead(nn.Module):
    """A 1x1 classifier on the backbone output (DeepLab v3 cascade model)."""

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Conv2d(cin, num_classes, 1)
        init_classifier(self.classifier)

    def set_rate_scale(self, scale: float) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def rf_layers(self) -> list[RFLayer]:
        return []


class Decoder(nn.Module):
    """DeepLab v3+ decoder: low-level 1x1 projection, concat with the upsampled encoder output,
    ``convs`` 3x3 convs (the paper's choice: two; its Table 1 fixes one), 1x1 classifier. The
    output is at the low-level feature's stride (4)."""

    def __init__(self, enc_channels: int, low_channels: int, num_classes: int,
                 low_proj: int = 48, channels: int = 256, separable: bool = False,
                 align_corners: bool = False, convs: int = 2):
        super().__init__()
        if convs < 1:
            raise ValueError(f"decoder_convs = {convs}: expected at least one 3x3 convolution")
        self.align_corners = align_corners
        self.project = ConvBNReLU(low_channels, low_proj, 1)
        self.fuse = nn.Sequential(*(conv3x3_block(enc_channels + low_proj if k == 0 else channels,
                                                  channels, 1, separable) for k in range(convs)))
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        init_weights(self)
        init_classifier(self.classifier)

    def forward(self, enc: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        enc = resize_bilinear(enc, low.shape[-2:], self.align_corners)
        return self.classifier(self.fuse(torch.cat([enc, self.project(low)], 1)))

    def rf_layers(self) -> list[RFLayer]:
        return [(3, 1, 1)] * len(self.fuse)


class MSCFeatureBranches(nn.Module):
    """DeepLab-MSc: a two-layer MLP (3x3 conv 128, 1x1 conv 128) on the input image and on each of
    the first four max-pool outputs. The first conv subsamples to the score-map stride.

    The paper concatenates the 5 x 128 MLP features to the last feature map before the linear
    classifier; since that classifier is linear, this equals adding a per-branch 1x1 classifier's
    score map to the main score map, which is what is done here.
    """

    def __init__(self, tap_channels: tuple[int, ...], tap_strides: tuple[int, ...],
                 num_classes: int, output_stride: int = 8, channels: int = 128,
                 align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        self.branches = nn.ModuleList()
        for cin, s in zip(tap_channels, tap_strides):
            step = max(1, output_stride // s)
            self.branches.append(nn.Sequential(
                nn.Conv2d(cin, channels, 3, step, 1), nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True),
                nn.Conv2d(channels, num_classes, 1)))
        init_weights(self)
        for b in self.branches:
            init_classifier(b[-1])

    def forward(self, taps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        out = None
        for branch, t in zip(self.branches, taps):
            y = branch(t)
            if y.shape[-2:] != tuple(size):
                y = resize_bilinear(y, size, self.align_corners)
            out = y if out is None else out + y
        return out
