"""evaluate stage: the full metric set (pixel accuracy, mean pixel accuracy, mIoU, frequency-weighted
IoU; per class IoU, precision, recall, F1) and the boundary trimap curve (mIoU and pixel accuracy per
band width), before and after the dense CRF with the searched parameters; multi-scale + flip
inference per params.

Reported on the val images NOT used by the CRF search ("val_holdout": the headline numbers); the
whole val set and the CV subset are reported too, each labelled."""

from __future__ import annotations

import hashlib
import json

from prefect import flow, task

from deeplab_core.crf.densecrf import CRFParams
from deeplab_core.engine.checkpoint import load_checkpoint
from deeplab_core.engine.evaluate import evaluate, split_cv
from deeplab_core.runtime import eval_autocast, loader_workers, pool_workers, resolve_device
from deeplab_core import viz
from deeplab_core.data.io import read_list_file
from pipelines import tracking
from pipelines.common import StageError, get_params, run_stage, update_with_file
from pipelines.stages.shared import atomic_dir, dataset_classes, require_inputs, write_json
from pipelines.stages.eval_data import eval_dataset, read_list_ids
from pipelines.paths import StagePaths


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
def run_eval(model, ids: list[str], val_list, params, crf_params: CRFParams | None,
             examples: list, names: tuple[str, ...]):
    cfg = params.evaluate
    ds = eval_dataset(val_list, ids)
    want = set(ids[: cfg.n_example_figures])

    def keep(image_id, raw, probs, pred, label):
        if image_id in want:
            examples.append({"id": image_id, "image": raw, "label": label, "pred": pred,
                             "probs": probs})

    device = resolve_device(params.base.device)
    return evaluate(model, ds, params.base.num_classes, device,
                    scales=cfg.scales, flip=cfg.flip, trimap_widths=cfg.trimap_widths,
                    crf_params=crf_params, crf_workers=pool_workers(cfg.crf_workers),
                    class_names=names, on_prediction=keep,
                    num_workers=loader_workers(params.base.num_workers, device),
                    autocast=eval_autocast(cfg.amp, device))


# Scalar metrics of a report that evaluate.json holds (each also with the suffix _crf).
HEADLINE_KEYS = ("miou", "pixel_acc", "mean_pixel_acc", "fwiou", "mean_precision",
                 "mean_recall", "mean_f1")
PER_CLASS_KEYS = ("iou", "precision", "recall", "f1")
TRIMAP_KEYS = ("miou", "pixel_acc", "mean_pixel_acc")


def headline(plain: dict, crf: dict | None) -> dict:
    """The scalar metrics of the plain and (when given) the CRF report, and the CRF's mIoU gain."""
    out = {k: plain[k] for k in HEADLINE_KEYS}
    if crf is not None:
        out.update({f"{k}_crf": crf[k] for k in HEADLINE_KEYS})
        out["crf_gain"] = crf["miou"] - plain["miou"]
    return out


def per_class_rows(plain: dict, crf: dict | None, names: tuple[str, ...]) -> list[dict]:
    """One row per class: IoU, precision, recall and F1, before and after the CRF."""
    rows = []
    for n in names:
        row = {"class": n, **{k: plain[f"per_class_{k}"][n] for k in PER_CLASS_KEYS}}
        for k in PER_CLASS_KEYS:
            row[f"{k}_crf"] = crf[f"per_class_{k}"][n] if crf else None
        rows.append(row)
    return rows


def trimap_rows(plain: dict, crf: dict | None) -> list[dict]:
    """Per band width: mIoU, pixel accuracy and mean pixel accuracy, before and after the CRF."""
    rows = []
    for i, p in enumerate(plain["trimap"]):
        row = {"band_width": p["band_width"], **{k: p[k] for k in TRIMAP_KEYS}}
        if crf:
            row.update({f"{k}_crf": crf["trimap"][i][k] for k in TRIMAP_KEYS})
        rows.append(row)
    return rows


@tracking.work("compute")
def save_figures(out_eval, trimap_png, trimap: list[dict], per_class: list[dict],
                 examples: list, crf_params: CRFParams | None, palette=None) -> None:
    """trimap_png (mIoU and pixel accuracy per band width), per_class_iou.png and examples.png
    (the examples with and without CRF, masks in the dataset's ``palette``) in out_eval."""
    widths = [r["band_width"] for r in trimap]
    panels = {}
    for key, label in (("miou", "mean IoU in band (%)"), ("pixel_acc", "pixel accuracy in band (%)")):
        panels[label] = {"DeepLab": [r[key] for r in trimap]}
        if crf_params is not None:
            panels[label]["DeepLab + CRF"] = [r[f"{key}_crf"] for r in trimap]
    viz.save_trimap_plot(widths, panels, trimap_png,
                         title="Within a band around object boundaries (trimap)")
    bars = {"DeepLab": {r["class"]: r["iou"] for r in per_class}}
    if crf_params is not None:
        bars["DeepLab + CRF"] = {r["class"]: r["iou_crf"] for r in per_class}
    viz.save_per_class_bars(bars, out_eval / "per_class_iou.png")
    if crf_params is not None and examples:
        from deeplab_core.crf.densecrf import dense_crf
        for ex in examples:
            ex["pred_crf"], _ = dense_crf(ex["image"], ex["probs"], crf_params)
    viz.save_examples(examples, out_eval / "examples.png", palette)


