"""Fully connected CRF wrapper: behaviour, parameter mapping onto pydensecrf, input validation."""

from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
from scipy import ndimage

from deeplab_core.crf import densecrf as crfmod
from deeplab_core.crf.densecrf import CRFParams, dense_crf


def edge_scene(h=48, w=64, num_classes=2, blur=4.0, noise=0.8, seed=0):
    """Two flat-coloured halves split by a sharp vertical edge; blurry, noisy probabilities."""
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), np.int64)
    label[:, w // 2 + 3:] = 1
    image = np.where(label[..., None] == 0, [40, 90, 200], [220, 160, 30]).astype(np.float64)
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    onehot = np.stack([(label == c).astype(np.float64) for c in range(num_classes)])
    # the scores' edge sits 3 px off the true one and is blurred, like upsampled DCNN output
    shifted = np.roll(onehot, -3, axis=2)
    logits = np.stack([ndimage.gaussian_filter(o, blur) for o in shifted]) * 3
    logits += noise * rng.normal(0, 1, logits.shape)
    probs = np.exp(logits - logits.max(0))
    probs /= probs.sum(0)
    return image, probs.astype(np.float32), label


def bare_pydensecrf(image, probs, p: CRFParams):
    c, h, w = probs.shape
    u = np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(c, -1).astype(np.float32))
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(u)
    d.addPairwiseGaussian(sxy=p.sigma_gamma, compat=p.w2)
    d.addPairwiseBilateral(sxy=p.sigma_alpha, srgb=p.sigma_beta, rgbim=np.ascontiguousarray(image),
                           compat=p.w1)
    return np.array(d.inference(p.iterations)).reshape(c, h, w)


def test_crf_recovers_sharp_edge_better_than_argmax():
    image, probs, label = edge_scene()
    base_acc = (probs.argmax(0) == label).mean()
    labels, q = dense_crf(image, probs, CRFParams(w1=5, sigma_alpha=40, sigma_beta=5))
    crf_acc = (labels == label).mean()
    assert base_acc < 0.97
    assert crf_acc > base_acc + 0.02
    assert crf_acc > 0.985


def test_output_shapes_dtypes_and_normalisation():
    image, probs, _ = edge_scene(h=37, w=53, num_classes=2)
    labels, q = dense_crf(image, probs, CRFParams())
    assert labels.shape == (37, 53) and labels.dtype == np.int64
    assert q.shape == (2, 37, 53) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    assert (q >= 0).all()
    np.testing.assert_array_equal(labels, q.argmax(0))


@pytest.mark.parametrize("h,w,c", [(1, 1, 2), (5, 200, 3), (31, 17, 30), (64, 48, 1)])
def test_any_size_and_class_count(h, w, c):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    probs = rng.random((c, h, w)).astype(np.float32) + 0.1
    probs /= probs.sum(0)
    labels, q = dense_crf(image, probs, CRFParams(iterations=3))
    assert labels.shape == (h, w) and q.shape == (c, h, w)
    assert labels.min() >= 0 and labels.max() < c
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)


def test_mapping_matches_documented_pydensecrf_call():
    image, probs, _ = edge_scene(seed=3)
    p = CRFParams(w1=5.0, sigma_alpha=50.0, sigma_beta=4.0, w2=2.0, sigma_gamma=2.0, iterations=7)
    _, q = dense_crf(image, probs, p)
    np.testing.assert_allclose(q, bare_pydensecrf(image, probs, p), atol=1e-6)


def test_each_parameter_reaches_pydensecrf():
    image, probs, _ = edge_scene(seed=4)
    base = CRFParams(w1=5.0, sigma_alpha=50.0, sigma_beta=4.0, w2=2.0, sigma_gamma=2.0,
                     iterations=5)
    _, q0 = dense_crf(image, probs, base)
    for name, value in [("w1", 8.0), ("sigma_alpha", 10.0), ("sigma_beta", 20.0), ("w2", 6.0),
                        ("sigma_gamma", 6.0), ("iterations", 1)]:
        p = CRFParams(**{**base.to_dict(), name: value})
        _, q = dense_crf(image, probs, p)
        assert np.abs(q - q0).max() > 1e-3, name
        np.testing.assert_allclose(q, bare_pydensecrf(image, probs, p), atol=1e-6)


@pytest.mark.parametrize("w", [0.0, 1e-7])
def test_negligible_pairwise_weights_give_unary_argmax(w):
    image, probs, _ = edge_scene(seed=5)
    for iters in (1, 10):
        labels, q = dense_crf(image, probs, CRFParams(w1=w, w2=w, iterations=iters))
        np.testing.assert_array_equal(labels, probs.argmax(0))
        clipped = np.maximum(probs, 1e-5)
        np.testing.assert_allclose(q, clipped / clipped.sum(0), atol=1e-5)


