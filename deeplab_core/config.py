"""Pydantic schemas for every section of params.yaml.

Unknown keys are forbidden everywhere, so a typo fails before any work is done, with a message that
names the key path, the value and what was expected (see `load_params`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deeplab_core.classes import HARD_CLASSES, VOC_CLASSES


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """params.yaml (or an overlay) does not match the schema; the message lists every problem."""


class BaseConfig(Strict):
    seed: int = 0
    num_classes: int = Field(21, ge=2, le=255)
    data_dir: str = "data"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0, le=64)
    torch_threads: int = Field(0, ge=0, description="0 = torch default")


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
        "fail", description="fail: bad samples fail the stage; quarantine: they are listed in "
        "data/validation/quarantine.json and left out of the clean lists training reads")

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
    enabled: bool = True
    iterations: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=2, description=">=2: batch norm needs more than one sample")
    crop_size: int = Field(96, ge=16)
    scale_min: float = Field(0.5, gt=0.0)
    scale_max: float = Field(2.0, gt=0.0)
    lr: float = Field(0.01, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    poly_power: float = Field(0.9, ge=0.0)
    log_every: int = Field(20, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    amp: bool = Field(False, description="mixed precision on CUDA (bf16/fp16); ignored on CPU")
    optimizer: Literal["sgd", "adamw"] = Field(
        "sgd", description="sgd (the papers' recipe) | adamw (momentum is then AdamW's beta1)")
    warmup_iters: int = Field(0, ge=0, description="linear lr warmup steps before the poly decay")

    @model_validator(mode="after")
    def _scales(self) -> "TrainConfig":
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min {self.scale_min} > scale_max {self.scale_max}")
        return self


class FinetuneConfig(TrainConfig):
    init_from_pretrain: bool = True
    use_bootstrap: bool = True


class CRFSearchConfig(Strict):
    cv_images: int = Field(20, ge=1, description="val images held out for the search")
    strategy: Literal["coarse_to_fine", "full"] = "coarse_to_fine"
    w1_grid: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0)
    sigma_alpha_grid: tuple[float, ...] = (30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0)
    sigma_beta_grid: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0)
    w2: float = Field(3.0, ge=0.0)
    sigma_gamma: float = Field(3.0, gt=0.0)
    iterations: int = Field(10, ge=1, le=100)
    workers: int = Field(2, ge=1, le=64)
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
    crf_workers: int = Field(2, ge=1, le=64)
    n_example_figures: int = Field(6, ge=0)


class RegisterConfig(Strict):
    model_name: str = Field("deeplab", min_length=1)
    metric: Literal["miou", "miou_crf"] = "miou_crf"
    min_improvement: float = Field(0.0, ge=0.0)


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


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        value = e.get("input")
        if not e["loc"]:  # a check across sections: its message names the keys itself
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key (value {value!r}); check the spelling")
        else:
            lines.append(f"  {path} = {value!r}: {e['msg']}")
    return "\n".join(lines)


def deep_merge(base: dict, overlay: dict) -> dict:
    """Recursively merge `overlay` into a copy of `base` (overlay wins)."""
    out = dict(base)
    for k, v in overlay.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_params(raw: dict, source: str = "<dict>") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_params(path: str | Path = "params.yaml", overlays: list[str | Path] = ()) -> Params:
    """Read params.yaml (plus optional overlay files, e.g. a paper preset) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path.resolve()}")
    raw = yaml.safe_load(path.read_text()) or {}
    source = str(path)
    for ov in overlays:
        ov_raw = yaml.safe_load(Path(ov).read_text()) or {}
        raw = deep_merge(raw, ov_raw)
        source += f" + {ov}"
    return parse_params(raw, source)
