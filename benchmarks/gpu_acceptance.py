"""GPU acceptance: the CUDA paths the CPU test suite cannot reach, and how busy the v3 ResNet-101
preset keeps the device. Meant to take under 8 minutes on one GPU.

    python benchmarks/gpu_acceptance.py                     # every check, then the throughput
    python benchmarks/gpu_acceptance.py --checks fp16 bf16 --steps 10
    python benchmarks/gpu_acceptance.py --peak-tflops 989   # the device's dense bf16 peak, when
                                                            # its name is not in PEAK_BF16_TFLOPS
    python benchmarks/gpu_acceptance.py --device cpu --crop 65 --batch 2 --steps 1 --warmup 0
                                                            # every check's code on the CPU

Checks (each prints PASS or FAIL with its figures; the exit status is 1 when one fails):

  fp16           float16 autocast + GradScaler with 2 accumulated micro-batches trains (finite,
                 decreasing loss, scale kept) and stays near the float32 run
  bf16           bfloat16 autocast trains and stays near the float32 run
  deterministic  train.deterministic: a run stopped after its checkpoint and resumed ends with
                 weights bit-identical to the uninterrupted run
  ddp            two processes on this one device (NCCL if it accepts two ranks on one GPU, else
                 gloo over CUDA tensors) with SyncBatchNorm take the one-process steps
  eval           a small trained model evaluated (deeplab_core's evaluate under the inference
                 protocol) in float16 and bfloat16 scores within EVAL_TOLERANCE_PT mIoU points of
                 float32; prints the mIoU change and the share of pixels whose label changes

Then the throughput of the v3 ResNet-101 preset (v3_resnet101_os16_mg124: 513x513 crops, bf16
autocast, channels-last, SGD) in training images/s, its FLOPs per image counted by
torch.utils.flop_counter, and the share of the device's dense bf16 peak that makes.

Without CUDA the script says so and exits with status 2, having measured nothing.

``--device cpu`` runs every check's code on the CPU at the sizes given (a smoke run of the script,
not a measurement of any GPU): float16 is refused by deeplab_core's train on the CPU, so the fp16
check trains with its own loop of the same float16 autocast, GradScaler("cpu") and 2 accumulated
micro-batches; PyTorch's SyncBatchNorm runs on GPUs only (its forward raises on CPU tensors under
a process group, and the library's DDP wrap keeps plain batch norms on the CPU), so the ddp check
runs two gloo processes with batch norm frozen (running statistics: every rank normalises as the
single process does, so the two-process steps must equal the one-process steps); the throughput
is the v3 ResNet-101 preset at the given crop in bfloat16 on the CPU, with no peak share.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# cuBLAS reads this at its first call: set before torch touches the GPU (deterministic check)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_eval_precision (the eval check)

CHECKS = ("fp16", "bf16", "deterministic", "ddp", "eval")
EVAL_TOLERANCE_PT = 0.5  # eval: largest |mIoU(low precision) - mIoU(float32)|, in points
NO_CUDA_EXIT = 2
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets, by a
# substring of torch.cuda.get_device_name(); the first match wins.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python benchmarks/gpu_acceptance.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", nargs="*", choices=CHECKS, default=list(CHECKS),
                    help="checks to run (default: all); none: throughput only")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cuda (default; exit 2 without it) or cpu: every check's code on the "
                         "CPU, no figure of a GPU")
    ap.add_argument("--no-throughput", action="store_true", help="skip the throughput figure")
    ap.add_argument("--batch", type=int, default=8, help="throughput: images per step (>= 2)")
    ap.add_argument("--crop", type=int, default=513, help="throughput: crop side (v3: 513)")
    ap.add_argument("--steps", type=int, default=20, help="throughput: timed steps (>= 1)")
    ap.add_argument("--warmup", type=int, default=5, help="throughput: untimed steps first")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense bf16 peak in TFLOP/s (default: from its name)")
    ap.add_argument("--ddp-worker", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.batch < 2:
        ap.error(f"--batch {a.batch}: batch norm needs at least 2 images a step")
    if a.steps < 1 or a.warmup < 0:
        ap.error(f"--steps {a.steps} / --warmup {a.warmup}: expected steps >= 1, warmup >= 0")
    if a.crop < 65:
        ap.error(f"--crop {a.crop}: expected at least 65 pixels")
    if a.peak_tflops is not None and a.peak_tflops <= 0:
        ap.error(f"--peak-tflops {a.peak_tflops}: expected a positive number")
    return a


def peak_tflops(name: str, given: float | None) -> float | None:
    if given is not None:
        return given
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in name), None)


# ----------------------------------------------------------------------------- small training runs
class Shapes(torch.utils.data.Dataset):
    """Deterministic images with a few rectangles and their label maps (a map-style dataset);
    item i is drawn from seed ``first + i``."""

    def __init__(self, n: int = 64, size: int = 64, classes: int = 4, first: int = 0):
        self.n, self.size, self.classes, self.first = n, size, classes, first

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(self.first + i)
        label = torch.zeros(self.size, self.size, dtype=torch.long)
        image = torch.randn(3, self.size, self.size, generator=g) * 0.1
        for _ in range(3):
            c = int(torch.randint(1, self.classes, (1,), generator=g))
            y, x = (int(v) for v in torch.randint(0, self.size // 2, (2,), generator=g))
            label[y:y + self.size // 3, x:x + self.size // 3] = c
            image[:, y:y + self.size // 3, x:x + self.size // 3] += c * 0.5
        return {"image": image, "label": label}


class EvalShapes(Shapes):
    """Shapes as deeplab_core's evaluate reads items: with an id and a uint8 raw image."""

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        raw = (item["image"].clamp(0, 2) * 127).to(torch.uint8).permute(1, 2, 0).numpy()
        return {**item, "id": f"shapes_{self.first + i}", "raw_image": raw}


