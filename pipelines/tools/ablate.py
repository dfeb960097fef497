"""Ablations: a grid of configurations run as MLflow child runs under one parent run, and a
comparison table.

    python -m pipelines.tools.ablate v3_inference              # ablations/v3_inference.yaml
    python -m pipelines.tools.ablate path/to/grid.yaml --out DIR

A grid is a YAML file (the shipped ones are in `ablations/`):

    name: v3_inference            # optional, defaults to the file's stem
    kind: inference               # inference: one trained model, evaluated per configuration
                                  # train: each configuration trained briefly, then evaluated
    title: ...                    # table heading
    description: ...              # shown under the heading
    model: models/finetune/model.pt           # inference only; relative to base.data_dir
    crf_params: crf_search/best_params.json   # needed when a configuration sets evaluate.crf
    eval_set: val_holdout         # val_holdout (default) | val | crf_cv, split as the evaluate stage
    cumulative: false             # true: each configuration overlays the one before it
    columns: [model.aspp_rates]   # optional: the settings shown as columns (default: every
                                  # setting whose value differs between the rows)
    base: {...}                   # overlay of params.yaml shared by every configuration
    configs:                      # one row each: a name and an overlay of params.yaml
      - name: OS8
        model: {eval_output_stride: 8}
        compare_to: OS16          # optional: the row its Δ mIoU is taken against (default:
                                  # the first row, or the previous one when cumulative)
        paper: "78.51 (v3 Table 6)"   # optional: the paper's figure for this row, shown
                                  # in its own column beside what this run measured

Every configuration is params.yaml, then single-scale, no-flip, no-CRF evaluation at the training
output stride, then `base`, then its own overlay (applied on top of the previous configuration
when cumulative), validated by the project's schemas. Only the keys that make sense for the kind may
vary: evaluation keys for an inference grid; the model, the training budget (`finetune`) and the
seed as well for a train grid. A train grid trains every configuration from scratch on
train_aug, as the finetune stage would, for `finetune.iterations` steps.

MLflow: one parent run (tags `stage=ablation`, `grid=<name>`) with the grid file and the table as
artifacts; one child run per configuration (tag `mlflow.parentRunId`) with its settings as params,
its metrics (`miou` and the rest) and, for a train grid, its weights. The table is written to
`<data_dir>/ablations/<name>/table.md` and `table.csv` (or `--out DIR`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deeplab_core.config import ConfigError, Params, deep_merge, parse_params
from deeplab_core.fileio import atomic_write_text
from pipelines import tracking
from pipelines.common import (PIPELINE_RUN_ENV, REPO, data_dir, dvc_stages, git_commit,
    params_path, run_stage)
from pipelines.stages.shared import require_inputs
from pipelines.paths import StagePaths

if TYPE_CHECKING:
    from deeplab_core.crf.densecrf import CRFParams

ABLATIONS = REPO / "ablations"
# Evaluation every configuration starts from, before the grid's overlays.
EVAL_DEFAULTS = {"model": {"eval_output_stride": None},
                 "evaluate": {"scales": [1.0], "flip": False, "crf": False}}
_EVAL_KEYS = ("model.eval_output_stride", "evaluate.scales", "evaluate.flip", "evaluate.crf",
              "evaluate.crf_workers", "base.device", "base.torch_threads")
# params.yaml keys a configuration may set, by grid kind (a key also covers what lies under it).
VARIABLE_KEYS = {
    "inference": _EVAL_KEYS,
    "train": _EVAL_KEYS + ("base.seed", "base.num_workers", "model.preset", "model.output_stride",
                           "model.pretrained_backbone", "model.overrides", "finetune"),
}
MULTI_GRID_BACKBONES = ("resnet50", "resnet101", "resnet152", "xception65")


class GridError(ValueError):
    """A grid file does not describe a runnable ablation; the message names the file and key."""


class GridFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, min_length=1)
    kind: Literal["inference", "train"]
    title: str = ""
    description: str = ""
    model: str | None = None
    crf_params: str | None = None
    eval_set: Literal["val_holdout", "val", "crf_cv"] = "val_holdout"
    cumulative: bool = False
    columns: list[str] | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    configs: list[dict[str, Any]] = Field(min_length=1)


@dataclass
class Config:
    name: str
    overlay: dict          # the configuration's own overlay, as written
    params: Params         # params.yaml with every overlay applied, validated
    settings: dict         # what the configuration sets, resolved (logged as MLflow params)
    compare_to: str | None = None   # the row its Δ mIoU is taken against
    paper: str = ""                 # the paper's figure for the row (e.g. "76.66 (v3 Table 3)")


@dataclass
class Grid:
    path: Path
    name: str
    kind: str
    title: str
    description: str
    eval_set: str
    cumulative: bool
    columns: list[str] | None
    params: Params                  # params.yaml + the grid's base overlay
    configs: list[Config]
    model: Path | None = None
    crf_file: Path | None = None
    crf_params: CRFParams | None = None
    text: str = ""

    @property
    def md5(self) -> str:
        return hashlib.md5(self.text.encode()).hexdigest()


def shown(path: Path) -> str:
    """`path` relative to the working directory or the project when inside them."""
    path = Path(path).absolute()
    for root in (Path.cwd(), REPO):
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return str(path)


def grid_path(grid: str | Path) -> Path:
    """A grid file: a path, or the name of a file in ablations/ (`v3_inference`)."""
    p = Path(grid)
    for cand in (p, ABLATIONS / p, ABLATIONS / f"{p}.yaml"):
        if cand.is_file():
            return cand.absolute()
    raise GridError(f"grid {str(grid)!r}: no such file (nor {shown(ABLATIONS / p)}.yaml); "
                    f"shipped grids: {', '.join(sorted(f.stem for f in ABLATIONS.glob('*.yaml')))}")


def _one_line(err: ConfigError) -> str:
    lines = [ln.strip() for ln in str(err).splitlines()]
    return "; ".join(lines[1:] if len(lines) > 1 else lines)


def _leaf_keys(overlay: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in overlay.items():
        key = f"{prefix}{k}"
        out += _leaf_keys(v, key + ".") if isinstance(v, dict) and v else [key]
    return out


def _check_variable(where: str, kind: str, overlay: dict) -> None:
    allowed = VARIABLE_KEYS[kind]
    for key in _leaf_keys(overlay):
        if not any(key == a or key.startswith(a + ".") for a in allowed):
            raise GridError(f"{where}: key {key!r} cannot vary in a {kind} grid; allowed: "
                            f"{', '.join(allowed)}")


def _model_settings(where: str, params: Params) -> dict:
    """The configuration's network as built: the preset's fields with the overrides applied."""
    from deeplab_core.models import get_config

    m = params.model
    try:
        cfg = get_config(m.preset, **m.overrides)
    except (ValueError, TypeError) as err:
        raise GridError(f"{where}: model.preset / model.overrides: {err}") from None
    if tuple(cfg.multi_grid) != (1, 1, 1) and cfg.backbone not in MULTI_GRID_BACKBONES:
        raise GridError(f"{where}: model.overrides.multi_grid = {list(cfg.multi_grid)} has no "
                        f"effect on backbone {cfg.backbone!r} of preset {m.preset!r}; multi-grid "
                        f"applies to {', '.join(MULTI_GRID_BACKBONES)}")
    out = dataclasses.asdict(cfg)
    out["output_stride"] = m.output_stride or cfg.output_stride
    return {"preset": m.preset, **out}


def _settings(kind: str, params: Params, where: str) -> dict:
    ev = params.evaluate
    out: dict = {"eval": {"output_stride": params.model.eval_output_stride,
                          "scales": list(ev.scales), "flip": ev.flip, "crf": ev.crf}}
    if kind == "train":
        out["model"] = _model_settings(where, params)
        out["finetune"] = params.finetune.model_dump()
        out["seed"] = params.base.seed
    return out


def _resolve(d: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else d / p


def _read_crf_params(where: str, path: Path) -> CRFParams:
    from deeplab_core.crf.densecrf import CRFParams

    try:
        return CRFParams.from_file(path)
    except ValueError as err:
        raise GridError(f"{where}: {err}") from None


def _read_spec(path: Path, name: str) -> GridFile:
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise GridError(f"{name}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise GridError(f"{name}: expected a mapping with kind and configs, got "
                        f"{type(raw).__name__}")
    try:
        return GridFile.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            raise GridError(f"{name}: unknown key {key!r}; expected one of "
                            f"{', '.join(GridFile.model_fields)}") from None
        if e["type"] == "missing":
            raise GridError(f"{name}: key {key!r} is missing") from None
        raise GridError(f"{name}: {key} = {e.get('input')!r}: {e['msg']}") from None


def _config(spec: GridFile, i: int, start: dict, prev: dict, earlier: list[Config],
            name: str) -> tuple[Config, dict]:
    """configs[i] resolved and validated; also returns its merged params (the next one's base
    when the grid is cumulative)."""
    entry = spec.configs[i]
    where = f"{name}: configs[{i}]"
    if not isinstance(entry.get("name"), str) or not entry["name"].strip():
        raise GridError(f"{where}: each configuration needs a 'name' (a non-empty string)")
    cname = entry["name"]
    where = f"{name}: configs[{i}] ({cname!r})"
    names = [c.name for c in earlier]
    if cname in names:
        raise GridError(f"{where}: name used twice; configuration names are unique")
    compare_to = entry.get("compare_to")
    if compare_to is not None and compare_to not in names:
        raise GridError(f"{where}: compare_to = {compare_to!r}: not the name of an earlier "
                        f"configuration ({', '.join(map(repr, names)) or 'none'})")
    paper = entry.get("paper", "")
    if not isinstance(paper, (str, int, float)):
        raise GridError(f"{where}: paper = {paper!r}: expected the paper's figure as text, "
                        f"e.g. \"76.66 (v3 Table 3)\"")
    overlay = {k: v for k, v in entry.items() if k not in ("name", "compare_to", "paper")}
    for key, value in overlay.items():
        if not isinstance(value, dict):
            raise GridError(f"{where}: {key} = {value!r}: expected a params.yaml section "
                            f"(a mapping), e.g. evaluate: {{flip: true}}")
    merged = deep_merge(prev if spec.cumulative else start, overlay)
    try:
        params = parse_params(merged, "")
    except ConfigError as err:
        raise GridError(f"{where}: {_one_line(err)}") from None
    _check_variable(where, spec.kind, overlay)
    if spec.kind == "train" and params.finetune.init_from_pretrain:
        raise GridError(f"{where}: finetune.init_from_pretrain is true, but a train grid trains "
                        f"each configuration from scratch (its network differs from the "
                        f"pretrained one); set it false in base")
    settings = _settings(spec.kind, params, where)
    return Config(cname, overlay, params, settings, compare_to, str(paper)), merged


def _input_file(name: str, key: str, given: str | None, listed: str | None, d: Path,
                hint: str) -> tuple[Path, str]:
    """The file `key` names (`given` on the command line, relative to where it runs, wins over
    the grid's `listed`, relative to base.data_dir); it must exist."""
    value = given or listed
    path = Path(given).absolute() if given else _resolve(d, listed)
    if not path.is_file():
        raise GridError(f"{name}: {key} = {value!r}: file {path} not found ({hint})")
    return path, value


def _model_file(name: str, spec: GridFile, model: str | None, d: Path) -> Path | None:
    """The trained model an inference grid evaluates (a train grid names none)."""
    if spec.kind == "inference":
        if not (model or spec.model):
            raise GridError(f"{name}: key 'model' is missing; an inference grid evaluates one "
                            f"trained model (e.g. models/finetune/model.pt, relative to "
                            f"base.data_dir)")
        model_path, _ = _input_file(name, "model", model, spec.model, d,
                                    "run the pipeline first, e.g. make run, or pass --model")
        return model_path
    if model or spec.model:
        raise GridError(f"{name}: model = {model or spec.model!r}: a train grid trains its own "
                        f"models; 'model' is for inference grids")
    return None


def _crf_file(name: str, spec: GridFile, configs: list[Config], crf_params: str | None,
              d: Path) -> tuple[Path | None, CRFParams | None]:
    """The CRF parameters file and its parameters, when a configuration sets evaluate.crf."""
    if not any(c.params.evaluate.crf for c in configs):
        return None, None
    if not (crf_params or spec.crf_params):
        raise GridError(f"{name}: key 'crf_params' is missing; a configuration sets "
                        f"evaluate.crf (e.g. crf_params: crf_search/best_params.json)")
    crf_file, value = _input_file(name, "crf_params", crf_params, spec.crf_params, d,
                                  "run the crf_search stage, or pass --crf-params")
    return crf_file, _read_crf_params(f"{name}: crf_params = {value!r}", crf_file)


def _check_columns(name: str, spec: GridFile, configs: list[Config]) -> None:
    known = {k for c in configs for k in tracking.flatten(c.settings)}
    for col in spec.columns or []:
        if col not in known:
            raise GridError(f"{name}: columns: {col!r} is not a setting of this grid; settings: "
                            f"{', '.join(sorted(known))}")


def load_grid(grid: str | Path, params_raw: dict | None = None, model: str | None = None,
              crf_params: str | None = None) -> Grid:
    """Read and check a grid file against params.yaml (or `params_raw`); every configuration is
    resolved and validated, and the files it needs exist, before any work is done. `model` and
    `crf_params` replace the grid's files. Raises GridError with one line naming file and key."""
    path = grid_path(grid)
    name = shown(path)
    spec = _read_spec(path, name)
    if params_raw is None:
        params_raw = yaml.safe_load(params_path().read_text()) or {}
    start = deep_merge(deep_merge(params_raw, EVAL_DEFAULTS), spec.base)
    try:
        base_params = parse_params(start, "")
    except ConfigError as err:
        raise GridError(f"{name}: base: {_one_line(err)}") from None
    _check_variable(f"{name}: base", spec.kind, spec.base)
    d = data_dir(base_params)

    configs: list[Config] = []
    prev = start
    for i in range(len(spec.configs)):
        cfg, prev = _config(spec, i, start, prev, configs, name)
        configs.append(cfg)

    model_path = _model_file(name, spec, model, d)
    crf_file, crf = _crf_file(name, spec, configs, crf_params, d)
    _check_columns(name, spec, configs)
    return Grid(path=path, name=spec.name or path.stem, kind=spec.kind, title=spec.title,
                description=spec.description.strip(), eval_set=spec.eval_set,
                cumulative=spec.cumulative, columns=spec.columns, params=base_params,
                configs=configs, model=model_path, crf_file=crf_file, crf_params=crf,
                text=path.read_text())


# ----------------------------------------------------------------------------- running
@dataclass
class Shared:
    """What the configurations of one grid share: the eval images, the loaded model."""
    val_list: Path
    eval_ids: list[str]
    n_train: int = 0
    model: Any = None
    model_spec: dict = field(default_factory=dict)
    train_output_stride: int | None = None
    progress: bool = True


def eval_ids(grid: Grid, val_list: Path) -> list[str]:
    """The eval set's ids, split from val as the evaluate stage does (grid-level seed)."""
    from deeplab_core.engine.evaluate import split_cv
    from pipelines.stages.eval_data import read_list_ids

    ids = read_list_ids(val_list)
    if grid.eval_set == "val":
        return ids
    cv, holdout = split_cv(ids, grid.params.crf_search.cv_images, grid.params.base.seed)
    return holdout if grid.eval_set == "val_holdout" else cv


def check_inputs(grid: Grid) -> None:
    p = StagePaths.of(grid.params)
    need = [p.prepared_list("val")]
    if grid.kind == "train":
        need.append(p.prepared_list("train_aug"))
        if any(c.params.finetune.use_bootstrap for c in grid.configs):
            need.append(p.hard_images)
    require_inputs(f"ablation {grid.name}", *need)


def _evaluate(model, params: Params, grid: Grid, shared: Shared) -> dict:
    from deeplab_core.classes import VOC_CLASSES
    from deeplab_core.engine.evaluate import evaluate
    from deeplab_core.runtime import pool_workers, resolve_device
    from pipelines.stages.eval_data import eval_dataset

    ev = params.evaluate
    ds = eval_dataset(shared.val_list, shared.eval_ids)
    t0 = time.perf_counter()
    with tracking.work("compute"):
        res = evaluate(model, ds, params.base.num_classes, resolve_device(params.base.device),
                       scales=ev.scales, flip=ev.flip,
                       crf_params=grid.crf_params if ev.crf else None,
                       crf_workers=pool_workers(ev.crf_workers), class_names=VOC_CLASSES,
                       progress=shared.progress)
    seconds = time.perf_counter() - t0
    plain = res["plain"]
    out = {"miou_plain": plain["miou"], "pixel_acc_plain": plain["pixel_acc"],
           "n_images": res["n_images"], "eval_seconds": seconds,
           "seconds_per_image": seconds / max(1, res["n_images"])}
    final = plain
    if res["crf"] is not None:
        final = res["crf"]
        out.update({"miou_crf": final["miou"], "crf_gain": final["miou"] - plain["miou"]})
    out.update({"miou": final["miou"], "pixel_acc": final["pixel_acc"]})
    out.update({f"iou_{k}": v for k, v in final["per_class_iou"].items() if v is not None})
    return out


def _train(cfg: Config, grid: Grid, shared: Shared, workdir: Path) -> tuple[Any, dict]:
    from deeplab_core.engine.checkpoint import build_from_spec, model_spec, save_checkpoint
    from deeplab_core.engine.train import train
    from deeplab_core.runtime import resolve_device, seed_everything
    from pipelines.stages.training import load_dataset, read_repeat_ids, train_options

    params = cfg.params
    ft = params.finetune
    p = StagePaths.of(params)
    seed_everything(params.base.seed)
    m = params.model
    spec = model_spec(m.preset, params.base.num_classes, m.output_stride, m.overrides)
    model = build_from_spec(spec, pretrained_backbone=m.pretrained_backbone)
    repeat = read_repeat_ids(p.hard_images) if ft.use_bootstrap else None
    ds = load_dataset(p.prepared_list("train_aug"), ft, repeat)
    shared.n_train = len(ds)
    key = hashlib.md5(json.dumps([grid.name, cfg.name, cfg.settings], sort_keys=True,
                                 default=str).encode()).hexdigest()
    t0 = time.perf_counter()
    with tracking.work("compute"):
        res = train(model, ds, ft, resolve_device(params.base.device),
                    **train_options(params, run_key=key),
                    log_metrics=tracking.metric_logger(), progress=shared.progress)
    n_params = sum(p.numel() for p in model.parameters())
    metrics = {"train_seconds": time.perf_counter() - t0, "final_loss": res.final_loss,
               "params_m": n_params / 1e6, "train_images": len(ds), "iterations": ft.iterations}
    ckpt = workdir / "model.pt"
    save_checkpoint(ckpt, model, spec, extra={"ablation": grid.name, "config": cfg.name,
                                              **metrics})
    import mlflow
    mlflow.log_artifact(str(ckpt), artifact_path="model")
    return model, metrics


def _inference_model(grid: Grid, shared: Shared):
    from deeplab_core.engine.checkpoint import load_checkpoint
    from deeplab_core.models import unwrap

    if shared.model is None:
        shared.model, meta = load_checkpoint(grid.model)
        shared.model_spec = meta["spec"]
        shared.train_output_stride = unwrap(shared.model).output_stride
    return shared.model


def _file_md5(path: Path) -> str:
    from pipelines.common import update_with_file
    return update_with_file(hashlib.md5(), path).hexdigest()


def run_config(grid: Grid, index: int, parent_id: str, shared: Shared) -> dict:
    """One configuration as an MLflow child run of `parent_id`: its settings as params, its
    metrics; returns the table row."""
    import mlflow

    from deeplab_core.models import set_output_stride, unwrap

    cfg = grid.configs[index]
    if cfg.params.base.torch_threads:
        import torch
        torch.set_num_threads(cfg.params.base.torch_threads)
    tags = {"grid": grid.name, "ablation_config": cfg.name, "ablation_index": str(index),
            "overlay": json.dumps(cfg.overlay, sort_keys=True)[:5000],
            **tracking.dvc_exp_tags()}
    with mlflow.start_run(run_name=f"{grid.name}/{cfg.name}", nested=True,
                          parent_run_id=parent_id, tags=tags) as run, \
            tempfile.TemporaryDirectory(prefix="ablation-") as work:
        settings = json.loads(json.dumps(cfg.settings, default=str))
        metrics: dict = {}
        if grid.kind == "inference":
            model = _inference_model(grid, shared)
            settings["model"] = {"file": shown(grid.model), "preset": shared.model_spec["preset"],
                                 "train_output_stride": shared.train_output_stride}
        else:
            model, metrics = _train(cfg, grid, shared, Path(work))
            shared.train_output_stride = unwrap(model).output_stride
        eval_os = cfg.params.model.eval_output_stride or shared.train_output_stride
        set_output_stride(model, eval_os)
        settings["eval"]["output_stride"] = eval_os
        if cfg.params.evaluate.crf:
            settings["crf"] = grid.crf_params.to_dict()
        settings["eval"]["set"] = grid.eval_set
        mlflow.log_params({k: str(v)[:500] for k, v in tracking.flatten(settings).items()})
        metrics.update(_evaluate(model, cfg.params, grid, shared))
        if grid.kind == "inference":
            set_output_stride(model, shared.train_output_stride)
        tracking.log_metrics(metrics)
        return {"config": cfg.name, "settings": settings, "metrics": metrics,
                "run_id": run.info.run_id}


# ----------------------------------------------------------------------------- the table
def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return "none" if not v else "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


LABELS = {"eval.output_stride": "eval OS", "eval.scales": "scales", "eval.flip": "flip",
          "eval.crf": "CRF", "model.output_stride": "train OS"}
_NOT_COLUMNS = ("finetune.log_every", "finetune.checkpoint_every", "eval.set", "model.file")


def setting_columns(rows: list[dict], keys: list[str] | None = None) -> list[tuple[str, str]]:
    """(settings key, column label) of `keys`, or else of each setting whose value differs
    between the rows."""
    flat = [tracking.flatten({k: v for k, v in r["settings"].items() if k != "crf"})
            for r in rows]
    if keys is None:
        keys = [k for k in dict.fromkeys(k for f in flat for k in f) if k not in _NOT_COLUMNS
                and len({json.dumps(f.get(k), default=str) for f in flat}) > 1]
    out = []
    for k in keys:
        label = LABELS.get(k) or (k.split(".", 1)[1] if k.startswith("model.") else k)
        out.append((k, label))
    return out


def table_rows(grid: Grid, rows: list[dict]) -> tuple[list[str], list[dict], list[str]]:
    """Columns and rows of the CSV (metrics as MLflow logs them, fractions) and the Markdown
    header cells. Only what the same inputs reproduce: timings and run ids stay in MLflow."""
    cols = setting_columns(rows, grid.columns)
    refs = [None] + [c.compare_to or grid.configs[i - 1 if grid.cumulative else 0].name
                     for i, c in enumerate(grid.configs) if i]
    delta_label = "Δ vs previous" if grid.cumulative else "Δ vs first"
    if any(c.compare_to for c in grid.configs):
        delta_label += ", or vs the row named"
    any_crf = any("miou_crf" in r["metrics"] for r in rows)
    csv_cols = ["config"] + [label for _, label in cols] + ["miou", "miou_delta", "delta_vs",
                                                            "pixel_acc"]
    md_cols = ["config"] + [label for _, label in cols] + ["mIoU (%)", f"{delta_label} (points)",
                                                           "pixel acc (%)"]
    if any_crf:
        csv_cols += ["miou_plain", "miou_crf"]
        md_cols += ["mIoU before CRF (%)"]
    if grid.kind == "inference":
        csv_cols += ["passes_per_image"]
        md_cols += ["passes / image"]
    else:
        csv_cols += ["params_m", "final_loss"]
        md_cols += ["params (M)", "final loss"]
    if any(c.paper for c in grid.configs):
        csv_cols += ["paper"]
        md_cols += ["paper's mIoU (%)"]
    papers = {c.name: c.paper for c in grid.configs}
    miou = {r["config"]: r["metrics"]["miou"] for r in rows}
    out = []
    for i, r in enumerate(rows):
        flat = tracking.flatten(r["settings"])
        m, ev = r["metrics"], r["settings"]["eval"]
        ref = miou[refs[i]] if refs[i] else None
        row = {"config": r["config"], **{label: _fmt(flat.get(k)) for k, label in cols},
               "miou": m["miou"], "miou_delta": None if ref is None else m["miou"] - ref,
               "delta_vs": refs[i] or "",
               "pixel_acc": m["pixel_acc"], "miou_plain": m["miou_plain"],
               "miou_crf": m.get("miou_crf"),
               "passes_per_image": len(ev["scales"]) * (2 if ev["flip"] else 1),
               "params_m": m.get("params_m"), "final_loss": m.get("final_loss"),
               "paper": papers.get(r["config"], "")}
        out.append({c: row[c] for c in csv_cols})
    return csv_cols, out, md_cols


def _delta_cell(grid: Grid, i: int, row: dict) -> str:
    if row["miou_delta"] is None:
        return ""
    named = grid.configs[i].compare_to
    return f"{100 * row['miou_delta']:+.2f}" + (f" vs {named}" if named else "")


def _md_row(row: dict, cols: list[str], delta: str) -> list[str]:
    def pct(v):
        return "" if v is None else f"{100 * v:.2f}"

    cells = [row[c] for c in cols[: cols.index("miou")]]
    cells += [pct(row["miou"]), delta, pct(row["pixel_acc"])]
    if "miou_crf" in row:
        cells.append(pct(row["miou_plain"]) if row["miou_crf"] is not None else "")
    if "passes_per_image" in row:
        cells.append(row["passes_per_image"])
    if "params_m" in row:
        cells += [f"{row['params_m']:.3f}", f"{row['final_loss']:.3f}"]
    if "paper" in row:
        cells.append(row["paper"])
    return [str(c).replace("|", "\\|") for c in cells]


def _in_data(path: Path, d: Path) -> str:
    path = Path(path).absolute()
    return path.relative_to(d).as_posix() if path.is_relative_to(d) else shown(path)


def header_lines(grid: Grid, shared: Shared) -> list[str]:
    p = grid.params
    d = data_dir(p)
    title = grid.title or f"Ablation {grid.name}"
    lines = [f"# {title}", ""]
    if grid.description:
        lines += [" ".join(grid.description.split()), ""]
    eval_line = (f"Evaluated on {grid.eval_set}: {len(shared.eval_ids)} images of "
                 f"`{_in_data(shared.val_list, d)}` (split as the evaluate stage does: "
                 f"crf_search.cv_images {p.crf_search.cv_images}, seed {p.base.seed}), at full "
                 f"resolution.")
    if grid.kind == "inference":
        lines.append(f"One trained model: `{_in_data(grid.model, d)}` (preset "
                     f"{shared.model_spec.get('preset')}, trained at output stride "
                     f"{shared.train_output_stride}, md5 {_file_md5(grid.model)[:12]}). "
                     + eval_line)
    else:
        ft = p.finetune
        hard = ", hard images repeated" if ft.use_bootstrap else ""
        lines.append(f"Budget per configuration: {ft.iterations} iterations of batch "
                     f"{ft.batch_size}, {ft.crop_size}x{ft.crop_size} crops (scales "
                     f"{ft.scale_min:g}-{ft.scale_max:g}), {ft.optimizer} lr {ft.lr:g} with "
                     f"{ft.warmup_iters} warmup steps and poly decay, from scratch on train_aug "
                     f"({shared.n_train} images{hard}), seed {p.base.seed}. " + eval_line)
    if grid.crf_params is not None:
        lines.append(f"CRF parameters from `{_in_data(grid.crf_file, d)}`: "
                     + ", ".join(f"{k} {v:g}" for k, v in grid.crf_params.to_dict().items())
                     + ".")
    lines += [f"MLflow: a parent run tagged `grid={grid.name}` in experiment "
              f"`{tracking.EXPERIMENT}` with one child run per row (timings there).", ""]
    return lines


def write_tables(grid: Grid, shared: Shared, rows: list[dict],
                 out_dir: Path) -> tuple[Path, Path]:
    csv_cols, csv_rows, md_cols = table_rows(grid, rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=csv_cols, lineterminator="\n")
    w.writeheader()
    w.writerows(csv_rows)
    md = header_lines(grid, shared)
    md += ["| " + " | ".join(md_cols) + " |", "|" + "---|" * len(md_cols)]
    md += ["| " + " | ".join(_md_row(r, csv_cols, _delta_cell(grid, i, r))) + " |"
           for i, r in enumerate(csv_rows)]
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = atomic_write_text(out_dir / "table.md", "\n".join(md) + "\n")
    csv_path = atomic_write_text(out_dir / "table.csv", buf.getvalue())
    return md_path, csv_path


def _parent_tags(grid: Grid) -> dict:
    tags = {"stage": "ablation", "grid": grid.name, "grid_kind": grid.kind,
            "grid_file": shown(grid.path), "git_commit": git_commit(), **tracking.dvc_exp_tags()}
    pipeline_run = os.environ.get(PIPELINE_RUN_ENV)
    if pipeline_run:
        tags.update({"pipeline_run": pipeline_run, "mlflow.parentRunId": pipeline_run})
    dvc_stage = os.environ.get("DVC_STAGE")
    if dvc_stage and dvc_stage in dvc_stages():  # run as a stage of dvc.yaml: its lineage too
        tags.update({"dvc_stage": dvc_stage, **tracking.lineage_tags(dvc_stage)})
    return tags


def run_grid(grid: Grid, out_dir: Path | None = None, progress: bool = True,
             runner=None) -> list[dict]:
    """Run every configuration of `grid` under one MLflow parent run and write the table;
    returns the rows. `runner(grid, index, parent_id, shared)` runs one configuration
    (run_config, or the flow's task)."""
    check_inputs(grid)
    d = data_dir(grid.params)
    out_dir = Path(out_dir).absolute() if out_dir else d / "ablations" / grid.name
    val_list = StagePaths(d).prepared_list("val")
    shared = Shared(val_list=val_list, eval_ids=eval_ids(grid, val_list), progress=progress)
    runner = runner or run_config
    mlflow = tracking.configure()
    with mlflow.start_run(run_name=f"ablation/{grid.name}", tags=_parent_tags(grid)) as parent:
        parent_id = parent.info.run_id
        mlflow.log_params({"grid.md5": grid.md5, "grid.kind": grid.kind,
                           "grid.eval_set": grid.eval_set, "grid.cumulative": grid.cumulative,
                           "grid.configs": len(grid.configs),
                           **({"model.file": shown(grid.model),
                               "model.md5": _file_md5(grid.model)} if grid.model else {}),
                           **{f"base.{k}": str(v)[:500]
                              for k, v in tracking.flatten(yaml.safe_load(grid.text)
                                                           .get("base") or {}).items()}})
        mlflow.log_text(grid.text, f"grid/{grid.path.name}")
        rows = [runner(grid, i, parent_id, shared) for i in range(len(grid.configs))]
        md_path, csv_path = write_tables(grid, shared, rows, out_dir)
        tracking.log_artifacts([md_path, csv_path], "table")
        best = max(rows, key=lambda r: r["metrics"]["miou"])
        mlflow.log_metrics({"best_miou": best["metrics"]["miou"], "n_configs": len(rows),
                            "n_images": len(shared.eval_ids)})
        mlflow.set_tag("best_config", best["config"])
    print(md_path.read_text())
    for r in rows:
        m = r["metrics"]
        train = f", trained in {m['train_seconds']:.0f} s" if "train_seconds" in m else ""
        print(f"{r['config']}: {m['seconds_per_image']:.3f} s per image{train} "
              f"(run {r['run_id']})")
    print(f"tables: {shown(md_path)}, {shown(csv_path)}; MLflow parent run {parent_id}")
    return rows


@task(name="ablation_config", cache_policy=NO_CACHE)
def config_task(grid: Grid, index: int, parent_id: str, shared: Shared) -> dict:
    return run_config(grid, index, parent_id, shared)


@flow(name="ablate")
def ablate_flow(grid: str, out: str | None = None, model: str | None = None,
                crf_params: str | None = None) -> list[dict]:
    """Run an ablation grid (a file in ablations/ or a path) as nested MLflow runs."""
    g = load_grid(grid, model=model, crf_params=crf_params)
    rows = run_grid(g, Path(out) if out else None, runner=config_task)
    return [{"config": r["config"], "miou": r["metrics"]["miou"], "run_id": r["run_id"]}
            for r in rows]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.tools.ablate", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid", help="grid name in ablations/ (e.g. v3_inference) or a YAML file")
    ap.add_argument("--out", help="folder for table.md and table.csv "
                                  "(default <data_dir>/ablations/<grid name>)")
    ap.add_argument("--model", help="model file for an inference grid (replaces 'model')")
    ap.add_argument("--crf-params", help="CRF parameters file (replaces 'crf_params')")
    args = ap.parse_args(argv)
    # Paths are taken relative to where the command runs (MLflow may move to the project root).
    out = str(Path(args.out).absolute()) if args.out else None
    model = str(Path(args.model).absolute()) if args.model else None
    crf = str(Path(args.crf_params).absolute()) if args.crf_params else None

    def go() -> None:
        grid = load_grid(args.grid, model=model, crf_params=crf)  # fails before Prefect starts
        ablate_flow(str(grid.path), out=out, model=model, crf_params=crf)

    run_stage(go)


if __name__ == "__main__":
    main()
