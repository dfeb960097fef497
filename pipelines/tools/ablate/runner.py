"""Running an ablation grid: one MLflow parent run, one child run per configuration, each
trained (train grids) and evaluated with the stages' own helpers, then the table."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from deeplab_core.config import Params
from pipelines import tracking
from pipelines.common import data_dir, dvc_stages, file_md5, run_stage
from pipelines.paths import StagePaths
from pipelines.stages.shared import require_inputs
from pipelines.tools.ablate.spec import Config, Grid, load_grid, shown
from pipelines.tools.ablate.tables import write_tables

@dataclass
class Shared:
    """What the configurations of one grid share: the eval images, the loaded model."""
    val_list: Path
    eval_ids: list[str]
    n_train: int = 0
    model: Any = None
    model_spec: dict = field(default_factory=dict)
    train_output_stride: int | None = None
    progress: bool = True


def eval_ids(grid: Grid, val_list: Path) -> list[str]:
    """The eval set's ids, split from val as the evaluate stage does (grid-level seed)."""
    from deeplab_core.engine.evaluate import split_cv
    from pipelines.stages.eval_data import read_list_ids

    ids = read_list_ids(val_list)
    if grid.eval_set == "val":
        return ids
    cv, holdout = split_cv(ids, grid.params.crf_search.cv_images, grid.params.base.seed)
    return holdout if grid.eval_set == "val_holdout" else cv


def check_inputs(grid: Grid) -> None:
    p = StagePaths.of(grid.params)
    need = [p.prepared_list("val")]
    if grid.kind == "train":
        need.append(p.prepared_list("train_aug"))
        if any(c.params.finetune.use_bootstrap for c in grid.configs):
            need.append(p.hard_images)
    require_inputs(f"ablation {grid.name}", *need)


def _evaluate(model, params: Params, grid: Grid, shared: Shared) -> dict:
    """The configuration's scores, by the evaluate stage's helper: ``miou`` as the configuration
    infers (with the CRF when it sets inference.crf), ``miou_no_crf`` and ``miou_crf``."""
    from deeplab_core.engine.protocol import InferenceProtocol
    from pipelines.stages.eval_data import evaluate_ids
    from pipelines.stages.shared import dataset_classes

    crf = grid.crf_params if params.inference.crf else None
    protocol = InferenceProtocol.from_config(params.inference, crf)
    names = dataset_classes(params).names
    t0 = time.perf_counter()
    with tracking.work("compute"):
        res = evaluate_ids(model, shared.eval_ids, shared.val_list, params,
                           protocol.with_overrides(crf=None), crf, names,
                           progress=shared.progress)
    seconds = time.perf_counter() - t0
    plain = res["plain"]
    out = {"miou_no_crf": plain["miou"], "pixel_acc_no_crf": plain["pixel_acc"],
           "n_images": res["n_images"], "eval_seconds": seconds,
           "seconds_per_image": seconds / max(1, res["n_images"])}
    final = plain
    if res["crf"] is not None:
        final = res["crf"]
        out.update({"miou_crf": final["miou"], "crf_gain": final["miou"] - plain["miou"]})
    out.update({"miou": final["miou"], "pixel_acc": final["pixel_acc"]})
    out.update({f"iou_{k}": v for k, v in final["per_class_iou"].items() if v is not None})
    return out


