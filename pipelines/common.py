"""The pipeline layer's ground floor, shared by the stages, the operations and the tools: repo
paths, params loading with clear errors, the DVC hash of a stage's inputs, and the `main()` wrapper
that turns errors into one readable message. It imports nothing else from `pipelines`."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable

import yaml

from deeplab_core.config import ConfigError, Params, load_params

REPO = Path(__file__).resolve().parents[1]


def project_home(repo: Path) -> Path:
    """The project a checkout belongs to: `repo` itself, or for the copy DVC makes of it for a
    `dvc exp run --temp` or queued experiment (`<project>/.dvc/tmp/exps/...`), that project, so
    the experiment logs to the project's tracking store rather than a throw-away one."""
    parts = repo.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return repo


PROJECT_HOME = project_home(REPO)
# Set by pipelines.ops.repro for the stages of one pipeline run: the MLflow parent run's id.
PIPELINE_RUN_ENV = "DEEPLAB_PIPELINE_RUN"


def params_path() -> Path:
    """params.yaml of the project (DEEPLAB_PARAMS overrides, e.g. for a micro config)."""
    return Path(os.environ.get("DEEPLAB_PARAMS", REPO / "params.yaml"))


def get_params() -> Params:
    return load_params(params_path())


def data_dir(params: Params) -> Path:
    d = Path(params.base.data_dir)
    return d if d.is_absolute() else REPO / d


def git_commit() -> str:
    """HEAD's sha, with "-dirty" when tracked files differ from it. dvc.lock and the metrics and
    plots in git (data/metrics, data/plots) do not count: the very run being tagged rewrites
    them."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)dvc.lock", ":(exclude)data/metrics",
                                ":(exclude)data/plots"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def update_with_file(h: "hashlib._Hash", path: Path) -> "hashlib._Hash":
    """Feed a file's bytes to hash `h` in 1 MiB chunks; returns `h`."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def file_md5(path: Path) -> str:
    """The md5 hex digest of a file's bytes."""
    import hashlib

    return update_with_file(hashlib.md5(), path).hexdigest()


@functools.lru_cache(maxsize=1)
def _dvc_hashing():
    """DVC's own hashing (dvc_data), honouring the project's .dvcignore, so the values below are
    the ones `dvc repro` writes to dvc.lock."""
    from dvc.ignore import DvcIgnoreFilter
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    fs = LocalFileSystem()
    return build, HashFileDB(MemoryFileSystem(), "/staging"), fs, DvcIgnoreFilter(fs, str(REPO))


def dvc_md5(path: Path) -> str | None:
    """The md5 DVC records for `path` in dvc.lock ("<md5>.dir" for a directory); None when the
    path does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    build, odb, fs, ignore = _dvc_hashing()
    _, _, obj = build(odb, str(path.absolute()), fs, "md5", dry_run=True, ignore=ignore)
    return obj.hash_info.value


@functools.lru_cache(maxsize=1)
def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _out_paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def stage_outs(stage: str) -> list[str]:
    """Every path the stage writes, as dvc.yaml declares them (outs, metrics, plots)."""
    spec = dvc_stages()[stage]
    return _out_paths(spec.get("outs", []) + spec.get("metrics", []) + spec.get("plots", []))


def stage_params(stage: str) -> dict:
    """The stage's params as dvc.lock records them: {key: value} for each key dvc.yaml lists."""
    raw = yaml.safe_load(params_path().read_text()) or {}
    out = {}
    for entry in dvc_stages()[stage].get("params", []):
        keys = [entry] if isinstance(entry, str) else [k for v in entry.values() for k in v]
        for key in keys:
            node = raw
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            out[key] = node
    return out


def params_md5(values: dict) -> str:
    """md5 of the stage's params values (as dvc.lock holds them), keys sorted."""
    return hashlib.md5(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def stage_lineage(stage: str) -> dict:
    """DVC's md5 of each dep of the stage ({path: md5}) and the md5 of its params values.
    Computed once per process: a stage's deps do not change while it runs."""
    deps = {dep: dvc_md5(REPO / dep) for dep in sorted(dvc_stages()[stage].get("deps", []))}
    return {"deps": deps, "params_md5": params_md5(stage_params(stage))}


def stage_inputs_hash(stage: str) -> str:
    """One md5 over the stage's DVC dep hashes and params: the same inputs always give the same
    value (the training resume key: a checkpoint only continues the same run)."""
    return hashlib.md5(json.dumps(stage_lineage(stage), sort_keys=True).encode()).hexdigest()


class StageError(RuntimeError):
    """A stage cannot run with what it was given; the message says what to fix."""


class _NoTraceback(logging.Formatter):
    """A console formatter that leaves a record's traceback out (the record keeps it for the
    other handlers: Prefect's API log handler stores it with the flow run)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def tracebacks_to_the_log_only() -> None:
    """Prefect's console handler prints a failed flow's exception with its traceback. On the
    console the user gets one line per error instead (:func:`run_stage` prints them); the
    traceback stays in the flow run's log (Prefect's API log, shown in the UI)."""
    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG, setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    if not PROCESS_LOGGING_CONFIG:
        setup_logging()
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in
                                       list(logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler) and \
                    not isinstance(handler.formatter, _NoTraceback):
                handler.setFormatter(_NoTraceback(handler.formatter))


def run_stage(flow: Callable[[], object]) -> None:
    """Entry point wrapper: a user error prints one clear message and exits 2 (its traceback
    only in the flow run's log); anything else prints the traceback and exits 1."""
    try:
        tracebacks_to_the_log_only()
        from prefect import tags
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        run_id = os.environ.get(PIPELINE_RUN_ENV)
        # Inside pipelines.ops.repro the flow run is tagged, so the UI can filter one repro.
        # Heartbeats (crash detection for deployments) are off: DVC supervises a stage, and the
        # heartbeat thread holds each flow's exit for up to a second.
        with tags(*([f"pipeline_run:{run_id}"] if run_id else [])), \
                temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            flow()
    except (ConfigError, StageError, FileNotFoundError, ValueError) as err:
        msg = str(err)
        # Prefect wraps task failures; show the root cause the user can act on.
        print(f"\nERROR [{Path(sys.argv[0]).stem}]: {type(err).__name__}: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted; outputs left as they were before this run", file=sys.stderr)
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
