"""Trains the `micro` model on a list file, alone or as one rank under torchrun, and writes the
run's loss history and final weights (rank 0); with --eval-only, evaluates the untrained model
on the list and writes the confusion matrix instead: the subject of tests/test_ddp.py.

  torchrun --standalone --nproc_per_node 2 tests/ddp_train_script.py --list L --out DIR --cfg JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplab_core.config import TrainConfig  # noqa: E402
from deeplab_core.data.dataset import SegmentationListDataset  # noqa: E402
from deeplab_core.data.transforms import train_transform  # noqa: E402
from deeplab_core.engine import distributed  # noqa: E402
from deeplab_core.engine.train import train  # noqa: E402
from deeplab_core.models import build_model  # noqa: E402

NUM_CLASSES, SEED = 4, 3


class FailAfter(SegmentationListDataset):
    """Raises on the (n+1)-th sample read: every rank reads the same number of samples per step,
    so all ranks stop at the same step, as a killed job would."""

    def __init__(self, *args, n: int, **kw):
        super().__init__(*args, **kw)
        self.n, self.reads = n, 0

    def get_raw(self, i):
        self.reads += 1
        if self.reads > self.n:
            raise RuntimeError(f"simulated failure after {self.n} samples")
        return super().get_raw(i)


def dataset(list_file: Path, fail_after: int | None) -> SegmentationListDataset:
    tf = train_transform(32, (0.75, 1.25))
    if fail_after is None:
        return SegmentationListDataset(list_file, transform=tf)
    return FailAfter(list_file, transform=tf, n=fail_after)


def seeded_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("micro", num_classes=NUM_CLASSES)


def evaluate_only(model: torch.nn.Module, list_file: Path, out: Path) -> None:
    from deeplab_core.data.transforms import eval_transform
    from deeplab_core.engine.evaluate import evaluate

    ds = SegmentationListDataset(list_file, transform=eval_transform())
    distributed.setup(torch.device("cpu"))
    res = evaluate(model, ds, NUM_CLASSES, torch.device("cpu"), trimap_widths=(1, 3),
                   progress=False)
    if distributed.current().is_main:
        out.mkdir(parents=True, exist_ok=True)
        acc = res["accumulators"]["plain"]
        np.savez(out / "confusion.npz", conf=acc.conf, trimap=acc.trimap)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cfg", required=True, help="TrainConfig fields as JSON")
    ap.add_argument("--ckpt", type=Path, default=None)
    ap.add_argument("--fail-after-samples", type=int, default=None)
    ap.add_argument("--eval-only", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = seeded_model()
    if a.eval_only:
        evaluate_only(model, a.list, a.out)
        return distributed.shutdown()
    cfg = TrainConfig(**json.loads(a.cfg))
    res = train(model, dataset(a.list, a.fail_after_samples), cfg, torch.device("cpu"),
                seed=SEED, checkpoint_path=a.ckpt, progress=False)
    if distributed.current().is_main:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "history.json").write_text(json.dumps(
            {"history": res.history, "resumed_from": res.resumed_from,
             "world_size": distributed.current().world_size}))
        torch.save(model.state_dict(), a.out / "model.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main()
