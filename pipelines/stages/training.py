"""Shared body of the pretrain (COCO, VOC classes) and finetune (VOC trainaug) stages, on one
process or data-parallel: with `base.nproc` > 1 the stage relaunches itself under torchrun; rank 0
runs the Prefect flow (MLflow, outputs, checkpoints), the other ranks only train beside it."""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from prefect import task

from deeplab_core import viz
from deeplab_core.config import ConfigError, Params, TrainConfig
from deeplab_core.engine import distributed
from deeplab_core.engine.checkpoint import build_from_spec, load_checkpoint, model_spec, save_checkpoint
from deeplab_core.engine.train import train
from deeplab_core.fileio import atomic_torch_save
from deeplab_core.models import set_output_stride
from deeplab_core.runtime import resolve_device, seed_everything
from pipelines import tracking
from pipelines.common import StageError, get_params, run_stage, stage_inputs_hash
from pipelines.ops.procs import run_group
from pipelines.stages.shared import atomic_dir, write_json
from pipelines.paths import StagePaths


@dataclass(frozen=True)
class TrainingInputs:
    """What one training stage trains on: its config section, list file, initial weights and
    the ids to repeat (bootstrapping)."""
    cfg: TrainConfig
    list_file: Path
    init_checkpoint: Path | None = None
    repeat_ids: list[str] | None = None
    extra_lists: tuple[Path, ...] = ()


def train_options(params: Params, run_key: str = "") -> dict:
    """The base settings `train()` takes beside the stage's TrainConfig."""
    return {"seed": params.base.seed, "run_key": run_key, "num_workers": params.base.num_workers}


def load_dataset(list_file: Path, cfg: TrainConfig, repeat_ids: list[str] | None = None,
                 extra_lists: tuple[Path, ...] = ()):
    from deeplab_core.data.dataset import SegmentationListDataset
    from deeplab_core.data.transforms import train_transform

    for f in (list_file, *extra_lists):
        if not f.is_file():
            raise StageError(f"training list not found: {f} (run the prepare stage)")
    tf = train_transform(cfg.crop_size, scale_range=(cfg.scale_min, cfg.scale_max), flip=True)
    # No per-sample seed: augmentations then come from torch's generator, seeded by train().
    ds = SegmentationListDataset(list_file, transform=tf, repeat_ids=repeat_ids,
                                 extra_lists=extra_lists)
    if len(ds) == 0:
        raise StageError(f"training list {list_file} is empty")
    return ds


def make_model(params: Params, init_checkpoint: Path | None):
    m = params.model
    # Seeded before the weights are drawn: the same params give the same initial model, so the
    # stage's outputs are byte-identical from run to run.
    seed_everything(params.base.seed)
    spec = model_spec(m.preset, params.base.num_classes, m.output_stride, m.overrides)
    if init_checkpoint is not None:
        model, meta = load_checkpoint(init_checkpoint)
        if meta["spec"]["preset"] != m.preset or meta["spec"]["num_classes"] != spec["num_classes"]:
            raise StageError(f"{init_checkpoint} holds preset {meta['spec']['preset']!r} with "
                             f"{meta['spec']['num_classes']} classes; params ask for {m.preset!r} "
                             f"with {spec['num_classes']}: re-run pretrain")
        if spec["output_stride"] and meta["spec"]["output_stride"] != spec["output_stride"]:
            set_output_stride(model, spec["output_stride"])  # e.g. v3's OS16 -> OS8 stage
        return model, spec
    return build_from_spec(spec, pretrained_backbone=m.pretrained_backbone), spec


# The flow's tasks; a non-zero rank (no flow run) calls the plain functions.
build_dataset = task(load_dataset, name="build_dataset")
init_model = task(make_model, name="init_model")


@task
@tracking.work("compute")
def fit(model, dataset, cfg: TrainConfig, params: Params, ckpt_path: Path, stage: str):
    return _fit(model, dataset, cfg, params, ckpt_path, stage,
                log_metrics=tracking.metric_logger(f"{stage}_"))


def _fit(model, dataset, cfg: TrainConfig, params: Params, ckpt_path: Path, stage: str,
         log_metrics=None, progress: bool = True):
    if params.base.torch_threads:
        torch.set_num_threads(params.base.torch_threads)
    device = resolve_device(params.base.device)
    return train(model, dataset, cfg, device, **train_options(params, stage_inputs_hash(stage)),
                 checkpoint_path=ckpt_path, log_metrics=log_metrics, progress=progress)