def test_float64_float16_and_noncontiguous_inputs():
    image, probs, _ = edge_scene(seed=6)
    p = CRFParams(iterations=5)
    ref_l, ref_q = dense_crf(image, probs, p)
    # float64 probabilities
    l64, q64 = dense_crf(image, probs.astype(np.float64), p)
    np.testing.assert_array_equal(l64, ref_l)
    # non-contiguous views: flipped image, probs through a transpose round-trip
    img_view = np.ascontiguousarray(image[:, ::-1])[:, ::-1]
    assert not img_view.flags.c_contiguous
    probs_view = np.ascontiguousarray(probs.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert not probs_view.flags.c_contiguous
    lv, qv = dense_crf(img_view, probs_view, p)
    np.testing.assert_array_equal(lv, ref_l)
    np.testing.assert_allclose(qv, ref_q, atol=1e-6)
    # float16 probabilities whose per-pixel sums are off by float16 rounding only
    l16, _ = dense_crf(image, probs.astype(np.float16), p)
    assert (l16 == ref_l).mean() > 0.99


def _bad_cases():
    image, probs, _ = edge_scene(h=20, w=30)
    nan = probs.copy(); nan[0, 3, 3] = np.nan
    inf = probs.copy(); inf[1, 2, 2] = np.inf
    neg = probs.copy(); neg[0, 0, 0] = -0.2; neg[1, 0, 0] = 1.2
    unnorm = probs * 1.01
    logits = np.log(probs) * 2
    return [
        ("float image", image.astype(np.float32) / 255, probs, "raw RGB uint8"),
        ("float64 image", image.astype(np.float64), probs, "normalised"),
        ("gray image", image[..., 0], probs, "(H, W, 3)"),
        ("rgba image", np.dstack([image, image[..., :1]]), probs, "(H, W, 3)"),
        ("int16 image", image.astype(np.int16), probs, "uint8"),
        ("list image", image.tolist(), probs, "numpy array"),
        ("size mismatch", image[:, :-1], probs, "does not match image size"),
        ("hwc probs", image, probs.transpose(1, 2, 0).copy(), "does not match"),
        ("2d probs", image, probs[0], "(C, H, W)"),
        ("int probs", image, (probs > 0.5).astype(np.int64), "floating point"),
        ("nan probs", image, nan, "NaN or inf"),
        ("inf probs", image, inf, "NaN or inf"),
        ("negative probs", image, neg, "negative"),
        ("unnormalised probs", image, unnorm, "sum to 1"),
        ("logits", image, logits, "negative"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises_before_pydensecrf(case, monkeypatch):
    _, image, probs, message = case

    def boom(*a, **k):
        raise AssertionError("pydensecrf reached with bad input")

    monkeypatch.setattr(crfmod.dcrf, "DenseCRF2D", boom)
    with pytest.raises(ValueError, match=None) as err:
        dense_crf(image, probs, CRFParams())
    assert message in str(err.value)


def test_bad_params_argument():
    image, probs, _ = edge_scene(h=8, w=8)
    with pytest.raises(ValueError, match="CRFParams"):
        dense_crf(image, probs, {"w1": 3})


@pytest.mark.parametrize("field,value,msg", [
    ("w1", -1.0, ">= 0"), ("w2", -0.5, ">= 0"), ("sigma_alpha", 0.0, "> 0"),
    ("sigma_beta", -3.0, "> 0"), ("sigma_gamma", float("nan"), "finite"),
    ("sigma_alpha", float("inf"), "finite"), ("iterations", 0, ">= 1"), ("iterations", 2.5, "integer"),
    ("w1", True, "number"), ("w1", "4", "number"),
])
def test_params_validation_names_field_and_value(field, value, msg):
    with pytest.raises(ValueError) as err:
        CRFParams(**{field: value})
    text = str(err.value)
    assert f"CRFParams.{field}" in text and msg in text and repr(value) in text


def test_params_defaults_and_dict_round_trip():
    p = CRFParams()
    assert (p.w1, p.sigma_alpha, p.sigma_beta, p.w2, p.sigma_gamma, p.iterations) == (
        4.0, 67.0, 3.0, 3.0, 3.0, 10)
    q = CRFParams(w1=5, sigma_alpha=80, sigma_beta=4, iterations=np.int64(5))
    d = q.to_dict()
    assert d == {"w1": 5.0, "sigma_alpha": 80.0, "sigma_beta": 4.0, "w2": 3.0, "sigma_gamma": 3.0,
                 "iterations": 5}
    assert CRFParams.from_dict(d) == q
    assert CRFParams.from_dict({**d, "miou": 0.7}, ignore_extra=True) == q
    with pytest.raises(ValueError, match="unknown"):
        CRFParams.from_dict({**d, "miou": 0.7})
    with pytest.raises(Exception):
        q.w1 = 3.0  # frozen


def test_params_file_is_read_in_one_place_with_errors_naming_the_file(tmp_path):
    import json

    q = CRFParams(w1=5, sigma_alpha=80, sigma_beta=4, iterations=5)
    best = tmp_path / "best_params.json"
    best.write_text(json.dumps({"params": q.to_dict(), "cv_miou": 0.5}))
    assert CRFParams.from_file(best) == q
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({**q.to_dict(), "miou": 0.7}))
    assert CRFParams.from_file(bare) == q
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CRFParams.from_file(tmp_path / "missing.json")
    for name, text in [("torn.json", '{"params": {"w1": 5'), ("list.json", "[1, 2]"),
                       ("bad.json", json.dumps({"params": {"w1": -1}}))]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"{name} does not hold CRF parameters"):
            CRFParams.from_file(tmp_path / name)


def test_library_imports_no_pipeline_tools():
    import subprocess
    import sys
    code = ("import sys, deeplab_core.crf, deeplab_core.crf.search, deeplab_core.crf.plots;"
            "bad = [m for m in ('dvc', 'mlflow', 'prefect', 'great_expectations') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
