"""prepare stage: generate the synthetic dataset (VOC 2012, SBD, COCO 2017 in their real on-disk
formats) or locate the real ones, then build the trainaug / val / COCO lists with every label as a
VOC palette PNG (COCO masks rasterised once, here); or list a generic dataset (images, index
masks, class list) as it is. Every source writes data/prepared/classes.json, the class list the
later stages read (names in reports and plots, palette, ignore index).

Outs: data/raw (the generated dataset, or a sources.json naming the real roots), data/prepared.
Real roots are checked before anything is written; both outs are built aside and swapped in only
after everything succeeded, so bad input (reported with the file, the id and the rule) leaves the
previous outputs as they were. With `validate.on_error: quarantine` a label that breaks a rule
does not fail the stage: data/prepared/rejected.json lists it for validate to quarantine."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deeplab_core.config import Params
from deeplab_core.fileio import clean_stale_temporaries
from pipelines import tracking
from pipelines.common import REPO, StageError, get_params, run_stage
from pipelines.stages.shared import atomic_dir, write_json
from pipelines.paths import StagePaths


def _resolve(p: str | None) -> Path | None:
    if p is None:
        return None
    path = Path(p).expanduser()
    return path if path.is_absolute() else REPO / path


@task
@tracking.work("data")
def generate(params: Params, raw_build: Path) -> dict:
    from deeplab_core.data.synthetic import generate_synthetic

    s = params.prepare.synthetic
    return generate_synthetic(
        raw_build, seed=s.seed, image_size=(s.image_height, s.image_width),
        n_voc_train=s.n_voc_train, n_voc_val=s.n_voc_val, n_sbd_train=s.n_sbd_train,
        n_sbd_val=s.n_sbd_val, n_coco_train=s.n_coco_train, n_coco_val=s.n_coco_val,
        sbd_overlap_val=s.sbd_overlap_val)


@task
@tracking.work("data")
def locate_real(params: Params) -> dict[str, Path | None]:
    """The real dataset roots, checked (layouts, split files, labels and images present) before
    anything is written."""
    from deeplab_core.data.prepare import read_sources

    p = params.prepare
    roots = {"voc_root": _resolve(p.voc_root), "sbd_root": _resolve(p.sbd_root),
             "coco_root": _resolve(p.coco_root)}
    for key, path in roots.items():
        if path is not None and not path.is_dir():
            raise StageError(f"prepare.{key} = {getattr(p, key)!r}: directory {path} does not "
                             "exist")
    read_sources(roots["voc_root"], roots["sbd_root"], roots["coco_root"])
    return roots


@task
@tracking.work("data")
def build_lists(voc: Path, sbd: Path | None, coco: Path | None, build_dir: Path, out_dir: Path,
                moved: dict[Path, Path], coco_min_area: float, on_error: str,
                workers: int | str = 2) -> dict:
    from deeplab_core.data.prepare import prepare_datasets
    from deeplab_core.runtime import pool_workers

    return prepare_datasets(voc, sbd, coco, out_dir, progress=True, workers=pool_workers(workers),
                            coco_min_area=coco_min_area, build_dir=build_dir, moved=moved,
                            on_error=on_error)


@task
@tracking.work("data")
def build_generic(params: Params, build_dir: Path, out_dir: Path) -> dict:
    from deeplab_core.data.generic import prepare_generic

    root = _resolve(params.prepare.generic_root)
    if not root.is_dir():
        raise StageError(f"prepare.generic_root = {params.prepare.generic_root!r}: directory "
                         f"{root} does not exist")
    return prepare_generic(root, out_dir, build_dir=build_dir,
                           on_error=params.validate_.on_error)


def _build(params: Params, roots: dict | None, raw_build: Path, prepared_build: Path,
           moved: dict[Path, Path]) -> dict:
    """Fill the raw and prepared build folders for the configured source."""
    source = params.prepare.source
    if source == "generic":
        write_json(raw_build / "sources.json",
                   {"generic_root": str(_resolve(params.prepare.generic_root))})
        return build_generic(params, prepared_build, moved[prepared_build])
    if source == "synthetic":
        generate(params, raw_build)
        voc = raw_build / "VOCdevkit" / "VOC2012"
        sbd = raw_build / "benchmark_RELEASE" / "dataset"
        coco = raw_build / "coco"
    else:
        write_json(raw_build / "sources.json", {k: str(v) if v else None for k, v in roots.items()})
        voc, sbd, coco = roots["voc_root"], roots["sbd_root"], roots["coco_root"]
    return build_lists(voc, sbd, coco, prepared_build, moved[prepared_build],
                       {raw_build: moved[raw_build]}, params.prepare.coco_min_area,
                       params.validate_.on_error, params.prepare.workers)


def summary_metrics(summary: dict) -> dict:
    """The numbers of prepare's summary (per-class counts left out) for metrics/prepare.json."""
    return {k: v for k, v in tracking.flatten(summary).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and ".class_" not in k}


@flow(name="prepare")
def prepare_flow() -> dict:
    """data/raw and data/prepared are both built aside and swapped in only when everything
    succeeded: bad input leaves the previous outputs as they were."""
    params = get_params()
    p = StagePaths.of(params)
    with tracking.stage_run("prepare", {"prepare": params.prepare.model_dump(),
                                        "validate": {"on_error": params.validate_.on_error}}):
        roots = locate_real(params) if params.prepare.source == "real" else None
        for out in (p.raw, p.prepared):
            clean_stale_temporaries(out.parent, out.name)
        with atomic_dir(p.raw) as raw_build, atomic_dir(p.prepared) as prepared_build:
            summary = _build(params, roots, raw_build, prepared_build,
                             {raw_build: p.raw, prepared_build: p.prepared})
        metrics = summary_metrics(summary)
        tracking.publish_metrics(p.metrics_file("prepare"),
                                 {"source": params.prepare.source, **metrics},
                                 artifacts=[p.prepared / "summary.json", p.classes_file])
    if summary.get("rejected"):
        print(f"prepare: {summary['rejected']} sample(s) rejected (validate.on_error: "
              f"quarantine), listed in {p.rejected}")
    print(f"prepare: {metrics}")
    return summary


if __name__ == "__main__":
    run_stage(prepare_flow)