def load_model(params, model_path):
    model, _ = load_checkpoint(model_path)
    if params.model.eval_output_stride:
        from deeplab_core.models import set_output_stride
        set_output_stride(model, params.model.eval_output_stride)
    return model


def collect_metrics(params, val_list, all_ids, cv_ids, holdout_ids, res_hold, res_cv,
                    names) -> dict:
    """evaluate.json: headline scalars on the held-out set, the whole val set and the CV subset
    (scalars only: the per-class tables are in data/eval/per_class.json)."""
    acc_h, acc_cv = res_hold["accumulators"], res_cv["accumulators"]
    full_plain = acc_h["plain"].merge(acc_cv["plain"])
    full_crf = acc_h["crf"].merge(acc_cv["crf"]) if acc_h["crf"] is not None else None

    def rep(acc):
        return acc.report(names) if acc is not None else None

    settings = eval_settings(params)
    return {**headline(res_hold["plain"], res_hold["crf"]),
            "eval_set": "val_holdout (val minus the CRF cross-validation images)",
            "n_images": len(holdout_ids),
            "eval_set_md5": eval_set_md5(val_list, holdout_ids, settings),
            "eval_settings": settings,
            "val_full": {**headline(rep(full_plain), rep(full_crf)), "n_images": len(all_ids)},
            "crf_cv_subset": {**headline(res_cv["plain"], res_cv["crf"]),
                              "n_images": len(cv_ids)}}


def write_outputs(p: StagePaths, metrics: dict, per_class: list[dict], trimap: list[dict],
                  examples: list, crf_params: CRFParams | None, palette) -> None:
    """data/eval (per_class.json and the figures), the trimap plot and its numbers, and
    metrics/evaluate.json; all of them also to MLflow."""
    with atomic_dir(p.eval) as tmp:
        write_json(tmp / p.per_class.name, per_class)
        save_figures(tmp, p.trimap_png, trimap, per_class, examples, crf_params, palette)
    write_json(p.trimap_json, trimap)
    tracking.publish_metrics(p.metrics_file("evaluate"), metrics)
    tracking.log_metrics({f"iou_{r['class']}": r["iou"] for r in per_class
                          if r["iou"] is not None})
    tracking.log_artifacts([p.eval], "eval")
    tracking.log_artifacts([p.trimap_json, p.trimap_png], "eval")


@flow(name="evaluate")
def evaluate_flow() -> dict:
    params = get_params()
    cfg = params.evaluate
    p = StagePaths.of(params)
    model_path = p.model_file("finetune")
    crf_file = p.best_params
    require_inputs("evaluate", model_path, crf_file)
    val_list = p.prepared_list("val")
    all_ids = read_list_ids(val_list)
    cv_ids, holdout_ids = split_cv(all_ids, params.crf_search.cv_images, params.base.seed)
    crf_params = CRFParams.from_file(crf_file) if cfg.crf else None
    classes = dataset_classes(params)
    names = classes.names

    with tracking.stage_run("evaluate", {"evaluate": cfg.model_dump(),
                                         "crf_params": {} if crf_params is None
                                         else crf_params.to_dict()}):
        model = load_model(params, model_path)
        examples: list = []
        res_hold = run_eval(model, holdout_ids, val_list, params, crf_params, examples, names)
        res_cv = run_eval(model, cv_ids, val_list, params, crf_params, [], names)
        metrics = collect_metrics(params, val_list, all_ids, cv_ids, holdout_ids, res_hold,
                                  res_cv, names)
        write_outputs(p, metrics, per_class_rows(res_hold["plain"], res_hold["crf"], names),
                      trimap_rows(res_hold["plain"], res_hold["crf"]), examples, crf_params,
                      classes.full_palette())
    crf_note = "" if metrics.get("miou_crf") is None else f", {100 * metrics['miou_crf']:.2f} % with CRF"
    print(f"evaluate: {metrics['eval_set']} mIoU {100 * metrics['miou']:.2f} %{crf_note} "
          "(full table: python -m pipelines.tools.report)")
    return metrics


if __name__ == "__main__":
    run_stage(evaluate_flow)
