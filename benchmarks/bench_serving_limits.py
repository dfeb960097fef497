"""Peak memory of a real `mlflow models serve` faced with oversized requests. Prints one JSON line.

    python benchmarks/bench_serving_limits.py [--limit-mb 16]

A micro model (random weights, 21 classes) is logged and registered in a scratch store and
served; the scoring server's peak resident memory (VmHWM of its uvicorn process) is read after
its start and after each request:

  * an 8000x8000 image as a JSON array (about 1 GB of JSON) with an honest Content-Length,
    streamed by the client from a generator (the client never holds it);
  * a 20 MB JSON body sent chunked (no Content-Length: the server has to count);
  * the same 20 MB body to a server whose limit is above it (for comparison: what parsing costs).

Each over-limit request must come back 413 and the server must still answer /health after it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_serving import register_micro  # noqa: E402

MB = 1024 * 1024


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def server_pid(port: int) -> int:
    """The pid of the uvicorn process listening on `port`."""
    import psutil

    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            return conn.pid
    raise SystemExit(f"no process listens on port {port}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise SystemExit(f"no VmHWM for pid {pid}")


def json_array_rows(side: int):
    """The JSON text of a side x side x 3 image of value 128, row by row; and its length."""
    row = "[" + ",".join(["[128,128,128]"] * side) + "]"
    head, tail = '{"inputs": [', "]}"
    length = len(head) + side * len(row) + (side - 1) + len(tail)

    def chunks():
        yield head.encode()
        for i in range(side):
            yield ((row + ",") if i < side - 1 else row).encode()
        yield tail.encode()
    return chunks(), length


def post_stream(port: int, chunks, length: int | None) -> tuple[int, str, float]:
    """POST the chunks (with Content-Length `length`, or chunked when None); (status, body,
    seconds)."""
    from pipelines.ops.serving.serve import post_streamed

    t0 = time.perf_counter()
    status, body = post_streamed(f"http://127.0.0.1:{port}", chunks, length)
    return status, body.decode(errors="replace"), time.perf_counter() - t0


def body_of(nbytes: int):
    """A JSON body of about `nbytes` (a 1-D list of zeros), in 1 MB chunks."""
    n = nbytes // 2
    yield b'{"inputs": ['
    per = MB // 2
    for start in range(0, n, per):
        k = min(per, n - start)
        yield (b"0," * k) if start + k < n else (b"0," * (k - 1) + b"0")
    yield b"]}"


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/health")
    ok = conn.getresponse().status == 200
    conn.close()
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit-mb", type=float, default=16.0, help="DEEPLAB_SERVE_MAX_REQUEST_BYTES")
    args = ap.parse_args()
    from pipelines.ops.serving import mlflow_serve

    scratch = Path(tempfile.mkdtemp(prefix="bench_limits_"))
    os.chdir(scratch)
    uri = register_micro(scratch)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}",
               OMP_NUM_THREADS="1")
    out = {"limit_bytes": int(args.limit_mb * MB)}
    with mlflow_serve(uri, scratch, env=dict(env, DEEPLAB_SERVE_MAX_REQUEST_BYTES=str(
            int(args.limit_mb * MB))), log_path=scratch / "serve.log") as url:
        port = int(url.rsplit(":", 1)[1])
        pid = server_pid(port)
        out["server_peak_rss_mb_after_start"] = peak_rss_mb(pid)
        chunks, length = json_array_rows(8000)
        log(f"8000x8000 JSON array: {length / MB:.0f} MB with Content-Length")
        status, body, secs = post_stream(port, chunks, length)
        out["json_8000x8000"] = {"body_mb": round(length / MB, 1), "status": status,
                                 "seconds": round(secs, 3), "server_peak_rss_mb": peak_rss_mb(pid),
                                 "message": json.loads(body).get("message", "")[:120]}
        log("20 MB body, chunked")
        status, body, secs = post_stream(port, body_of(20 * MB), None)
        out["body_20mb_chunked"] = {"status": status, "seconds": round(secs, 3),
                                    "server_peak_rss_mb": peak_rss_mb(pid)}
        out["healthy_after"] = healthy(port)
    with mlflow_serve(uri, scratch, env=dict(env, DEEPLAB_SERVE_MAX_REQUEST_BYTES=str(64 * MB)),
                      log_path=scratch / "serve2.log") as url:
        port = int(url.rsplit(":", 1)[1])
        pid = server_pid(port)
        start = peak_rss_mb(pid)
        log("20 MB body to a server with a 64 MB limit (parsed, then refused by the model)")
        status, body, secs = post_stream(port, body_of(20 * MB), 2 * (20 * MB // 2) + 13)
        out["body_20mb_under_64mb_limit"] = {"status": status, "seconds": round(secs, 3),
                                             "server_peak_rss_mb_after_start": start,
                                             "server_peak_rss_mb": peak_rss_mb(pid)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
