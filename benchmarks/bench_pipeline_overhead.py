"""The pipeline's own overhead: a whole `python -m pipelines.ops.repro` (as `make run` calls it) in a
scratch copy of the project, split per stage into the wall time DVC took, the stage's compute
(training, CRF search, evaluation), its data work (generating, converting, validating the
datasets) and the rest: the pipeline's own overhead (start-up, imports, Prefect, MLflow, DVC).

    python benchmarks/bench_pipeline_overhead.py              # the default params.yaml
    python benchmarks/bench_pipeline_overhead.py --micro      # the test suite's micro config

Prints the table as the run printed it and one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def scratch_copy(root: Path, micro: bool) -> None:
    for name in ("deeplab_core", "pipelines"):
        shutil.copytree(REPO / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    if micro:
        sys.path.insert(0, str(REPO))
        from deeplab_core.config import deep_merge

        params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                            yaml.safe_load((REPO / "tests" / "micro_params.yaml").read_text()))
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--micro", action="store_true", help="the micro config of the tests")
    ap.add_argument("--keep", action="store_true", help="keep the scratch project")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="deeplab_overhead_"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "DEEPLAB_PARAMS")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    try:
        scratch_copy(root, a.micro)
        for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                    ["dvc", "config", "core.analytics", "false"]):
            subprocess.run(cmd, cwd=root, env=env, check=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pipelines.ops.repro"], cwd=root, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"pipeline failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                     f"{proc.stderr[-3000:]}")
        out = proc.stdout
        print(out[out.index("pipeline run "):])
        import mlflow

        os.chdir(root)  # the store's artifact paths are relative to the project root
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        parent = mlflow.search_runs(experiment_names=["deeplab"], output_format="list",
                                    filter_string="tags.stage = 'pipeline'")[0]
        timings = json.loads(Path(mlflow.artifacts.download_artifacts(
            run_id=parent.info.run_id, artifact_path="timings.json",
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}", dst_path=str(root / "t"))).read_text())
        rows, tot = timings["stages"], timings["total"]
        print(json.dumps({
            "config": "micro" if a.micro else "default", "cpus": os.cpu_count(),
            "wall_s": round(wall, 1), "compute_s": tot["compute_s"], "data_s": tot["data_s"],
            "overhead_s": tot["overhead_s"],
            "overhead_and_data_s": round(tot["overhead_s"] + tot["data_s"], 1),
            "overhead_per_stage_s": {r["stage"]: r["overhead_s"] for r in rows},
            "outside_stages_s": round(tot["wall_s"] - sum(r["wall_s"] for r in rows), 1)}))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", file=sys.stderr)


if __name__ == "__main__":
    main()
