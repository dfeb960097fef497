"""Model benchmark: parameters, FLOPs, forward / train-step throughput and execution variants.

    python benchmarks/bench_models.py [--presets light,micro] [--size 513] [--iters 3]
    python benchmarks/bench_models.py --presets light --learn 120 --size 129 --batch 8


Prints one JSON line per preset (after one line with the measured matmul peak). FLOPs count
2 x the multiply-accumulates of Conv2d/Linear layers (forward hooks); achieved FLOP/s is
FLOPs / forward time, also given as a fraction of a large float32 matmul's rate measured in the
same run. Variants report time ratios (< 1 is faster) of channels_last, torch.inference_mode
(vs no_grad) and bf16 autocast against the plain float32 no_grad forward. Runs on CUDA when
available.

``--learn SECONDS`` instead trains each preset for that long on a synthetic task (coloured discs
and rectangles plus 1-2 pixel thin lines on a tinted noisy background, 4 classes) and prints the
training speed and per-class IoU on a fixed validation batch.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from deeplab_core.models import build_model, count_macs, count_parameters  # noqa: E402

DEFAULT_PRESETS = "micro,light,v3plus_resnet101"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device: torch.device, iters: int, warmup: int = 1) -> float:
    """Median seconds per call after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def matmul_peak(device: torch.device, n: int = 2048, iters: int = 5) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t = timeit(lambda: a @ b, device, iters)
    return 2 * n ** 3 / t


def bench_preset(preset: str, size: int, iters: int, device: torch.device, peak: float,
                 variants: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(preset, num_classes=21).to(device)
    x = torch.randn(1, 3, size, size, device=device)
    target = torch.randint(0, 21, (1, size, size), device=device)
    model.eval()
    macs = count_macs(model, x)
    flops = 2 * macs

    def fwd_no_grad():
        with torch.no_grad():
            model(x)

    t_fwd = timeit(fwd_no_grad, device, iters)

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step():
        out = model(x)
        outs = out if isinstance(out, list) else [out]
        loss = sum(F.cross_entropy(o, target) for o in outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t_train = timeit(train_step, device, iters)
    model.eval()
    row = {
        "preset": preset, "device": str(device), "size": size, "batch": 1,
        "params": count_parameters(model), "gflops_per_image": round(flops / 1e9, 3),
        "forward_s": round(t_fwd, 4), "forward_img_per_s": round(1 / t_fwd, 3),
        "train_step_s": round(t_train, 4), "train_img_per_s": round(1 / t_train, 3),
        "achieved_gflop_per_s": round(flops / t_fwd / 1e9, 2),
        "fraction_of_matmul_peak": round(flops / t_fwd / peak, 3),
    }
    if variants:
        def fwd_inference_mode():
            with torch.inference_mode():
                model(x)

        def fwd_bf16():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                model(x)

        row["inference_mode_ratio"] = round(timeit(fwd_inference_mode, device, iters) / t_fwd, 3)
        try:
            row["bf16_autocast_ratio"] = round(timeit(fwd_bf16, device, iters) / t_fwd, 3)
        except RuntimeError as err:  # autocast unsupported for some op on this device
            row["bf16_autocast_ratio"] = f"unsupported: {err}"[:120]
        model_cl = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def fwd_channels_last():
            with torch.no_grad():
                model_cl(x_cl)

        row["channels_last_ratio"] = round(timeit(fwd_channels_last, device, iters) / t_fwd, 3)
        model.to(memory_format=torch.contiguous_format)
    return row


SHAPE_COLOURS = {1: (1.0, 0.2, 0.2), 2: (0.2, 0.9, 0.2), 3: (0.2, 0.3, 1.0)}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def synthetic_shapes(n: int, size: int, rng: np.random.RandomState) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (normalised) and labels: 0 background, 1 discs, 2 rectangles, 3 thin lines."""
    x = np.zeros((n, 3, size, size), np.float32)
    y = np.zeros((n, size, size), np.int64)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        x[i] = rng.rand(3, 1, 1) * 0.6 + 0.1 * rng.randn(3, size, size)
        masks = []
        for _ in range(rng.randint(1, 3)):
            cy, cx = rng.randint(size // 8, size - size // 8, 2)
            r = rng.randint(size // 16, size // 6)
            masks.append((1, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r))
        for _ in range(rng.randint(1, 3)):
            y0, x0 = rng.randint(0, size - size // 4, 2)
            h, w = rng.randint(size // 12, size // 4, 2)
            masks.append((2, (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)))
        for _ in range(rng.randint(1, 4)):
            a, (cy, cx) = rng.rand() * math.pi, rng.rand(2) * size
            width = rng.choice([1.0, 1.5, 2.0])
            dist = np.abs((yy - cy) * math.cos(a) - (xx - cx) * math.sin(a))
            masks.append((3, dist < width / 2 + 0.01))
        for cls, m in masks:
            x[i][:, m] = np.array(SHAPE_COLOURS[cls], np.float32)[:, None]
            y[i][m] = cls
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x), torch.from_numpy(y)


def learn(preset: str, seconds: float, size: int, batch: int, device: torch.device,
          overrides: dict) -> dict:
    torch.manual_seed(0)
    rng = np.random.RandomState(0)
    model = build_model(preset, num_classes=4, **overrides).to(device)
    xv, yv = synthetic_shapes(32, size, np.random.RandomState(12345))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps, step_times, t0 = 0, [], time.perf_counter()
    model.train()
    while time.perf_counter() - t0 < seconds:
        x, y = synthetic_shapes(batch, size, rng)
        x, y = x.to(device), y.to(device)
        t = time.perf_counter()
        out = model(x)
        outs = out if isinstance(out, list) else [out]
        loss = sum(F.cross_entropy(o, y) for o in outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        step_times.append(time.perf_counter() - t)
        steps += 1
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xv[i:i + 8].to(device)).argmax(1).cpu() for i in range(0, 32, 8)])
    ious = []
    for c in range(4):
        inter = ((pred == c) & (yv == c)).sum().item()
        union = ((pred == c) | (yv == c)).sum().item()
        ious.append(round(inter / max(union, 1), 3))
    return {"preset": preset, "overrides": overrides, "device": str(device), "size": size,
            "batch": batch, "seconds": seconds, "steps": steps,
            "median_train_step_s": round(float(np.median(step_times)), 4),
            "final_loss": round(loss.item(), 4), "iou_bg_disc_rect_line": ious,
            "miou": round(float(np.mean(ious)), 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default=DEFAULT_PRESETS, help="comma-separated preset names")
    ap.add_argument("--size", type=int, default=513, help="square input size")
    ap.add_argument("--iters", type=int, default=3, help="timed repetitions (median reported)")
    ap.add_argument("--no-variants", action="store_true", help="skip channels_last/inference/bf16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--learn", type=float, default=0.0,
                    help="train on synthetic shapes for this many seconds per preset instead")
    ap.add_argument("--batch", type=int, default=8, help="batch size for --learn")
    ap.add_argument("--overrides", default="{}", help="JSON dict of build_model overrides")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = json.loads(args.overrides)
    if args.learn > 0:
        for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
            print(json.dumps(learn(preset, args.learn, args.size, args.batch, device, overrides)),
                  flush=True)
        return
    peak = matmul_peak(device)
    print(json.dumps({"matmul_fp32_peak_gflop_per_s": round(peak / 1e9, 2), "device": str(device),
                      "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
    for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
        print(json.dumps(bench_preset(preset, args.size, args.iters, device, peak,
                                      not args.no_variants)), flush=True)


if __name__ == "__main__":
    main()
