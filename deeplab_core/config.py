"""Pydantic schemas for every section of params.yaml.

Unknown keys are forbidden everywhere, so a typo fails before any work is done, with a message that
names the key path, the value and what was expected (see `load_params`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deeplab_core.classes import HARD_CLASSES, VOC_CLASSES


# The papers' coarse grid of CRF parameters (DeepLab v1 Sec. 4, v2 Sec. 4.1): w1 in {3..6},
# sigma_alpha in {30, 40, ..., 100}, sigma_beta in {3..6}, with w2 = 3 and sigma_gamma = 3 fixed.
# The one source of these defaults: the ``crf_search`` section below and deeplab_core.crf.search.
PAPER_W1_GRID: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0)
PAPER_SIGMA_ALPHA_GRID: tuple[float, ...] = tuple(float(v) for v in range(30, 101, 10))
PAPER_SIGMA_BETA_GRID: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0)
PAPER_W2: float = 3.0
PAPER_SIGMA_GAMMA: float = 3.0
PAPER_ITERATIONS: int = 10


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """params.yaml (or an overlay) does not match the schema; the message lists every problem."""


class BaseConfig(Strict):
    seed: int = 0
    num_classes: int = Field(21, ge=2, le=255)
    data_dir: str = "data"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = Field(
        "auto", description="DataLoader workers of training and evaluation; auto: 0 on the CPU "
        "(as before), on CUDA the cores per training process less one (1-8)")
    torch_threads: int = Field(0, ge=0, description="0 = torch default")
    nproc: int = Field(1, ge=1, le=64, description="training processes on this machine: "
                       "pretrain/finetune relaunch themselves under torchrun when > 1 (DDP)")


class SyntheticConfig(Strict):
    seed: int = 0
    image_height: int = Field(96, ge=32, le=1024)
    image_width: int = Field(128, ge=32, le=1024)
    n_voc_train: int = Field(200, ge=1)
    n_voc_val: int = Field(60, ge=1)
    n_sbd_train: int = Field(200, ge=0)
    n_sbd_val: int = Field(40, ge=0)
    sbd_overlap_val: int = Field(10, ge=0)
    n_coco_train: int = Field(200, ge=0)
    n_coco_val: int = Field(40, ge=0)


class PrepareConfig(Strict):
    source: Literal["synthetic", "real", "generic"] = "synthetic"
    synthetic: SyntheticConfig = SyntheticConfig()
    voc_root: str | None = Field(None, description="…/VOCdevkit/VOC2012 (source: real)")
    sbd_root: str | None = Field(None, description="…/benchmark_RELEASE/dataset (optional)")
    coco_root: str | None = Field(None, description="dir with train2017/ val2017/ annotations/")
    generic_root: str | None = Field(None, description="folder with classes.json, images/, "
                                     "masks/, train.txt, val.txt (source: generic)")
    coco_min_area: float = Field(1000.0, ge=0.0, description="VOC-class pixels a COCO image "
                                 "needs to be kept for pretraining")
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        2, description="processes converting real-data labels; auto: every core but one")

    @model_validator(mode="after")
    def _roots(self) -> "PrepareConfig":
        if self.source == "real" and not self.voc_root:
            raise ValueError("source is 'real' but voc_root is not set: expected the path of "
                             "VOCdevkit/VOC2012")
        if self.source == "generic" and not self.generic_root:
            raise ValueError("source is 'generic' but generic_root is not set: expected a "
                             "folder with classes.json, images/, masks/, train.txt, val.txt")
        return self


SPLIT_NAMES = ("train_aug", "val", "coco_train", "coco_val")


class ValidateConfig(Strict):
    min_train_samples: int = Field(1, ge=1)
    min_val_samples: int = Field(1, ge=1)
    max_ignore_fraction: float = Field(0.5, ge=0.0, le=1.0)
    min_side: int = Field(16, ge=1)
    max_side: int = Field(4096, ge=1)
    expected_counts: dict[str, int] = Field(
        default_factory=dict, description="split -> exact number of samples (e.g. the real "
        "data's train_aug 10582, val 1449); splits not named are checked against minimums only")
    on_error: Literal["fail", "quarantine"] = Field(
        "fail", description="fail: bad samples fail the stage (a label prepare cannot convert "
        "fails prepare); quarantine: they are listed in data/validation/quarantine.json and left "
        "out of the clean lists training reads (prepare lists its rejects for validate)")

    @field_validator("expected_counts")
    @classmethod
    def _splits(cls, v: dict[str, int]) -> dict[str, int]:
        bad = [k for k in v if k not in SPLIT_NAMES]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; expected names from {list(SPLIT_NAMES)}")
        neg = {k: n for k, n in v.items() if n < 0}
        if neg:
            raise ValueError(f"counts {neg} must be >= 0")
        return v


class BootstrapConfig(Strict):
    hard_classes: tuple[str, ...] = HARD_CLASSES
    min_pixels: int = Field(20, ge=1)
    repeats: int = Field(1, ge=0, le=10, description="extra copies of each hard image")

    def class_ids(self, class_names: Sequence[str]) -> list[int]:
        """Indices of ``hard_classes`` in a dataset's class list; ValueError naming the unknown
        names and the list's names."""
        bad = [c for c in self.hard_classes if c not in class_names]
        if bad:
            raise ValueError(f"bootstrap.hard_classes = {list(self.hard_classes)}: unknown class "
                             f"name(s) {bad}; expected "
                             f"names from {list(class_names)} (or [])")
        return [list(class_names).index(c) for c in self.hard_classes]


