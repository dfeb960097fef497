"""Evaluation datasets over a list file, restricted to a subset of ids (CRF CV / held-out val)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Subset

from deeplab_core.data.io import read_list_file
from pipelines.common import StageError


def read_list_ids(list_file: Path) -> list[str]:
    if not Path(list_file).is_file():
        raise StageError(f"list not found: {list_file} (run the prepare stage)")
    return [sid for sid, _, _ in read_list_file(list_file)]


def eval_dataset(list_file: Path, ids: list[str]):
    """Full-resolution, normalised samples (with the raw RGB image) for the given ids, in order."""
    from deeplab_core.data.dataset import SegmentationListDataset
    from deeplab_core.data.transforms import eval_transform

    ds = SegmentationListDataset(list_file, transform=eval_transform())
    index = {sid: i for i, sid in enumerate(read_list_ids(list_file))}
    missing = [i for i in ids if i not in index]
    if missing:
        raise StageError(f"ids {missing[:5]} not in {list_file}")
    return Subset(ds, [index[i] for i in ids])
