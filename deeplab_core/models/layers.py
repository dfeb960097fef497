"""Small building blocks shared by the backbones and heads."""

from __future__ import annotations

from fractions import Fraction
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# A theoretical receptive-field step: (kernel, stride, dilation).
RFLayer = tuple[int, int | Fraction, int]


def same_padding(kernel: int, dilation: int) -> int:
    """Symmetric padding that keeps the spatial size of a stride-1 convolution."""
    span = dilation * (kernel - 1)
    if span % 2:
        raise ValueError(
            f"kernel {kernel} at rate {dilation} has an odd span {span}: no symmetric 'same' padding"
        )
    return span // 2


def set_conv_geometry(conv: nn.Conv2d, stride: int | None = None, dilation: int | None = None) -> None:
    """Change stride and/or dilation of a convolution in place, keeping 'same' padding."""
    if stride is not None:
        conv.stride = (stride, stride)
    if dilation is not None:
        conv.dilation = (dilation, dilation)
    k = conv.kernel_size[0]
    d = conv.dilation[0]
    conv.padding = (same_padding(k, d), same_padding(k, d))


def dilate_kernel(weight: torch.Tensor, rate: int) -> torch.Tensor:
    """Zero-upsample a (..., k, k) kernel to size k + (k-1)(rate-1) (the 'holes' of atrous conv)."""
    if rate < 1:
        raise ValueError("rate must be >= 1")
    kh, kw = weight.shape[-2:]
    out = weight.new_zeros(*weight.shape[:-2], kh + (kh - 1) * (rate - 1), kw + (kw - 1) * (rate - 1))
    out[..., ::rate, ::rate] = weight
    return out


class PooledBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm for the 1x1 image-pooling features.

    With a single pooled value per channel (batch 1 in training mode) batch statistics are
    undefined; in that case the running statistics are used for normalisation and are not
    updated. With batch >= 2 it behaves exactly like ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class ConvBNReLU(nn.Sequential):
    """k x k convolution (no bias) + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, dilation: int = 1,
                 groups: int = 1, relu6: bool = False):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, same_padding(kernel, dilation), dilation,
                      groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True),
        )

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]


class SeparableConv2d(nn.Module):
    """Depthwise k x k (atrous) conv + BN (+ ReLU), then pointwise 1x1 conv + BN (+ ReLU).

    ``inner_relu`` is the ReLU between the two halves, ``last_relu`` the one after the pointwise
    BN; TensorFlow's aligned Xception runs most of its separable convolutions with neither."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 last_relu: bool = True, inner_relu: bool = True):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, kernel, stride, same_padding(kernel, dilation),
                                   dilation, groups=cin, bias=False)
        self.bn_depth = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn_point = nn.BatchNorm2d(cout)
        self.last_relu = last_relu
        self.inner_relu = inner_relu

    def set_geometry(self, stride: int | None = None, dilation: int | None = None) -> None:
        set_conv_geometry(self.depthwise, stride, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_depth(self.depthwise(x))
        if self.inner_relu:
            x = F.relu(x, inplace=True)
        x = self.bn_point(self.pointwise(x))
        return F.relu(x, inplace=True) if self.last_relu else x


def conv3x3_block(cin: int, cout: int, dilation: int = 1, separable: bool = False) -> nn.Module:
    """3x3 conv + BN + ReLU, either dense or depthwise-separable."""
    if separable:
        return SeparableConv2d(cin, cout, 3, 1, dilation)
    return ConvBNReLU(cin, cout, 3, 1, dilation)


def stride_rate_schedule(nominal_strides: Iterable[int], output_stride: int,
                         start_stride: int = 1) -> list[tuple[int, int]]:
    """(stride, rate) per unit so that the network stops subsampling at ``output_stride``.

    Once the accumulated stride reaches the target, each further subsampling unit runs at
    stride 1 and the atrous rate of the units after it is multiplied by that unit's stride.
    """
    cur, rate, out = start_stride, 1, []
    for s in nominal_strides:
        if cur * s <= output_stride:
            out.append((s, rate))
            cur *= s
        else:
            out.append((1, rate))
            rate *= s
    if cur != output_stride:
        raise ValueError(f"output stride {output_stride} is not reachable (network stride {cur})")
    return out


class BlockTrunk(nn.Module):
    """A stem followed by a flat list of blocks, each with `nominal_stride` and
    `set_geometry(stride, rate)`: output stride by atrous blocks, and the decoder's low-level
    feature tapped after block `low_level_index` (the stem output when it is -1)."""

    stem: nn.Module
    blocks: nn.ModuleList
    low_level_index: int

    def set_output_stride(self, output_stride: int) -> None:
        if output_stride not in (8, 16, 32):
            raise ValueError(f"{type(self).__name__} supports output stride 8, 16 or 32, "
                             f"got {output_stride}")
        plan = stride_rate_schedule([b.nominal_stride for b in self.blocks], output_stride,
                                    start_stride=2)
        for block, (stride, rate) in zip(self.blocks, plan):
            block.set_geometry(stride, rate)
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor, taps: bool = False) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        out: dict[str, torch.Tensor] = {}
        if self.low_level_index < 0:
            out["low_level"] = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.low_level_index:
                out["low_level"] = x
        out["out"] = x
        return out


def init_weights(module: nn.Module) -> None:
    """He init for convolutions, unit BN, small Gaussian for linear layers."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


def init_classifier(conv: nn.Conv2d, std: float = 0.01) -> None:
    """Initialise a final class-score convolution and mark it as one (``is_classifier``: the
    training recipes give these layers their own learning rate)."""
    nn.init.normal_(conv.weight, std=std)
    conv.is_classifier = True
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def rf_of(layers: Iterable[RFLayer]) -> int:
    """Theoretical receptive field of a chain of (kernel, stride, dilation) layers."""
    rf, jump = Fraction(1), Fraction(1)
    for k, s, d in layers:
        rf += (k - 1) * d * jump
        jump *= Fraction(s)
    return int(rf)


def _interp_matrix(n_in: int, n_out: int, align_corners: bool, like: torch.Tensor
                   ) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation, as F.interpolate computes them."""
    eye = torch.eye(n_in, dtype=torch.float32, device=like.device).view(1, n_in, n_in, 1)
    with torch.no_grad():
        w = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=align_corners)
    return w[0, :, :, 0].t().to(like.dtype)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int] | torch.Size,
                    align_corners: bool = False, separable: bool | None = None) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) to ``size``. With deterministic algorithms asked for on
    a CUDA tensor that needs gradients (``separable`` None), it runs as two matrix products,
    whose backward is deterministic (F.interpolate's bilinear backward on CUDA accumulates
    with atomics and is refused under torch.use_deterministic_algorithms); elsewhere it is
    F.interpolate itself, bit for bit."""
    size = tuple(int(s) for s in size)
    if separable is None:
        separable = (x.is_cuda and x.requires_grad
                     and torch.are_deterministic_algorithms_enabled())
    if not separable:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    rows = _interp_matrix(x.shape[-2], size[0], align_corners, x)
    cols = _interp_matrix(x.shape[-1], size[1], align_corners, x)
    return torch.matmul(torch.matmul(rows, x), cols.t())


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C, 1, 1) spatial mean; a plain mean under deterministic algorithms on CUDA
    (adaptive_avg_pool2d's CUDA backward is refused there), adaptive_avg_pool2d elsewhere."""
    if x.is_cuda and torch.are_deterministic_algorithms_enabled():
        return x.mean(dim=(-2, -1), keepdim=True)
    return F.adaptive_avg_pool2d(x, 1)