class ModelConfig(Strict):
    preset: str = "light"
    output_stride: int | None = Field(16, description="training output stride (None = preset's)")
    eval_output_stride: int | None = Field(None, description="None = same as training")
    pretrained_backbone: str | None = Field(None, description="local ImageNet checkpoint file")
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("output_stride", "eval_output_stride")
    @classmethod
    def _os(cls, v: int | None) -> int | None:
        if v is not None and v not in (8, 16, 32):
            raise ValueError(f"output stride {v} not supported; expected one of 8, 16, 32")
        return v


class TrainConfig(Strict):
    """One training run: schedule, optimizer, parameter groups, batch norm, precision."""
    enabled: bool = True
    iterations: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=2, description="global batch of one optimizer step (all "
                            "processes and accumulation steps together); >=2 for batch norm")
    crop_size: int = Field(96, ge=16)
    scale_min: float = Field(0.5, gt=0.0)
    scale_max: float = Field(2.0, gt=0.0)
    lr: float = Field(0.01, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    poly_power: float = Field(0.9, ge=0.0)
    log_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    amp: bool = Field(False, description="mixed precision: autocast to amp_dtype on CPU or CUDA")
    amp_dtype: Literal["auto", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CPU and on CUDA devices that support it, else "
        "float16 (with a gradient scaler); float16 needs CUDA")
    channels_last: bool = Field(False, description="NHWC memory layout for model and inputs")
    optimizer: Literal["sgd", "adamw"] = Field(
        "sgd", description="sgd (the papers' recipe) | adamw (momentum is then AdamW's beta1)")
    warmup_iters: int = Field(0, ge=0, description="linear lr warmup steps before the policy")
    lr_policy: Literal["poly", "step"] = Field(
        "poly", description="poly: lr (1 - it/iterations)^poly_power; step: lr * lr_gamma^"
        "floor(it / lr_step_size)")
    lr_step_size: int = Field(2000, ge=1, description="step policy: iterations per lr drop")
    lr_gamma: float = Field(0.1, gt=0.0, le=1.0, description="step policy: factor per drop")
    head_lr_mult: float = Field(1.0, gt=0.0, description="lr multiplier of the new layers "
                                "(papers: 10 for the classifier)")
    head_lr_scope: Literal["classifier", "head"] = Field(
        "classifier", description="what head_lr_mult applies to: the final class-score "
        "convolutions (v1/v2 fc8) or everything outside the backbone")
    bias_lr_mult: float = Field(1.0, gt=0.0, description="extra lr multiplier of biases "
                                "(Caffe recipes: 2)")
    bias_weight_decay: bool = Field(True, description="false: no weight decay on biases")
    norm_weight_decay: bool = Field(True, description="false: no weight decay on norm layers")
    batch_norm: Literal["finetune", "frozen"] = Field(
        "finetune", description="finetune: batch statistics and affine trained (v3); frozen: "
        "running statistics used and affine fixed (v2)")
    bn_momentum: float | None = Field(None, gt=0.0, lt=1.0, description="running-statistics "
                                      "momentum (1 - TF decay: v3's 0.9997 is 0.0003); None = "
                                      "the model's")
    sync_batch_norm: bool = Field(True, description="SyncBatchNorm across processes under DDP "
                                  "on CUDA (batch_norm finetune)")
    accumulate_steps: int = Field(1, ge=1, description="micro-batches per optimizer step "
                                  "(gradient accumulation) of each process; batch_size is split among processes x "
                                  "micro-batches in shares differing by at most one sample "
                                  "(fewer micro-batches when the batch is too small for them)")
    deterministic: bool = Field(False, description="deterministic kernels (torch."
                                "use_deterministic_algorithms, cuDNN deterministic, no "
                                "benchmarking): a resumed CUDA run is then bit-exact; slower. "
                                "false: cudnn.benchmark on CUDA")
    loss_at: Literal["input", "score_map"] = Field(
        "input", description="input: logits upsampled to the label size; score_map: logits at "
        "the score-map resolution against the labels at the pixels the cells sit over (v1/v2: "
        "stride * i, exact for the papers' stride * k + 1 crops)")

    @model_validator(mode="after")
    def _scales(self) -> "TrainConfig":
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min {self.scale_min} > scale_max {self.scale_max}")
        if self.batch_size < self.accumulate_steps:
            raise ValueError(f"batch_size {self.batch_size} is smaller than accumulate_steps "
                             f"{self.accumulate_steps}: every micro-batch needs a sample")
        return self


class FinetuneConfig(TrainConfig):
    init_from_pretrain: bool = True
    use_bootstrap: bool = True
    init_checkpoint: str | None = Field(
        None, description="a model.pt to start from instead of pretrain's (e.g. the model of "
        "an earlier finetune run, copied aside: v3's second stage); DVC does not track this "
        "file, so `dvc repro -f finetune` after replacing it")
    include_val: bool = Field(
        False, description="train on train_aug + val (trainval_aug), as v3's second stage for "
        "the test server does; the val figures of evaluate are then not held out")


class CRFSearchConfig(Strict):
    cv_images: int = Field(20, ge=1, description="val images held out for the search")
    strategy: Literal["coarse_to_fine", "full"] = "coarse_to_fine"
    w1_grid: tuple[float, ...] = PAPER_W1_GRID
    sigma_alpha_grid: tuple[float, ...] = PAPER_SIGMA_ALPHA_GRID
    sigma_beta_grid: tuple[float, ...] = PAPER_SIGMA_BETA_GRID
    w2: float = Field(PAPER_W2, ge=0.0)
    sigma_gamma: float = Field(PAPER_SIGMA_GAMMA, gt=0.0)
    iterations: int = Field(PAPER_ITERATIONS, ge=1, le=100)
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        2, description="CRF worker processes; auto: every core but one")
    objective: Literal["miou_gt", "miou"] = Field(
        "miou_gt", description="rank configs by mIoU over the classes with CV ground truth "
        "(miou_gt) or over every class seen in ground truth or prediction (miou)")
    screen_images: int = Field(4, ge=1, description="coarse_to_fine: images the grid is "
                               "screened on before the climb on all images")
    budget_fraction: float = Field(0.25, gt=0.0, le=1.0, description="coarse_to_fine: CRF "
                                   "runs allowed, as a fraction of the full grid's")

    @field_validator("w1_grid", "sigma_alpha_grid", "sigma_beta_grid")
    @classmethod
    def _grid(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(x <= 0 for x in v):
            raise ValueError(f"grid {list(v)} must be non-empty with positive values")
        return v


class EvaluateConfig(Strict):
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    trimap_widths: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 20, 30, 40)
    crf: bool = True
    crf_workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        2, description="CRF worker processes; auto: every core but one")
    amp: bool = Field(False, description="autocast the network's forward pass in evaluation "
                      "(bf16 where supported, else fp16 on CUDA; bf16 on CPU); off by default: "
                      "not yet measured to leave the reported numbers unchanged")
    n_example_figures: int = Field(6, ge=0)


