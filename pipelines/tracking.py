"""MLflow tracking for the stages.

Store: `mlflow.db` (sqlite) at the project root, which is where MLflow's own commands look by
default, so `mlflow ui` or `mlflow models serve -m models:/deeplab@champion` run from the project
root need no `MLFLOW_TRACKING_URI`. Artifacts go to `mlruns/` and their locations are stored
relative to the project root, so the store keeps working after the project directory is moved.
`MLFLOW_TRACKING_URI` (and `DEEPLAB_ARTIFACT_ROOT`) point elsewhere when set; an experiment created
on another store (a tracking server) takes that store's default artifact location, e.g. the
server's proxied `mlflow-artifacts:/`, so clients in any directory and on any machine resolve it.

Lineage on every stage run: the git commit, DVC's own md5 of each dep (`dvc.dep.<path>`) and of
each out the stage wrote (`dvc.out.<path>`), the md5 of its params values (`dvc.params_md5`), and,
when the stage runs inside `python -m pipelines.ops.repro`, the pipeline run it belongs to
(`pipeline_run`, also the MLflow parent run).
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pipelines.common import (PIPELINE_RUN_ENV, PROJECT_HOME, REPO, dvc_md5, git_commit, stage_lineage,
                              stage_outs)
from deeplab_core.fileio import atomic_write_json as write_json

EXPERIMENT = os.environ.get("DEEPLAB_EXPERIMENT", "deeplab")
STORE = PROJECT_HOME / "mlflow.db"  # a `dvc exp run --temp`/queued copy logs to its project's
ARTIFACTS = "mlruns"  # relative to the project root
# The experiment kind ("Machine learning") that MLflow 3 UIs without the "GenAI | Model training"
# switch read to open an experiment on its training runs. The pinned UI (3.17) ignores it: the
# switch decides (the URL's `?workflowType=machine_learning`, else the choice the browser
# remembers, GenAI by default). The project's MLflow app (`--app-name deeplab`,
# pipelines/ops/mlflow_ui.py) makes "Model training" that default (tests/test_mlflow_ui.py).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# Seconds of real work this process did, by kind: "compute" (training, CRF search, evaluation)
# and "data" (generating, converting and validating the datasets); logged as <kind>_seconds.
WORK_KINDS = ("compute", "data")
_WORK = dict.fromkeys(WORK_KINDS, 0.0)


def from_project(uri: str, cwd: Path | None = None, repo: Path = REPO,
                 home: Path = PROJECT_HOME) -> str:
    """`uri` as the project sees it. MLflow takes a relative sqlite path from the working
    directory, which for a `dvc exp run --temp` or queued experiment is inside DVC's
    throw-away copy of the project (`repo`), so `MLFLOW_TRACKING_URI=sqlite:///mlflow.db` would
    log there and be deleted with it: inside such a copy the path is taken from the same place
    in the project (`home`) instead. Anywhere else, and for absolute paths, `:memory:` and
    servers, `uri` is returned as it is."""
    cwd = Path.cwd() if cwd is None else cwd
    if repo == home or not cwd.is_relative_to(repo):
        return uri
    prefix = "sqlite:///"
    path = uri[len(prefix):] if uri.startswith(prefix) else ""
    if not path or path.startswith(("/", ":memory:")):
        return uri
    return f"{prefix}{home / cwd.relative_to(repo) / path}"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return from_project(uri) if uri else f"sqlite:///{STORE}"


def project_store() -> bool:
    """True when the project's own store is used. (Compared by value: mlflow.set_tracking_uri
    exports MLFLOW_TRACKING_URI, so the variable being set says nothing.)"""
    return tracking_uri() == f"sqlite:///{STORE}"


def _store_artifacts_relative(experiment_id: str) -> None:
    """MLflow stores a local artifact location as an absolute path; rewrite the new
    experiment's to the project-relative one so runs, logged models and model versions created
    under it hold relative paths too (resolved against the project root at run time)."""
    with sqlite3.connect(STORE, timeout=60) as con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                    (ARTIFACTS, int(experiment_id)))


def configure() -> "module":
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if project_store() and Path.cwd() != PROJECT_HOME:
        os.chdir(PROJECT_HOME)  # the store's artifact paths are relative to the project root
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        art = os.environ.get("DEEPLAB_ARTIFACT_ROOT")
        try:
            # the project's own store: project-relative artifacts; any other store (a tracking
            # server): its own default (proxied `mlflow-artifacts:/` for `mlflow server
            # --artifacts-destination`), which every client resolves the same way
            local = project_store() and not art
            eid = mlflow.create_experiment(EXPERIMENT, artifact_location=art or (
                ARTIFACTS if local else None))
            if local:
                _store_artifacts_relative(eid)
        except Exception:  # created concurrently by another stage
            pass
    exp = mlflow.set_experiment(EXPERIMENT)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        # read by MLflow 3 UIs without the workflow switch (see EXPERIMENT_KIND_TAG)
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG,
                                                 EXPERIMENT_KIND)
    return mlflow


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def lineage_tags(stage: str) -> dict:
    lin = stage_lineage(stage)
    tags = {f"dvc.dep.{path}": md5 or "missing" for path, md5 in lin["deps"].items()}
    tags["dvc.params_md5"] = lin["params_md5"]
    return tags


def out_tags(stage: str) -> dict:
    """DVC's md5 of each out the stage declares, as written now (absent outs are skipped)."""
    tags = {}
    for rel in stage_outs(stage):
        md5 = dvc_md5(REPO / rel)
        if md5:
            tags[f"dvc.out.{rel}"] = md5
    return tags


