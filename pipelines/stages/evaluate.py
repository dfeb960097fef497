"""evaluate stage: the full metric set (pixel accuracy, mean pixel accuracy, mIoU, frequency-weighted
IoU; per class IoU, precision, recall, F1) and the boundary trimap curve (mIoU and pixel accuracy per
band width) of the model under the inference protocol (params.yaml's ``inference`` section, with the
searched CRF when it beat no CRF on the CV images).

Every metric comes three ways: ``<name>`` is the model as served (the protocol: with the CRF exactly
when it applies one), ``<name>_no_crf`` the network alone and ``<name>_crf`` with the searched CRF.
The protocol evaluated is written to data/eval/protocol.json, which register ships with the model.

Reported on the val images NOT used by the CRF search ("val_holdout": the headline numbers); the
whole val set and the CV subset are reported too, each labelled."""

from __future__ import annotations

import hashlib
import json

from prefect import flow, task

from deeplab_core.crf.densecrf import CRFParams
from deeplab_core.engine.checkpoint import load_checkpoint
from deeplab_core.engine.evaluate import split_cv
from deeplab_core.engine.protocol import InferenceProtocol
from deeplab_core import viz
from deeplab_core.data.io import read_list_file
from pipelines import tracking
from pipelines.common import StageError, file_md5, get_params, run_stage
from pipelines.stages.shared import atomic_dir, dataset_classes, require_inputs, write_json
from pipelines.stages.eval_data import evaluate_ids, read_list_ids, stage_protocol
from pipelines.paths import StagePaths


