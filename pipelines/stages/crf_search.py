"""crf_search stage: cache the fine-tuned model's probabilities on a held-out cross-validation
subset of val once, then search the dense-CRF parameters (coarse-to-fine by default, or the
papers' full grid) in worker processes. Resumable: finished configurations are never recomputed.

Outs: data/crf_search/{best_params.json, table.csv, heatmaps.png, search_trace.png}, metrics data/metrics/crf_search.json.
The probability cache and the results journal live in data/crf_cache (persistent across runs,
reset when the model, the CV images or the inference setting change)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from prefect import flow, task

from deeplab_core.crf.cache import cache_is_current, probability_cache_files
from deeplab_core.crf.evaluator import sort_journal
from deeplab_core.engine.checkpoint import load_checkpoint
from deeplab_core.engine.evaluate import split_cv
from deeplab_core.engine.probability_cache import build_probability_cache
from deeplab_core.runtime import pool_workers, resolve_device
from pipelines import tracking
from pipelines.common import get_params, run_stage, update_with_file
from pipelines.stages.shared import atomic_dir, require_inputs, write_json
from pipelines.stages.eval_data import eval_dataset, read_list_ids
from pipelines.paths import StagePaths


def file_md5(path: Path) -> str:
    return update_with_file(hashlib.md5(), path).hexdigest()


def cache_inference(params) -> dict:
    """The inference setting of the cached probabilities: evaluate's scales and flip and the
    model's evaluation output stride (dvc.yaml lists these params as deps of crf_search)."""
    return {"scales": [float(s) for s in params.evaluate.scales],
            "flip": bool(params.evaluate.flip),
            "eval_output_stride": params.model.eval_output_stride}


@task
@tracking.work("compute")
def build_cache(model_path: Path, val_list: Path, cv_ids: list[str], cache_dir: Path,
                device_name: str, inference: dict) -> list[Path]:
    """One npz per CV image (raw image, softmax probabilities, label), built once per model and
    inference setting. `inference` ({"scales", "flip", "eval_output_stride"}) is the setting the
    evaluate stage applies the CRF to, so the parameters are searched on the same probabilities."""
    eval_output_stride = inference["eval_output_stride"]
    key = {"model_md5": file_md5(model_path), "cv_ids": cv_ids, "eval_os": eval_output_stride,
           "scales": inference["scales"], "flip": inference["flip"]}
    if cache_is_current(cache_dir, key, cv_ids):
        print(f"probability cache up to date ({len(cv_ids)} images)")
        return probability_cache_files(cache_dir, cv_ids)
    model, _ = load_checkpoint(model_path)
    if eval_output_stride:
        from deeplab_core.models import set_output_stride
        set_output_stride(model, eval_output_stride)
    return build_probability_cache(model, eval_dataset(val_list, cv_ids), cache_dir, key,
                                   resolve_device(device_name), inference["scales"],
                                   inference["flip"])


@task
@tracking.work("compute")
def search(files: list[Path], cfg, num_classes: int, results_path: Path, seed: int) -> dict:
    from deeplab_core.crf import search as s

    common = dict(w1_grid=cfg.w1_grid, sigma_alpha_grid=cfg.sigma_alpha_grid,
                  sigma_beta_grid=cfg.sigma_beta_grid, w2=cfg.w2, sigma_gamma=cfg.sigma_gamma,
                  iterations=cfg.iterations, workers=pool_workers(cfg.workers),
                  results_path=results_path,
                  progress=True, objective=cfg.objective)
    if cfg.strategy == "full":
        result = s.full_grid_search(files, num_classes, **common)
    else:
        result = s.coarse_to_fine_search(files, num_classes, seed=seed,
                                         screen_images=cfg.screen_images,
                                         budget_fraction=cfg.budget_fraction, **common)
    sort_journal(results_path)  # rows arrive in worker order: sorted, the output is repeatable
    return result


