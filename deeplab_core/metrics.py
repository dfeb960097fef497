"""Segmentation metrics as the DeepLab papers report them: confusion matrix, mIoU, per-class IoU,
pixel accuracy, and the boundary trimap accuracy (accuracy inside a band around label boundaries)."""

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


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU; NaN for classes absent from both ground truth and prediction."""
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def summarize(conf: np.ndarray, class_names: tuple[str, ...] | None = None) -> dict:
    """mIoU (mean over classes present), pixel accuracy and per-class IoU from a confusion matrix."""
    iou = iou_from_confusion(conf)
    total = conf.sum()
    names = class_names or tuple(str(i) for i in range(conf.shape[0]))
    return {
        "miou": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else 0.0,
        "pixel_acc": float(np.diag(conf).sum() / total) if total else 0.0,
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
    }


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
    """Pixel accuracy and mIoU per trimap width from the stacked band confusion matrices."""
    rows = []
    for w, conf in zip(widths, trimap_confs):
        s = summarize(conf)
        rows.append({"band_width": int(w), "pixel_acc": s["pixel_acc"], "miou": s["miou"]})
    return rows
