"""Sliding-window (tiled, overlapping) inference, so that the memory of a large image's
prediction is bounded by the tile size rather than by the image size.

Each tile is predicted on its own (with the same multi-scale + flip averaging as a whole image),
and overlapping tiles are blended with weights that fall off linearly towards the tile edges that
lie inside the image, so no seam is left where a tile's context ends."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from deeplab_core.engine.evaluate import predict_probs


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows of length `tile` covering [0, size), consecutive windows
    overlapping by at least `overlap`; the last window ends at `size`."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"tile size {tile} and overlap {overlap}: expected tile > 0 and "
                         f"0 <= overlap < tile")
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """1-D blending weights of one window: 1 inside, rising linearly over the first `overlap`
    pixels unless the window starts at the image border (`first`), falling over the last
    `overlap` pixels unless it ends there (`last`). Never 0, so every pixel has some weight."""
    w = torch.ones(length)
    if overlap > 0:
        up = (torch.arange(min(overlap, length)) + 0.5) / overlap
        if not first:
            w[: len(up)] = torch.minimum(w[: len(up)], up)
        if not last:
            w[length - len(up):] = torch.minimum(w[length - len(up):], up.flip(0))
    return w


@torch.inference_mode()
def predict_probs_tiled(model: nn.Module, image_nchw: torch.Tensor, tile_size: int,
                        overlap: int, scales: Iterable[float] = (1.0,),
                        flip: bool = False, autocast: torch.dtype | None = None) -> torch.Tensor:
    """Softmax probabilities (N, C, H, W) of a normalised image batch, predicted window by
    window (tile_size x tile_size, overlapping by `overlap`) and blended. An image no larger
    than the tile in both sides is predicted whole, exactly as :func:`predict_probs` does
    (``autocast`` as there)."""
    scales = tuple(scales)
    n, _, h, w = image_nchw.shape
    if h <= tile_size and w <= tile_size:
        return predict_probs(model, image_nchw, scales, flip, autocast)
    ys, xs = tile_starts(h, tile_size, overlap), tile_starts(w, tile_size, overlap)
    total = weight = None
    for y in ys:
        th = min(tile_size, h)
        wy = _ramp(th, overlap, y == 0, y + th >= h)
        for x in xs:
            tw = min(tile_size, w)
            wx = _ramp(tw, overlap, x == 0, x + tw >= w)
            tile = image_nchw[:, :, y:y + th, x:x + tw]
            p = predict_probs(model, tile, scales, flip, autocast)
            if total is None:  # class count known from the first tile's output
                total = torch.zeros((n, p.shape[1], h, w), dtype=torch.float32, device=p.device)
                weight = torch.zeros((h, w), dtype=torch.float32, device=p.device)
            wt = (wy[:, None] * wx[None, :]).to(p.device)
            total[:, :, y:y + th, x:x + tw] += p.mul_(wt)
            weight[y:y + th, x:x + tw] += wt
            del p
    return total.div_(weight)
