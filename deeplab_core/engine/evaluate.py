"""Inference (multi-scale + flip) and evaluation: mIoU, per-class IoU and the boundary trimap curve,
before and after the dense CRF. CRF inference runs in worker processes (pydensecrf holds the GIL)."""

from __future__ import annotations

import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deeplab_core import metrics
from deeplab_core.engine import distributed
from deeplab_core.models.deeplab import aligns_corners, upsample_to

if TYPE_CHECKING:
    from deeplab_core.crf.densecrf import CRFParams


def _rescale(image_nchw: torch.Tensor, s: float) -> torch.Tensor:
    """Bilinear resize by factor s; at least 1x1 (a tiny image at scale 0.5 stays one pixel)."""
    h, w = image_nchw.shape[-2:]
    if int(h * s) < 1 or int(w * s) < 1:
        return F.interpolate(image_nchw, size=(max(1, int(h * s)), max(1, int(w * s))),
                             mode="bilinear", align_corners=False)
    return F.interpolate(image_nchw, scale_factor=s, mode="bilinear", align_corners=False,
                         recompute_scale_factor=False)


@torch.inference_mode()
def predict_probs(model: nn.Module, image_nchw: torch.Tensor, scales: Iterable[float] = (1.0,),
                  flip: bool = False, autocast: torch.dtype | None = None) -> torch.Tensor:
    """Softmax probabilities (N, C, H, W) at the input resolution, averaged over input scales and
    (optionally) horizontal flips, as in DeepLab's multi-scale + flip test-time inference.
    ``autocast``: the network's forward pass autocast to that dtype (softmax and averaging stay
    in float32)."""
    model.eval()
    n, _, h, w = image_nchw.shape
    total = None
    count = 0
    for s in scales:
        x = image_nchw if s == 1.0 else _rescale(image_nchw, s)
        for flipped in ((False, True) if flip else (False,)):
            xi = torch.flip(x, dims=[3]) if flipped else x
            with torch.autocast(image_nchw.device.type, dtype=autocast or torch.bfloat16,
                                enabled=autocast is not None):
                logits = model(xi)
            if flipped:
                logits = torch.flip(logits, dims=[3])
            logits = upsample_to(logits, (h, w), aligns_corners(model))
            p = torch.softmax(logits.float(), dim=1)
            del logits  # at most two full-resolution maps alive at a time
            total = p if total is None else total.add_(p)
            count += 1
    return total if count == 1 else total.div_(count)


@dataclass
class EvalAccumulator:
    """Confusion matrices of whole images and of each trimap band, for one prediction source."""
    num_classes: int
    widths: tuple[int, ...]
    conf: np.ndarray = field(init=False)
    trimap: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        c = self.num_classes
        self.conf = np.zeros((c, c), dtype=np.int64)
        self.trimap = np.zeros((len(self.widths), c, c), dtype=np.int64)

    def add(self, pred_hw: np.ndarray, label_hw: np.ndarray) -> None:
        self.conf += metrics.confusion_matrix(pred_hw, label_hw, self.num_classes)
        if self.widths:
            self.trimap += metrics.trimap_confusions(pred_hw, label_hw, self.num_classes,
                                                     list(self.widths))

    def merge(self, other: "EvalAccumulator") -> "EvalAccumulator":
        out = EvalAccumulator(self.num_classes, self.widths)
        out.conf = self.conf + other.conf
        out.trimap = self.trimap + other.trimap
        return out

    def report(self, class_names: tuple[str, ...] | None = None) -> dict:
        out = metrics.summarize(self.conf, class_names)
        out["trimap"] = metrics.trimap_curve(self.trimap, list(self.widths))
        return out