def write_table(path: Path, rows: list[dict], screen_rows: list[dict]) -> None:
    """Every config the search scored: those on all CV images first (best first), then those
    scored only on the screening images, with ``estimate`` (their objective estimated for all
    images; best first). ``n_images`` tells which is which."""
    screen = sorted(screen_rows, key=lambda r: -r["estimate"])
    fields = list(dict.fromkeys(k for r in rows + screen for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", restval="")
        w.writeheader()
        w.writerows(rows + screen)


def _point(row: dict) -> tuple[float, float, float]:
    return row["w1"], row["sigma_alpha"], row["sigma_beta"]


def _grid_points(cfg) -> set[tuple[float, float, float]]:
    """The (w1, sigma_alpha, sigma_beta) points of the configured coarse grid."""
    return {(w, a, b) for w in cfg.w1_grid for a in cfg.sigma_alpha_grid
            for b in cfg.sigma_beta_grid}


def grid_rows_for_heatmap(result: dict, cfg) -> tuple[list[dict], str, str]:
    """What to draw over the coarse grid: (rows, metric key, title).

    The rows scored on all CV images when they cover the whole grid (the full grid search);
    otherwise the coarse-to-fine screen, drawn as the objective it estimated for all CV images
    from the screened ones, which is what the search ranked the grid by. ([], "", "") when
    no row lies on the grid."""
    grid = _grid_points(cfg)
    objective = result.get("objective", "miou")
    n = result.get("n_images", 0)

    def on_grid(rows):
        return {_point(r): r for r in rows if _point(r) in grid}

    full = on_grid(result["rows"])
    if full and len(full) == len(grid):
        return list(full.values()), objective, f"CRF coarse grid, {objective} (%) on all {n} CV images"
    screen = on_grid(r for r in result.get("screen_rows", []) if "estimate" in r)
    if screen:
        k = next(iter(screen.values()))["n_images"]
        return (list(screen.values()), "estimate",
                f"CRF grid screen: {objective} (%) of all {n} CV images estimated from {k}")
    if full:
        return list(full.values()), objective, f"CRF grid, {objective} (%) on all {n} CV images"
    return [], "", ""


@tracking.work("compute")
def save_figures(out: Path, result: dict, rows: list[dict], cfg, n_cv: int) -> None:
    """heatmaps.png (the coarse grid) and search_trace.png (every config scored on all CV
    images)."""
    from deeplab_core.crf.plots import plot_heatmaps, plot_search_trace

    objective = result["objective"]
    shown, metric, title = grid_rows_for_heatmap(result, cfg)
    if shown:
        plot_heatmaps(shown, out / "heatmaps.png", title=title, metric=metric,
                      label=f"{objective} (%)")
    else:
        plot_heatmaps(rows, out / "heatmaps.png", metric=objective, label=f"{objective} (%)")
    grid = _grid_points(cfg)
    trace = [{**r, "on_grid": _point(r) in grid} for r in result["rows"]]
    plot_search_trace(trace, out / "search_trace.png", metric=objective,
                      baseline=result[f"baseline_{objective}"],
                      title=f"CRF search ({cfg.strategy}): {len(trace)} configs on all {n_cv} "
                            f"CV images, {result['crf_runs']} CRF runs")


def best_params_record(result: dict, best_params: dict, cv_ids: list[str], cfg) -> dict:
    """best_params.json: the chosen CRF parameters and how they scored on the CV images."""
    best = result["best"]
    return {"params": best_params, "cv_miou": best["miou"], "cv_miou_gt": best["miou_gt"],
            "cv_miou_without_crf": result["baseline_miou"],
            "cv_miou_gt_without_crf": result["baseline_miou_gt"], "objective": result["objective"],
            "cv_images": cv_ids, "strategy": cfg.strategy, "crf_runs": result["crf_runs"]}


def summary_metrics(result: dict, best_params: dict, n_cv: int, n_configs: int) -> dict:
    """metrics/crf_search.json: the search's size, the best CV scores with and without the CRF,
    and the best parameters."""
    best = result["best"]
    return {"cv_images": n_cv, "configs_evaluated": n_configs,
            "crf_runs": result.get("crf_runs"), "cv_miou_crf": best["miou"],
            "cv_miou_plain": result["baseline_miou"],
            "cv_gain": best["miou"] - result["baseline_miou"],
            "cv_miou_gt_crf": best["miou_gt"], "cv_miou_gt_plain": result["baseline_miou_gt"],
            **{f"best_{k}": v for k, v in best_params.items()}}


@flow(name="crf_search")
def crf_search_flow() -> dict:
    from deeplab_core.crf.densecrf import CRFParams

    params = get_params()
    cfg = params.crf_search
    p = StagePaths.of(params)
    model_path = p.model_file("finetune")
    require_inputs("crf_search", model_path)
    val_list = p.prepared_list("val")
    cv_ids, _ = split_cv(read_list_ids(val_list), cfg.cv_images, params.base.seed)
    inference = cache_inference(params)
    with tracking.stage_run("crf_search", {"crf_search": cfg.model_dump(), "inference": inference}):
        files = build_cache(model_path, val_list, cv_ids, p.crf_cache, params.base.device,
                            inference)
        result = search(files, cfg, params.base.num_classes, p.crf_cache / "results.jsonl",
                        params.base.seed)
        best_params = CRFParams.from_row(result["best"]).to_dict()
        rows = sorted(result["rows"], key=lambda r: -r[result["objective"]])
        with atomic_dir(p.crf_search) as tmp:
            write_json(tmp / p.best_params.name,
                       best_params_record(result, best_params, cv_ids, cfg))
            write_table(tmp / "table.csv", rows, result.get("screen_rows", []))
            save_figures(tmp, result, rows, cfg, len(cv_ids))
        metrics = summary_metrics(result, best_params, len(cv_ids), len(rows))
        tracking.publish_metrics(p.metrics_file("crf_search"), metrics,
                                 artifacts=[p.crf_search], artifact_path="crf_search")
    print(f"crf_search: best {best_params} cv mIoU {result['best']['miou']:.4f} "
          f"(no CRF {result['baseline_miou']:.4f}), {len(rows)} configs")
    return metrics


if __name__ == "__main__":
    run_stage(crf_search_flow)