def _cfg(**kw):
    from deeplab_core.config import TrainConfig

    base = dict(iterations=8, batch_size=8, crop_size=64, lr=0.02, log_every=1,
                checkpoint_every=100, optimizer="sgd")
    base.update(kw)
    return TrainConfig(**base)


def _model(seed: int = 0):
    from deeplab_core.models import build_model

    torch.manual_seed(seed)
    return build_model("light", num_classes=4)


def _fit(dev: torch.device, cfg, **kw) -> tuple[list[float], torch.nn.Module]:
    from deeplab_core.engine.train import train

    model = _model()
    res = train(model, Shapes(), cfg, dev, seed=1, progress=False, **kw)
    return [r["loss"] for r in res.history], model


def _scaled_fit(dev: torch.device, dtype: torch.dtype | None, iterations: int = 8,
                micro: int = 2) -> tuple[list[float], float]:
    """The CPU's stand-in for train() in float16 (which the library refuses on the CPU): SGD on
    Shapes with ``micro`` accumulated micro-batches a step, autocast to ``dtype`` (None: float32)
    and GradScaler(dev.type) enabled for float16. Returns the losses and the final scale."""
    from deeplab_core.engine.recipe import loss_sum

    model = _model().to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    data, per = Shapes(), 8 // micro
    losses = []
    for it in range(iterations):
        opt.zero_grad(set_to_none=True)
        total_sum = total_count = 0.0
        for j in range(micro):
            idx = [(it * 8 + j * per + k) % len(data) for k in range(per)]
            x = torch.stack([data[i]["image"] for i in idx]).to(dev)
            y = torch.stack([data[i]["label"] for i in idx]).to(dev)
            with torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                total, count = loss_sum(model(x), y)
            scaler.scale(total / (count * micro)).backward()
            total_sum, total_count = total_sum + float(total.detach()), total_count + count
        scaler.step(opt)
        scaler.update()
        losses.append(total_sum / total_count)
    return losses, scaler.get_scale() if scaler.is_enabled() else 1.0


def _close(a: list[float], b: list[float], rel: float) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= rel * abs(y) for x, y in zip(a, b))


def check_fp16(dev: torch.device) -> tuple[bool, str]:
    if dev.type == "cpu":
        ref, _ = _scaled_fit(dev, None)
        half, scale = _scaled_fit(dev, torch.float16)
        how = "own loop, GradScaler('cpu')"
    else:
        ref, _ = _fit(dev, _cfg(accumulate_steps=2))
        half, _ = _fit(dev, _cfg(accumulate_steps=2, amp=True, amp_dtype="float16"))
        scale, how = None, "deeplab_core train, GradScaler('cuda')"
    ok = (all(map(_finite, half)) and half[-1] < half[0] and _close(half, ref, 0.05)
          and (scale is None or scale > 0))
    return ok, (f"fp16 losses {_fmt(half)} vs fp32 {_fmt(ref)} (2 accumulated micro-batches, "
                f"{how}" + ("" if scale is None else f", final scale {scale:g}") + ")")


