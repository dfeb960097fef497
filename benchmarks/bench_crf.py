"""Benchmark of the dense CRF wrapper and its parameter search. Prints one JSON line of figures.

    python benchmarks/bench_crf.py [--cache data/crf_cache] [--num-classes 21] [--workers 2]

1. CRF time per image, ours (``dense_crf``: input checks + mapping) vs a bare pydensecrf call on the
   same inputs (500x375, 21 classes, 10 iterations); the bare call is the usual recipe
   (pydensecrf.utils.unary_from_softmax, DenseCRF2D, both kernels, inference, np.array, argmax).
2. Search throughput (CRF evaluations/s) of ``evaluate_configs`` at 1 and N workers, wall clock,
   pool start-up and cache loading included.
3. Projected cost of the paper's full grid (128 configs) on 100 VOC-sized images.
4. Coarse-to-fine (one run per screening seed) vs full grid on the cache: configs evaluated, CRF
   runs, best of the search objective (miou_gt) and of the standard mIoU, wall time.
   ``bench_crf_search.py`` repeats this comparison over many random CV sets.

Without ``--cache`` a synthetic cache is generated (sharp-edged shapes, blurred noisy softmax).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydensecrf.densecrf as dcrf  # noqa: E402
from pydensecrf.utils import unary_from_softmax  # noqa: E402

from deeplab_core.crf.densecrf import CRFParams, dense_crf  # noqa: E402
from deeplab_core.crf.cache import list_cache  # noqa: E402
from deeplab_core.crf.evaluator import evaluate_configs  # noqa: E402
from deeplab_core.crf.search import coarse_to_fine_search, full_grid_search  # noqa: E402
from tests.crf_fixtures import make_synthetic_cache, synthetic_item  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def bare_crf(image, probs, p: CRFParams):
    c, h, w = probs.shape
    u = unary_from_softmax(probs)
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(u))
    d.addPairwiseGaussian(sxy=p.sigma_gamma, compat=p.w2)
    d.addPairwiseBilateral(sxy=p.sigma_alpha, srgb=p.sigma_beta, rgbim=image, compat=p.w1)
    q = np.array(d.inference(p.iterations)).reshape(c, h, w)
    return q.argmax(0), q


def bench_single(reps: int) -> dict:
    rng = np.random.default_rng(0)
    image, probs, _ = synthetic_item(rng, 375, 500, 21, noise=2.0)
    p = CRFParams()
    bare_crf(image, probs, p), dense_crf(image, probs, p)  # warm-up
    ours, bare = [], []
    for r in range(reps):  # interleaved, alternating order, so drifting load hits both alike
        pair = [("bare", bare_crf), ("ours", dense_crf)]
        for name, fn in (pair if r % 2 == 0 else pair[::-1]):
            t = time.perf_counter()
            labels, _ = fn(image, probs, p)
            (bare if name == "bare" else ours).append(time.perf_counter() - t)
    lb, _ = bare_crf(image, probs, p)
    lo, _ = dense_crf(image, probs, p)
    return {
        "crf_image": "500x375", "crf_classes": 21, "crf_iterations": p.iterations, "reps": reps,
        "ours_ms": round(1000 * statistics.median(ours), 1),
        "bare_ms": round(1000 * statistics.median(bare), 1),
        "ours_over_bare": round(statistics.median(ours) / statistics.median(bare), 3),
        "ours_min_ms": round(1000 * min(ours), 1), "bare_min_ms": round(1000 * min(bare), 1),
        "same_labels": bool(np.array_equal(lb, lo)),
        "loadavg_after_timing": round(os.getloadavg()[0], 2),
    }


def _cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_throughput(files, num_classes, workers, n_configs) -> dict:
    configs = [CRFParams(w1=w, sigma_alpha=a, sigma_beta=3.0)
               for w, a in zip([3, 4, 5, 6] * 4, [30, 50, 70, 90, 40, 60, 80, 100] * 2)][:n_configs]
    out = {"throughput_configs": len(configs), "throughput_images": len(files)}
    rows_by_w = {}
    n_evals = len(configs) * len(files)
    for w in sorted({1, workers}):
        cpu0 = _cpu_s()
        t = time.perf_counter()
        rows_by_w[w] = evaluate_configs(files, configs, num_classes, workers=w, results_path=None,
                                        progress=False)
        dt = time.perf_counter() - t
        cpu = _cpu_s() - cpu0
        out[f"evals_per_s_{w}w"] = round(n_evals / dt, 2)
        # CPU seconds per evaluation over this process and its finished workers: equal values at
        # 1 and N workers mean the pool adds no work, so the wall speed-up is bounded by free cores
        out[f"cpu_ms_per_eval_{w}w"] = round(1000 * cpu / n_evals, 1)
        out[f"loadavg_after_{w}w"] = round(os.getloadavg()[0], 2)
        log(f"throughput {w} worker(s): {out[f'evals_per_s_{w}w']} CRF evals/s ({dt:.1f} s, "
            f"{out[f'cpu_ms_per_eval_{w}w']} CPU ms/eval, load {out[f'loadavg_after_{w}w']})")
    out["speedup"] = round(out[f"evals_per_s_{workers}w"] / out["evals_per_s_1w"], 3)
    out["rows_identical"] = rows_by_w[1] == rows_by_w[workers]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="directory of <image_id>.npz cache items")
    ap.add_argument("--num-classes", type=int, default=None,
                    help="class count (default: 21 for --cache, 6 for the synthetic cache)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7, help="repetitions of the single-image timing")
    ap.add_argument("--synth-images", type=int, default=64)
    ap.add_argument("--synth-size", default="96x128", help="HxW of synthetic images")
    ap.add_argument("--throughput-configs", type=int, default=32)
    ap.add_argument("--skip-grid", action="store_true", help="skip the full-grid comparison")
    ap.add_argument("--seeds", type=int, default=3,
                    help="coarse-to-fine runs, each screening a different draw of images")
    ap.add_argument("--heatmap", type=Path, help="write the full grid's mIoU heatmaps here")
    args = ap.parse_args()

    figures: dict = {"cpu_count": os.cpu_count(), "python": platform.python_version()}
    log("single-image timing ...")
    figures.update(bench_single(args.reps))
    log(json.dumps(figures))

    tmp = None
    if args.cache:
        files = list_cache(args.cache)
        num_classes = args.num_classes or 21
        figures["cache"] = str(args.cache)
    else:
        tmp = tempfile.TemporaryDirectory()
        h, w = (int(v) for v in args.synth_size.split("x"))
        num_classes = args.num_classes or 6
        # low colour contrast and little pixel noise: the mIoU surface then peaks inside the grid
        # in sigma_beta instead of growing toward its corner
        files = make_synthetic_cache(tmp.name, args.synth_images, h, w, num_classes, seed=0,
                                     pixel_noise=2.0, texture=8.0, contrast=0.3)
        figures["cache"] = (f"synthetic {args.synth_images} images {h}x{w}, {num_classes} classes "
                            "(pixel_noise=2, texture=8, contrast=0.3)")
    figures["cache_images"] = len(files)

    figures.update(bench_throughput(files, num_classes, args.workers, args.throughput_configs))

    per_image_s = figures["ours_ms"] / 1000
    runs = 128 * 100
    figures["paper_grid_100_voc_images"] = {
        "crf_runs": runs,
        "hours_1_worker": round(runs * per_image_s / 3600, 2),
        f"hours_{args.workers}_workers": round(runs * per_image_s / figures["speedup"] / 3600, 2),
    }

    if not args.skip_grid:
        common = dict(workers=args.workers, results_path=None, progress=False)
        t = time.perf_counter()
        full = full_grid_search(files, num_classes, **common)
        t_full = time.perf_counter() - t
        log(f"full grid: {t_full:.1f} s, best {full['best']}")

        def at(row):
            return {k: row[k] for k in ("w1", "sigma_alpha", "sigma_beta")}

        full_miou = max(full["rows"], key=lambda r: r["miou"])
        search_fig = {
            "objective": full["objective"],
            "baseline_miou": round(full["baseline_miou"], 5),
            "baseline_miou_gt": round(full["baseline_miou_gt"], 5),
            "full_grid": {"configs": full["n_evaluated"], "crf_runs": full["crf_runs"],
                          "best_miou_gt": round(full["best"]["miou_gt"], 5),
                          "best": at(full["best"]),
                          "best_miou": round(full_miou["miou"], 5), "best_miou_at": at(full_miou),
                          "wall_s": round(t_full, 1)},
            "coarse_to_fine": [],
        }
        for seed in range(args.seeds):
            t = time.perf_counter()
            c2f = coarse_to_fine_search(files, num_classes, fine=True, seed=seed, **common)
            t_c2f = time.perf_counter() - t
            log(f"coarse-to-fine seed {seed}: {t_c2f:.1f} s, best {c2f['best']}")
            search_fig["coarse_to_fine"].append({
                "seed": seed, "configs_all_images": c2f["n_evaluated"],
                "configs_screened": len(c2f["screen_rows"]), "crf_runs": c2f["crf_runs"],
                "full_pass_equivalents": round(c2f["full_pass_equivalents"], 2),
                "best_miou_gt": round(c2f["best"]["miou_gt"], 5),
                "best_miou": round(c2f["best"]["miou"], 5), "best": at(c2f["best"]),
                "wall_s": round(t_c2f, 1),
                "cost_ratio": round(full["crf_runs"] / c2f["crf_runs"], 2),
                "wall_ratio": round(t_full / t_c2f, 2),
                "best_miou_gt_delta": round(c2f["best"]["miou_gt"] - full["best"]["miou_gt"], 5),
            })
        figures["search"] = search_fig
        if args.heatmap:
            from deeplab_core.crf.plots import plot_heatmaps
            plot_heatmaps(full["rows"], args.heatmap, metric="miou_gt", label="miou_gt (%)")
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
