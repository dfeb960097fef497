"""Data-scale benchmark: how long do prepare and validate take on trees of the real datasets'
size, and how much memory do they need?

    python benchmarks/bench_data_scale.py [--scale 1.0] [--coco 20000] [--size 375x500]
                                          [--workers N] [--root DIR] [--keep]

Writes real-format trees under ``--root`` (a temporary folder by default):

* VOC 2012: 17,125 JPEGs, 2,913 palette PNG labels, train 1,464 / val 1,449 split files;
* SBD: 11,355 ``cls/*.mat`` GTcls structs (train 8,498 / val 2,857) and their JPEGs, ids drawn
  from the VOC JPEG ids as in the real release (train_aug = 10,582 after the merge);
* COCO 2017: ``--coco`` train images (and val in the real 5,000 / 118,287 ratio) with an
  instances JSON holding COCO's annotation density: 7.3 objects per image, polygons of 10-40
  points over the 80 categories in COCO's frequencies (person in half the images), 1% crowds as
  list RLE.

Every count is multiplied by ``--scale`` (the timings are then extrapolated linearly to the full
size: the work is per file). Images are ``--size`` (default VOC's typical 375x500, smooth
content and noise so that JPEG sizes are photo-like); labels are the images' size.

Times, each in its own child process so that peak RSS is that step's alone (the parent's
``ru_maxrss`` plus its pool workers' largest): prepare (VOC + SBD; COCO), and validate's work on
the prepared lists: the per-sample manifests (decode every image and label, perceptual hashes;
in a process pool of ``--workers``, default one per core) and the GX suites (per split and
leakage, near-duplicates included). Prints a table and one JSON line; goal on 2 cores:
VOC+SBD prepare+validate <= 5 min, COCO train2017 extrapolated to 118,287 images <= 30 min,
peak RSS <= 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOC_JPEGS, VOC_TRAIN, VOC_VAL = 17125, 1464, 1449
SBD_TRAIN, SBD_VAL = 8498, 2857
COCO_TRAIN_FULL, COCO_VAL_FULL = 118287, 5000
COCO_OBJECTS_PER_IMAGE = 7.3


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    small = rng.integers(0, 256, (h // 25 + 2, w // 25 + 2, 3)).astype(np.float32)
    from PIL import Image

    big = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.BILINEAR))
    return np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)


def _label(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    lab = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        lab[y:y + h // 3, x:x + w // 3] = int(rng.integers(1, 21))
    edge = np.zeros_like(lab, bool)
    edge[1:] |= lab[1:] != lab[:-1]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    lab[edge] = 255
    return lab


def _write_jpeg(path: Path, rng, h, w) -> None:
    from deeplab_core.data.io import write_jpeg

    write_jpeg(path, _image(rng, h, w), quality=int(rng.integers(75, 95)))


def _gen_voc_sbd(root: Path, scale: float, h: int, w: int, seed: int) -> dict:
    from deeplab_core.data.io import write_label_png
    from deeplab_core.data.sbd import encode_gtcls_mat

    rng = np.random.default_rng(seed)
    n_jpeg = int(VOC_JPEGS * scale)
    ids = [f"20{7 + k % 6:02d}_{k:06d}" for k in range(n_jpeg)]
    order = rng.permutation(n_jpeg)
    n_tr, n_va = int(VOC_TRAIN * scale), int(VOC_VAL * scale)
    voc_train = sorted(ids[i] for i in order[:n_tr])
    voc_val = sorted(ids[i] for i in order[n_tr:n_tr + n_va])
    # SBD: three quarters of VOC train and some VOC val ids (the release overlaps both; prepare
    # drops the VOC val ones from train_aug), the rest from the other VOC JPEG ids
    n_sb_tr, n_sb_va = int(SBD_TRAIN * scale), int(SBD_VAL * scale)
    pool = [ids[i] for i in order[n_tr + n_va:]]
    sbd_ids = voc_train[: int(0.75 * n_tr)] + voc_val[: int(0.4 * n_va)]
    sbd_ids += pool[: max(0, n_sb_tr + n_sb_va - len(sbd_ids))]
    sbd_ids = [sbd_ids[i] for i in rng.permutation(len(sbd_ids))]
    sbd_train, sbd_val = sorted(sbd_ids[:n_sb_tr]), sorted(sbd_ids[n_sb_tr:n_sb_tr + n_sb_va])
    voc = root / "VOCdevkit" / "VOC2012"
    ds = root / "benchmark_RELEASE" / "dataset"
    for sub in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation",
                ds / "img", ds / "cls"):
        sub.mkdir(parents=True, exist_ok=True)
    labelled = set(voc_train) | set(voc_val)
    in_sbd = set(sbd_train) | set(sbd_val)
    for sid in ids:
        _write_jpeg(voc / "JPEGImages" / f"{sid}.jpg", rng, h, w)
        if sid in labelled:
            write_label_png(voc / "SegmentationClass" / f"{sid}.png", _label(rng, h, w))
        if sid in in_sbd:
            shutil.copyfile(voc / "JPEGImages" / f"{sid}.jpg", ds / "img" / f"{sid}.jpg")
            seg = _label(rng, h, w)
            seg[seg == 255] = 0
            (ds / "cls" / f"{sid}.mat").write_bytes(encode_gtcls_mat(seg))
    split = voc / "ImageSets" / "Segmentation"
    (split / "train.txt").write_text("".join(i + "\n" for i in voc_train))
    (split / "val.txt").write_text("".join(i + "\n" for i in voc_val))
    (ds / "train.txt").write_text("".join(i + "\n" for i in sbd_train))
    (ds / "val.txt").write_text("".join(i + "\n" for i in sbd_val))
    return {"voc_jpegs": n_jpeg, "voc_labels": len(labelled), "sbd_mats": len(in_sbd)}


def _polygon(rng, h, w) -> tuple[list[float], float]:
    n = int(rng.integers(10, 41))
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    r = rng.uniform(0.05, 0.3) * min(h, w)
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * rng.uniform(0.6, 1.0, n)
    xs, ys = np.clip(cx + rad * np.cos(ang), 0, w - 1), np.clip(cy + rad * np.sin(ang), 0, h - 1)
    area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))
    return [round(float(v), 2) for pair in zip(xs, ys) for v in pair], float(area)


def _gen_coco(root: Path, n_train: int, n_val: int, h: int, w: int, seed: int) -> dict:
    from deeplab_core.classes import COCO_TO_VOC
    from deeplab_core.data.coco import mask_bbox, rle_encode

    rng = np.random.default_rng(seed + 1)
    cat_ids = sorted(set(range(1, 91)) - {12, 26, 29, 30, 45, 66, 68, 69, 71, 83})[:80]
    weights = np.ones(len(cat_ids))
    weights[cat_ids.index(1)] = 30.0  # person: about a third of all COCO objects
    weights /= weights.sum()
    counts = {}
    for split, n in (("train", n_train), ("val", n_val)):
        doc = {"info": {"description": "bench"}, "licenses": [],
               "categories": [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in cat_ids],
               "images": [], "annotations": []}
        (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
        ann_id = 1
        for k in range(n):
            image_id = 1 + k + (0 if split == "train" else 10_000_000)
            name = f"{image_id:012d}.jpg"
            _write_jpeg(root / f"{split}2017" / name, rng, h, w)
            doc["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})
            for _ in range(max(1, int(rng.poisson(COCO_OBJECTS_PER_IMAGE)))):
                cat = int(rng.choice(cat_ids, p=weights))
                if rng.random() < 0.01:
                    m = np.zeros((h, w), bool)
                    y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
                    m[y:y + h // 4, x:x + w // 4] = True
                    seg, area, bbox, crowd = rle_encode(m), float(m.sum()), mask_bbox(m), 1
                else:
                    seg, area = _polygon(rng, h, w)
                    xs, ys = seg[0::2], seg[1::2]
                    bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                    seg, crowd = [seg], 0
                doc["annotations"].append({"id": ann_id, "image_id": image_id,
                                           "category_id": cat, "segmentation": seg,
                                           "area": area, "bbox": bbox, "iscrowd": crowd})
                ann_id += 1
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
        counts[split] = {"images": n, "annotations": ann_id - 1,
                         "voc_category_share": round(float(sum(weights[cat_ids.index(c)]
                                                              for c in COCO_TO_VOC)), 3)}
    return counts


# ----------------------------------------------------------------------------- timed steps
def _peak_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and its finished pool workers: on a shared
    machine, CPU seconds / cores is what the step would take alone."""
    return round(sum(getattr(resource.getrusage(who), f) for who in
                     (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                     for f in ("ru_utime", "ru_stime")), 1)


def step_prepare(root: str, out: str, workers: int, with_coco: bool) -> dict:
    from deeplab_core.data.prepare import prepare_datasets

    r = Path(root)
    t0, c0 = time.perf_counter(), _cpu_s()
    summary = prepare_datasets(r / "VOCdevkit", r / "benchmark_RELEASE",
                               r / "coco" if with_coco else None, out, progress=False,
                               workers=workers)
    return {"seconds": round(time.perf_counter() - t0, 1), "cpu_s": round(_cpu_s() - c0, 1),
            "peak_rss_mib": _peak_mib(), "train_aug": summary["train_aug"]["total"], "val": summary["val"]["total"],
            "coco_train": (summary["coco"] or {}).get("train", {}).get("written", 0)}


def step_validate(out: str, workers: int, splits: list[str]) -> dict:
    from deeplab_core.classes import voc_class_list
    from deeplab_core.config import ValidateConfig
    from deeplab_core.data.manifest import build_manifest
    from pipelines.stages.expectations import (LEAKAGE, leakage_frame, leakage_suite,
                                               manifest_frame, run_suites, split_suite)

    classes = voc_class_list()
    t0, c0 = time.perf_counter(), _cpu_s()
    manifests = {}
    for s in splits:
        lf = Path(out) / f"{s}.txt"
        manifests[s] = (build_manifest(lf, class_names=classes.names,
                                       palette=classes.full_palette(), workers=workers)
                        if lf.read_text().strip() else [])
    t_manifest = time.perf_counter() - t0
    cfg = ValidateConfig()
    frames = {s: (manifest_frame(m), lambda s=s: split_suite(cfg, 0, None, f"deeplab_{s}"))
              for s, m in manifests.items()}
    frames[LEAKAGE] = (leakage_frame(manifests), leakage_suite)
    results = run_suites(frames)
    failed = {k: [f["rule"] for f in r["failures"]] for k, r in results.items() if r["failures"]}
    return {"seconds": round(time.perf_counter() - t0, 1), "cpu_s": round(_cpu_s() - c0, 1),
            "manifest_seconds": round(t_manifest, 1), "peak_rss_mib": _peak_mib(),
            "samples": {s: len(m) for s, m in manifests.items()}, "failed_rules": failed}


def _generated(stamp: Path, key: dict, make, folders: list[Path]) -> dict:
    """``make()``'s summary, or the one a finished earlier run with the same ``key`` stamped."""
    if stamp.is_file() and json.loads(stamp.read_text())["key"] == key:
        return json.loads(stamp.read_text())["trees"]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    trees = make()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"key": key, "trees": trees}))
    return trees


