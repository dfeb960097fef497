"""Training throughput through the real engine (deeplab_core.engine.train.train).

    python benchmarks/bench_train.py [--presets light,v3_resnet101_os16_mg124] [--size 129]
        [--batch 4] [--steps 4] [--repeats 3] [--threads 2] [--nproc 2] [--ddp-preset light]
        [--no-ddp]

Prints one JSON line: for each preset, train images/s in float32, with bf16 autocast
(``amp: true``) and with channels_last; then the same global batch trained by 1 process with
``--threads`` threads and by ``--nproc`` processes (torchrun, gloo) with max(1, threads / nproc)
threads each (the same cores when threads >= nproc). The 1-minute load average before and after
is printed too: on a shared machine other work inflates every time. Images/s are timed from the end of the first (warm-up) step to the end
of the last, on random images and labels (the data pipeline is not part of the figure). Every
configuration runs --repeats times, interleaved with the others, and the best run counts: on a
shared machine other work only ever slows a run down.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from deeplab_core.config import TrainConfig  # noqa: E402
from deeplab_core.engine import distributed  # noqa: E402
from deeplab_core.engine.train import train  # noqa: E402
from deeplab_core.models import build_model  # noqa: E402

NUM_CLASSES = 21


class RandomImages(Dataset):
    """Fixed random images and labels of one size (no decoding, no augmentation)."""

    def __init__(self, n: int, size: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.labels = torch.randint(0, NUM_CLASSES, (n, size, size), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


def images_per_second(preset: str, size: int, batch: int, steps: int, **cfg) -> float:
    """Train images/s after one warm-up step (rank 0's clock under torchrun)."""
    torch.manual_seed(0)
    model = build_model(preset, num_classes=NUM_CLASSES)
    config = TrainConfig(iterations=steps + 1, batch_size=batch, lr=1e-3, log_every=1,
                         checkpoint_every=10**6, **cfg)
    stamps: list[float] = []
    train(model, RandomImages(2 * batch, size), config, torch.device("cpu"),
          log_metrics=lambda step, values: stamps.append(time.perf_counter()), progress=False)
    return batch * steps / (stamps[-1] - stamps[0]) if ddp_main() else float("nan")


def ddp_main() -> bool:
    return distributed.current().is_main


def ddp_figure(args: argparse.Namespace) -> float:
    """Run this script under torchrun with --nproc processes; rank 0 prints its figure."""
    cmd = [str(pathlib.Path(sys.executable).parent / "torchrun"), "--standalone",
           f"--nproc_per_node={args.nproc}", __file__, "--worker", "--ddp-preset",
           args.ddp_preset, "--size", str(args.size), "--batch", str(args.batch),
           "--steps", str(args.steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // args.nproc))}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["img_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="light,v3_resnet101_os16_mg124")
    ap.add_argument("--size", type=int, default=129)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--ddp-preset", default="light")
    ap.add_argument("--no-ddp", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        img_s = images_per_second(a.ddp_preset, a.size, a.batch, a.steps, batch_norm="frozen")
        if ddp_main():
            print(json.dumps({"img_s": img_s}))
        return
    torch.set_num_threads(a.threads)
    out: dict = {"size": a.size, "batch": a.batch, "steps": a.steps, "threads": a.threads,
                 "repeats": a.repeats, "loadavg_before": round(os.getloadavg()[0], 2)}
    variants = {"fp32": {}, "bf16": {"amp": True}, "channels_last": {"channels_last": True}}
    cases = {(p, v): (lambda p=p, kw=kw: images_per_second(p, a.size, a.batch, a.steps, **kw))
             for p in a.presets.split(",") for v, kw in variants.items()}
    if not a.no_ddp:
        cases[("ddp", "1 process")] = lambda: images_per_second(
            a.ddp_preset, a.size, a.batch, a.steps, batch_norm="frozen")
        cases[("ddp", f"{a.nproc} processes")] = lambda: ddp_figure(a)
    best = {key: fn() for key, fn in cases.items()}
    for _ in range(a.repeats - 1):
        best = {key: max(best[key], fn()) for key, fn in cases.items()}
    for (group, name), img_s in best.items():
        out.setdefault(group, {})[f"{name.replace(' ', '_')}_img_s"] = round(img_s, 3)
    if not a.no_ddp:
        ddp = out["ddp"]
        ddp.update({"preset": a.ddp_preset, "global_batch": a.batch, "batch_norm": "frozen",
                    "threads_per_process": max(1, a.threads // a.nproc),
                    "speedup": round(ddp[f"{a.nproc}_processes_img_s"]
                                     / ddp["1_process_img_s"], 2)})
    out["loadavg_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
