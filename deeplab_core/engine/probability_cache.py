"""The CRF search's probability cache built from a model with the engine's inference.

The cache format and its checks are ``deeplab_core.crf.cache``'s; this module fills one. It lives
in the engine, not in ``crf``, so that imports run one way: the engine uses the CRF, never the
reverse."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
import numpy as np

from deeplab_core.crf.cache import write_cache_item
from deeplab_core.engine.protocol import InferenceProtocol
from deeplab_core.fileio import atomic_write_json


def build_probability_cache(model, dataset, cache_dir: str | os.PathLike, key, device,
                            protocol: InferenceProtocol | None = None,
                            progress: bool = True) -> list[Path]:
    """Rebuild the probability cache in ``cache_dir`` for ``key`` and return its item files.

    The folder is wiped first (old probabilities and any results kept beside them belong to an
    old key), then each sample of ``dataset`` (a dict with ``id``, ``image`` normalised C x H x W
    tensor, ``raw_image`` H x W x 3 RGB, ``label`` H x W) is written as one item holding the
    model's softmax probabilities under ``protocol`` (its scales, flips, output stride, tiles
    and precision; not its CRF), at full image resolution. ``meta.json`` with ``key`` (JSON-serialisable) is written last, so an
    interrupted build is never taken for a current one. Check ``cache_is_current`` first to
    reuse a cache already built for the same key.
    """
    cache_dir = Path(cache_dir)
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    (cache_dir / "probs").mkdir(parents=True)
    protocol = protocol or InferenceProtocol()
    protocol.prepare(model).to(device)
    indices = range(len(dataset))
    if progress:
        from tqdm.auto import tqdm
        indices = tqdm(indices, desc="cache probabilities", unit="img", mininterval=2.0)
    files = []
    for i in indices:
        item = dataset[i]
        probs_chw = protocol.probabilities(model, item["image"].unsqueeze(0).to(device)
                                           )[0].cpu().numpy()
        label = item["label"].numpy().astype("uint8")
        raw = np.asarray(item["raw_image"], dtype=np.uint8)
        files.append(write_cache_item(cache_dir / "probs", item["id"], raw, probs_chw, label))
    atomic_write_json(cache_dir / "meta.json", {"key": key})
    return files
