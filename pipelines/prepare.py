"""prepare stage: generate the synthetic dataset (VOC 2012, SBD, COCO 2017 in their real on-disk
formats) or locate the real ones, then build the trainaug / val / COCO lists with every label as a
VOC palette PNG.

Outs: data/raw (the generated dataset, or a sources.json naming the real roots), data/prepared.
Real roots are checked before anything is written; both outs are built aside and swapped in only
after everything succeeded, so bad input (reported with the file, the id and the rule) leaves the
previous outputs as they were."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deeplab_core.config import Params
from deeplab_core.fileio import clean_stale_temporaries
from pipelines import tracking
from pipelines.common import REPO, StageError, atomic_dir, data_dir, get_params, run_stage, write_json


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
    from deeplab_core.data.trainaug import read_sources

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
                moved: dict[Path, Path]) -> dict:
    from deeplab_core.data.trainaug import prepare_datasets

    return prepare_datasets(voc, sbd, coco, out_dir, progress=True, workers=2,
                            build_dir=build_dir, moved=moved)


@flow(name="prepare")
def prepare_flow() -> dict:
    """data/raw and data/prepared are both built aside and swapped in only when everything
    succeeded: bad input leaves the previous outputs as they were."""
    params = get_params()
    d = data_dir(params)
    raw_dir, prepared_dir = d / "raw", d / "prepared"
    with tracking.stage_run("prepare", {"prepare": params.prepare.model_dump()}):
        synthetic = params.prepare.source == "synthetic"
        roots = None if synthetic else locate_real(params)
        for out in (raw_dir, prepared_dir):
            clean_stale_temporaries(out.parent, out.name)
        with atomic_dir(raw_dir) as raw_build, atomic_dir(prepared_dir) as prepared_build:
            if synthetic:
                generate(params, raw_build)
                voc = raw_build / "VOCdevkit" / "VOC2012"
                sbd = raw_build / "benchmark_RELEASE" / "dataset"
                coco = raw_build / "coco"
            else:
                write_json(raw_build / "sources.json",
                           {k: str(v) if v else None for k, v in roots.items()})
                voc, sbd, coco = roots["voc_root"], roots["sbd_root"], roots["coco_root"]
            summary = build_lists(voc, sbd, coco, prepared_build, prepared_dir,
                                  {raw_build: raw_dir})
        metrics = {k: v for k, v in tracking.flatten(summary).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and ".class_" not in k}
        write_json(d / "metrics" / "prepare.json", {"source": params.prepare.source, **metrics})
        import mlflow
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        tracking.log_artifacts([prepared_dir / "summary.json"])
    print(f"prepare: {metrics}")
    return summary


if __name__ == "__main__":
    run_stage(prepare_flow)
