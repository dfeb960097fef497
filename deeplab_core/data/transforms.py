"""Image / label transforms of the DeepLab recipe.

Training: random scale (``scale_range``, bilinear for the image, nearest for the label), padding
to the crop size at the bottom/right with the mean pixel (image) and 255 (label), a random crop,
a random horizontal flip, then ImageNet normalisation. Evaluation: normalisation only, full image.

Both return ``(image FloatTensor 3xHxW, label LongTensor HxW)``. Randomness comes from the ``rng``
argument: a ``numpy.random.Generator``, an int seed, a ``torch.Generator``, or None (then a seed is
drawn from torch's global generator, so ``torch.manual_seed`` and DataLoader worker seeding make it
reproducible).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from deeplab_core.classes import IGNORE_INDEX

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB, on 0..1
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
MEAN_PIXEL: tuple[int, int, int] = tuple(int(round(m * 255)) for m in IMAGENET_MEAN)  # padding

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def as_generator(rng=None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=rng).item()))
    if rng is None:
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
    return np.random.default_rng(int(rng))


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float32 3xHxW, ``(x / 255 - mean) / std``."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    x = (image.astype(np.float32) / 255.0 - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize`: 3xHxW float -> uint8 HxWx3."""
    x = tensor.detach().cpu().float().numpy().transpose(1, 2, 0) * _STD + _MEAN
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def label_tensor(label: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))


def _check(image: np.ndarray, label: np.ndarray | None) -> None:
    if label is not None and image.shape[:2] != label.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and label {label.shape[:2]} sizes differ")


@dataclass
class TrainTransform:
    crop_size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    ignore_index: int = IGNORE_INDEX
    fill: tuple[int, int, int] = MEAN_PIXEL

    def __call__(self, image: np.ndarray, label: np.ndarray, rng=None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = np.asarray(image), np.asarray(label)
        _check(image, label)
        g = as_generator(rng)
        ch, cw = self.crop_size
        h, w = label.shape
        lo, hi = self.scale_range
        s = float(g.uniform(lo, hi)) if hi > lo else float(lo)
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        if (nh, nw) != (h, w):
            image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
            label = np.asarray(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
        ph, pw = max(ch - nh, 0), max(cw - nw, 0)
        if ph or pw:
            img_p = np.empty((nh + ph, nw + pw, 3), dtype=np.uint8)
            img_p[...] = np.asarray(self.fill, dtype=np.uint8)
            img_p[:nh, :nw] = image
            lab_p = np.full((nh + ph, nw + pw), self.ignore_index, dtype=np.uint8)
            lab_p[:nh, :nw] = label
            image, label = img_p, lab_p
        H, W = label.shape
        y0 = int(g.integers(0, H - ch + 1))
        x0 = int(g.integers(0, W - cw + 1))
        image = image[y0:y0 + ch, x0:x0 + cw]
        label = label[y0:y0 + ch, x0:x0 + cw]
        if self.flip and g.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return normalize(image), label_tensor(label)


@dataclass
class EvalTransform:
    def __call__(self, image: np.ndarray, label: np.ndarray | None = None, rng=None):
        image = np.asarray(image)
        _check(image, label)
        return normalize(image), (label_tensor(label) if label is not None else None)


def train_transform(crop_size: int | tuple[int, int], scale_range: tuple[float, float] = (0.5, 2.0),
                    flip: bool = True, ignore_index: int = IGNORE_INDEX) -> TrainTransform:
    """Random scale + pad (mean pixel / ``ignore_index``) + random crop + flip + normalise."""
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    crop = (int(crop_size[0]), int(crop_size[1]))
    if min(crop) <= 0:
        raise ValueError(f"crop_size must be positive, got {crop_size}")
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    return TrainTransform(crop, (lo, hi), bool(flip), int(ignore_index))


def eval_transform() -> EvalTransform:
    """Normalise only; the full image is kept (no resize, no crop)."""
    return EvalTransform()
