"""Scheduled retraining: a Prefect flow that re-runs the DVC pipeline (DVC re-executes only the
stages whose inputs changed: new data, new params) on a GPU machine, then reports what the
registry did. The register stage only promotes a model that beats the champion.

  python -m pipelines.retrain run [--allow-cpu] [--force]     # once, now
  python -m pipelines.retrain serve --cron "0 3 * * 0"        # a served, scheduled deployment
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from prefect import flow, task

from pipelines.common import REPO, StageError, data_dir, get_params


@task
def check_device(require_gpu: bool) -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if require_gpu:
        raise StageError("retraining asks for a GPU (require_gpu=True) but torch sees no CUDA "
                         "device; run on the GPU machine or pass --allow-cpu")
    return "cpu"


@task
def dvc_repro(force: bool) -> None:
    # `dvc repro` through pipelines.repro: every stage reports to one Prefect API (this flow's
    # server when PREFECT_API_URL is set) and the stage runs are grouped in MLflow.
    cmd = [sys.executable, "-m", "pipelines.repro"] + (["--force"] if force else [])
    proc = subprocess.run(cmd, cwd=REPO)
    if proc.returncode != 0:
        raise StageError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}")


@flow(name="retrain")
def retrain_flow(require_gpu: bool = True, force: bool = False) -> dict:
    device = check_device(require_gpu)
    print(f"retraining on {device}")
    dvc_repro(force)
    reg = data_dir(get_params()) / "register" / "registration.json"
    out = json.loads(reg.read_text())
    print(f"registry: {out['model_uri']} promoted={out['promoted']} ({out['reason']})")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.retrain", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="retrain once now")
    s = sub.add_parser("serve", help="serve a scheduled deployment of the retrain flow")
    for p in (r, s):
        p.add_argument("--allow-cpu", action="store_true", help="do not require a CUDA device")
        p.add_argument("--force", action="store_true", help="re-run every stage (dvc repro -f)")
    s.add_argument("--cron", default="0 3 * * 0", help="schedule (default: Sundays 03:00)")
    s.add_argument("--name", default="gpu-retrain", help="deployment name")
    a = ap.parse_args(argv)
    params = {"require_gpu": not a.allow_cpu, "force": a.force}
    if a.cmd == "run":
        try:
            retrain_flow(**params)
        except StageError as err:
            print(f"ERROR [retrain]: {err}", file=sys.stderr)
            sys.exit(2)
    else:
        retrain_flow.serve(name=a.name, cron=a.cron, parameters=params)


if __name__ == "__main__":
    main()
