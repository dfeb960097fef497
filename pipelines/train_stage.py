"""Shared body of the pretrain (COCO, VOC classes) and finetune (VOC trainaug) stages."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task

from deeplab_core.config import Params, TrainConfig
from deeplab_core.engine.checkpoint import build_from_spec, load_checkpoint, model_spec, save_checkpoint
from deeplab_core.engine.train import (TrainSettings, atomic_torch_save, resolve_device,
                                       seed_everything, train)
from pipelines import tracking
from pipelines.common import StageError, atomic_dir, data_dir, stage_inputs_hash, write_json


def settings_from(cfg: TrainConfig, params: Params, run_key: str = "") -> TrainSettings:
    return TrainSettings(iterations=cfg.iterations, batch_size=cfg.batch_size, lr=cfg.lr,
                         momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                         poly_power=cfg.poly_power, log_every=cfg.log_every,
                         checkpoint_every=cfg.checkpoint_every, num_workers=params.base.num_workers,
                         amp=cfg.amp, seed=params.base.seed, run_key=run_key,
                         optimizer=cfg.optimizer, warmup_iters=cfg.warmup_iters)


@task
def build_dataset(list_file: Path, cfg: TrainConfig, repeat_ids: list[str] | None = None):
    from deeplab_core.data.dataset import SegmentationListDataset
    from deeplab_core.data.transforms import train_transform

    if not list_file.is_file():
        raise StageError(f"training list not found: {list_file} (run the prepare stage)")
    tf = train_transform(cfg.crop_size, scale_range=(cfg.scale_min, cfg.scale_max), flip=True)
    # No per-sample seed: augmentations then come from torch's generator, seeded by train().
    ds = SegmentationListDataset(list_file, transform=tf, repeat_ids=repeat_ids)
    if len(ds) == 0:
        raise StageError(f"training list {list_file} is empty")
    return ds


@task
def init_model(params: Params, init_checkpoint: Path | None):
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
        return model, spec
    return build_from_spec(spec, pretrained_backbone=m.pretrained_backbone), spec


@task
@tracking.work("compute")
def fit(model, dataset, cfg: TrainConfig, params: Params, ckpt_path: Path, stage: str):
    if params.base.torch_threads:
        torch.set_num_threads(params.base.torch_threads)
    device = resolve_device(params.base.device)
    res = train(model, dataset, settings_from(cfg, params, stage_inputs_hash(stage)), device, checkpoint_path=ckpt_path,
                log_metrics=tracking.metric_logger(f"{stage}_"))
    return res


def run_training(stage: str, params: Params, cfg: TrainConfig, list_file: Path,
                 init_checkpoint: Path | None, repeat_ids: list[str] | None = None) -> dict:
    """Train (or, when cfg.enabled is false, pass the initial weights through) and write
    data/models/<stage>/model.pt, data/metrics/<stage>.json and data/plots/<stage>_loss.json."""
    d = data_dir(params)
    sections = {"base": params.base.model_dump(), "model": params.model.model_dump(),
                stage: cfg.model_dump()}
    with tracking.stage_run(stage, sections):
        model, spec = init_model(params, init_checkpoint)
        n_params = sum(p.numel() for p in model.parameters())
        metrics: dict = {"enabled": cfg.enabled, "params_m": n_params / 1e6}
        history: list[dict] = []
        if cfg.enabled:
            ds = build_dataset(list_file, cfg, repeat_ids)
            # Resume file: a persistent, uncached out in dvc.yaml, so an interrupted stage
            # continues where it stopped; marked complete at the end of training.
            ckpt = d / "checkpoints" / f"{stage}.pt"
            res = fit(model, ds, cfg, params, ckpt, stage)
            history = res.history
            metrics.update({"final_loss": res.final_loss, "resumed_from": res.resumed_from,
                            "train_images": len(ds), "iterations": cfg.iterations})
        else:
            atomic_torch_save({"complete": True, "skipped": True}, d / "checkpoints" / f"{stage}.pt")
        with atomic_dir(d / "models" / stage) as tmp:
            save_checkpoint(tmp / "model.pt", model, spec, extra={"stage": stage, **metrics})
        write_json(d / "plots" / f"{stage}_loss.json", history)
        write_json(d / "metrics" / f"{stage}.json", metrics)
        tracking.log_artifacts([d / "plots" / f"{stage}_loss.json"])
        tracking.log_metrics(metrics)
    return metrics


def read_repeat_ids(path: Path) -> list[str]:
    from deeplab_core.data.bootstrap import read_hard_list

    if not path.is_file():
        raise StageError(f"bootstrap list not found: {path} (run the bootstrap stage)")
    return read_hard_list(path)