def check_bf16(dev: torch.device) -> tuple[bool, str]:
    ref, _ = _fit(dev, _cfg())
    bf, _ = _fit(dev, _cfg(amp=True, amp_dtype="bfloat16"))
    ok = all(map(_finite, bf)) and bf[-1] < bf[0] and _close(bf, ref, 0.05)
    return ok, f"bf16 losses {_fmt(bf)} vs fp32 {_fmt(ref)}"


class _Stop(Exception):
    pass


def check_deterministic(dev: torch.device) -> tuple[bool, str]:
    cfg = _cfg(deterministic=True, checkpoint_every=4)
    _, whole = _fit(dev, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "resume.pt"

        def stop(step: int, _values: dict) -> None:
            if step == 6:
                raise _Stop

        try:
            _fit(dev, cfg, checkpoint_path=ckpt, log_metrics=stop)
        except _Stop:
            pass
        else:
            return False, "the run meant to be stopped at step 6 was not stopped"
        if not ckpt.is_file():
            return False, f"no checkpoint at {ckpt} after the stopped run"
        _, resumed = _fit(dev, cfg, checkpoint_path=ckpt)
    a, b = whole.state_dict(), resumed.state_dict()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    return not differ, (f"resumed after step 4 of 8: {len(a) - len(differ)}/{len(a)} tensors "
                        f"bit-identical" + (f"; first differing: {differ[0]}" if differ else ""))


def _full_fp32(on: bool = True) -> None:
    """TF32 off for the comparisons (float32 runs compared across batch splits), on again for
    the throughput (PyTorch's default for convolutions)."""
    torch.backends.cuda.matmul.allow_tf32 = not on
    torch.backends.cudnn.allow_tf32 = not on


def _ddp_cfg(dev: torch.device):
    """SyncBatchNorm on CUDA; on the CPU (no SyncBatchNorm there) batch norm frozen, so that
    the per-rank batch norms normalise as the single process does."""
    return _cfg(sync_batch_norm=True) if dev.type == "cuda" else _cfg(batch_norm="frozen")


def _ddp_worker(out: Path, dev: torch.device) -> None:
    """One rank of the ddp check (started by check_ddp with RANK/WORLD_SIZE set)."""
    from deeplab_core.engine import distributed

    _full_fp32()
    losses, _ = _fit(dev, _ddp_cfg(dev))
    if distributed.current().is_main:
        out.write_text(json.dumps({"losses": losses,
                                   "backend": torch.distributed.get_backend()}))
    distributed.shutdown()


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def check_ddp(dev: torch.device) -> tuple[bool, str]:
    from deeplab_core.engine.distributed import BACKEND_ENV

    ref, _ = _fit(dev, _ddp_cfg(dev))
    notes = []
    where, bn = (("one GPU", "SyncBatchNorm") if dev.type == "cuda"
                 else ("the CPU", "batch norm frozen (no SyncBatchNorm on the CPU)"))
    for backend in (("nccl", "gloo") if dev.type == "cuda" else ("gloo",)):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "losses.json"
            env = {k: v for k, v in os.environ.items()
                   if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
            env.update({"LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": _free_port(), BACKEND_ENV: backend,
                        "PYTHONPATH": os.pathsep.join(
                            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
            procs = [subprocess.Popen(
                [sys.executable, __file__, "--device", dev.type, "--ddp-worker", str(out)],
                env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True) for r in (0, 1)]
            try:
                logs = [p.communicate(timeout=180)[0] for p in procs]
            except subprocess.TimeoutExpired:  # e.g. NCCL waiting on a second rank of one GPU
                for p in procs:
                    p.kill()
                    p.wait()
                notes.append(f"{backend} did not finish within 180 s")
                continue
            if all(p.returncode == 0 for p in procs) and out.is_file():
                got = json.loads(out.read_text())
                ok = _close(got["losses"], ref, 2e-3)
                return ok, (f"{got['backend']}, 2 processes on {where}, {bn}: losses "
                            f"{_fmt(got['losses'])} vs one process {_fmt(ref)}"
                            + (f" ({'; '.join(notes)})" if notes else ""))
            failed = next((lg for p, lg in zip(procs, logs) if p.returncode != 0), logs[0])
            tail = " ".join(failed.strip().splitlines()[-1:])
            notes.append(f"{backend} failed: {tail[:200]}")
    return False, "; ".join(notes)


def check_eval(dev: torch.device) -> tuple[bool, str]:
    """A light model trained briefly on Shapes, evaluated on 16 other Shapes images by
    deeplab_core's evaluate under the inference protocol at float32, float16 and bfloat16."""
    from bench_eval_precision import compare_precisions, score_deltas

    from deeplab_core.engine.evaluate import evaluate
    from deeplab_core.engine.protocol import InferenceProtocol

    _, model = _fit(dev, _cfg(iterations=40))
    data = EvalShapes(n=16, first=1000)

    def run(prec: str, on_prediction) -> dict:
        return evaluate(model, data, 4, dev, protocol=InferenceProtocol(precision=prec),
                        on_prediction=on_prediction, progress=False)

    scores = score_deltas(compare_precisions(run, ["float16", "bfloat16"]), applied=False)
    worst = max(abs(s["delta_miou"]) for s in scores.values())
    parts = [f"{p} {s['delta_miou']:+.3f} pt, labels changed {100 * s['label_change']:.4f} %, "
             f"max |dprob| {s['max_prob_delta']:.1e}"
             for p, s in scores.items() if p != "float32"]
    return worst <= EVAL_TOLERANCE_PT, (
        f"float32 mIoU {scores['float32']['miou']:.2f} % on {len(data)} images; "
        + "; ".join(parts) + f" (tolerance {EVAL_TOLERANCE_PT} pt)")


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


# ----------------------------------------------------------------------------- throughput
def throughput(dev: torch.device, batch: int, crop: int, steps: int, warmup: int,
               peak: float | None) -> str:
    """Training images/s of the v3 ResNet-101 preset at bf16 + channels-last, FLOPs counted on
    one image's forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    from deeplab_core.engine.recipe import loss_sum
    from deeplab_core.models import build_model

    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    model = build_model("v3_resnet101_os16_mg124", num_classes=21, output_stride=16).to(dev)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, crop, crop, device=dev).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 21, (batch, crop, crop), device=dev)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            out = model(xb)
        total, count = loss_sum(out, yb)
        (total / count).backward()
        opt.step()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    counter = FlopCounterMode(display=False)
    with counter:
        step(x[:2], y[:2])
    flops_per_image = counter.get_total_flops() / 2
    for _ in range(warmup):
        step(x, y)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    sync()
    seconds = time.perf_counter() - t0
    ips = batch * steps / seconds
    achieved = flops_per_image * ips / 1e12
    if not cuda:
        share = "no peak share on the CPU"
    elif peak:
        share = f"{100 * achieved / peak:.1f} % of a {peak:g} TFLOP/s dense bf16 peak"
    else:
        share = "peak unknown for this device: pass --peak-tflops"
    return (f"v3_resnet101_os16_mg124, {crop}x{crop}, batch {batch}, bf16 + channels_last: "
            f"{ips:.2f} images/s ({steps} steps in {seconds:.1f} s); "
            f"{flops_per_image / 1e9:.1f} GFLOP per image (forward + backward); "
            f"{achieved:.3f} TFLOP/s achieved = {share}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    dev = torch.device(a.device)
    if a.ddp_worker is not None:
        _ddp_worker(a.ddp_worker, dev)
        return 0
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_acceptance: CUDA is not available here (torch {torch.__version__}, built "
              f"with CUDA {torch.version.cuda}): nothing was measured. Run this script on a "
              f"machine with an NVIDIA GPU (or pass --device cpu to run the checks' code on the "
              f"CPU).", file=sys.stderr)
        return NO_CUDA_EXIT
    name = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU (--device cpu)"
    print(f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    funcs = {"fp16": check_fp16, "bf16": check_bf16, "deterministic": check_deterministic,
             "ddp": check_ddp, "eval": check_eval}
    failed = []
    _full_fp32()
    for check in a.checks:
        t0 = time.perf_counter()
        try:
            ok, detail = funcs[check](dev)
        except Exception as err:  # a check that crashes is a failed check; the others still run
            ok, detail = False, f"{type(err).__name__}: {err}"
        print(f"{'PASS' if ok else 'FAIL'} {check} ({time.perf_counter() - t0:.0f} s): {detail}",
              flush=True)
        if not ok:
            failed.append(check)
    _full_fp32(False)
    if not a.no_throughput:
        print("throughput: " + throughput(dev, a.batch, a.crop, a.steps, a.warmup,
                                          peak_tflops(name, a.peak_tflops)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