def _train(cfg: Config, grid: Grid, shared: Shared, workdir: Path) -> tuple[Any, dict]:
    """The configuration's network trained from scratch on train_aug as the finetune stage
    trains (the stage's model builder, dataset and fit; no resume checkpoint)."""
    from deeplab_core.engine.checkpoint import save_checkpoint
    from pipelines.stages.training import fit_model, load_dataset, make_model, read_repeat_ids

    params = cfg.params
    ft = params.finetune
    p = StagePaths.of(params)
    model, spec = make_model(params, None)
    repeat = read_repeat_ids(p.hard_images) if ft.use_bootstrap else None
    ds = load_dataset(p.prepared_list("train_aug"), ft, repeat)
    shared.n_train = len(ds)
    key = hashlib.md5(json.dumps([grid.name, cfg.name, cfg.settings], sort_keys=True,
                                 default=str).encode()).hexdigest()
    t0 = time.perf_counter()
    with tracking.work("compute"):
        res = fit_model(model, ds, ft, params, None, "ablation",
                        log_metrics=tracking.metric_logger(), progress=shared.progress,
                        run_key=key)
    n_params = sum(p.numel() for p in model.parameters())
    metrics = {"train_seconds": time.perf_counter() - t0, "final_loss": res.final_loss,
               "params_m": n_params / 1e6, "train_images": len(ds), "iterations": ft.iterations}
    ckpt = workdir / "model.pt"
    save_checkpoint(ckpt, model, spec, extra={"ablation": grid.name, "config": cfg.name,
                                              **metrics})
    import mlflow
    mlflow.log_artifact(str(ckpt), artifact_path="model")
    return model, metrics


def _inference_model(grid: Grid, shared: Shared):
    from deeplab_core.engine.checkpoint import load_checkpoint
    from deeplab_core.models import unwrap

    if shared.model is None:
        shared.model, meta = load_checkpoint(grid.model)
        shared.model_spec = meta["spec"]
        shared.train_output_stride = unwrap(shared.model).output_stride
    return shared.model


def run_config(grid: Grid, index: int, parent_id: str, shared: Shared) -> dict:
    """One configuration as an MLflow child run of `parent_id`: its settings as params, its
    metrics; returns the table row."""
    import mlflow

    from deeplab_core.models import set_output_stride, unwrap

    cfg = grid.configs[index]
    if cfg.params.base.torch_threads:
        import torch
        torch.set_num_threads(cfg.params.base.torch_threads)
    tags = {"grid": grid.name, "ablation_config": cfg.name, "ablation_index": str(index),
            "overlay": json.dumps(cfg.overlay, sort_keys=True)[:5000],
            **tracking.dvc_exp_tags()}
    with mlflow.start_run(run_name=f"{grid.name}/{cfg.name}", nested=True,
                          parent_run_id=parent_id, tags=tags) as run, \
            tempfile.TemporaryDirectory(prefix="ablation-") as work:
        settings = json.loads(json.dumps(cfg.settings, default=str))
        metrics: dict = {}
        if grid.kind == "inference":
            model = _inference_model(grid, shared)
            settings["model"] = {"file": shown(grid.model), "preset": shared.model_spec["preset"],
                                 "train_output_stride": shared.train_output_stride}
        else:
            model, metrics = _train(cfg, grid, shared, Path(work))
            shared.train_output_stride = unwrap(model).output_stride
        eval_os = cfg.params.inference.output_stride or shared.train_output_stride
        set_output_stride(model, eval_os)
        settings["eval"]["output_stride"] = eval_os
        if cfg.params.inference.crf:
            settings["crf"] = grid.crf_params.to_dict()
        settings["eval"]["set"] = grid.eval_set
        mlflow.log_params({k: str(v)[:500] for k, v in tracking.flatten(settings).items()})
        metrics.update(_evaluate(model, cfg.params, grid, shared))
        if grid.kind == "inference":
            set_output_stride(model, shared.train_output_stride)
        tracking.log_metrics(metrics)
        return {"config": cfg.name, "settings": settings, "metrics": metrics,
                "run_id": run.info.run_id}


def _parent_tags(grid: Grid) -> dict:
    """The stages' run tags (commit, DVC experiment, pipeline run; run as a stage of dvc.yaml,
    its lineage too) and the grid's."""
    dvc_stage = os.environ.get("DVC_STAGE")
    as_stage = dvc_stage if dvc_stage and dvc_stage in dvc_stages() else None
    return {**tracking.run_tags("ablation", as_stage),
            **({"dvc_stage": as_stage} if as_stage else {}),
            "grid": grid.name, "grid_kind": grid.kind, "grid_file": shown(grid.path)}


