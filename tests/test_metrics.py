"""Confusion matrix, IoU / mIoU and the boundary trimap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deeplab_core.metrics import (confusion_matrix, iou_from_confusion, summarize,
                                         trimap_band, trimap_confusions, trimap_curve)

LABEL = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8)


def test_confusion_matrix_hand_example_ignores_255():
    conf = confusion_matrix(PRED, LABEL, 3)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert conf.sum() == 5  # the 255 pixel is not counted


def test_confusion_matrix_custom_ignore_index():
    label = np.array([[0, 1], [1, 9]])
    pred = np.array([[0, 1], [0, 1]])
    np.testing.assert_array_equal(confusion_matrix(pred, label, 2, ignore_index=9),
                                  [[1, 0], [1, 1]])


def test_label_values_outside_the_classes_are_dropped():
    label = np.array([[0, 5]])
    pred = np.array([[0, 0]])
    np.testing.assert_array_equal(confusion_matrix(pred, label, 2), [[1, 0], [0, 0]])


def test_iou_and_summary_of_hand_example():
    conf = confusion_matrix(PRED, LABEL, 3)
    iou = iou_from_confusion(conf)
    np.testing.assert_allclose(iou, [0.5, 1 / 3, 0.5])
    s = summarize(conf, ("bg", "a", "b"))
    assert s["miou"] == pytest.approx(4 / 9)
    assert s["pixel_acc"] == pytest.approx(3 / 5)
    assert s["per_class_iou"] == pytest.approx({"bg": 0.5, "a": 1 / 3, "b": 0.5})


def test_absent_classes_are_nan_and_left_out_of_the_mean():
    label = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 0]])
    conf = confusion_matrix(pred, label, 5)
    iou = iou_from_confusion(conf)
    assert iou[0] == pytest.approx(2 / 3) and iou[1] == pytest.approx(1 / 2)
    assert all(math.isnan(v) for v in iou[2:])
    s = summarize(conf)
    assert s["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s["per_class_iou"]["2"] is None and s["per_class_iou"]["4"] is None
    assert s["per_class_iou"]["1"] == pytest.approx(0.5)


def test_class_only_predicted_or_only_in_ground_truth_counts_as_zero():
    label = np.array([[0, 1, 1]])
    pred = np.array([[2, 1, 1]])
    iou = iou_from_confusion(confusion_matrix(pred, label, 3))
    np.testing.assert_allclose(iou, [0.0, 1.0, 0.0])
    assert summarize(confusion_matrix(pred, label, 3))["miou"] == pytest.approx(1 / 3)


def test_summary_of_empty_confusion():
    s = summarize(np.zeros((3, 3), dtype=np.int64))
    assert s["miou"] == 0.0 and s["pixel_acc"] == 0.0
    assert s["per_class_iou"] == {"0": None, "1": None, "2": None}


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"prediction shape \(2, 3\) != label shape \(3, 2\)"):
        confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)), 3)


@pytest.mark.parametrize("bad", [3, -1])
def test_prediction_outside_classes_raises(bad):
    pred = PRED.astype(np.int64)
    pred[0, 0] = bad
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        confusion_matrix(pred, LABEL, 3)


def test_prediction_out_of_range_on_ignored_pixel_is_not_counted():
    pred = PRED.astype(np.int64)
    pred[1, 2] = 200  # the pixel labelled 255
    np.testing.assert_array_equal(confusion_matrix(pred, LABEL, 3),
                                  confusion_matrix(PRED, LABEL, 3))


def _vertical_boundary(h=10, w=12, split=6):
    label = np.ones((h, w), dtype=np.uint8)
    label[:, split:] = 2
    return label


@pytest.mark.parametrize("width", [0, 1, 2, 3, 5])
def test_trimap_band_covers_columns_within_width_of_boundary(width):
    label = _vertical_boundary()
    band = trimap_band(label, width)
    assert band.shape == label.shape and band.dtype == bool
    # the boundary pixels are columns 5 and 6; column c is |c - 5| or |c - 6| away from them
    expected_cols = [c for c in range(12) if min(abs(c - 5), abs(c - 6)) <= width]
    assert (band == band[:1]).all()  # every row identical
    assert np.flatnonzero(band[0]).tolist() == expected_cols


# A label without any boundary has an empty band (scipy's distance transform of an all-True mask
# would otherwise put a spurious band in the top-left corner).
def test_trimap_band_of_uniform_label_is_empty():
    assert not trimap_band(np.full((6, 7), 3, dtype=np.uint8), 4).any()


def test_trimap_confusions_of_uniform_label_count_nothing():
    label = np.zeros((6, 7), dtype=np.uint8)
    assert trimap_confusions(label, label, 2, [4]).sum() == 0


def test_trimap_band_includes_void_pixels_and_their_surroundings():
    label = np.zeros((5, 9), dtype=np.uint8)
    label[:, 4] = 255
    band = trimap_band(label, 1)
    # void column 4 and its neighbours 3 and 5 (edges), then one more column on each side
    assert np.flatnonzero(band[0]).tolist() == [2, 3, 4, 5, 6]


def test_trimap_confusions_count_only_band_pixels():
    label = _vertical_boundary()
    pred = label.copy()
    pred[:, 0] = 2     # wrong, far from the boundary
    pred[0, 5] = 2     # wrong, on the boundary
    confs = trimap_confusions(pred, label, 3, [1, 20])
    assert confs.shape == (2, 3, 3)
    # width 1: columns 4..7, 10 rows
    assert confs[0].sum() == 40
    np.testing.assert_array_equal(confs[0], [[0, 0, 0], [0, 19, 1], [0, 0, 20]])
    # width 20 covers the whole image, as the plain confusion matrix does
    np.testing.assert_array_equal(confs[1], confusion_matrix(pred, label, 3))
    curve = trimap_curve(confs, [1, 20])
    assert [r["band_width"] for r in curve] == [1, 20]
    assert curve[0]["pixel_acc"] == pytest.approx(39 / 40)
    assert curve[1]["pixel_acc"] == pytest.approx(109 / 120)


def test_trimap_confusions_skip_void_pixels():
    label = _vertical_boundary()
    label[:, 6] = 255
    pred = np.where(label == 255, 0, label)
    confs = trimap_confusions(pred, label, 3, [1])
    # band: columns 4..8 (edges 5, 6, 7), void column 6 not counted: 4 columns x 10 rows
    assert confs[0].sum() == 40
    assert np.trace(confs[0]) == 40


def _random_batch(rng: np.random.Generator, c: int, n: int = 5, h: int = 17, w: int = 23):
    """n label/prediction pairs with void pixels; the prediction is right about half the time."""
    labels = rng.integers(0, c, size=(n, h, w)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.1] = 255
    preds = np.where(rng.random(labels.shape) < 0.5, labels, rng.integers(0, c, labels.shape))
    preds = np.where(labels == 255, rng.integers(0, c, labels.shape), preds).astype(np.uint8)
    return labels, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_matches_scikit_learn_on_random_data(seed):
    from sklearn import metrics as skm

    rng = np.random.default_rng(seed)
    c = 6
    labels, preds = _random_batch(rng, c)
    conf = np.zeros((c, c), dtype=np.int64)
    for lab, pred in zip(labels, preds):  # streamed image by image
        conf += confusion_matrix(pred, lab, c)
    keep = labels.ravel() != 255
    y, p = labels.ravel()[keep], preds.ravel()[keep]
    classes = list(range(c))
    np.testing.assert_array_equal(conf, skm.confusion_matrix(y, p, labels=classes))
    s = summarize(conf)
    assert s["pixel_acc"] == pytest.approx(skm.accuracy_score(y, p))
    assert s["mean_pixel_acc"] == pytest.approx(skm.balanced_accuracy_score(y, p))
    iou = skm.jaccard_score(y, p, labels=classes, average=None)
    prec = skm.precision_score(y, p, labels=classes, average=None)
    rec = skm.recall_score(y, p, labels=classes, average=None)
    f1 = skm.f1_score(y, p, labels=classes, average=None)
    assert [s["per_class_iou"][str(k)] for k in classes] == pytest.approx(iou)
    assert [s["per_class_precision"][str(k)] for k in classes] == pytest.approx(prec)
    assert [s["per_class_recall"][str(k)] for k in classes] == pytest.approx(rec)
    assert [s["per_class_f1"][str(k)] for k in classes] == pytest.approx(f1)
    assert s["miou"] == pytest.approx(skm.jaccard_score(y, p, average="macro"))
    assert s["mean_f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert s["mean_precision"] == pytest.approx(skm.precision_score(y, p, average="macro"))
    assert s["fwiou"] == pytest.approx(skm.jaccard_score(y, p, average="weighted"))


def test_undefined_ratios_are_none_and_left_out_of_the_means():
    # class 2 is only predicted (recall undefined), class 3 nowhere (everything undefined)
    label = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])
    s = summarize(confusion_matrix(pred, label, 4), ("bg", "a", "b", "c"))
    assert s["per_class_recall"] == pytest.approx({"bg": 0.5, "a": 1.0, "b": None, "c": None})
    assert s["per_class_precision"] == pytest.approx({"bg": 1.0, "a": 1.0, "b": 0.0, "c": None})
    assert s["per_class_f1"] == pytest.approx({"bg": 2 / 3, "a": 1.0, "b": 0.0, "c": None})
    assert s["mean_pixel_acc"] == pytest.approx(0.75)
    assert s["mean_precision"] == pytest.approx(2 / 3)
    assert s["fwiou"] == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)


def test_summary_refuses_a_non_square_matrix_or_wrong_names():
    with pytest.raises(ValueError, match=r"square \(C, C\), got shape \(2, 3\)"):
        summarize(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="2 class names for a 3-class"):
        summarize(np.zeros((3, 3), dtype=np.int64), ("a", "b"))


def test_trimap_curve_reports_miou_and_accuracies_per_band():
    label = _vertical_boundary()
    pred = label.copy()
    pred[0, 5] = 2
    curve = trimap_curve(trimap_confusions(pred, label, 3, [1]), [1])
    # band columns 4..7: class 1 has 20 px (19 right), class 2 has 20 px (all right) + 1 wrong
    assert curve[0]["miou"] == pytest.approx((19 / 20 + 20 / 21) / 2)
    assert curve[0]["mean_pixel_acc"] == pytest.approx((19 / 20 + 1.0) / 2)
    assert curve[0]["pixel_acc"] == pytest.approx(39 / 40)