def eval_settings(params) -> dict:
    """The settings that change what a model scores on the same images: the inference protocol
    of params.yaml (scales, flip, output stride, tiles, precision, whether a CRF may be applied;
    not the CRF parameters, which belong to each model) and the size of the CRF-CV split (which
    decides the held-out set)."""
    protocol = InferenceProtocol.from_config(params.inference).to_dict()
    protocol.pop("crf")
    return {**protocol, "crf": bool(params.inference.crf),
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
            h.update(b" " + file_md5(path).encode())
    return h.hexdigest()


@task
@tracking.work("compute")
def run_eval(model, ids: list[str], val_list, params, protocol: InferenceProtocol,
             crf_params: CRFParams | None, examples: list, names: tuple[str, ...]):
    want = set(ids[: params.evaluate.n_example_figures])

    def keep(image_id, raw, probs, pred, label):
        if image_id in want:
            examples.append({"id": image_id, "image": raw, "label": label, "pred": pred,
                             "probs": probs})

    return evaluate_ids(model, ids, val_list, params, protocol, crf_params, names, keep)


# Scalar metrics of a report that evaluate.json holds (each also with the suffixes _no_crf and
# _crf).
HEADLINE_KEYS = ("miou", "pixel_acc", "mean_pixel_acc", "fwiou", "mean_precision",
                 "mean_recall", "mean_f1")
PER_CLASS_KEYS = ("iou", "precision", "recall", "f1")
TRIMAP_KEYS = ("miou", "pixel_acc", "mean_pixel_acc")


def three_ways(plain: dict, crf: dict | None, applied: bool, keys, get=dict.get) -> dict:
    """Each key three ways: ``k`` as served (the CRF's value when ``applied``), ``k_no_crf``
    the network alone, ``k_crf`` with the CRF (when there is a CRF report)."""
    served = crf if applied else plain
    out = {k: get(served, k) for k in keys}
    out.update({f"{k}_no_crf": get(plain, k) for k in keys})
    if crf is not None:
        out.update({f"{k}_crf": get(crf, k) for k in keys})
    return out


def headline(plain: dict, crf: dict | None, applied: bool = False) -> dict:
    """The scalar metrics as served, without and (when given) with the CRF, whether the CRF is
    applied, and the CRF's mIoU gain."""
    if applied and crf is None:
        raise ValueError("the protocol applies a CRF but there is no CRF report")
    out = three_ways(plain, crf, applied, HEADLINE_KEYS)
    out["crf_applied"] = bool(applied)
    if crf is not None:
        out["crf_gain"] = crf["miou"] - plain["miou"]
    return out


def per_class_rows(plain: dict, crf: dict | None, names: tuple[str, ...],
                   applied: bool = False) -> list[dict]:
    """One row per class: IoU, precision, recall and F1 as served, without and with the CRF."""
    rows = []
    for n in names:
        row = three_ways(plain, crf, applied, PER_CLASS_KEYS,
                         get=lambda rep, k: rep[f"per_class_{k}"][n])
        if crf is None:
            row.update({f"{k}_crf": None for k in PER_CLASS_KEYS})
        rows.append({"class": n, **row})
    return rows


def trimap_rows(plain: dict, crf: dict | None, applied: bool = False) -> list[dict]:
    """Per band width: mIoU, pixel accuracy and mean pixel accuracy as served, without and with
    the CRF."""
    return [{"band_width": p["band_width"],
             **three_ways(p, crf["trimap"][i] if crf else None, applied, TRIMAP_KEYS)}
            for i, p in enumerate(plain["trimap"])]


@tracking.work("compute")
def save_figures(out_eval, trimap_png, trimap: list[dict], per_class: list[dict],
                 examples: list, crf_params: CRFParams | None, palette=None) -> None:
    """trimap_png (mIoU and pixel accuracy per band width), per_class_iou.png and examples.png
    (the examples with and without CRF, masks in the dataset's ``palette``) in out_eval."""
    widths = [r["band_width"] for r in trimap]
    panels = {}
    for key, label in (("miou", "mean IoU in band (%)"), ("pixel_acc", "pixel accuracy in band (%)")):
        panels[label] = {"DeepLab": [r[f"{key}_no_crf"] for r in trimap]}
        if crf_params is not None:
            panels[label]["DeepLab + CRF"] = [r[f"{key}_crf"] for r in trimap]
    viz.save_trimap_plot(widths, panels, trimap_png,
                         title="Within a band around object boundaries (trimap)")
    bars = {"DeepLab": {r["class"]: r["iou_no_crf"] for r in per_class}}
    if crf_params is not None:
        bars["DeepLab + CRF"] = {r["class"]: r["iou_crf"] for r in per_class}
    viz.save_per_class_bars(bars, out_eval / "per_class_iou.png")
    if crf_params is not None and examples:
        from deeplab_core.crf.densecrf import dense_crf
        for ex in examples:
            ex["pred_crf"], _ = dense_crf(ex["image"], ex["probs"], crf_params)
    viz.save_examples(examples, out_eval / "examples.png", palette)


def collect_metrics(params, val_list, all_ids, cv_ids, holdout_ids, res_hold, res_cv,
                    names, protocol: InferenceProtocol, decision: dict) -> dict:
    """evaluate.json: headline scalars on the held-out set, the whole val set and the CV subset
    (scalars only: the per-class tables are in data/eval/per_class.json)."""
    acc_h, acc_cv = res_hold["accumulators"], res_cv["accumulators"]
    full_plain = acc_h["plain"].merge(acc_cv["plain"])
    full_crf = acc_h["crf"].merge(acc_cv["crf"]) if acc_h["crf"] is not None else None

    def rep(acc):
        return acc.report(names) if acc is not None else None

    settings = eval_settings(params)
    applied = protocol.crf is not None
    return {**headline(res_hold["plain"], res_hold["crf"], applied),
            "crf_decision": decision["reason"],
            "eval_set": "val_holdout (val minus the CRF cross-validation images)",
            "n_images": len(holdout_ids),
            "eval_set_md5": eval_set_md5(val_list, holdout_ids, settings),
            "eval_settings": settings,
            "protocol": protocol.to_dict(),
            "val_full": {**headline(rep(full_plain), rep(full_crf), applied),
                         "n_images": len(all_ids)},
            "crf_cv_subset": {**headline(res_cv["plain"], res_cv["crf"], applied),
                              "n_images": len(cv_ids)}}


def write_outputs(p: StagePaths, metrics: dict, per_class: list[dict], trimap: list[dict],
                  examples: list, crf_params: CRFParams | None, palette,
                  protocol: InferenceProtocol) -> None:
    """data/eval (per_class.json, protocol.json and the figures), the trimap plot and its
    numbers, and metrics/evaluate.json; all of them also to MLflow."""
    with atomic_dir(p.eval) as tmp:
        write_json(tmp / p.per_class.name, per_class)
        protocol.save(tmp / p.protocol.name)
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
    try:
        cv_ids, holdout_ids = split_cv(all_ids, params.crf_search.cv_images, params.base.seed)
    except ValueError as err:
        raise StageError(f"{val_list}: {err}") from None
    protocol, crf_params, decision = stage_protocol(params, crf_file)
    classes = dataset_classes(params)
    names = classes.names
    applied = protocol.crf is not None

    with tracking.stage_run("evaluate", {"evaluate": cfg.model_dump(),
                                         "protocol": protocol.to_dict(),
                                         "crf_params": {} if crf_params is None
                                         else crf_params.to_dict()}):
        model, _ = load_checkpoint(model_path)
        examples: list = []
        res_hold = run_eval(model, holdout_ids, val_list, params, protocol, crf_params,
                            examples, names)
        res_cv = run_eval(model, cv_ids, val_list, params, protocol, crf_params, [], names)
        metrics = collect_metrics(params, val_list, all_ids, cv_ids, holdout_ids, res_hold,
                                  res_cv, names, protocol, decision)
        write_outputs(p, metrics, per_class_rows(res_hold["plain"], res_hold["crf"], names,
                                                 applied),
                      trimap_rows(res_hold["plain"], res_hold["crf"], applied), examples,
                      crf_params, classes.full_palette(), protocol)
    print(f"evaluate: {metrics['eval_set']} mIoU as served {100 * metrics['miou']:.2f} % "
          f"({decision['reason']}; without CRF {100 * metrics['miou_no_crf']:.2f} %"
          + ("" if metrics.get("miou_crf") is None
             else f", with CRF {100 * metrics['miou_crf']:.2f} %")
          + ") (full table: python -m pipelines.tools.report)")
    return metrics


if __name__ == "__main__":
    run_stage(evaluate_flow)
