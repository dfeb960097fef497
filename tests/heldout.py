"""Evaluate's held-out val images of a micro project, and the mIoU of masks on them: what the
tests that compare served or predicted masks with evaluate's scores share."""

from __future__ import annotations

from pathlib import Path


def holdout(root: Path):
    """(ids, list file, number of classes) of evaluate's held-out images in project `root`."""
    from deeplab_core.config import load_params
    from deeplab_core.data.io import read_list_file
    from deeplab_core.engine.evaluate import split_cv
    from pipelines.paths import StagePaths

    params = load_params(root / "params.yaml")
    val_list = StagePaths(root / "data").prepared_list("val")
    entries = {sid: (img, lab) for sid, img, lab in read_list_file(val_list)}
    _, held = split_cv(sorted(entries), params.crf_search.cv_images, params.base.seed)
    return held, val_list, params.base.num_classes


def miou(masks, labels, num_classes: int) -> float:
    from deeplab_core import metrics

    conf = sum(metrics.confusion_matrix(m, lab, num_classes) for m, lab in zip(masks, labels))
    return metrics.summarize(conf)["miou"]
