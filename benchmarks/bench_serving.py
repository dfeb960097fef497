"""Served latency of the segmentation model behind a real `mlflow models serve --env-manager
local`. Prints one JSON line of figures.

    python benchmarks/bench_serving.py [--model-uri models:/deeplab@champion] [--requests 7]
                                       [--threads 1]

Without --model-uri a micro network (random weights, 21 classes) with the default CRF (10
mean-field iterations) is logged and registered in a scratch store: its network costs little,
so the figures are the serving overhead plus the CRF. With --model-uri the model comes from the
project's store (the server runs from the project root).

For one 500x375 image (PASCAL VOC size: a scene of the project's synthetic data, textured
and noisy, which compresses like a photo): median and min wall time of N requests (after one warm-up) as a JSON array body and
as a base64 JPEG body (answered with a base64 PNG mask), each with and without the CRF; request
and response sizes in bytes; the in-process `predict` time of the same model for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

H, W = 375, 500


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def register_micro(root: Path) -> str:
    """Log and register a micro model with the default CRF in `root`/mlflow.db; its URI."""
    import mlflow
    import torch

    from deeplab_core.crf.densecrf import CRFParams
    from deeplab_core.engine.checkpoint import model_spec, save_checkpoint
    from deeplab_core.models import build_model
    from pipelines.ops.serving import log_pyfunc_model

    torch.manual_seed(0)
    ckpt, crf = root / "model.pt", root / "best_params.json"
    save_checkpoint(ckpt, build_model("micro", num_classes=21).eval(), model_spec("micro", 21, 16))
    crf.write_text(json.dumps({"params": CRFParams().to_dict()}))
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    with mlflow.start_run():
        log_pyfunc_model(ckpt, crf, "deeplab-bench")
    return "models:/deeplab-bench/1"


def timed_requests(session, url: str, body: dict, n: int) -> tuple[list[float], int, int]:
    data = json.dumps(body)
    sizes = (0, 0)
    times = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        resp = session.post(f"{url}/invocations", data=data, timeout=600,
                            headers={"Content-Type": "application/json"})
        dt = time.perf_counter() - t0
        if resp.status_code != 200:
            raise SystemExit(f"request failed ({resp.status_code}): {resp.text[:500]}")
        if i:  # the first request warms up
            times.append(dt)
        sizes = (len(data), len(resp.content))
    return times, *sizes


def ms(times: list[float]) -> dict:
    return {"median": round(1000 * statistics.median(times), 1),
            "min": round(1000 * min(times), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-uri", help="served model (default: a micro model in a scratch store)")
    ap.add_argument("--requests", type=int, default=7, help="timed requests per case")
    ap.add_argument("--threads", type=int, help="torch/OpenMP threads of the server and of the "
                                                "in-process model (default: torch's own)")
    args = ap.parse_args()

    import mlflow
    import requests
    import torch

    from deeplab_core.data.synthetic.scenes import render_scene
    from pipelines.ops.serving import encode_image_b64, mlflow_serve

    scratch = tempfile.TemporaryDirectory(prefix="bench_serving_")
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    cwd = REPO if args.model_uri else Path(scratch.name)
    os.chdir(cwd)  # the store's artifact paths are relative to its project
    model_uri = args.model_uri or register_micro(cwd)
    if not args.model_uri:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    image = render_scene(np.random.default_rng(0), H, W).image
    jpeg_b64 = encode_image_b64(image, quality=90)
    cases = {
        "array_crf": {"inputs": image.tolist()},
        "array_nocrf": {"inputs": image.tolist(), "params": {"crf": False}},
        "b64_crf": {"inputs": {"image_b64": jpeg_b64}, "params": {"mask_format": "png"}},
        "b64_nocrf": {"inputs": {"image_b64": jpeg_b64},
                      "params": {"crf": False, "mask_format": "png"}},
    }
    out = {"model_uri": model_uri if args.model_uri else "micro (random weights, 21 classes, "
                                                         "default CRF)",
           "image": f"{W}x{H}", "requests": args.requests, "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    with mlflow_serve(model_uri, cwd, env=env, log_path=Path(scratch.name) / "serve.log") as url:
        out["server_start_s"] = round(time.perf_counter() - t0, 2)
        served, body_bytes, resp_bytes = {}, {}, {}
        with requests.Session() as session:
            for name, body in cases.items():
                log(f"{name}: {args.requests} requests")
                times, sent, got = timed_requests(session, url, body, args.requests)
                served[name] = ms(times)
                body_bytes[name.split("_")[0]] = sent
                resp_bytes[name.split("_")[0]] = got
    out.update({"served_ms": served, "request_bytes": body_bytes, "response_bytes": resp_bytes})

    model = mlflow.pyfunc.load_model(model_uri)
    local = {}
    for name, crf in (("crf", True), ("nocrf", False)):
        model.predict(image, params={"crf": crf})
        times = []
        for _ in range(args.requests):
            t = time.perf_counter()
            model.predict(image, params={"crf": crf})
            times.append(time.perf_counter() - t)
        local[name] = ms(times)
    out["in_process_ms"] = local
    print(json.dumps(out))


if __name__ == "__main__":
    main()
