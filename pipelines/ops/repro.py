"""Run the DVC pipeline as one tracked, orchestrated run.

    python -m pipelines.ops.repro [any `dvc repro` arguments]

- one Prefect API for every stage (a temporary local `prefect server`, or `PREFECT_API_URL`),
  so the flow runs of one repro appear together and no stage starts a server of its own;
- one MLflow parent run that every stage run of this repro is nested under and tagged with
  (`pipeline_run`), named after what ran ("pipeline 2026-12-07 03:00 · 2 stages: evaluate,
  register · v3 champion"); when no stage ran the parent is deleted, not kept as an empty run;
- a timing table at the end: per stage, the wall time DVC took, the part spent in training, CRF
  and evaluation (`compute`), the part spent generating, converting and validating data
  (`data`), and the rest (`overhead`: interpreter start-up, imports, Prefect, MLflow, DVC
  hashing); the same figures are logged to the parent run. The total row's overhead includes
  starting the Prefect server and DVC's own start-up.

`make run` and the end-to-end test use it; plain `dvc repro` works too (each stage then falls back
to Prefect's temporary server of its own, and the runs are not grouped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipelines.common import REPO, StageError, git_commit, run_stage

RUNNING = "Running stage '"


def started_stage(line: str) -> str | None:
    """The stage a line of `dvc repro` output starts ("Running stage 'x':"), else None."""
    return line[len(RUNNING):].split("'")[0] if line.startswith(RUNNING) else None


def decision(registration: dict | None) -> str:
    """The registry's decision in a few words ("v3 champion", "v4 not promoted"), "" for none."""
    if not registration:
        return ""
    v = registration.get("version")
    return f"v{v} champion" if registration.get("promoted") else f"v{v} not promoted"


def run_title(kind: str, stages: list[str], registration: dict | None = None,
              when: float | None = None) -> str:
    """A run's name that says what ran: "<kind> 2026-12-07 03:00 · 2 stages: evaluate,
    register · v3 champion", or "… · nothing changed"."""
    from datetime import datetime, timezone

    at = datetime.fromtimestamp(time.time() if when is None else when, timezone.utc)
    what = (f"{len(stages)} stage{'s' if len(stages) != 1 else ''}: {','.join(stages)}"
            if stages else "nothing changed")
    return " · ".join(x for x in (f"{kind} {at:%Y-%m-%d %H:%M}", what, decision(registration))
                      if x)


def registration_if_ran(stages: list[str]) -> dict | None:
    """data/register/registration.json when the register stage was among `stages`."""
    import json

    from pipelines.common import get_params
    from pipelines.paths import StagePaths

    if "register" not in stages:
        return None
    path = StagePaths.of(get_params()).registration
    return json.loads(path.read_text()) if path.is_file() else None


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
        stage = started_stage(line)
        if stage:
            now = time.perf_counter()
            if current:
                walls[current] = now - since
            current, since = stage, now
    code = proc.wait()
    if current:
        walls[current] = time.perf_counter() - since
    return code, walls


COLUMNS = ("wall", "compute", "data", "overhead")


def timing_rows(walls: dict[str, float], pipeline_run: str) -> list[dict]:
    """Per stage that ran: DVC's wall time, the work seconds its MLflow run logged, and the
    rest (overhead)."""
    import mlflow

    from pipelines import tracking

    runs = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT], output_format="list",
                              filter_string=f"tags.pipeline_run = '{pipeline_run}'")
    metrics = {r.data.tags.get("stage"): r.data.metrics for r in runs}
    rows = []
    for stage, wall in walls.items():
        m = metrics.get(stage, {})
        row = {"stage": stage, "wall_s": wall}
        row.update({f"{k}_s": float(m.get(f"{k}_seconds", 0.0)) for k in tracking.WORK_KINDS})
        row["overhead_s"] = wall - sum(row[f"{k}_s"] for k in tracking.WORK_KINDS)
        rows.append({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
    return rows


def total_row(rows: list[dict], total_s: float) -> dict:
    out = {"stage": "total", "wall_s": round(total_s, 2)}
    for k in ("compute", "data"):
        out[f"{k}_s"] = round(sum(r[f"{k}_s"] for r in rows), 2)
    out["overhead_s"] = round(total_s - out["compute_s"] - out["data_s"], 2)
    return out


def format_timings(rows: list[dict], total_s: float) -> str:
    lines = [f"{'stage':12s}" + "".join(f"{c + ' s':>12s}" for c in COLUMNS)]
    for r in rows + [total_row(rows, total_s)]:
        lines.append(f"{r['stage']:12s}" + "".join(f"{r[c + '_s']:12.1f}" for c in COLUMNS))
    return "\n".join(lines)


def repro(args: list[str]) -> int:
    from pipelines import tracking
    from pipelines.ops.prefect_server import prefect_api

    t0, t0_wall = time.perf_counter(), time.time()
    # MLflow's import and store set-up overlap the Prefect server's start-up.
    configured: list = []
    setup = threading.Thread(target=lambda: configured.append(tracking.configure()))
    setup.start()
    with prefect_api() as api:
        print(f"Prefect API: {api}", flush=True)
        setup.join()
        if not configured:
            raise StageError(f"could not open the MLflow store {tracking.tracking_uri()}")
        mlflow = configured[0]
        parent = mlflow.start_run(run_name="pipeline", tags={
            "stage": "pipeline", "git_commit": git_commit(), "dvc_args": " ".join(args)})
        pipeline_run = parent.info.run_id
        mlflow.set_tag("pipeline_run", pipeline_run)
        os.environ[tracking.PIPELINE_RUN_ENV] = pipeline_run
        status = "FAILED"
        try:
            code, walls = run_dvc(args)
            status = "FINISHED" if code == 0 else "FAILED"
            if code == 0 and not walls:
                print("\nnothing changed: no stage ran; no pipeline run kept in MLflow",
                      flush=True)
                status = "DELETE"
                return code
            stages = list(walls)
            mlflow.set_tag("mlflow.runName", run_title(
                "pipeline", stages, registration_if_ran(stages) if code == 0 else None, t0_wall))
            mlflow.set_tag("stages_run", ",".join(stages))
            total = time.perf_counter() - t0
            rows = timing_rows(walls, pipeline_run)
            table = format_timings(rows, total)
            print(f"\npipeline run {pipeline_run} ({len(rows)} stage(s) ran):\n{table}", flush=True)
            tot = total_row(rows, total)
            mlflow.log_metrics({"total_seconds": total, "compute_seconds": tot["compute_s"],
                                "data_seconds": tot["data_s"],
                                "overhead_seconds": tot["overhead_s"], "stages_run": len(rows),
                                "dvc_exit_code": code})
            mlflow.log_dict({"stages": rows, "total": tot}, "timings.json")
            return code
        finally:
            os.environ.pop(tracking.PIPELINE_RUN_ENV, None)
            mlflow.end_run(status="FINISHED" if status == "DELETE" else status)
            if status == "DELETE":
                mlflow.delete_run(pipeline_run)


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