class RegisterConfig(Strict):
    model_name: str = Field("deeplab", min_length=1)
    metric: Literal["miou", "miou_crf"] = "miou_crf"
    min_improvement: float = Field(0.0, ge=0.0)


# params.yaml's `train` section holds the settings `pretrain` and `finetune` share; each of
# those holds only what differs (see merge_shared_train). It is not a field of Params: after the
# merge, params.pretrain and params.finetune are complete.
SHARED_TRAIN = "train"
TRAIN_SECTIONS = ("pretrain", "finetune")


class Params(Strict):
    base: BaseConfig = BaseConfig()
    prepare: PrepareConfig = PrepareConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    bootstrap: BootstrapConfig = BootstrapConfig()
    model: ModelConfig = ModelConfig()
    pretrain: TrainConfig = TrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    crf_search: CRFSearchConfig = CRFSearchConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _voc_names(self) -> "Params":
        """VOC and synthetic data have the VOC classes: hard classes and num_classes are checked
        here; a generic dataset's class list is read (and checked) by the stages."""
        if self.prepare.source == "generic" and self.pretrain.enabled:
            raise ValueError("prepare.source = 'generic' with pretrain.enabled = true: COCO "
                             "pretraining maps to the VOC classes; set pretrain.enabled: false")
        if self.prepare.source != "generic":
            self.bootstrap.class_ids(VOC_CLASSES)
            if self.base.num_classes != len(VOC_CLASSES):
                raise ValueError(f"base.num_classes = {self.base.num_classes} but prepare.source "
                                 f"{self.prepare.source!r} has the {len(VOC_CLASSES)} VOC classes")
        return self


_UNION_MEMBERS = ("constrained-int", "int", "float", "str", "bool")


