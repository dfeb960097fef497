"""Loader benchmark: does data loading keep up with training?

    python benchmarks/bench_loader.py [--images 48] [--batches 6] [--steps 2] [--v3-batch 2]

For each recipe (``default``: params.yaml's finetune crop, batch and model on synthetic-size
images; ``v3``: the DeepLab v3 preset's 513 crop, batch 16 and ResNet-101 model on VOC-size
375x500 JPEGs) it measures the training loader's rate in images/s with 0, 1 and 2 DataLoader
workers (decode JPEG + palette PNG, random scale, crop, flip, normalise: the stage's own
``SegmentationListDataset`` and ``train_transform``), and the train-step rate (forward, loss,
backward, optimizer step) of the recipe's model on the device, as images/s. ``keeps_up`` is true
where the loader is at least as fast as training. The v3 step is timed at ``--v3-batch`` images
(its per-image rate scales with the batch) to keep a CPU run short. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deeplab_core.config import load_params  # noqa: E402
from deeplab_core.data.dataset import SegmentationListDataset  # noqa: E402
from deeplab_core.data.io import write_jpeg, write_label_png, write_list_file  # noqa: E402
from deeplab_core.data.transforms import train_transform  # noqa: E402
from deeplab_core.engine.train import segmentation_loss  # noqa: E402
from deeplab_core.runtime import resolve_device  # noqa: E402
from deeplab_core.models import build_model  # noqa: E402

V3_PRESET = REPO / "presets" / "v3_resnet101_os16_mg124.yaml"


def write_dataset(root: pathlib.Path, n: int, h: int, w: int) -> pathlib.Path:
    """``n`` textured JPEGs with palette labels of a few rectangles, and their list file."""
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        label = np.zeros((h, w), np.uint8)
        image = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
        for _ in range(3):
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            cls = int(rng.integers(1, 21))
            label[y:y + h // 3, x:x + w // 3] = cls
            image[y:y + h // 3, x:x + w // 3] = rng.integers(0, 256, 3)
        write_jpeg(root / "img" / f"{i}.jpg", image)
        write_label_png(root / "lab" / f"{i}.png", label)
        entries.append((str(i), f"img/{i}.jpg", f"lab/{i}.png"))
    return write_list_file(root / "list.txt", entries)


def loader_rate(list_file, crop: int, scales, batch: int, workers: int, batches: int) -> float:
    ds = SegmentationListDataset(list_file, transform=train_transform(crop, scales))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    n, t0 = 0, None
    while n < batches:
        for _ in loader:
            if t0 is None:   # the first batch pays for starting the workers: not timed
                t0 = time.perf_counter()
                continue
            n += 1
            if n >= batches:
                break
    return batch * batches / (time.perf_counter() - t0)


def train_rate(preset: str, crop: int, batch: int, device, steps: int) -> float:
    model = build_model(preset, num_classes=21).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, crop, crop, device=device)
    y = torch.randint(0, 21, (batch, crop, crop), device=device)
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        loss = segmentation_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:        # the first step warms up
            times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


def recipes(v3_batch: int) -> dict:
    base = load_params(REPO / "params.yaml")
    v3 = yaml.safe_load(V3_PRESET.read_text())
    s = base.prepare.synthetic
    ft = base.finetune
    return {"default": {"preset": base.model.preset, "crop": ft.crop_size, "batch": ft.batch_size,
                        "scales": (ft.scale_min, ft.scale_max), "train_batch": ft.batch_size,
                        "image": (s.image_height, s.image_width)},
            "v3": {"preset": v3["model"]["preset"], "crop": v3["finetune"]["crop_size"],
                   "batch": v3["finetune"]["batch_size"], "train_batch": v3_batch,
                   "scales": (v3["finetune"]["scale_min"], v3["finetune"]["scale_max"]),
                   "image": (375, 500)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batches", type=int, default=6, help="timed batches per loader setting")
    ap.add_argument("--steps", type=int, default=2, help="timed train steps per recipe")
    ap.add_argument("--v3-batch", type=int, default=2)
    ap.add_argument("--workers", default="0,1,2")
    args = ap.parse_args()
    device = resolve_device("auto")
    out = {"device": str(device), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, r in recipes(args.v3_batch).items():
            lf = write_dataset(pathlib.Path(tmp) / name, args.images, *r["image"])
            train = train_rate(r["preset"], r["crop"], r["train_batch"], device, args.steps)
            loader = {w: loader_rate(lf, r["crop"], r["scales"], r["batch"], int(w),
                                     args.batches) for w in args.workers.split(",")}
            out[name] = {"preset": r["preset"], "crop": r["crop"], "batch": r["batch"],
                         "image_hw": list(r["image"]),
                         "train_images_per_s": round(train, 2),
                         "loader_images_per_s": {w: round(v, 1) for w, v in loader.items()},
                         "keeps_up": {w: v >= train for w, v in loader.items()}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
