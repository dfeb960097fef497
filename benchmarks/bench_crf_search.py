"""Does the coarse-to-fine CRF search find what the full grid finds? Checked on many CV sets.

    python benchmarks/bench_crf_search.py --cache DIR [--cache DIR2 ...] [--subset 50] [--trials 20]
    python benchmarks/bench_crf_search.py --model data/models/finetune/model.pt \\
        --val-list data/prepared/val.txt [--trials 20]

For each cache (a directory of ``<image_id>.npz`` items, e.g. ``data/crf_cache/probs``, or one
built here from a model over every image of a val list), every coarse-grid config is run once on
every image and its per-image confusion matrices are kept. Each trial then draws a random
``--subset`` of the images as the CV set: the full grid's best on it is a sum over those images
(no CRF run), and ``coarse_to_fine_search`` runs for real on the same images with the trial's
seed. Prints one JSON line: per trial the two bests, the difference, the search's best among the
coarse-grid points it scored on all images (did the climb find the grid's own best?) and the CRF
runs; over all trials the mean and minimum difference and the share of trials at or above the full
grid's best.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deeplab_core.crf.densecrf import CRFParams  # noqa: E402
from deeplab_core.crf.cache import list_cache  # noqa: E402
from deeplab_core.crf.evaluator import objective_value, per_image_confusions  # noqa: E402
from deeplab_core.crf.search import coarse_to_fine_search, paper_grid  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def build_cache(model: Path, val_list: Path, out: Path) -> Path:
    """Cache the model's probabilities on every image of ``val_list`` (the crf_search stage's own
    cache builder, over all ids instead of the CV subset, at single scale without flip and at
    the model's own output stride)."""
    from pipelines.stages.crf_search import build_cache as stage_cache
    from pipelines.stages.eval_data import read_list_ids

    ids = read_list_ids(val_list)
    from deeplab_core.engine.protocol import InferenceProtocol

    stage_cache.fn(model, val_list, ids, out, "cpu", InferenceProtocol())  # single scale
    return out / "probs"


def study(cache: Path, num_classes: int, subset: int, trials: int, workers: int, objective: str,
          budget_fraction: float, screen_images: int) -> dict:
    files = list_cache(cache)
    if len(files) < subset:
        raise SystemExit(f"{cache}: {len(files)} cache items, fewer than --subset {subset}")
    grid = paper_grid()
    t = time.perf_counter()
    confs = per_image_confusions(files, grid, num_classes, workers=workers)
    log(f"{cache}: per-image grid of {len(grid)} configs x {len(files)} images in "
        f"{time.perf_counter() - t:.0f} s")
    grid_keys = {p.key() for p in grid}
    out = []
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        idx = np.sort(rng.permutation(len(files))[:subset])
        sums = confs[:, idx].sum(axis=1)
        full = [objective_value(c, objective) for c in sums]
        b = int(np.argmax(full))
        t = time.perf_counter()
        res = coarse_to_fine_search([files[i] for i in idx], num_classes, workers=workers,
                                    progress=False, seed=trial, objective=objective,
                                    budget_fraction=budget_fraction, screen_images=screen_images)
        on_grid = [r for r in res["rows"]
                   if CRFParams.from_row(r).key() in grid_keys]
        best_on_grid = max(r[objective] for r in on_grid)
        row = {"trial": trial, "full_best": round(full[b], 5),
               "full_best_at": [grid[b].w1, grid[b].sigma_alpha, grid[b].sigma_beta],
               "c2f_best": round(res["best"][objective], 5),
               "c2f_best_at": [res["best"][k] for k in ("w1", "sigma_alpha", "sigma_beta")],
               "delta": round(res["best"][objective] - full[b], 5),
               "c2f_best_on_grid": round(best_on_grid, 5),
               "c2f_grid_points_on_all_images": len(on_grid),
               "c2f_crf_runs": res["crf_runs"], "full_crf_runs": len(grid) * subset,
               "c2f_wall_s": round(time.perf_counter() - t, 1)}
        log(json.dumps(row))
        out.append(row)
    d = np.array([r["delta"] for r in out])
    ratio = np.array([r["full_crf_runs"] / r["c2f_crf_runs"] for r in out])
    return {"cache": str(cache), "cache_images": len(files), "subset": subset, "trials": out,
            "delta_mean": round(float(d.mean()), 5), "delta_min": round(float(d.min()), 5),
            "share_at_or_above_full": round(float(np.mean(d >= 0)), 3),
            "share_within_0.1_points": round(float(np.mean(d >= -0.001)), 3),
            "share_found_grid_best": round(float(np.mean(
                [r["c2f_best_on_grid"] >= r["full_best"] for r in out])), 3),
            "grid_only_delta_min": round(float(min(r["c2f_best_on_grid"] - r["full_best"]
                                                   for r in out)), 5),
            "cost_ratio_min": round(float(ratio.min()), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, action="append", default=[])
    ap.add_argument("--model", type=Path, action="append", default=[],
                    help="build a cache from this checkpoint over every image of --val-list")
    ap.add_argument("--val-list", type=Path, default=Path("data/prepared/val.txt"))
    ap.add_argument("--num-classes", type=int, default=21)
    ap.add_argument("--subset", type=int, default=50, help="CV images per trial")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--objective", choices=["miou_gt", "miou"], default="miou_gt")
    ap.add_argument("--budget-fraction", type=float, default=0.25)
    ap.add_argument("--screen-images", type=int, default=4)
    args = ap.parse_args()
    if not args.cache and not args.model:
        ap.error("give --cache DIR or --model CHECKPOINT")

    tmp = tempfile.TemporaryDirectory()
    caches = list(args.cache)
    for i, m in enumerate(args.model):
        caches.append(build_cache(m, args.val_list, Path(tmp.name) / f"model{i}"))
    figures = {"objective": args.objective, "budget_fraction": args.budget_fraction,
               "screen_images": args.screen_images, "studies": []}
    for c in caches:
        figures["studies"].append(study(c, args.num_classes, args.subset, args.trials,
                                        args.workers, args.objective, args.budget_fraction,
                                        args.screen_images))
    tmp.cleanup()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
