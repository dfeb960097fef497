"""Talking to a real Prefect server's REST API from the tests: requests, waiting for a flow run
to end, and stopping a worker or `serve` process with SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


# Answers a Prefect server gives while busy (a sqlite database locked by a running flow's writes
# on a loaded machine): Prefect's own client retries them, and so does this one.
RETRY_STATUSES, RETRIES = (429, 502, 503), 8


def api(url: str, path: str, body: dict | None = None):
    """GET `url``path`, or POST `body` as JSON; the decoded answer."""
    for attempt in range(RETRIES + 1):
        req = urllib.request.Request(f"{url}{path}", method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            if err.code not in RETRY_STATUSES or attempt == RETRIES:
                raise
            time.sleep(min(2 ** attempt, 30))


def wait_final(url: str, run_id: str, timeout_s: float) -> dict:
    """The flow run once its state is final; AssertionError after `timeout_s`."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        run = api(url, f"/flow_runs/{run_id}")
        if run["state_type"] in FINAL:
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} not finished after {timeout_s} s: "
                         f"{run['state_type']}")


def stop(proc: subprocess.Popen, timeout_s: float = 60) -> float:
    """SIGTERM `proc` and wait; the seconds it took (AssertionError, and a kill, past
    `timeout_s`)."""
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{proc.args} ignored SIGTERM for {timeout_s} s")
    return time.time() - t0
