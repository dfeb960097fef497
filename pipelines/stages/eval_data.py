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


def evaluate_ids(model, ids: list[str], val_list: Path, params, protocol, crf_params=None,
                 names: tuple[str, ...] | None = None, on_prediction=None,
                 progress: bool = True) -> dict:
    """deeplab_core's evaluate of ``model`` under ``protocol`` on the val images ``ids`` (and,
    with ``crf_params``, with that CRF too), with the evaluate section's trimap widths and CRF
    workers and the dataset's class ``names``."""
    from deeplab_core.engine.evaluate import evaluate
    from deeplab_core.runtime import loader_workers, pool_workers, resolve_device

    cfg = params.evaluate
    device = resolve_device(params.base.device)
    return evaluate(model, eval_dataset(val_list, ids), params.base.num_classes, device,
                    protocol=protocol, trimap_widths=cfg.trimap_widths, crf_params=crf_params,
                    crf_workers=pool_workers(cfg.crf_workers), class_names=names,
                    on_prediction=on_prediction, progress=progress,
                    num_workers=loader_workers(params.base.num_workers, device))


def searched_crf(best_params_file: Path, params):
    """(the CRF parameters crf_search found, or None when inference.crf is off; the search's
    decision: {"crf_chosen", "cv_gain", "reason"}) from its best_params.json."""
    import json

    from deeplab_core.crf.densecrf import CRFParams

    if not params.inference.crf:
        return None, {"crf_chosen": False, "cv_gain": None,
                      "reason": "no CRF: inference.crf is false"}
    crf = CRFParams.from_file(best_params_file)
    record = json.loads(Path(best_params_file).read_text())
    if "crf_chosen" not in record:
        raise StageError(f"{best_params_file} has no 'crf_chosen' decision (written by an older "
                         "crf_search): re-run the crf_search stage")
    return crf, {k: record.get(k) for k in ("crf_chosen", "cv_gain", "reason")}


def stage_protocol(params, best_params_file: Path | None = None):
    """The inference protocol the stages measure and register: params.yaml's ``inference``
    section with the CRF crf_search found when it beat no CRF on the CV images (and
    inference.crf is true). Without ``best_params_file``: the protocol without a CRF (what
    crf_search caches probabilities under). Returns (protocol, searched CRF or None, decision)."""
    from deeplab_core.engine.protocol import InferenceProtocol

    if best_params_file is None:
        return InferenceProtocol.from_config(params.inference), None, None
    crf, decision = searched_crf(best_params_file, params)
    chosen = crf if decision["crf_chosen"] else None
    return InferenceProtocol.from_config(params.inference, chosen), crf, decision
