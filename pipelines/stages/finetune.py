"""finetune stage: train on VOC trainaug as validate passed it (with the bootstrap duplicates of
hard images), initialised from the pretrain stage's COCO model. Data-parallel with `base.nproc` > 1
or under torchrun (see pipelines.stages.training)."""

from __future__ import annotations

from prefect import flow

from deeplab_core.config import Params
from pipelines.common import get_params
from pipelines.paths import StagePaths
from pipelines.stages.training import TrainingInputs, read_repeat_ids, run_training, stage_main


def inputs(params: Params) -> TrainingInputs:
    cfg = params.finetune
    p = StagePaths.of(params)
    repeat = read_repeat_ids(p.hard_images) if cfg.use_bootstrap else None
    init = p.model_file("pretrain") if cfg.init_from_pretrain else None
    return TrainingInputs(cfg, p.clean_list("train_aug"), init, repeat)


@flow(name="finetune")
def finetune_flow() -> dict:
    params = get_params()
    metrics = run_training("finetune", params, inputs(params))
    print(f"finetune: {metrics}")
    return metrics


if __name__ == "__main__":
    stage_main("finetune", finetune_flow, inputs)
