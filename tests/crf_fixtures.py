"""Synthetic CRF-search caches: images of sharp-edged shapes with softened, noisy probabilities
(the look of upsampled DCNN scores), for the CRF tests and for the benchmarks without a real cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deeplab_core.classes import IGNORE_INDEX
from deeplab_core.crf.cache import write_cache_item


def synthetic_item(rng: np.random.Generator, height: int = 120, width: int = 160,
                   num_classes: int = 6, blur: float | None = None, noise: float = 1.5,
                   pixel_noise: float = 8.0, texture: float = 25.0, contrast: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image of sharp-edged shapes on a textured background, its label, and softened noisy
    probabilities.

    Shapes are ellipses, boxes and thin bars with one flat colour each (plus pixel noise).
    Probabilities come from the one-hot label blurred by a Gaussian (edges leak over several
    pixels, thin bars fade) plus smooth noise, through a softmax: roughly the look of upsampled
    DCNN scores. Labels carry a partial void band along object edges, as in VOC.
    """
    from scipy import ndimage

    blur = blur if blur is not None else max(height, width) / 40
    label = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(int(rng.integers(2, 5))):
        c = int(rng.integers(1, num_classes))
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        ry, rx = rng.uniform(0.08, 0.3) * height, rng.uniform(0.08, 0.3) * width
        kind = rng.random()
        if kind < 0.4:
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        elif kind < 0.8:
            m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        else:  # a thin slanted bar
            ang = rng.uniform(0, np.pi)
            d = np.abs((yy - cy) * np.cos(ang) - (xx - cx) * np.sin(ang))
            along = np.abs((yy - cy) * np.sin(ang) + (xx - cx) * np.cos(ang))
            m = (d <= rng.uniform(1.5, 4)) & (along <= max(ry, rx) * 1.5)
        label[m] = c
    palette = 128 + contrast * (rng.integers(20, 236, size=(num_classes, 3)) - 128.0)
    tex = np.stack([ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), blur * 2)
                    for _ in range(3)], axis=-1)
    tex *= texture / (tex.std() + 1e-6)
    image = palette[label] + np.where(label[..., None] == 0, tex, 0)
    image += rng.normal(0, pixel_noise, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    onehot = (label[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)
    logits = np.stack([ndimage.gaussian_filter(o, blur) for o in onehot]) * 4.0
    smooth = rng.normal(0, 1, (num_classes, height, width)).astype(np.float32)
    smooth = np.stack([ndimage.gaussian_filter(s, blur / 2) for s in smooth])
    smooth /= smooth.std() + 1e-6
    logits += noise * smooth
    logits -= logits.max(axis=0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=0, keepdims=True)
    edge = ndimage.morphological_gradient(label, size=3) > 0
    label = label.copy()
    label[edge & (rng.random(label.shape) < 0.5)] = IGNORE_INDEX
    return image, probs.astype(np.float32), label


def make_synthetic_cache(cache_dir: str | os.PathLike, n_images: int = 16, height: int = 120,
                         width: int = 160, num_classes: int = 6, seed: int = 0,
                         **item_kwargs) -> list[Path]:
    """Write ``n_images`` synthetic items in the cache format; returns the file paths.
    ``item_kwargs`` go to ``synthetic_item`` (blur, noise, pixel_noise, texture, contrast)."""
    rng = np.random.default_rng(seed)
    return [write_cache_item(cache_dir, f"synth_{i:04d}",
                             *synthetic_item(rng, height, width, num_classes, **item_kwargs))
            for i in range(n_images)]
