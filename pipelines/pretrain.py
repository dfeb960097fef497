"""pretrain stage: train on COCO images mapped to the 20 VOC classes (DeepLab's MS-COCO
pretraining, the clean list validate passed), starting from the ImageNet backbone when
`model.pretrained_backbone` is set."""

from __future__ import annotations

from prefect import flow

from pipelines.common import clean_list, get_params, run_stage
from pipelines.train_stage import run_training


@flow(name="pretrain")
def pretrain_flow() -> dict:
    params = get_params()
    metrics = run_training("pretrain", params, params.pretrain, clean_list(params, "coco_train"),
                           init_checkpoint=None)
    print(f"pretrain: {metrics}")
    return metrics


if __name__ == "__main__":
    run_stage(pretrain_flow)
