"""Prediction figures of `deeplab-predict`'s library path (deeplab_core.engine.infer.Segmenter).
Prints one JSON line.

    python benchmarks/bench_predict.py [--checkpoint data/models/finetune/model.pt]
                                       [--preset light] [--images 6] [--tile-sizes 1024,512]

Throughput (images/s, after one warm-up image) on 500x375 images (PASCAL VOC size: scenes of the
project's synthetic data) without and with the dense CRF (default parameters, 10 iterations),
decoding and writing excluded; then the peak memory of predicting one 2048x1024 image whole and
in overlapping tiles (each of --tile-sizes, square, 256 px overlap), each measured in a fresh process:
the rise of the peak resident set size over the process's size after loading the model (on a
GPU: torch.cuda.max_memory_allocated), and the share of pixels on which the two agree.
Without --checkpoint the preset is built with random weights (21 classes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_segmenter(a: argparse.Namespace, **kwargs):
    import torch

    from deeplab_core.engine.checkpoint import load_checkpoint
    from deeplab_core.engine.infer import Segmenter
    from deeplab_core.models import build_model

    torch.manual_seed(0)
    if a.checkpoint:
        model = load_checkpoint(Path(a.checkpoint))[0]
    else:
        model = build_model(a.preset, num_classes=21)
    from deeplab_core.crf.densecrf import CRFParams

    return Segmenter(model, CRFParams(iterations=10), device=a.device, **kwargs)


def scene(seed: int, h: int, w: int) -> np.ndarray:
    from deeplab_core.data.synthetic.scenes import render_scene

    return render_scene(np.random.default_rng(seed), h, w).image


def throughput(a: argparse.Namespace, use_crf: bool) -> float:
    seg = make_segmenter(a)
    images = [scene(i, 375, 500) for i in range(a.images + 1)]
    seg(images[0], use_crf=use_crf)  # warm-up
    t0 = time.perf_counter()
    for im in images[1:]:
        seg(im, use_crf=use_crf)
    return a.images / (time.perf_counter() - t0)


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _memory_child(a: argparse.Namespace, tile_size: int | None, out) -> None:
    import torch

    torch.set_num_threads(a.threads)
    seg = make_segmenter(a, tile_size=tile_size, tile_overlap=256)
    image = scene(0, 1024, 2048)
    seg(scene(1, 64, 64), use_crf=False)  # lazy initialisation outside the measurement
    if seg.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = _peak_bytes()
    t0 = time.perf_counter()
    mask = seg(image, use_crf=False)
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if seg.device.type == "cuda"
            else _peak_bytes() - before)
    out.put({"peak_mib": peak / 2**20, "seconds": seconds, "mask": mask})


def memory(a: argparse.Namespace, tile_size: int | None) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_memory_child, args=(a, tile_size, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--preset", default="light")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--tile-sizes", default="1024,512", help="comma-separated tile sides")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    plain, crf = throughput(a, False), throughput(a, True)
    whole = memory(a, None)
    tiled = {int(t): memory(a, int(t)) for t in a.tile_sizes.split(",")}
    print(json.dumps({
        "bench": "predict", "model": a.checkpoint or f"{a.preset} (random weights)",
        "device": a.device, "threads": a.threads, "images": a.images,
        "images_per_s_500x375": round(plain, 2), "images_per_s_500x375_crf": round(crf, 2),
        "peak_mib_2048x1024_whole": round(whole["peak_mib"], 1),
        "seconds_2048x1024_whole": round(whole["seconds"], 2), "tile_overlap": 256,
        **{f"{k}_tile{t}": v for t, r in tiled.items() for k, v in (
            ("peak_mib_2048x1024", round(r["peak_mib"], 1)),
            ("seconds_2048x1024", round(r["seconds"], 2)),
            ("agrees_with_whole", round(float((whole["mask"] == r["mask"]).mean()), 4)))}}))


if __name__ == "__main__":
    main()
