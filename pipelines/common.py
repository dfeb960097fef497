"""What every stage shares: repo paths, params loading with clear errors, atomic outputs, the hash
of a stage's DVC inputs, and the `main()` wrapper that turns errors into one readable message."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable

import yaml

from deeplab_core.config import ConfigError, Params, load_params
from deeplab_core.data.io import atomic_directory, atomic_write_json

REPO = Path(__file__).resolve().parents[1]


def params_path() -> Path:
    """params.yaml of the project (DEEPLAB_PARAMS overrides, e.g. for a micro config)."""
    return Path(os.environ.get("DEEPLAB_PARAMS", REPO / "params.yaml"))


def get_params() -> Params:
    return load_params(params_path())


def data_dir(params: Params) -> Path:
    d = Path(params.base.data_dir)
    return d if d.is_absolute() else REPO / d


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def update_with_file(h: "hashlib._Hash", path: Path) -> "hashlib._Hash":
    """Feed a file's bytes to hash `h` in 1 MiB chunks; returns `h`."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def _hash_path(h: "hashlib._Hash", path: Path) -> None:
    if path.is_file():
        h.update(path.name.encode())
        update_with_file(h, path)
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode())
                update_with_file(h, p)
    else:
        h.update(b"<missing>")


@functools.lru_cache(maxsize=None)
def stage_inputs_hash(stage: str) -> str:
    """md5 over the stage's DVC deps (as declared in dvc.yaml) and its params values: the same
    inputs always give the same hash, so an MLflow run can be matched to its DVC inputs.
    Computed once per process: a stage's deps do not change while it runs (its outs are not deps),
    and both the MLflow tags and the training resume key need it."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    h = hashlib.md5()
    for dep in sorted(spec.get("deps", [])):
        h.update(dep.encode())
        _hash_path(h, REPO / dep)
    raw = yaml.safe_load(params_path().read_text()) or {}
    for entry in spec.get("params", []):
        keys = [entry] if isinstance(entry, str) else [k for v in entry.values() for k in v]
        for key in keys:
            node = raw
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            h.update(f"{key}={json.dumps(node, sort_keys=True, default=str)}".encode())
    return h.hexdigest()


# Stage outputs are written through the library's atomic helpers: a failed or killed stage never
# leaves a half-written output in place (directories are built aside and swapped in whole).
atomic_dir = atomic_directory
write_json = atomic_write_json


class StageError(RuntimeError):
    """A stage cannot run with what it was given; the message says what to fix."""


def require_inputs(stage: str, *paths: Path) -> None:
    """Fail with one message naming every missing input and the stage that writes them."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise StageError(f"{stage} needs {', '.join(missing)}; run the stages before it "
                         "(dvc repro)")


def run_stage(flow: Callable[[], object]) -> None:
    """Entry point wrapper: a user error prints one clear message and exits 2; anything else
    prints the traceback and exits 1."""
    try:
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
