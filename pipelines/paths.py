"""Where every stage reads and writes under the data directory: the one place that names them.

Stages take their paths from `StagePaths.of(params)`; `stage_io(stage)` lists each dvc.yaml
stage's data deps, outs, metrics and plots from the same methods (relative to the project
root, as dvc.yaml writes them), and tests/test_dvc_deps.py holds dvc.yaml to that list.

`metrics/` and `plots/` under the data directory are kept in git (.gitignore lets them through;
dvc.yaml marks them `cache: false`), so every commit and every `dvc exp` holds its scores and
figures and `dvc exp show`, `dvc metrics diff` and `dvc plots diff` compare revisions. Only
evaluate's scores are DVC `metrics` (what `dvc metrics show` prints); the other stages' metric
files are bookkeeping (counts, timings, losses), plain outs in the same folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deeplab_core.config import Params
from pipelines.common import data_dir

# The data directory as dvc.yaml names it (base.data_dir's default), relative to the project root.
DVC_DATA_DIR = Path("data")
TRAIN_STAGES = ("pretrain", "finetune")


@dataclass(frozen=True)
class StagePaths:
    """The stage inputs and outputs under one data directory `root`."""
    root: Path

    @classmethod
    def of(cls, params: Params) -> "StagePaths":
        return cls(data_dir(params))

    # prepare
    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    def prepared_list(self, split: str) -> Path:
        """A list prepare wrote (train_aug, val, coco_train, coco_val), before validation."""
        return self.prepared / f"{split}.txt"

    @property
    def classes_file(self) -> Path:
        return self.prepared / "classes.json"

    @property
    def rejected(self) -> Path:
        """The samples prepare could not convert (``validate.on_error: quarantine``)."""
        return self.prepared / "rejected.json"

    # validate
    @property
    def validation(self) -> Path:
        return self.root / "validation"

    @property
    def validation_docs(self) -> Path:
        return self.root / "validation_docs"

    def clean_list(self, split: str) -> Path:
        """The list of `split` that validate passed: the prepared list less the samples it
        quarantined."""
        return self.validation / "lists" / f"{split}.txt"

    # bootstrap
    @property
    def bootstrap(self) -> Path:
        return self.root / "bootstrap"

    @property
    def hard_images(self) -> Path:
        return self.bootstrap / "hard_images.json"

    # pretrain, finetune
    def model_dir(self, stage: str) -> Path:
        return self.root / "models" / stage

    def model_file(self, stage: str) -> Path:
        return self.model_dir(stage) / "model.pt"

    def checkpoint(self, stage: str) -> Path:
        """The training stage's resume file: a working file DVC does not track (it carries its
        own resume key), so returning to a revision never leaves the stage dirty."""
        return self.root / "checkpoints" / f"{stage}.pt"

    def loss_json(self, stage: str) -> Path:
        """The stage's loss and learning rate per logging interval (data)."""
        return self.root / "plots" / f"{stage}_loss.json"

    def loss_png(self, stage: str) -> Path:
        """The loss curve as a static image: the stage's DVC plot."""
        return self.root / "plots" / f"{stage}_loss.png"

    # crf_search
    @property
    def crf_search(self) -> Path:
        return self.root / "crf_search"

    @property
    def best_params(self) -> Path:
        return self.crf_search / "best_params.json"

    @property
    def crf_cache(self) -> Path:
        """crf_search's probability cache: keyed by its settings, untracked like checkpoint()."""
        return self.root / "crf_cache"

    # evaluate
    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def per_class(self) -> Path:
        return self.eval / "per_class.json"

    @property
    def protocol(self) -> Path:
        """The inference protocol evaluate measured: register ships it with the model."""
        return self.eval / "protocol.json"

    @property
    def trimap_json(self) -> Path:
        return self.root / "plots" / "trimap.json"

    @property
    def trimap_png(self) -> Path:
        return self.root / "plots" / "trimap.png"

    # register
    @property
    def register(self) -> Path:
        return self.root / "register"

    @property
    def registration(self) -> Path:
        return self.register / "registration.json"

    # every stage
    def metrics_file(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}.json"


def clean_list(params: Params, split: str) -> Path:
    """The list of ``split`` (train_aug, val, coco_train, coco_val) that validate passed."""
    return StagePaths.of(params).clean_list(split)


def _stage_io(p: StagePaths) -> dict[str, dict[str, list[Path]]]:
    """Per stage: the data it reads (deps) and what it writes (outs, metrics, plots)."""
    io = {
        "prepare": {"deps": [], "outs": [p.raw, p.prepared]},
        "validate": {"deps": [p.prepared], "outs": [p.validation, p.validation_docs]},
        "bootstrap": {"deps": [p.prepared, p.validation], "outs": [p.bootstrap]},
        "pretrain": {"deps": [p.prepared, p.validation]},
        "finetune": {"deps": [p.prepared, p.validation, p.bootstrap, p.model_dir("pretrain")]},
        "crf_search": {"deps": [p.prepared, p.model_dir("finetune")],
                       "outs": [p.crf_search]},
        "evaluate": {"deps": [p.prepared, p.model_dir("finetune"), p.best_params],
                     "outs": [p.eval, p.trimap_json], "plots": [p.trimap_png]},
        "register": {"deps": [p.model_dir("finetune"), p.best_params, p.protocol,
                              p.metrics_file("evaluate"), p.classes_file],
                     "outs": [p.register]},
    }
    for stage in TRAIN_STAGES:
        io[stage].update(outs=[p.model_dir(stage), p.loss_json(stage)],
                         plots=[p.loss_png(stage)])
    for stage, entry in io.items():
        if stage == "evaluate":
            entry["metrics"] = [p.metrics_file(stage)]  # the scores `dvc metrics show` shows
        elif stage != "register":
            entry["outs"].append(p.metrics_file(stage))  # bookkeeping, in git all the same
    return io


def stage_io(stage: str) -> dict[str, list[str]]:
    """The stage's data deps, outs, metrics and plots as dvc.yaml lists them (project-relative
    posix paths); kinds the stage has none of are empty lists."""
    io = _stage_io(StagePaths(DVC_DATA_DIR))[stage]
    return {kind: [path.as_posix() for path in io.get(kind, [])]
            for kind in ("deps", "outs", "metrics", "plots")}


def stages() -> list[str]:
    return list(_stage_io(StagePaths(DVC_DATA_DIR)))
