"""register stage: log the fine-tuned model as an MLflow pyfunc with the inference protocol evaluate
measured it under (data/eval/protocol.json: scales, flip, output stride, tiles, precision, the CRF
when it earned its place) and the searched CRF parameters, so the served model is the model that
was evaluated; register a new version with alias `challenger`, tagged with the protocol and
described by a model card (the protocol and the metrics it was promoted on), and promote it to `champion` only when it beats the current
champion on the same evaluation set by at least `register.min_improvement` (decided under the
registry lock by pipelines.ops.registry, which also holds the promotion rule).

Under `dvc exp run` (workspace, queued or --temp) the version is registered with the alias
`challenger-<experiment>` only: an experiment never moves `challenger` or `champion`, which only
a pipeline run outside experiments (`dvc repro`, the scheduled retrain) and the registry CLI do."""

from __future__ import annotations

import json

from prefect import flow, task

from pipelines import tracking
from pipelines.common import StageError, get_params, run_stage, stage_lineage
from pipelines.stages.shared import require_inputs, write_json
from pipelines.paths import DVC_DATA_DIR, StagePaths
from pipelines.ops.registry import (CHALLENGER, CHAMPION, EVAL_SET_TAG, decide_promotion,
                                metric_tag, promote_if_better)

__all__ = ["CHALLENGER", "CHAMPION", "decide_promotion", "register_flow", "register_model"]


def lineage() -> dict:
    """Where the registered weights come from: the finetune run that wrote exactly this model
    (matched by DVC's md5 of data/models/finetune), and the pipeline run, when there is one."""
    import os

    rel = StagePaths(DVC_DATA_DIR).model_dir("finetune").as_posix()
    md5 = stage_lineage("register")["deps"].get(rel)
    tags = {"dvc.dep." + rel: md5 or "missing"}
    run_id = tracking.find_stage_run("finetune", rel, md5) if md5 else None
    if run_id:
        tags["finetune_run_id"] = run_id
    if os.environ.get(tracking.PIPELINE_RUN_ENV):
        tags["pipeline_run"] = os.environ[tracking.PIPELINE_RUN_ENV]
    return tags


PROTOCOL_TAG_PREFIX = "protocol."
CARD_METRICS = (("miou", "mIoU as served"), ("miou_no_crf", "mIoU without CRF"),
                ("miou_crf", "mIoU with the searched CRF"), ("pixel_acc", "pixel accuracy as served"))


def protocol_tags(protocol) -> dict[str, str]:
    """The protocol as model-version tags: protocol.scales, protocol.flip, ..., protocol.crf
    ("none" or the parameters as JSON)."""
    return {PROTOCOL_TAG_PREFIX + k: ("none" if v is None else json.dumps(v, sort_keys=True)
                                      if isinstance(v, (dict, list)) else str(v))
            for k, v in protocol.to_dict().items()}


def model_card(protocol, ev: dict, metric: str) -> str:
    """The version description: what the model does when served, and the numbers it was
    promoted on (evaluate.json's, on the held-out val images)."""
    lines = ["DeepLab semantic segmentation: an RGB image in, a mask of class ids out.", "",
             f"Inference protocol (applied when served): {protocol.describe()}.",
             f"CRF decision: {ev.get('crf_decision', 'not recorded')}.", "",
             f"Evaluated on {ev.get('eval_set', '?')}, {ev.get('n_images', '?')} images "
             f"(eval set md5 {ev.get('eval_set_md5', '?')}):"]
    for key, label in CARD_METRICS:
        if ev.get(key) is not None:
            lines.append(f"  {label} ({key}): {100 * ev[key]:.2f} %")
    lines.append(f"Promotion compares {metric} = {100 * ev[metric]:.2f} %.")
    return "\n".join(lines)


def experiment_alias(exp_name: str) -> str:
    """`challenger-<experiment>`, with the characters an alias cannot hold replaced."""
    import re

    return "challenger-" + re.sub(r"[^A-Za-z0-9_-]", "-", exp_name)


@task
def register_model(model_name: str, metric: str, min_improvement: float) -> dict:
    from mlflow import MlflowClient

    from deeplab_core.engine.protocol import InferenceProtocol

    p = StagePaths.of(get_params())
    ckpt = p.model_file("finetune")
    crf = p.best_params
    eval_file = p.metrics_file("evaluate")
    require_inputs("register", ckpt, crf, p.protocol, eval_file)
    ev = json.loads(eval_file.read_text())
    value = ev.get(metric)
    if value is None:
        raise StageError(f"metric {metric!r} not in {eval_file}; available: {sorted(ev)}")
    eval_set = ev["eval_set_md5"]
    protocol = InferenceProtocol.from_file(p.protocol)

    from pipelines.ops.serving import log_pyfunc_model

    info = log_pyfunc_model(ckpt, crf, model_name, protocol_file=p.protocol,
                            classes=p.classes_file if p.classes_file.is_file() else None)
    client = MlflowClient()
    version = str(info.registered_model_version)
    client.set_model_version_tag(model_name, version, metric_tag(metric), str(value))
    client.set_model_version_tag(model_name, version, EVAL_SET_TAG, eval_set)
    for key, val in {**protocol_tags(protocol), **lineage()}.items():
        client.set_model_version_tag(model_name, version, key, val)
    client.update_model_version(model_name, version, description=model_card(protocol, ev, metric))
    exp = tracking.dvc_exp_tags().get("dvc_exp")
    if exp:
        alias = experiment_alias(exp)
        client.set_registered_model_alias(model_name, alias, version)
        res = {"promoted": False, "previous_champion": None, "previous_champion_value": None,
               "reason": f"experiment {exp!r}: registered as {alias}; experiments never "
                         "promote (promote it with `python -m pipelines.ops.registry promote "
                         f"{version}`)"}
    else:
        alias = CHALLENGER
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        res = promote_if_better(client, model_name, version, metric, min_improvement,
                                by="register")
    promote = res["promoted"]
    import mlflow
    mlflow.log_metrics({metric: float(value), "promoted": float(promote)})
    return {"model_name": model_name, "version": version, "metric": metric, "value": float(value),
            "eval_set_md5": eval_set, "previous_champion": res["previous_champion"],
            "previous_champion_value": res["previous_champion_value"], "promoted": promote,
            "reason": res["reason"], "aliases": [alias] + ([CHAMPION] if promote else []),
            "protocol": protocol.to_dict(), "model_uri": f"models:/{model_name}/{version}"}


@flow(name="register")
def register_flow() -> dict:
    params = get_params()
    cfg = params.register_
    with tracking.stage_run("register", {"register": cfg.model_dump()}):
        out = register_model(cfg.model_name, cfg.metric, cfg.min_improvement)
        write_json(StagePaths.of(params).registration, out)
    print(f"registered {out['model_uri']} ({cfg.metric}={out['value']:.4f}); "
          f"promoted to champion: {out['promoted']} ({out['reason']})")
    return out


if __name__ == "__main__":
    run_stage(register_flow)
