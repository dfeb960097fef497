"""validate stage: a per-sample manifest of every prepared list (readable image and label, sizes,
label values, void fraction, class fractions), checked by a Great Expectations suite. Bad data
fails the DAG here, naming the split, the expectation and example sample ids.

Outs: data/validation/{manifest_<split>.csv, report.json}; metrics data/metrics/validate.json."""

from __future__ import annotations

import pandas as pd
from prefect import flow, task

from pipelines import tracking
from pipelines.common import StageError, atomic_dir, data_dir, get_params, run_stage, write_json
from pipelines.expectations import run_suite

SPLITS = ("train_aug", "val", "coco_train", "coco_val")


@task
@tracking.work("data")
def manifest(list_file, num_classes: int) -> list[dict]:
    from deeplab_core.classes import VOC_CLASSES
    from deeplab_core.data.manifest import build_manifest

    names = VOC_CLASSES if num_classes == len(VOC_CLASSES) else tuple(
        str(i) for i in range(num_classes))
    return build_manifest(list_file, class_names=names)


@task
@tracking.work("data")
def check(records: list[dict], cfg, min_rows: int, split: str) -> dict:
    df = pd.DataFrame.from_records(records)
    if df.empty:
        df = pd.DataFrame(columns=["id", "image_readable", "label_readable", "image_channels",
                                   "width", "height", "size_match", "label_values_valid",
                                   "ignore_fraction"])
    return run_suite(df, cfg, min_rows, split)


@flow(name="validate")
def validate_flow() -> dict:
    from deeplab_core.data.manifest import write_manifest_csv

    params = get_params()
    cfg = params.validate_
    d = data_dir(params)
    prepared = d / "prepared"
    mins = {"train_aug": cfg.min_train_samples, "val": cfg.min_val_samples,
            "coco_train": 0, "coco_val": 0}
    with tracking.stage_run("validate", {"validate": cfg.model_dump()}):
        results, manifests = {}, {}
        for split in SPLITS:
            lf = prepared / f"{split}.txt"
            if not lf.is_file():
                raise StageError(f"{lf} not found: run the prepare stage")
            manifests[split] = manifest(lf, params.base.num_classes) if lf.read_text().strip() \
                else []
            results[split] = check(manifests[split], cfg, mins[split], split)
        report = {"success": all(r["success"] for r in results.values()), "splits": results}
        import mlflow
        mlflow.log_dict(report, "validation_report.json")
        if not report["success"]:
            lines = ["data validation failed (Great Expectations):"]
            for split, r in results.items():
                for f in r["failures"]:
                    lines.append(f"  {split}: {f['expectation']}({f['column'] or ''}) "
                                 f"{f['unexpected_count'] or ''} bad; observed {f['observed']}; "
                                 f"e.g. ids {f['example_ids'][:5]} values {f['example_values'][:5]}")
            raise StageError("\n".join(lines))
        with atomic_dir(d / "validation") as tmp:
            for split, recs in manifests.items():
                write_manifest_csv(recs, tmp / f"manifest_{split}.csv")
            write_json(tmp / "report.json", report)
        metrics = {f"{s}_samples": r["n_rows"] for s, r in results.items()}
        metrics["expectations_failed"] = 0
        write_json(d / "metrics" / "validate.json", metrics)
        tracking.log_metrics(metrics)
    print(f"validate: all expectations met {metrics}")
    return report


if __name__ == "__main__":
    run_stage(validate_flow)