def run_grid(grid: Grid, out_dir: Path | None = None, progress: bool = True,
             runner=None) -> list[dict]:
    """Run every configuration of `grid` under one MLflow parent run and write the table;
    returns the rows. `runner(grid, index, parent_id, shared)` runs one configuration
    (run_config, or the flow's task)."""
    check_inputs(grid)
    d = data_dir(grid.params)
    out_dir = Path(out_dir).absolute() if out_dir else d / "ablations" / grid.name
    val_list = StagePaths(d).prepared_list("val")
    shared = Shared(val_list=val_list, eval_ids=eval_ids(grid, val_list), progress=progress)
    runner = runner or run_config
    mlflow = tracking.configure()
    with mlflow.start_run(run_name=f"ablation/{grid.name}", tags=_parent_tags(grid)) as parent:
        parent_id = parent.info.run_id
        mlflow.log_params({"grid.md5": grid.md5, "grid.kind": grid.kind,
                           "grid.eval_set": grid.eval_set, "grid.cumulative": grid.cumulative,
                           "grid.configs": len(grid.configs),
                           **({"model.file": shown(grid.model),
                               "model.md5": file_md5(grid.model)} if grid.model else {}),
                           **{f"base.{k}": str(v)[:500]
                              for k, v in tracking.flatten(yaml.safe_load(grid.text)
                                                           .get("base") or {}).items()}})
        mlflow.log_text(grid.text, f"grid/{grid.path.name}")
        rows = [runner(grid, i, parent_id, shared) for i in range(len(grid.configs))]
        md_path, csv_path = write_tables(grid, shared, rows, out_dir)
        tracking.log_artifacts([md_path, csv_path], "table")
        best = max(rows, key=lambda r: r["metrics"]["miou"])
        mlflow.log_metrics({"best_miou": best["metrics"]["miou"], "n_configs": len(rows),
                            "n_images": len(shared.eval_ids)})
        mlflow.set_tag("best_config", best["config"])
    print(md_path.read_text())
    for r in rows:
        m = r["metrics"]
        train = f", trained in {m['train_seconds']:.0f} s" if "train_seconds" in m else ""
        print(f"{r['config']}: {m['seconds_per_image']:.3f} s per image{train} "
              f"(run {r['run_id']})")
    print(f"tables: {shown(md_path)}, {shown(csv_path)}; MLflow parent run {parent_id}")
    return rows


@task(name="ablation_config", cache_policy=NO_CACHE)
def config_task(grid: Grid, index: int, parent_id: str, shared: Shared) -> dict:
    return run_config(grid, index, parent_id, shared)


@flow(name="ablate")
def ablate_flow(grid: str, out: str | None = None, model: str | None = None,
                crf_params: str | None = None) -> list[dict]:
    """Run an ablation grid (a file in ablations/ or a path) as nested MLflow runs."""
    g = load_grid(grid, model=model, crf_params=crf_params)
    rows = run_grid(g, Path(out) if out else None, runner=config_task)
    return [{"config": r["config"], "miou": r["metrics"]["miou"], "run_id": r["run_id"]}
            for r in rows]


def main(argv: list[str] | None = None) -> None:
    from pipelines.tools import ablate

    ap = argparse.ArgumentParser(prog="python -m pipelines.tools.ablate", description=ablate.__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid", help="grid name in ablations/ (e.g. v3_inference) or a YAML file")
    ap.add_argument("--out", help="folder for table.md and table.csv "
                                  "(default <data_dir>/ablations/<grid name>)")
    ap.add_argument("--model", help="model file for an inference grid (replaces 'model')")
    ap.add_argument("--crf-params", help="CRF parameters file (replaces 'crf_params')")
    args = ap.parse_args(argv)
    # Paths are taken relative to where the command runs (MLflow may move to the project root).
    out = str(Path(args.out).absolute()) if args.out else None
    model = str(Path(args.model).absolute()) if args.model else None
    crf = str(Path(args.crf_params).absolute()) if args.crf_params else None

    def go() -> None:
        grid = load_grid(args.grid, model=model, crf_params=crf)  # fails before Prefect starts
        ablate_flow(str(grid.path), out=out, model=model, crf_params=crf)

    run_stage(go)
