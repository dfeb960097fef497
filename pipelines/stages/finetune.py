"""finetune stage: train on VOC trainaug as validate passed it (with the bootstrap duplicates of
hard images), initialised from the pretrain stage's COCO model. Data-parallel with `base.nproc` > 1
or under torchrun (see pipelines.stages.training)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from deeplab_core.config import Params
from pipelines.common import StageError, get_params
from pipelines.paths import StagePaths
from pipelines.stages.training import TrainingInputs, read_repeat_ids, run_training, stage_main


def inputs(params: Params) -> TrainingInputs:
    """train_aug (+ val with finetune.include_val), initialised from finetune.init_checkpoint
    when set, else from pretrain's model when init_from_pretrain."""
    cfg = params.finetune
    p = StagePaths.of(params)
    repeat = read_repeat_ids(p.hard_images) if cfg.use_bootstrap else None
    init = p.model_file("pretrain") if cfg.init_from_pretrain else None
    if cfg.init_checkpoint is not None:
        init = Path(cfg.init_checkpoint)
        if not init.is_file():
            raise StageError(f"finetune.init_checkpoint = {cfg.init_checkpoint!r}: file not "
                             f"found (expected the model.pt of an earlier run, e.g. "
                             f"data/models/finetune/model.pt copied aside)")
    extra = (p.clean_list("val"),) if cfg.include_val else ()
    return TrainingInputs(cfg, p.clean_list("train_aug"), init, repeat, extra)


@flow(name="finetune")
def finetune_flow() -> dict:
    params = get_params()
    metrics = run_training("finetune", params, inputs(params))
    print(f"finetune: {metrics}")
    return metrics


if __name__ == "__main__":
    stage_main("finetune", finetune_flow, inputs)
