"""What autocast in evaluation does to the reported numbers: the evaluate stage's measurement of
one trained model, under its inference protocol, at float32 and at each lower precision.

    python benchmarks/bench_eval_precision.py                       # this checkout's pipeline outputs
    python benchmarks/bench_eval_precision.py --root /path/to/checkout [--images 20]
    python benchmarks/bench_eval_precision.py --precisions bfloat16 float16 --device cpu

Defaults are the evaluate stage's own inputs in --root (default: this checkout): its params.yaml,
the fine-tuned model (data/models/finetune/model.pt), the held-out val images (val minus
crf_search's CV images, split as the stage splits them) and the protocol the stage measures
(params.yaml's ``inference`` section with the searched CRF when it was chosen). Only the
protocol's ``precision`` changes between the runs; evaluation is deeplab_core's ``evaluate``
through the stage's ``evaluate_ids``, with and without the searched CRF.

Per precision it prints the mIoU as served and without the CRF, their difference to float32 in
points, the largest change of one class's IoU (as served) in points, the share of pixels whose
network label (argmax, before any CRF) changes, the largest change of one probability, and the
time of the network's probabilities relative to float32 (``--repeats`` interleaved passes over
``--timing-images`` images, the median ratio; the CRF, which always runs in float32, excluded).
The lower precisions default to what the device runs: bfloat16 on the CPU, float16 and bfloat16
on CUDA. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def lower_precisions(device: torch.device) -> list[str]:
    """The precisions below float32 this device runs fast: bfloat16 on the CPU (native where the
    CPU has AVX512-BF16 or AMX), float16 and bfloat16 on CUDA (bfloat16 where supported)."""
    if device.type == "cuda":
        return ["float16"] + (["bfloat16"] if torch.cuda.is_bf16_supported() else [])
    return ["bfloat16"]


def compare_precisions(run, precisions: list[str]) -> dict[str, dict]:
    """``run(precision, on_prediction)`` evaluates at one precision (deeplab_core's ``evaluate``,
    returning its result dict) and calls ``on_prediction(id, raw, probs, pred, label)`` per
    image. Runs float32 first, then each of ``precisions``; returns per precision the result
    and, against float32, ``label_change`` (share of pixels whose argmax changes) and
    ``max_prob_delta`` (largest |Δ probability|)."""
    with tempfile.TemporaryDirectory(prefix="eval_precision_") as tmp:
        store = Path(tmp)
        names: dict[str, str] = {}

        def keep(image_id, _raw, probs, _pred, _label):
            names.setdefault(image_id, f"{len(names)}.npy")
            np.save(store / names[image_id], probs.astype(np.float32, copy=False))

        out = {"float32": {"result": run("float32", keep), "label_change": 0.0,
                           "max_prob_delta": 0.0}}
        for prec in precisions:
            tally = {"changed": 0, "pixels": 0, "max_delta": 0.0}

            def against(image_id, _raw, probs, pred, _label):
                ref = np.load(store / names[image_id])
                tally["changed"] += int((ref.argmax(0) != pred).sum())
                tally["pixels"] += pred.size
                tally["max_delta"] = max(tally["max_delta"], float(np.abs(probs - ref).max()))

            result = run(prec, against)
            out[prec] = {"result": result,
                         "label_change": tally["changed"] / max(tally["pixels"], 1),
                         "max_prob_delta": tally["max_delta"]}
    return out


def score_deltas(results: dict[str, dict], applied: bool) -> dict[str, dict]:
    """Per precision: mIoU as served and without the CRF (in %), their change to float32 in
    points and the largest change of one class's IoU as served in points (classes whose IoU is
    undefined at either precision are skipped), with the label and probability changes."""
    def served(res: dict) -> dict:
        return res["crf"] if applied else res["plain"]

    ref = results["float32"]["result"]
    out = {}
    for prec, r in results.items():
        res = r["result"]
        iou, iou_ref = served(res)["per_class_iou"], served(ref)["per_class_iou"]
        deltas = {c: abs(iou[c] - iou_ref[c]) for c in iou
                  if iou[c] is not None and iou_ref[c] is not None}
        worst = max(deltas, key=deltas.get, default=None)
        out[prec] = {
            "miou": 100 * served(res)["miou"], "miou_no_crf": 100 * res["plain"]["miou"],
            "delta_miou": 100 * (served(res)["miou"] - served(ref)["miou"]),
            "delta_miou_no_crf": 100 * (res["plain"]["miou"] - ref["plain"]["miou"]),
            "max_class_delta": 100 * deltas[worst] if worst is not None else 0.0,
            "max_class": worst if worst is not None and deltas[worst] > 0 else None,
            "label_change": r["label_change"], "max_prob_delta": r["max_prob_delta"]}
    return out


def time_ratios(protocol, model, images: list[torch.Tensor], precisions: list[str],
                repeats: int) -> dict[str, float]:
    """Median over ``repeats`` of (time of ``protocol.probabilities`` over ``images`` at each
    precision) / (the same at float32), the precisions interleaved within each repeat so that
    load from other processes falls on all of them alike; one untimed image first each."""
    order = ["float32", *precisions]
    protos = {p: protocol.with_overrides(precision=p) for p in order}
    cuda = images[0].is_cuda

    def seconds(prec: str) -> float:
        protos[prec].probabilities(model, images[0])  # warm-up (autocast caches, cuDNN plans)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in images:
            protos[prec].probabilities(model, x)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    ratios: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(repeats):
        times = {p: seconds(p) for p in order}
        for p in precisions:
            ratios[p].append(times[p] / times["float32"])
    return {"float32": 1.0, **{p: statistics.median(r) for p, r in ratios.items()}}


def format_row(prec: str, s: dict, ratio: float | None) -> str:
    return (f"{prec:>9}  mIoU {s['miou']:6.2f} % ({s['delta_miou']:+.3f} pt)  "
            f"no CRF {s['miou_no_crf']:6.2f} % ({s['delta_miou_no_crf']:+.3f} pt)  "
            f"max |ΔIoU| {s['max_class_delta']:.3f} pt"
            + (f" ({s['max_class']})" if s["max_class"] else "")
            + f"  labels changed {100 * s['label_change']:.4f} %  max |Δprob| "
            f"{s['max_prob_delta']:.2e}"
            + ("" if ratio is None else f"  time x{ratio:.2f}"))


def cpu_name() -> str:
    """lscpu's model name (the processor name in /proc/cpuinfo), with avx512_bf16 / amx_bf16
    when the CPU has them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                 if ln.startswith("model name")), "unknown CPU")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                  if ln.startswith("flags")), [])
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return name + (f" ({', '.join(bf16)})" if bf16 else " (no bf16 instructions)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python benchmarks/bench_eval_precision.py",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO,
                    help="checkout whose params.yaml and data/ are read (default: this one)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="model (default: <data>/models/finetune/model.pt)")
    ap.add_argument("--precisions", nargs="+", choices=("bfloat16", "float16"), default=None,
                    help="lower precisions compared with float32 (default: the device's)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--images", type=int, default=None,
                    help="evaluate only the first N held-out images (default: all)")
    ap.add_argument("--timing-images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    for flag in ("images", "timing_images", "repeats"):
        v = getattr(a, flag)
        if v is not None and v < 1:
            ap.error(f"--{flag.replace('_', '-')} {v}: expected an integer >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from deeplab_core.config import load_params
    from deeplab_core.engine.checkpoint import load_checkpoint
    from deeplab_core.engine.evaluate import split_cv
    from deeplab_core.runtime import resolve_device
    from pipelines.paths import StagePaths
    from pipelines.stages.eval_data import (eval_dataset, evaluate_ids, read_list_ids,
                                            stage_protocol)
    from pipelines.stages.shared import dataset_classes

    root = a.root.resolve()
    if not (root / "params.yaml").is_file():
        print(f"bench_eval_precision: {root / 'params.yaml'} not found (--root: a checkout of "
              f"the project)", file=sys.stderr)
        return 2
    params = load_params(root / "params.yaml")
    data = Path(params.base.data_dir)
    data = data if data.is_absolute() else root / data
    params = params.model_copy(update={"base": params.base.model_copy(
        update={"data_dir": str(data), "device": a.device})})
    p = StagePaths.of(params)
    checkpoint = a.checkpoint or p.model_file("finetune")
    for f in (checkpoint, p.prepared_list("val"), p.best_params):
        if not f.is_file():
            print(f"bench_eval_precision: {f} not found (run the pipeline in {root}, or pass "
                  f"--root / --checkpoint)", file=sys.stderr)
            return 2
    device = resolve_device(a.device)
    precisions = a.precisions or lower_precisions(device)
    val_list = p.prepared_list("val")
    _, holdout = split_cv(read_list_ids(val_list), params.crf_search.cv_images, params.base.seed)
    ids = holdout[: a.images] if a.images else holdout
    protocol, crf, _ = stage_protocol(params, p.best_params)
    applied = protocol.crf is not None
    names = dataset_classes(params).names
    model, spec = load_checkpoint(checkpoint)
    protocol.prepare(model)
    model.to(device).eval()

    def run(prec: str, on_prediction) -> dict:
        return evaluate_ids(model, ids, val_list, params, protocol.with_overrides(precision=prec),
                            crf, names, on_prediction, progress=False)

    t0 = time.perf_counter()
    scores = score_deltas(compare_precisions(run, precisions), applied)
    eval_s = time.perf_counter() - t0
    ds = eval_dataset(val_list, ids[: a.timing_images])
    images = [ds[i]["image"].unsqueeze(0).to(device) for i in range(len(ds))]
    ratios = time_ratios(protocol, model, images, precisions, a.repeats)

    where = (torch.cuda.get_device_name() if device.type == "cuda"
             else f"{cpu_name()}, {torch.get_num_threads()} threads")
    print(f"model {checkpoint} ({spec['spec']['preset']}), {len(ids)} held-out val images of "
          f"{val_list}; protocol: {protocol.describe()}; {where}; torch {torch.__version__}")
    print(f"mIoU as served ({'with' if applied else 'without'} the CRF) and without the CRF; "
          f"time: the network's probabilities over {len(images)} images, median of "
          f"{a.repeats} (evaluation took {eval_s:.0f} s)")
    for prec, s in scores.items():
        print(format_row(prec, s, ratios[prec]))
    print(json.dumps({"device": where, "torch": torch.__version__, "checkpoint": str(checkpoint),
                      "preset": spec["spec"]["preset"], "n_images": len(ids),
                      "protocol": protocol.describe(), "crf_applied": applied,
                      "precisions": {k: {**v, "time_ratio": ratios[k]}
                                     for k, v in scores.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
