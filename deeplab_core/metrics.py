"""Segmentation metrics, all from one streaming confusion matrix (rows = ground truth, columns =
prediction, summed over images): pixel accuracy, mean pixel accuracy, mIoU, frequency-weighted IoU,
and per class IoU, precision, recall and F1; plus the boundary trimap (v2 paper, Fig. 10): the same
metrics inside a band around label boundaries, per band width."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from deeplab_core.classes import IGNORE_INDEX


def confusion_matrix(pred_hw: np.ndarray, label_hw: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = ground truth, cols = prediction."""
    if pred_hw.shape != label_hw.shape:
        raise ValueError(f"prediction shape {pred_hw.shape} != label shape {label_hw.shape}")
    label = label_hw.astype(np.int64).ravel()
    pred = pred_hw.astype(np.int64).ravel()
    keep = (label != ignore_index) & (label >= 0) & (label < num_classes)
    if np.any((pred[keep] < 0) | (pred[keep] >= num_classes)):
        raise ValueError(f"prediction holds class ids outside [0, {num_classes})")
    idx = label[keep] * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den is 0 (a metric undefined for that class)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU; NaN for classes absent from both ground truth and prediction."""
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    return _ratio(tp, conf.sum(0) + conf.sum(1) - tp)


def per_class_scores(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class IoU, precision (tp / predicted), recall (tp / ground truth; the class's pixel
    accuracy) and F1 (2 tp / (predicted + ground truth)); NaN where a ratio's denominator is 0."""
    conf = conf.astype(np.float64)
    tp, gt, pred = np.diag(conf), conf.sum(1), conf.sum(0)
    return {"iou": _ratio(tp, gt + pred - tp), "precision": _ratio(tp, pred),
            "recall": _ratio(tp, gt), "f1": _ratio(2 * tp, gt + pred)}


def _nanmean(v: np.ndarray) -> float:
    return float(np.nanmean(v)) if np.any(~np.isnan(v)) else 0.0


def _opt(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def summarize(conf: np.ndarray, class_names: tuple[str, ...] | None = None) -> dict:
    """Every metric of a confusion matrix.

    ``pixel_acc``: correct / labelled pixels. ``mean_pixel_acc``: recall averaged over the classes
    present in the ground truth. ``miou``: IoU averaged over the classes present in ground truth
    or prediction. ``fwiou``: IoU weighted by each class's share of the ground-truth pixels.
    ``mean_precision`` / ``mean_recall`` / ``mean_f1``: averages over the classes where each is
    defined. ``per_class_<iou|precision|recall|f1>``: {class name: value, or None where undefined}.
    Empty matrices give 0.0 for the scalars.
    """
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {conf.shape}")
    names = class_names or tuple(str(i) for i in range(conf.shape[0]))
    if len(names) != conf.shape[0]:
        raise ValueError(f"{len(names)} class names for a {conf.shape[0]}-class confusion matrix")
    scores = per_class_scores(conf)
    total = conf.sum()
    freq = conf.sum(1) / total if total else np.zeros(conf.shape[0])
    out = {"pixel_acc": float(np.trace(conf) / total) if total else 0.0,
           "mean_pixel_acc": _nanmean(scores["recall"]),
           "miou": _nanmean(scores["iou"]),
           "fwiou": float(np.nansum(freq * np.nan_to_num(scores["iou"]))),
           "mean_precision": _nanmean(scores["precision"]),
           "mean_recall": _nanmean(scores["recall"]),
           "mean_f1": _nanmean(scores["f1"])}
    for key, values in scores.items():
        out[f"per_class_{key}"] = {n: _opt(v) for n, v in zip(names, values)}
    return out


def trimap_band(label_hw: np.ndarray, width: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Boolean mask of pixels within `width` pixels of a label boundary (v1 paper, Fig. 5).

    Boundaries are where the label changes between 4-neighbours, the VOC 'void' band included,
    as in the papers' trimap that is built around the void-labelled object boundaries.
    """
    lab = label_hw.astype(np.int32)
    edge = np.zeros(lab.shape, dtype=bool)
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[1:, :] |= lab[:-1, :] != lab[1:, :]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, :-1] != lab[:, 1:]
    edge |= lab == ignore_index
    if width <= 0 or not edge.any():
        return edge  # no boundary at all: the band is empty
    dist = ndimage.distance_transform_edt(~edge)
    return dist <= width


def trimap_confusions(pred_hw: np.ndarray, label_hw: np.ndarray, num_classes: int,
                      widths: list[int], ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Confusion matrices restricted to each trimap band, shape (len(widths), C, C)."""
    out = np.zeros((len(widths), num_classes, num_classes), dtype=np.int64)
    lab = label_hw.astype(np.int32)
    edge = trimap_band(lab, 0, ignore_index)
    if not edge.any():
        return out  # no boundary: every band is empty
    edge_dist = ndimage.distance_transform_edt(~edge)
    for i, w in enumerate(widths):
        band = edge_dist <= w
        masked = np.where(band, lab, ignore_index)
        out[i] = confusion_matrix(pred_hw, masked, num_classes, ignore_index)
    return out


def trimap_curve(trimap_confs: np.ndarray, widths: list[int]) -> list[dict]:
    """mIoU, pixel accuracy and mean pixel accuracy per trimap width, from the stacked band
    confusion matrices (v2 paper, Fig. 10 plots the mIoU)."""
    rows = []
    for w, conf in zip(widths, trimap_confs):
        s = summarize(conf)
        rows.append({"band_width": int(w), "miou": s["miou"], "pixel_acc": s["pixel_acc"],
                     "mean_pixel_acc": s["mean_pixel_acc"]})
    return rows
