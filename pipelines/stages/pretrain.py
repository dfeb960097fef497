"""pretrain stage: train on COCO images mapped to the 20 VOC classes (DeepLab's MS-COCO
pretraining, the clean list validate passed), starting from the ImageNet backbone when
`model.pretrained_backbone` is set. Data-parallel with `base.nproc` > 1 or under torchrun
(see pipelines.stages.training)."""

from __future__ import annotations

from prefect import flow

from deeplab_core.config import Params
from pipelines.common import get_params
from pipelines.paths import clean_list
from pipelines.stages.training import TrainingInputs, run_training, stage_main


def inputs(params: Params) -> TrainingInputs:
    return TrainingInputs(params.pretrain, clean_list(params, "coco_train"))


@flow(name="pretrain")
def pretrain_flow() -> dict:
    params = get_params()
    metrics = run_training("pretrain", params, inputs(params))
    print(f"pretrain: {metrics}")
    return metrics


if __name__ == "__main__":
    stage_main("pretrain", pretrain_flow, inputs)
