"""finetune stage: train on VOC trainaug as validate passed it (with the bootstrap duplicates of
hard images), initialised from the pretrain stage's COCO model."""

from __future__ import annotations

from prefect import flow

from pipelines.common import clean_list, data_dir, get_params, run_stage
from pipelines.train_stage import read_repeat_ids, run_training


@flow(name="finetune")
def finetune_flow() -> dict:
    params = get_params()
    cfg = params.finetune
    d = data_dir(params)
    repeat = read_repeat_ids(d / "bootstrap" / "hard_images.json") if cfg.use_bootstrap else None
    init = d / "models" / "pretrain" / "model.pt" if cfg.init_from_pretrain else None
    metrics = run_training("finetune", params, cfg, clean_list(params, "train_aug"),
                           init_checkpoint=init, repeat_ids=repeat)
    print(f"finetune: {metrics}")
    return metrics


if __name__ == "__main__":
    run_stage(finetune_flow)
