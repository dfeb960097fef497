"""Training / evaluation transforms."""

import numpy as np
import pytest
import torch

from deeplab_core.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, MEAN_PIXEL, denormalize,
                                          eval_transform, normalize, train_transform)


def _sample(h=30, w=40, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    lab = rng.integers(0, 21, (h, w)).astype(np.uint8)
    return img, lab


def test_constants():
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    assert MEAN_PIXEL == (124, 116, 104)


def test_train_crop_size_and_types():
    img, lab = _sample()
    t = train_transform(24)
    for seed in range(10):
        x, y = t(img, lab, rng=seed)
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32
        assert y.shape == (24, 24) and y.dtype == torch.int64
        assert set(torch.unique(y).tolist()) <= set(range(21)) | {255}
    x, y = train_transform((16, 20))(img, lab, rng=1)
    assert x.shape == (3, 16, 20) and y.shape == (16, 20)


def test_padding_uses_ignore_label_and_mean_pixel():
    img, lab = _sample(10, 12)
    t = train_transform((32, 40), scale_range=(1.0, 1.0), flip=False)
    x, y = t(img, lab, rng=0)
    assert y.shape == (32, 40)
    assert (y[:10, :12] == torch.from_numpy(lab.astype(np.int64))).all()
    assert (y[10:, :] == 255).all() and (y[:, 12:] == 255).all()
    assert x[:, 10:, :].abs().max() < 0.02 and x[:, :, 12:].abs().max() < 0.02  # ~normalised 0
    assert np.array_equal(denormalize(x[:, :10, :12]), img)


def test_scaling_and_flip_keep_image_and_label_aligned():
    h, w = 40, 60
    img = np.zeros((h, w, 3), np.uint8)
    lab = np.zeros((h, w), np.uint8)
    img[10:30, 5:25] = 255
    lab[10:30, 5:25] = 7
    t = train_transform(48, scale_range=(0.5, 2.0))
    for seed in range(20):
        x, y = t(img, lab, rng=seed)
        bright = denormalize(x).mean(2) > 127
        obj = (y == 7).numpy()
        if obj.sum() > 30:
            assert (bright & obj).sum() / (bright | obj).sum() > 0.75
    # at scale 1 with a full-size crop, the only change is an occasional exact mirror
    t1 = train_transform((h, w), scale_range=(1.0, 1.0), flip=True)
    seen = set()
    for seed in range(12):
        x, y = t1(img, lab, rng=seed)
        flipped = bool(y[20, w - 10] == 7)
        seen.add(flipped)
        ref_img, ref_lab = (img[:, ::-1], lab[:, ::-1]) if flipped else (img, lab)
        assert np.array_equal(denormalize(x), ref_img)
        assert np.array_equal(y.numpy(), ref_lab)
    assert seen == {True, False}


def test_seeded_transform_is_deterministic():
    img, lab = _sample()
    t = train_transform(20)
    a = t(img, lab, rng=np.random.default_rng(5))
    b = t(img, lab, rng=np.random.default_rng(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(t(img, lab, rng=g1)[1], t(img, lab, rng=g2)[1])
    torch.manual_seed(9)
    c = t(img, lab)
    torch.manual_seed(9)
    d = t(img, lab)
    assert torch.equal(c[0], d[0])
    outs = {tuple(t(img, lab, rng=s)[1].flatten()[:50].tolist()) for s in range(6)}
    assert len(outs) > 1


def test_eval_transform_keeps_full_image():
    img, lab = _sample(33, 47)
    x, y = eval_transform()(img, lab)
    assert x.shape == (3, 33, 47) and y.shape == (33, 47)
    assert torch.equal(y, torch.from_numpy(lab.astype(np.int64)))
    assert torch.allclose(x, normalize(img))
    x2, none = eval_transform()(img)
    assert none is None and torch.equal(x, x2)


def test_mismatched_sizes_and_bad_args_raise():
    img, lab = _sample()
    with pytest.raises(ValueError):
        train_transform(10)(img, lab[:5], rng=0)
    with pytest.raises(ValueError):
        train_transform(0)
    with pytest.raises(ValueError):
        train_transform(10, scale_range=(2.0, 1.0))
