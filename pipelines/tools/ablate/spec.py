"""An ablation grid file read and checked against params.yaml: every configuration resolved and
validated, and the files it needs found, before any work is done (the format: the package's
docstring)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deeplab_core.config import ConfigError, Params, deep_merge, parse_params
from pipelines import tracking
from pipelines.common import REPO, data_dir, params_path

if TYPE_CHECKING:
    from deeplab_core.crf.densecrf import CRFParams

ABLATIONS = REPO / "ablations"
# Evaluation every configuration starts from, before the grid's overlays.
EVAL_DEFAULTS = {"inference": {"output_stride": None, "scales": [1.0], "flip": False,
                               "crf": False}}
_EVAL_KEYS = ("inference", "evaluate.crf_workers", "base.device", "base.torch_threads")
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
    inf = params.inference
    out: dict = {"eval": {"output_stride": inf.output_stride, "scales": list(inf.scales),
                          "flip": inf.flip, "crf": inf.crf}}
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
                            f"(a mapping), e.g. inference: {{flip: true}}")
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
    """The CRF parameters file and its parameters, when a configuration sets inference.crf."""
    if not any(c.params.inference.crf for c in configs):
        return None, None
    if not (crf_params or spec.crf_params):
        raise GridError(f"{name}: key 'crf_params' is missing; a configuration sets "
                        f"inference.crf (e.g. crf_params: crf_search/best_params.json)")
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
