"""Run the DVC pipeline as one tracked, orchestrated run.

    python -m pipelines.repro [any `dvc repro` arguments]

- one Prefect API for every stage (a temporary local `prefect server`, or `PREFECT_API_URL`),
  so the flow runs of one repro appear together and no stage starts a server of its own;
- one MLflow parent run (`pipeline`) that every stage run of this repro is nested under and
  tagged with (`pipeline_run`);
- a timing table at the end: per stage, the wall time DVC took, the part spent in training, CRF
  and evaluation (`compute_seconds`) and the rest (`overhead`: start-up, imports, Prefect,
  MLflow, DVC hashing); the same figures are logged to the parent run.

`make run` and the end-to-end test use it; plain `dvc repro` works too (each stage then falls back
to Prefect's temporary server of its own, and the runs are not grouped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipelines.common import REPO, git_commit, run_stage

RUNNING = "Running stage '"


def dvc_executable() -> str:
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.is_file() else (shutil.which("dvc") or "dvc")


def run_dvc(args: list[str]) -> tuple[int, dict[str, float]]:
    """`dvc repro args` with its output passed through; returns (exit code, {stage: wall s})
    measured from each "Running stage" line to the next (the last one to DVC's exit)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    proc = subprocess.Popen([dvc_executable(), "repro", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    walls: dict[str, float] = {}
    current, since = None, time.perf_counter()
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith(RUNNING):
            now = time.perf_counter()
            if current:
                walls[current] = now - since
            current, since = line[len(RUNNING):].split("'")[0], now
    code = proc.wait()
    if current:
        walls[current] = time.perf_counter() - since
    return code, walls


def timing_rows(walls: dict[str, float], pipeline_run: str) -> list[dict]:
    """Per stage that ran: DVC's wall time, and compute seconds from the stage's MLflow run."""
    import mlflow

    from pipelines import tracking

    runs = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT], output_format="list",
                              filter_string=f"tags.pipeline_run = '{pipeline_run}'")
    compute = {r.data.tags.get("stage"): r.data.metrics.get("compute_seconds", 0.0) for r in runs}
    rows = []
    for stage, wall in walls.items():
        c = float(compute.get(stage, 0.0))
        rows.append({"stage": stage, "wall_s": round(wall, 2), "compute_s": round(c, 2),
                     "overhead_s": round(wall - c, 2)})
    return rows


def format_timings(rows: list[dict], total_s: float) -> str:
    lines = [f"{'stage':12s}{'wall s':>9s}{'compute s':>11s}{'overhead s':>12s}"]
    for r in rows:
        lines.append(f"{r['stage']:12s}{r['wall_s']:9.1f}{r['compute_s']:11.1f}"
                     f"{r['overhead_s']:12.1f}")
    c = sum(r["compute_s"] for r in rows)
    lines.append(f"{'total':12s}{total_s:9.1f}{c:11.1f}{total_s - c:12.1f}")
    return "\n".join(lines)


def repro(args: list[str]) -> int:
    from pipelines import tracking
    from pipelines.prefect_server import prefect_api

    t0 = time.perf_counter()
    with prefect_api() as api:
        print(f"Prefect API: {api}", flush=True)
        mlflow = tracking.configure()
        parent = mlflow.start_run(run_name="pipeline", tags={
            "stage": "pipeline", "git_commit": git_commit(), "dvc_args": " ".join(args)})
        pipeline_run = parent.info.run_id
        mlflow.set_tag("pipeline_run", pipeline_run)
        os.environ[tracking.PIPELINE_RUN_ENV] = pipeline_run
        status = "FAILED"
        try:
            code, walls = run_dvc(args)
            status = "FINISHED" if code == 0 else "FAILED"
            total = time.perf_counter() - t0
            rows = timing_rows(walls, pipeline_run)
            table = format_timings(rows, total)
            print(f"\npipeline run {pipeline_run} ({len(rows)} stage(s) ran):\n{table}", flush=True)
            compute = sum(r["compute_s"] for r in rows)
            mlflow.log_metrics({"total_seconds": total, "compute_seconds": compute,
                                "overhead_seconds": total - compute, "stages_run": len(rows),
                                "dvc_exit_code": code})
            mlflow.log_dict({"stages": rows, "total_s": round(total, 2)}, "timings.json")
            return code
        finally:
            os.environ.pop(tracking.PIPELINE_RUN_ENV, None)
            mlflow.end_run(status=status)


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return
    code: list[int] = []
    run_stage(lambda: code.append(repro(args)))
    sys.exit(code[0] if code else 1)


if __name__ == "__main__":
    main()