def _crf_job(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    from deeplab_core.crf.densecrf import dense_crf
    labels, _ = dense_crf(image, probs, params)
    return labels


def _as_is(item):
    return item


def _items(dataset, indices: range, num_workers: int, device: torch.device):
    """The dataset's items at ``indices``, read in this process or, with workers, ahead of use."""
    if num_workers <= 0:
        return (dataset[i] for i in indices)
    from torch.utils.data import DataLoader

    from deeplab_core.runtime import loader_options
    return iter(DataLoader(dataset, batch_size=None, sampler=list(indices), collate_fn=_as_is,
                           **loader_options(num_workers, device)))


def evaluate(model: nn.Module, dataset, num_classes: int, device: torch.device,
             scales: Iterable[float] = (1.0,), flip: bool = False,
             trimap_widths: Iterable[int] = (), crf_params: CRFParams | None = None,
             crf_workers: int = 1, class_names: tuple[str, ...] | None = None,
             on_prediction: Callable[[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]
             | None = None, progress: bool = True, num_workers: int = 0,
             autocast: torch.dtype | None = None) -> dict:
    """Evaluate over `dataset` (items: dict with 'image' 3xHxW normalised, 'label' HxW, 'id',
    'raw_image' uint8 HxWx3). Returns {'plain': report, 'crf': report or None, 'n_images': int}.

    `on_prediction(id, raw_image, probs_chw, pred_hw, label_hw)` is called for each image (e.g. to
    cache probabilities for the CRF search or to draw example figures). Under torchrun each
    process evaluates every world_size-th image and the confusion matrices are summed over all
    processes (on_prediction sees this process's images only). `num_workers` > 0 reads the
    images in DataLoader workers (pinned memory on CUDA), ahead of the network; `autocast` as in
    `predict_probs`.
    """
    if crf_params is not None:
        from deeplab_core.crf.densecrf import check_optional_params
        check_optional_params(crf_params)
    widths = tuple(int(w) for w in trimap_widths)
    plain = EvalAccumulator(num_classes, widths)
    crf_acc = EvalAccumulator(num_classes, widths) if crf_params is not None else None
    model.to(device).eval()
    pool = None
    threads = torch.get_num_threads()
    if crf_params is not None:
        pool = ProcessPoolExecutor(max_workers=crf_workers)
        # CRF workers share the cores with the network: fewer torch threads avoids OpenMP
        # oversubscription, which slows small convolutions down by orders of magnitude.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - crf_workers))
    pending: list[tuple[Future, np.ndarray]] = []

    def drain(limit: int) -> None:
        while len(pending) > limit:
            fut, lab = pending.pop(0)
            crf_acc.add(fut.result(), lab)

    iterator = _items(dataset, distributed.shard(len(dataset)), num_workers, device)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc="evaluate", unit="img", mininterval=2.0,
                        total=len(distributed.shard(len(dataset))))
    try:
        for item in iterator:
            x = item["image"].unsqueeze(0).to(device, non_blocking=True)
            label = item["label"].numpy() if torch.is_tensor(item["label"]) else item["label"]
            raw = np.ascontiguousarray(np.asarray(item["raw_image"], dtype=np.uint8))
            probs = predict_probs(model, x, scales, flip, autocast)[0].cpu().numpy()
            pred = probs.argmax(0).astype(np.uint8)
            plain.add(pred, label)
            if on_prediction is not None:
                on_prediction(item["id"], raw, probs, pred, label)
            if pool is not None:
                pending.append((pool.submit(_crf_job, raw, probs, crf_params), label))
                drain(4 * crf_workers)
        if pool is not None:
            drain(0)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
            torch.set_num_threads(threads)
    for acc in (plain, crf_acc):
        if acc is not None:
            acc.conf, acc.trimap = (distributed.all_reduce_array(acc.conf),
                                    distributed.all_reduce_array(acc.trimap))
    return {"n_images": len(dataset), "plain": plain.report(class_names),
            "crf": crf_acc.report(class_names) if crf_acc is not None else None,
            "accumulators": {"plain": plain, "crf": crf_acc}}


def split_cv(ids: list[str], n_cv: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split val ids into a CRF cross-validation subset of n_cv images and the held-out rest
    (deterministic for a seed); the final metrics are reported on the held-out rest."""
    if len(ids) < 2:
        raise ValueError(f"need at least 2 val images to hold some out for the CRF search, got "
                         f"{len(ids)}")
    n_cv = min(n_cv, len(ids) - 1)
    order = np.random.default_rng(seed).permutation(len(ids))
    cv = sorted(ids[i] for i in order[:n_cv])
    rest = sorted(ids[i] for i in order[n_cv:])
    return cv, rest
