"""evaluate stage: val mIoU, per-class IoU and the boundary trimap curve, before and after the
dense CRF with the searched parameters; multi-scale + flip inference per params.

Reported on the val images NOT used by the CRF search ("val_holdout": the headline numbers); the
whole val set and the CV subset are reported too, each labelled."""

from __future__ import annotations

import hashlib
import json

from prefect import flow, task

from deeplab_core.classes import VOC_CLASSES
from deeplab_core.crf.densecrf import CRFParams
from deeplab_core.engine.checkpoint import load_checkpoint
from deeplab_core.engine.evaluate import evaluate, split_cv
from deeplab_core.runtime import resolve_device
from deeplab_core import viz
from deeplab_core.data.io import read_list_file
from pipelines import tracking
from pipelines.common import (StageError, atomic_dir, data_dir, get_params, require_inputs,
                              run_stage, update_with_file, write_json)
from pipelines.eval_data import eval_dataset, read_list_ids


def eval_settings(params) -> dict:
    """The settings that change what a model scores on the same images: inference scales and
    flip, the output stride at evaluation, the CRF on or off, and the size of the CRF-CV split
    (which decides the held-out set)."""
    cfg = params.evaluate
    return {"scales": [float(s) for s in cfg.scales], "flip": bool(cfg.flip),
            "eval_output_stride": params.model.eval_output_stride, "crf": bool(cfg.crf),
            "crf_cv_images": params.crf_search.cv_images}


def eval_set_md5(list_file, ids: list[str], settings: dict) -> str:
    """Identity of an evaluation: md5 over the settings and, for each id in order, the id and the
    md5 of its image's and its label's bytes. Models are compared only when this is equal."""
    files = {sid: (img, lab) for sid, img, lab in read_list_file(list_file)}
    missing = [i for i in ids if i not in files]
    if missing:
        raise StageError(f"ids {missing[:5]} not in {list_file}")
    h = hashlib.md5(json.dumps(settings, sort_keys=True).encode())
    for sid in ids:
        h.update(f"\n{sid}".encode())
        for path in files[sid]:
            h.update(b" " + update_with_file(hashlib.md5(), path).hexdigest().encode())
    return h.hexdigest()


@task
@tracking.work("compute")
def run_eval(model, ids: list[str], val_list, params, crf_params: dict | None, examples: list):
    cfg = params.evaluate
    ds = eval_dataset(val_list, ids)
    want = set(ids[: cfg.n_example_figures])

    def keep(image_id, raw, probs, pred, label):
        if image_id in want:
            examples.append({"id": image_id, "image": raw, "label": label, "pred": pred,
                             "probs": probs})

    return evaluate(model, ds, params.base.num_classes, resolve_device(params.base.device),
                    scales=cfg.scales, flip=cfg.flip, trimap_widths=cfg.trimap_widths,
                    crf_params=crf_params, crf_workers=cfg.crf_workers, class_names=VOC_CLASSES,
                    on_prediction=keep)


@tracking.work("compute")
def save_figures(out, widths: list, trimap_rows: list[dict], per_class: dict, examples: list,
                 crf_params: dict | None) -> None:
    """trimap.png, per_class_iou.png and examples.png (the examples with and without CRF)."""
    curves = {"DeepLab": [r["acc"] for r in trimap_rows]}
    if crf_params:
        curves["DeepLab + CRF"] = [r["acc_crf"] for r in trimap_rows]
    viz.save_trimap_plot(widths, curves, "pixel accuracy in band (%)", out / "trimap.png")
    viz.save_per_class_bars(per_class, out / "per_class_iou.png")
    if crf_params and examples:
        from deeplab_core.crf.densecrf import dense_crf
        for ex in examples:
            ex["pred_crf"], _ = dense_crf(ex["image"], ex["probs"], CRFParams.from_dict(crf_params))
    viz.save_examples(examples, out / "examples.png")


