"""bootstrap stage: the list of trainaug images holding hard classes (bicycle, chair, dining
table, potted plant, sofa by default; names from the dataset's class list), duplicated in
finetuning as DeepLab v3's bootstrapping does. Reads the clean train_aug list validate passed.

Outs: data/bootstrap/hard_images.json; metrics data/metrics/bootstrap.json."""

from __future__ import annotations

from collections import Counter

from prefect import flow, task

from pipelines import tracking
from pipelines.common import StageError, get_params, run_stage
from pipelines.stages.shared import atomic_dir, dataset_classes
from pipelines.paths import StagePaths


@task
def find_hard(list_file, class_ids: list[int], min_pixels: int, repeats: int) -> list[str]:
    from deeplab_core.data.bootstrap import hard_image_list

    return hard_image_list(list_file, hard_class_ids=class_ids, min_pixels=min_pixels,
                           repeats=repeats)


@flow(name="bootstrap")
def bootstrap_flow() -> dict:
    from deeplab_core.data.bootstrap import write_hard_list

    params = get_params()
    cfg = params.bootstrap
    p = StagePaths.of(params)
    lf = p.clean_list("train_aug")
    if not lf.is_file():
        raise StageError(f"{lf} not found: run the validate stage")
    classes = dataset_classes(params)
    try:
        class_ids = cfg.class_ids(classes.names)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    with tracking.stage_run("bootstrap", {"bootstrap": cfg.model_dump()}):
        ids = find_hard(lf, class_ids, cfg.min_pixels, cfg.repeats)
        with atomic_dir(p.bootstrap) as tmp:
            write_hard_list(tmp / p.hard_images.name, ids, class_ids, cfg.min_pixels, cfg.repeats,
                            source=str(lf.relative_to(p.root)), class_names=classes.names)
        n_train = sum(1 for line in lf.read_text().splitlines() if line.strip())
        metrics = {"hard_images": len(set(ids)), "added_samples": len(ids),
                   "train_aug_samples": n_train,
                   "hard_fraction": len(set(ids)) / max(n_train, 1)}
        tracking.publish_metrics(p.metrics_file("bootstrap"), metrics)
    print(f"bootstrap: {metrics}; most repeated: {Counter(ids).most_common(3)}")
    return metrics


if __name__ == "__main__":
    run_stage(bootstrap_flow)