def _process_seconds() -> float:
    """Seconds since this process started (interpreter start-up and imports included)."""
    import psutil

    return time.time() - psutil.Process().create_time()


@contextmanager
def work(kind: str = "compute") -> Iterator[None]:
    """Time a block of the stage's real work (also usable as a decorator): `compute` for
    training, CRF and evaluation, `data` for dataset generation, conversion and validation. The
    stage run logs the totals as `compute_seconds` / `data_seconds` beside `stage_seconds`; the
    rest of a stage's time is the pipeline's own overhead."""
    if kind not in _WORK:
        raise ValueError(f"work kind {kind!r}: expected one of {WORK_KINDS}")
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _WORK[kind] += time.perf_counter() - t0


def dvc_exp_tags(environ: dict | None = None) -> dict:
    """Under `dvc exp run` DVC gives each stage command the experiment's name (DVC_EXP_NAME) and
    baseline commit (DVC_EXP_BASELINE_REV): tags `dvc_exp` / `dvc_exp_baseline` on the runs, which
    stay in EXPERIMENT so that look-ups across stages (find_stage_run) still find each other."""
    env = os.environ if environ is None else environ
    name = env.get("DVC_EXP_NAME")
    if not name:
        return {}
    base = env.get("DVC_EXP_BASELINE_REV")
    return {"dvc_exp": name, **({"dvc_exp_baseline": base} if base else {})}


def experiment_parent(mlflow, exp: dict) -> str:
    """The parent run of one `dvc exp run` experiment (tags stage=experiment, dvc_exp,
    dvc_exp_baseline), created by the first of its stages that runs and found by the others, so
    an experiment's stage runs sit together under its name."""
    filt = " and ".join([f"tags.stage = 'experiment'"]
                        + [f"tags.{k} = '{v}'" for k, v in sorted(exp.items())])
    found = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string=filt,
                               output_format="list", max_results=1)
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    eid = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
    run = client.create_run(eid, run_name=f"exp {exp['dvc_exp']}",
                            tags={"stage": "experiment", "git_commit": git_commit(), **exp})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def run_tags(stage: str, lineage_of: str | None = None) -> dict:
    """Tags of a run of ``stage``: the git commit, the DVC experiment, the run it is nested under
    (the pipeline run, or under `dvc exp run` the experiment's parent run) and, for
    ``lineage_of`` (a dvc.yaml stage), the DVC lineage of that stage."""
    exp = dvc_exp_tags()
    tags = {"stage": stage, "git_commit": git_commit(),
            **(lineage_tags(lineage_of) if lineage_of else {}), **exp}
    parent = os.environ.get(PIPELINE_RUN_ENV)
    if parent:
        tags.update({"pipeline_run": parent, "mlflow.parentRunId": parent})
    elif exp:
        import mlflow

        tags["mlflow.parentRunId"] = experiment_parent(mlflow, exp)
    return tags


@contextmanager
def stage_run(stage: str, params_sections: dict) -> Iterator["mlflow.ActiveRun"]:
    """An MLflow run for one stage execution: params, lineage tags, and at the end the DVC
    hashes of what it wrote and its timing split (`stage_seconds`, `<kind>_seconds`). It is
    nested under the pipeline run (pipelines.ops.repro) or, under `dvc exp run`, under the
    experiment's parent run."""
    mlflow = configure()
    tags = run_tags(stage, stage)
    _WORK.update(dict.fromkeys(WORK_KINDS, 0.0))
    with mlflow.start_run(run_name=stage, tags=tags) as run:
        flat = {k: str(v)[:500] for k, v in flatten(params_sections).items()}
        if flat:
            mlflow.log_params(flat)
        yield run
        mlflow.set_tags(out_tags(stage))
        mlflow.log_metrics({**{f"{k}_seconds": v for k, v in _WORK.items()},
                            "stage_seconds": _process_seconds()})


def log_metrics(values: dict, step: int | None = None) -> None:
    """Log the numeric entries of `values` (bools and non-numbers skipped) to the active run."""
    import mlflow

    nums = {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if nums:
        mlflow.log_metrics(nums, step=step)


def metric_logger(prefix: str = ""):
    """A `log_metrics(step, dict)` callable for the library's training/eval hooks."""
    import mlflow

    def log(step: int, values: dict) -> None:
        mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in values.items()}, step=step)

    return log


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    import mlflow

    for p in paths:
        p = Path(p)
        if p.is_dir():
            mlflow.log_artifacts(str(p), artifact_path=artifact_path)
        elif p.is_file():
            mlflow.log_artifact(str(p), artifact_path=artifact_path)


def publish_metrics(path: Path, metrics: dict, artifacts: list[Path] = (),
                    artifact_path: str | None = None) -> None:
    """A stage's results, in both places: `metrics` as the json file DVC tracks at `path`, its
    numbers (log_metrics) and then `artifacts` (log_artifacts) on the active MLflow run."""
    write_json(path, metrics)
    log_metrics(metrics)
    log_artifacts(list(artifacts), artifact_path)


def find_stage_run(stage: str, out_path: str, md5: str) -> str | None:
    """Run id of the latest `stage` run that wrote `out_path` with DVC md5 `md5` (the run that
    produced the exact file another stage consumed), or None."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list",
                              filter_string=f"tags.stage = '{stage}' and "
                                            f"tags.`dvc.out.{out_path}` = '{md5}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None
