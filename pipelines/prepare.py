"""prepare stage: generate the synthetic dataset (VOC 2012, SBD, COCO 2017 in their real on-disk
formats) or locate the real ones, then build the trainaug / val / COCO lists with every label as a
VOC palette PNG.

Outs: data/raw (the generated dataset, or a sources.json naming the real roots), data/prepared."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from deeplab_core.config import Params
from pipelines import tracking
from pipelines.common import REPO, StageError, atomic_dir, data_dir, get_params, run_stage, write_json


def _resolve(p: str | None) -> Path | None:
    if p is None:
        return None
    path = Path(p).expanduser()
    return path if path.is_absolute() else REPO / path


@task
def generate(params: Params, raw_dir: Path) -> dict:
    from deeplab_core.data.synthetic import generate_synthetic

    s = params.prepare.synthetic
    with atomic_dir(raw_dir) as tmp:
        summary = generate_synthetic(
            tmp, seed=s.seed, image_size=(s.image_height, s.image_width),
            n_voc_train=s.n_voc_train, n_voc_val=s.n_voc_val, n_sbd_train=s.n_sbd_train,
            n_sbd_val=s.n_sbd_val, n_coco_train=s.n_coco_train, n_coco_val=s.n_coco_val,
            sbd_overlap_val=s.sbd_overlap_val)
    return summary


@task
def locate_real(params: Params, raw_dir: Path) -> dict:
    p = params.prepare
    roots = {"voc_root": _resolve(p.voc_root), "sbd_root": _resolve(p.sbd_root),
             "coco_root": _resolve(p.coco_root)}
    for key, path in roots.items():
        if path is not None and not path.is_dir():
            raise StageError(f"prepare.{key} = {getattr(p, key)!r}: directory {path} does not "
                             "exist")
    with atomic_dir(raw_dir) as tmp:
        write_json(tmp / "sources.json", {k: str(v) if v else None for k, v in roots.items()})
    return {k: str(v) if v else None for k, v in roots.items()}


@task
def build_lists(voc: Path, sbd: Path | None, coco: Path | None, out_dir: Path) -> dict:
    from deeplab_core.data.trainaug import prepare_datasets

    return prepare_datasets(voc, sbd, coco, out_dir, progress=True, workers=2)


@flow(name="prepare")
def prepare_flow() -> dict:
    params = get_params()
    d = data_dir(params)
    raw_dir = d / "raw"
    with tracking.stage_run("prepare", {"prepare": params.prepare.model_dump()}):
        if params.prepare.source == "synthetic":
            gen = generate(params, raw_dir)
            voc = raw_dir / "VOCdevkit" / "VOC2012"
            sbd = raw_dir / "benchmark_RELEASE" / "dataset"
            coco = raw_dir / "coco"
        else:
            gen = locate_real(params, raw_dir)
            voc, sbd, coco = (_resolve(params.prepare.voc_root), _resolve(params.prepare.sbd_root),
                              _resolve(params.prepare.coco_root))
        summary = build_lists(voc, sbd, coco, d / "prepared")
        metrics = {k: v for k, v in tracking.flatten(summary).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and ".class_" not in k}
        write_json(d / "metrics" / "prepare.json", {"source": params.prepare.source, **metrics})
        import mlflow
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        tracking.log_artifacts([d / "prepared" / "summary.json"])
    print(f"prepare: {metrics}")
    return summary


if __name__ == "__main__":
    run_stage(prepare_flow)
