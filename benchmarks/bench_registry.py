"""Time of one locked promotion decision (`pipelines.ops.registry.promote_if_better`: take the lock,
read the candidate and the champion, decide, and when promoting set the alias, re-read it and
record the event) against a scratch MLflow sqlite store. Prints one JSON line of figures.

    python benchmarks/bench_registry.py [--repeats 10]

Each repeat registers a fresh version and decides on it: a better value (promoted) and a worse
one (refused, no writes), so both paths are timed; the lock alone is timed too.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.ops import registry  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="bench_registry_") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        name = "bench"
        client.create_registered_model(name)

        def version(value: float) -> str:
            mv = client.create_model_version(name, source=f"{tmp}/model", run_id=None)
            client.set_model_version_tag(name, mv.version, "eval_miou_crf", str(value))
            client.set_model_version_tag(name, mv.version, "eval_set_md5", "bench")
            return str(mv.version)

        registry.promote_if_better(client, name, version(0.0), "miou_crf", 0.0)  # warm up
        promoted, refused, lock = [], [], []
        for i in range(a.repeats):
            for value, times in ((0.01 * (i + 1), promoted), (-1.0, refused)):
                v = version(value)
                t0 = time.perf_counter()
                out = registry.promote_if_better(client, name, v, "miou_crf", 0.0)
                times.append(time.perf_counter() - t0)
                assert out["promoted"] is (value > 0), out
            t0 = time.perf_counter()
            with registry.registry_lock(registry.lock_path(uri)):
                pass
            lock.append(time.perf_counter() - t0)
    ms = lambda xs: round(1000 * statistics.median(xs), 2)  # noqa: E731
    print(json.dumps({"bench": "registry_decision", "repeats": a.repeats,
                      "promoted_median_ms": ms(promoted), "refused_median_ms": ms(refused),
                      "lock_only_median_ms": ms(lock), "store": "sqlite",
                      "python": platform.python_version(), "machine": platform.machine()}))


if __name__ == "__main__":
    main()