def _child(step: str, *args) -> dict:
    """Run ``step`` in a fresh interpreter (its own peak RSS) and return its JSON result."""
    code = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); "
            f"import benchmarks.bench_data_scale as b; "
            f"print(json.dumps(b.step_{step}(*json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{step} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the real counts")
    ap.add_argument("--coco", type=int, default=20000, help="COCO train images (before --scale)")
    ap.add_argument("--size", default="375x500", help="image HxW")
    ap.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    ap.add_argument("--root", type=Path, help="where to write the trees (default: temporary); "
                    "trees a run with the same --scale/--coco/--size/--seed left there (--keep) "
                    "are used again")
    ap.add_argument("--keep", action="store_true", help="keep the generated trees")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    h, w = (int(v) for v in a.size.lower().split("x"))
    workers = a.workers or (os.cpu_count() or 1)
    root = a.root or Path(tempfile.mkdtemp(prefix="bench_data_scale_"))
    root.mkdir(parents=True, exist_ok=True)
    n_coco = max(1, int(a.coco * a.scale))
    n_coco_val = max(1, round(n_coco * COCO_VAL_FULL / COCO_TRAIN_FULL))
    key = {"scale": a.scale, "coco": a.coco, "size": [h, w], "seed": a.seed}
    try:
        t0 = time.perf_counter()
        trees = _generated(root / "raw" / "voc_sbd.json", key, lambda: _gen_voc_sbd(
            root / "raw", a.scale, h, w, a.seed), [root / "raw" / "VOCdevkit",
                                                   root / "raw" / "benchmark_RELEASE"])
        trees["coco"] = _generated(root / "raw" / "coco.json", key, lambda: _gen_coco(
            root / "raw" / "coco", n_coco, n_coco_val, h, w, a.seed), [root / "raw" / "coco"])
        for out in ("prep_voc", "prep_coco"):
            shutil.rmtree(root / out, ignore_errors=True)
        gen_s = time.perf_counter() - t0
        voc_prep = _child("prepare", str(root / "raw"), str(root / "prep_voc"), workers, False)
        voc_val = _child("validate", str(root / "prep_voc"), workers, ["val", "train_aug"])
        coco_prep = _child("prepare", str(root / "raw"), str(root / "prep_coco"), workers, True)
        coco_val = _child("validate", str(root / "prep_coco"), workers,
                          ["val", "train_aug", "coco_val", "coco_train"])
    finally:
        if not a.keep and a.root is None:
            shutil.rmtree(root, ignore_errors=True)
    # COCO's share: the run with COCO less the VOC+SBD run, per COCO image, times 118,287
    # (+ its 5,000 val images) at full scale
    coco_s = (coco_prep["seconds"] - voc_prep["seconds"]) + (coco_val["seconds"]
                                                             - voc_val["seconds"])
    per_image = coco_s / (n_coco + n_coco_val)
    coco_cpu = (coco_prep["cpu_s"] - voc_prep["cpu_s"]) + (coco_val["cpu_s"] - voc_val["cpu_s"])
    n_full = COCO_TRAIN_FULL + COCO_VAL_FULL
    full = {"voc_sbd_prepare_validate_s": round((voc_prep["seconds"] + voc_val["seconds"])
                                                / a.scale, 1),
            "coco_train2017_extrapolated_s": round(per_image * n_full, 1),
            # CPU seconds spread over the cores: the wall time on an otherwise idle machine
            "voc_sbd_cpu_per_core_s": round((voc_prep["cpu_s"] + voc_val["cpu_s"])
                                            / a.scale / workers, 1),
            "coco_cpu_per_core_s": round(coco_cpu / (n_coco + n_coco_val) * n_full / workers, 1)}
    peak = max(voc_prep["peak_rss_mib"], voc_val["peak_rss_mib"], coco_prep["peak_rss_mib"],
               coco_val["peak_rss_mib"])
    out = {"scale": a.scale, "image_hw": [h, w], "workers": workers,
           "cpu_count": os.cpu_count(), "generated": trees, "generate_s": round(gen_s, 1),
           "voc_sbd": {"prepare": voc_prep, "validate": voc_val},
           "with_coco": {"prepare": coco_prep, "validate": coco_val},
           "full_scale_estimate": full, "peak_rss_mib": peak,
           "goal_met": {"voc_sbd_5min": full["voc_sbd_prepare_validate_s"] <= 300,
                        "coco_30min": full["coco_train2017_extrapolated_s"] <= 1800,
                        "rss_2gib": peak <= 2048}}
    print(f"{'step':34s} {'seconds':>8s} {'CPU s':>8s} {'peak RSS MiB':>13s}")
    for name, r in (("VOC+SBD prepare", voc_prep), ("VOC+SBD validate", voc_val),
                    ("VOC+SBD+COCO prepare", coco_prep), ("VOC+SBD+COCO validate", coco_val)):
        print(f"{name:34s} {r['seconds']:8.1f} {r['cpu_s']:8.1f} {r['peak_rss_mib']:13.1f}")
    print(f"full scale: VOC+SBD prepare+validate {full['voc_sbd_prepare_validate_s']} s; COCO "
          f"train2017 (118,287 + 5,000 val) {full['coco_train2017_extrapolated_s']} s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