def _error_path(loc: tuple, raw: dict) -> str:
    """The key path of an error as the user wrote it: a key of a training section that came from
    the shared `train` section is named there; the union member pydantic tried (e.g.
    `literal['auto']`) is left out."""
    loc = tuple(p for p in loc if not (isinstance(p, str) and
                                       (p in _UNION_MEMBERS or p.startswith("literal["))))
    path = ".".join(str(p) for p in loc) or "<root>"
    if len(loc) > 1 and loc[0] in TRAIN_SECTIONS:
        own, shared = raw.get(loc[0]), raw.get(SHARED_TRAIN)
        if (isinstance(shared, dict) and loc[1] in shared
                and not (isinstance(own, dict) and loc[1] in own)):
            rest = ".".join(str(p) for p in loc[1:])
            path = f"{SHARED_TRAIN}.{rest} (shared, merged into {loc[0]})"
    return path


def _format_errors(err: ValidationError, source: str, raw: dict) -> str:
    lines = [f"invalid parameters in {source}:"]
    for e in err.errors():
        path = _error_path(e["loc"], raw)
        value = e.get("input")
        if not e["loc"]:  # a check across sections: its message names the keys itself
            line = f"  {e['msg'].removeprefix('Value error, ')}"
        elif e["type"] == "extra_forbidden":
            line = f"  {path}: unknown key (value {value!r}); check the spelling"
        else:
            line = f"  {path} = {value!r}: {e['msg']}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


def deep_merge(base: dict, overlay: dict) -> dict:
    """Recursively merge `overlay` into a copy of `base` (overlay wins)."""
    out = dict(base)
    for k, v in overlay.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def merge_shared_train(raw: dict, source: str = "<dict>") -> dict:
    """`raw` with its `train` section (the settings pretrain and finetune share) merged
    under `pretrain` and under `finetune` (their own keys win) and then removed."""
    if SHARED_TRAIN not in raw:
        return raw
    shared = raw[SHARED_TRAIN]
    if shared is None:
        shared = {}
    if not isinstance(shared, dict):
        raise ConfigError(f"{source}: {SHARED_TRAIN} = {shared!r}: expected a mapping of the "
                          f"settings {' and '.join(TRAIN_SECTIONS)} share")
    out = {k: v for k, v in raw.items() if k != SHARED_TRAIN}
    for section in TRAIN_SECTIONS:
        own = out.get(section, {})
        # a section that is not a mapping is left as it is for the schema to report
        out[section] = deep_merge(shared, own) if isinstance(own, dict) else own
    return out


def parse_params(raw: dict, source: str = "<dict>") -> Params:
    """Validate a params mapping (params.yaml and overlays merged); `train` is merged under
    `pretrain` and `finetune` first."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(merge_shared_train(raw, source))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source, raw)) from None


def merge_overlay(base: dict, overlay: dict) -> dict:
    """`overlay` over `base` as deep_merge does, where a key the overlay sets in `train` also
    replaces that key in the base's `pretrain` and `finetune`: the later layer wins, whichever of
    the three sections each layer names it in."""
    shared = overlay.get(SHARED_TRAIN)
    if isinstance(shared, dict) and shared:
        base = dict(base)
        for section in TRAIN_SECTIONS:
            if isinstance(base.get(section), dict):
                base[section] = {k: v for k, v in base[section].items() if k not in shared}
    return deep_merge(base, overlay)


BASES_KEY = "_base_"


def read_overlay(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """An overlay file (e.g. a paper preset) with the files its `_base_` list names, relative to
    it, merged under it: the bases in order (later wins), then the file's own keys."""
    path = Path(path)
    if path.resolve() in _chain:
        cycle = " -> ".join(str(p) for p in _chain + (path.resolve(),))
        raise ConfigError(f"{path}: {BASES_KEY} cycle: {cycle}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of params.yaml sections, got "
                          f"{type(raw).__name__}")
    bases = raw.pop(BASES_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASES_KEY} = {bases!r}: expected a list of overlay files, "
                          f"relative to {path.parent}")
    merged: dict = {}
    for name in bases:
        base_path = path.parent / name
        if not base_path.is_file():
            raise ConfigError(f"{path}: {BASES_KEY} entry {name!r}: file {base_path} not found")
        merged = merge_overlay(merged, read_overlay(base_path, _chain + (path.resolve(),)))
    return merge_overlay(merged, raw)


def load_params(path: str | Path = "params.yaml", overlays: list[str | Path] = ()) -> Params:
    """Read params.yaml (plus optional overlay files, e.g. a paper preset, each with its
    `_base_` files) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path.resolve()}")
    raw = yaml.safe_load(path.read_text()) or {}
    source = str(path)
    for ov in overlays:
        raw = merge_overlay(raw, read_overlay(ov))
        source += f" + {ov}"
    return parse_params(raw, source)
