"""Torch dataset over a prepared list file, and a padding collate for variable-size batches."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from deeplab_core.classes import IGNORE_INDEX
from deeplab_core.data.io import PathLike, read_list_file, read_sample
from deeplab_core.data.transforms import EvalTransform, as_generator, eval_transform


class SegmentationListDataset(Dataset):
    """Samples of a ``<id> <image_path> <label_path>`` list file.

    * ``data_root``: base folder of relative paths in the list; None = the list file's folder
      (the convention of :func:`deeplab_core.data.prepare.prepare_datasets`).
    * ``transform``: ``(image uint8 HxWx3, label uint8 HxW, rng) -> (FloatTensor, LongTensor)``;
      default :func:`eval_transform`.
    * ``repeat_ids``: ids appended once more per occurrence (the bootstrap list of images with hard
      classes); an id not in the list raises ValueError.
    * ``return_raw``: add ``"raw_image"`` (uint8 HxWx3 tensor) to each item; default: only with an
      :class:`EvalTransform`.

    Indexed directly, a random transform draws from torch's generator (seeded per DataLoader
    worker). Training draws each sample's augmentation from a generator of its own instead, through
    :meth:`get_raw` and ``transform`` (see :mod:`deeplab_core.engine.train`).

    Items are dicts ``{"image": 3xHxW float, "label": HxW int64, "id": str[, "raw_image"]}``.
    """

    def __init__(self, list_file: PathLike, data_root: PathLike | None = None, transform=None,
                 repeat_ids: Sequence[str] | None = None, return_raw: bool | None = None,
                 extra_lists: Sequence[PathLike] = ()):
        self.list_file = Path(list_file)
        entries = read_list_file(self.list_file, data_root)
        seen = {e[0] for e in entries}
        for extra_list in extra_lists:  # e.g. val after train_aug: trainval_aug
            more = read_list_file(Path(extra_list), data_root)
            twice = sorted(seen & {e[0] for e in more})
            if twice:
                raise ValueError(f"list file {str(extra_list)!r} repeats ids of the lists before "
                                 f"it: {twice[:5]}" + (f" (+{len(twice) - 5} more)"
                                                       if len(twice) > 5 else ""))
            entries += more
            seen |= {e[0] for e in more}
        if not entries:
            raise ValueError(f"list file {str(self.list_file)!r} holds no samples")
        self.base_count = len(entries)
        by_id = {e[0]: e for e in entries}
        extra = []
        unknown = []
        for rid in repeat_ids or ():
            if rid in by_id:
                extra.append(by_id[rid])
            else:
                unknown.append(rid)
        if unknown:
            raise ValueError(f"repeat_ids not in {str(self.list_file)!r}: {unknown[:5]}"
                             + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""))
        self.samples: list[tuple[str, Path, Path]] = entries + extra
        self.transform = transform if transform is not None else eval_transform()
        self.return_raw = isinstance(self.transform, EvalTransform) if return_raw is None \
            else bool(return_raw)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list[str]:
        return [s[0] for s in self.samples]

    def get_raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 HxWx3 image, uint8 HxW label) of sample ``i``, untransformed; the image in its
        displayed orientation (:func:`~deeplab_core.data.io.read_sample`)."""
        sid, img_path, lab_path = self.samples[i]
        return read_sample(img_path, lab_path, sid)

    def __getitem__(self, i: int) -> dict:
        image, label = self.get_raw(i)
        img_t, lab_t = self.transform(image, label, rng=as_generator(None))
        item = {"image": img_t, "label": lab_t, "id": self.samples[i][0]}
        if self.return_raw:
            item["raw_image"] = torch.from_numpy(np.array(image))  # writable copy
        return item


def pad_collate(batch: Iterable[dict], ignore_index: int = IGNORE_INDEX) -> dict:
    """Stack items of different sizes: images padded with 0 (the normalised mean) at the
    bottom/right, labels with ``ignore_index``, raw images with 0. Adds ``"size"``: (B, 2) int64
    original (H, W) of each item."""
    batch = list(batch)
    if not batch:
        raise ValueError("empty batch")
    hs = [b["image"].shape[-2] for b in batch]
    ws = [b["image"].shape[-1] for b in batch]
    H, W = max(hs), max(ws)
    n = len(batch)
    images = batch[0]["image"].new_zeros((n, batch[0]["image"].shape[0], H, W))
    out = {"image": images, "id": [b["id"] for b in batch],
           "size": torch.tensor(list(zip(hs, ws)), dtype=torch.int64)}
    has_label = all(b.get("label") is not None for b in batch)
    if has_label:
        out["label"] = torch.full((n, H, W), ignore_index, dtype=torch.int64)
    if all("raw_image" in b for b in batch):
        out["raw_image"] = torch.zeros((n, H, W, 3), dtype=torch.uint8)
    for k, b in enumerate(batch):
        h, w = hs[k], ws[k]
        images[k, :, :h, :w] = b["image"]
        if has_label:
            out["label"][k, :h, :w] = b["label"]
        if "raw_image" in out:
            out["raw_image"][k, :h, :w] = b["raw_image"]
    return out