def _headline(acc_plain, acc_crf) -> dict:
    p = acc_plain.report(VOC_CLASSES)
    out = {"miou": p["miou"], "pixel_acc": p["pixel_acc"]}
    if acc_crf is not None:
        c = acc_crf.report(VOC_CLASSES)
        out.update({"miou_crf": c["miou"], "pixel_acc_crf": c["pixel_acc"],
                    "crf_gain": c["miou"] - p["miou"]})
    return out


@flow(name="evaluate")
def evaluate_flow() -> dict:
    params = get_params()
    cfg = params.evaluate
    d = data_dir(params)
    model_path = d / "models" / "finetune" / "model.pt"
    crf_file = d / "crf_search" / "best_params.json"
    require_inputs("evaluate", model_path, crf_file)
    val_list = d / "prepared" / "val.txt"
    all_ids = read_list_ids(val_list)
    cv_ids, holdout_ids = split_cv(all_ids, params.crf_search.cv_images, params.base.seed)
    crf_params = CRFParams.from_file(crf_file).to_dict() if cfg.crf else None

    with tracking.stage_run("evaluate", {"evaluate": cfg.model_dump(),
                                         "crf_params": crf_params or {}}):
        model, _ = load_checkpoint(model_path)
        if params.model.eval_output_stride:
            from deeplab_core.models import set_output_stride
            set_output_stride(model, params.model.eval_output_stride)
        examples: list = []
        res_hold = run_eval(model, holdout_ids, val_list, params, crf_params, examples)
        res_cv = run_eval(model, cv_ids, val_list, params, crf_params, [])
        acc_h, acc_cv = res_hold["accumulators"], res_cv["accumulators"]
        full_plain = acc_h["plain"].merge(acc_cv["plain"])
        full_crf = acc_h["crf"].merge(acc_cv["crf"]) if crf_params else None

        settings = eval_settings(params)
        metrics = {**_headline(acc_h["plain"], acc_h["crf"]),
                   "eval_set": "val_holdout (val minus the CRF cross-validation images)",
                   "n_images": len(holdout_ids),
                   "eval_set_md5": eval_set_md5(val_list, holdout_ids, settings),
                   "eval_settings": settings,
                   "val_full": {**_headline(full_plain, full_crf), "n_images": len(all_ids)},
                   "crf_cv_subset": {**_headline(acc_cv["plain"], acc_cv["crf"]),
                                     "n_images": len(cv_ids)},
                   "scales": list(cfg.scales), "flip": cfg.flip}
        plain_rep = res_hold["plain"]
        crf_rep = res_hold["crf"]
        widths = list(cfg.trimap_widths)
        trimap_rows = []
        for i, w in enumerate(widths):
            row = {"band_width": w, "acc": plain_rep["trimap"][i]["pixel_acc"],
                   "miou": plain_rep["trimap"][i]["miou"]}
            if crf_rep:
                row.update({"acc_crf": crf_rep["trimap"][i]["pixel_acc"],
                            "miou_crf": crf_rep["trimap"][i]["miou"]})
            trimap_rows.append(row)
        per_class = {"DeepLab": plain_rep["per_class_iou"]}
        if crf_rep:
            per_class["DeepLab + CRF"] = crf_rep["per_class_iou"]
        per_class_rows = [{"class": n, "iou": plain_rep["per_class_iou"][n],
                           "iou_crf": crf_rep["per_class_iou"][n] if crf_rep else None}
                          for n in VOC_CLASSES]

        with atomic_dir(d / "eval") as tmp:
            write_json(tmp / "per_class_iou.json", per_class_rows)
            save_figures(tmp, widths, trimap_rows, per_class, examples, crf_params)
        write_json(d / "plots" / "trimap.json", trimap_rows)
        write_json(d / "metrics" / "evaluate.json", metrics)
        tracking.log_metrics(metrics)
        tracking.log_metrics({f"iou_{r['class']}": r["iou"] for r in per_class_rows
                              if r["iou"] is not None})
        tracking.log_artifacts([d / "eval"], "eval")
        tracking.log_artifacts([d / "plots" / "trimap.json"], "eval")
    from pipelines.report import print_report
    print_report(d)
    return metrics


if __name__ == "__main__":
    run_stage(evaluate_flow)
