"""Scheduled retraining: a Prefect flow that re-runs the DVC pipeline (DVC re-executes only the
stages whose inputs changed: new data, new params, new code) on a GPU machine, then reports what
the registry did. The register stage only promotes a model that beats the champion.

Deployments are declared in `prefect.yaml` (work pools `deeplab-cpu`, `deeplab-gpu` and
`deeplab-gpu-docker`; the cron comes from DEEPLAB_RETRAIN_CRON at deploy time):

  python -m pipelines.ops.retrain run [--allow-cpu] [--force]     # once, now, in this process
  DEEPLAB_RETRAIN_CRON="0 3 * * 0" prefect --no-prompt deploy --name retrain-gpu
  prefect worker start --pool deeplab-gpu                      # on the GPU machine
  python -m pipelines.ops.retrain serve --cron "0 3 * * 0"        # or: serve without a work pool

Retrains never overlap: the deployments have a concurrency limit of one with the ENQUEUE
collision strategy (prefect.yaml; `serve` uses global_limit=1), so a run that becomes due while
one runs waits (AwaitingConcurrencySlot) instead of failing on DVC's lock. Each flow run is
renamed after what it did ("retrain 2026-12-07 03:00 · 2 stages: evaluate,register · v3
champion" or "… · nothing changed").

After a retrain that ran stages, `dvc push` sends the new outputs to the project's default DVC
remote (none configured: a warning, nothing pushed), so a second machine gets them with
`dvc pull`.

Everything the run does goes to the Prefect run log: the DVC output line by line, the stages that
ran (or that nothing changed), and the registry's decision.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys

from prefect import flow, get_run_logger, task

from pipelines.common import REPO, StageError
from pipelines.ops.repro import registration_if_ran, run_title, started_stage


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
def dvc_repro(force: bool) -> list[str]:
    """`dvc repro` through pipelines.ops.repro (one Prefect API for every stage: this flow's server,
    and the stage runs grouped in MLflow), its output streamed into the run log. Returns the
    stages that ran."""
    log = get_run_logger()
    cmd = [sys.executable, "-m", "pipelines.ops.repro"] + (["--force"] if force else [])
    log.info("running %s in %s", " ".join(cmd), REPO)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    ran: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if "\r" in line:  # progress bars: keep their last state only
            line = line.rsplit("\r", 1)[-1]
        stage = started_stage(line)
        if stage:
            ran.append(stage)
        if line.strip():
            log.info("dvc | %s", line)
    code = proc.wait()
    if code != 0:
        raise StageError(f"`{' '.join(cmd)}` failed with exit code {code}")
    return ran


def _rename_run(title: str) -> None:
    """Give this flow run a name that says what it did (Prefect names runs at random)."""
    from prefect import get_client
    from prefect.runtime import flow_run

    if flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=title)


def default_remote() -> str | None:
    """The DVC remote `dvc push` uses (core.remote), None when the project has none."""
    from pipelines.ops.repro import dvc_executable

    proc = subprocess.run([dvc_executable(), "config", "core.remote"], cwd=REPO,
                          capture_output=True, text=True)
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


@task
def dvc_push() -> str | None:
    """`dvc push` of every cached output to the default remote, its output in the run log, so
    another machine (a second clone) gets the data with `dvc pull`. Returns the remote's name,
    None when none is configured (then nothing is pushed, and the log says so)."""
    from pipelines.ops.repro import dvc_executable

    log = get_run_logger()
    remote = default_remote()
    if remote is None:
        log.warning("no default DVC remote (core.remote): nothing pushed; see docs/mlops.md")
        return None
    proc = subprocess.run([dvc_executable(), "push"], cwd=REPO, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip():
            log.info("dvc push | %s", line.rsplit("\r", 1)[-1])
    if proc.returncode != 0:
        raise StageError(f"`dvc push` to remote {remote!r} failed with exit code "
                         f"{proc.returncode}; the new outputs are only on this machine")
    log.info("pushed the pipeline's data to DVC remote %r", remote)
    return remote


@flow(name="retrain")
def retrain_flow(require_gpu: bool = True, force: bool = False, push: bool = True) -> dict:
    import time

    from pipelines.ops.registry import require_server

    log = get_run_logger()
    started = time.time()
    require_server()  # before any stage: a tracking server that is down fails the run at once
    device = check_device(require_gpu)
    log.info("retraining on %s", device)
    ran = dvc_repro(force)
    out: dict = {"stages_run": ran, "registry": registration_if_ran(ran)}
    out["title"] = run_title("retrain", ran, out["registry"], started)
    _rename_run(out["title"])
    if not ran:
        log.info("nothing changed: no stage ran (data, params and code match dvc.lock); the "
                 "registry was not touched and no MLflow run was kept")
        return out
    log.info("stages that ran: %s", ", ".join(ran))
    if push:
        out["pushed_to"] = dvc_push()
    if out["registry"]:
        r = out["registry"]
        log.info("registry: %s %s (%s)", r["model_uri"],
                 "promoted to champion" if r["promoted"] else "registered, not promoted",
                 r["reason"])
    return out


def _exit_on_sigterm() -> None:
    """A service manager stops `serve` with SIGTERM: leave as on Ctrl-C (Prefect's runner shuts
    down on KeyboardInterrupt) instead of ignoring it."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipelines.ops.retrain", description=__doc__,
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
        _exit_on_sigterm()
        try:
            # global_limit=1: a run due while another runs waits for it (ENQUEUE)
            retrain_flow.serve(name=a.name, cron=a.cron, parameters=params, global_limit=1)
        except KeyboardInterrupt:
            print("retrain serve: stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