def run_training(stage: str, params: Params, inputs: TrainingInputs) -> dict:
    """Train (or, when cfg.enabled is false, pass the initial weights through) and write
    data/models/<stage>/model.pt, data/metrics/<stage>.json and data/plots/<stage>_loss.json
    and .png."""
    cfg, list_file, init_checkpoint = inputs.cfg, inputs.list_file, inputs.init_checkpoint
    repeat_ids = inputs.repeat_ids
    paths = StagePaths.of(params)
    sections = {"base": params.base.model_dump(), "model": params.model.model_dump(),
                stage: cfg.model_dump()}
    with tracking.stage_run(stage, sections):
        model, spec = init_model(params, init_checkpoint)
        n_params = sum(p.numel() for p in model.parameters())
        metrics: dict = {"enabled": cfg.enabled, "params_m": n_params / 1e6}
        history: list[dict] = []
        if cfg.enabled:
            ds = build_dataset(list_file, cfg, repeat_ids, inputs.extra_lists)
            # Resume file: a persistent, uncached out in dvc.yaml, so an interrupted stage
            # continues where it stopped; marked complete at the end of training.
            res = fit(model, ds, cfg, params, paths.checkpoint(stage), stage)
            history = res.history
            metrics.update({"final_loss": res.final_loss, "resumed_from": res.resumed_from,
                            "train_images": len(ds), "iterations": cfg.iterations})
            tracking.log_metrics({"train_processes": distributed.current().world_size})
        else:
            atomic_torch_save({"complete": True, "skipped": True}, paths.checkpoint(stage))
        with atomic_dir(paths.model_dir(stage)) as tmp:
            save_checkpoint(tmp / paths.model_file(stage).name, model, spec,
                            extra={"stage": stage, **metrics})
        write_json(paths.loss_json(stage), history)
        viz.save_loss_curve(history, paths.loss_png(stage), title=f"{stage}: training loss")
        tracking.publish_metrics(paths.metrics_file(stage), metrics,
                                 artifacts=[paths.loss_json(stage), paths.loss_png(stage)])
    return metrics


def read_repeat_ids(path: Path) -> list[str]:
    from deeplab_core.data.bootstrap import read_hard_list

    if not path.is_file():
        raise StageError(f"bootstrap list not found: {path} (run the bootstrap stage)")
    return read_hard_list(path)


def train_worker(stage: str, params: Params, inputs: TrainingInputs) -> None:
    """A non-zero rank of a data-parallel stage: the same model, data and schedule as rank 0,
    no tracking and no outputs (rank 0 writes them)."""
    cfg = inputs.cfg
    if not cfg.enabled:
        return
    model, _ = make_model(params, inputs.init_checkpoint)
    ds = load_dataset(inputs.list_file, cfg, inputs.repeat_ids, inputs.extra_lists)
    _fit(model, ds, cfg, params, StagePaths.of(params).checkpoint(stage), stage, progress=False)


def _requested_nproc() -> int:
    try:
        return get_params().base.nproc
    except (ConfigError, FileNotFoundError):
        return 1  # the flow reports the problem in the stage's own words


def stage_main(stage: str, flow: Callable[[], dict],
               inputs: Callable[[Params], TrainingInputs]) -> None:
    """Entry point of a training stage. With base.nproc > 1 and not yet under torchrun, runs
    `torchrun --standalone --nproc_per_node <nproc> -m pipelines.<stage>` and exits with its
    status (SIGTERM/SIGINT to the stage stop torchrun and every rank: procs.run_group); under torchrun, rank 0 runs the flow and the other ranks `train_worker`."""
    rank = int(os.environ.get("RANK", "0"))
    nproc = _requested_nproc() if distributed.launched_world_size() == 1 else 1
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", f"pipelines.stages.{stage}"]
        print(f"{stage}: {' '.join(cmd[2:])}", flush=True)
        sys.exit(run_group(cmd))
    if rank == 0:
        run_stage(flow)
        distributed.shutdown()
        return
    try:
        params = get_params()
        train_worker(stage, params, inputs(params))
    except Exception:
        traceback.print_exc()
        sys.exit(1)
    distributed.shutdown()
