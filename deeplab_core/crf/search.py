"""Cross-validation search of the CRF parameters over a cache of softmax probabilities.

Cache format: a directory of ``<image_id>.npz`` files, each holding ``image`` (uint8 H x W x 3 RGB),
``probs`` (float16 C x H x W softmax at full image resolution) and ``label`` (uint8 H x W,
255 = ignore).

The papers' protocol (DeepLab v1 Sec. 4, v2 Sec. 4.1): w2 = 3 and sigma_gamma = 3 fixed; a coarse
grid w1 in {3..6}, sigma_alpha in {30, 40, ..., 100}, sigma_beta in {3..6} with 10 mean-field
iterations on a held-out subset, then a finer search around the best point.

``coarse_to_fine_search`` screens the coarse grid on a few images, hill-climbs the grid on all
images from the best screened point, then searches with finer steps around the best, within a
budget of CRF runs. ``full_grid_search`` evaluates every coarse config on every image, for
comparison.

Work runs in worker processes (pydensecrf holds the GIL). Each task is one image with a small batch
of configs; every worker loads the whole cache once, in its initializer. Each finished config is
appended to a JSON-lines results file, and configs already in that file are not recomputed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import multiprocessing as mp
import os
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from deeplab_core.classes import IGNORE_INDEX
from deeplab_core.crf.densecrf import (CRFParams, check_image, check_probs, crf_from_unary,
                                       unary_from_probs)
from deeplab_core.metrics import confusion_matrix, summarize

PAPER_W1_GRID: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0)
PAPER_SIGMA_ALPHA_GRID: tuple[float, ...] = tuple(float(v) for v in range(30, 101, 10))
PAPER_SIGMA_BETA_GRID: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0)
PARAM_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(CRFParams))
OBJECTIVES: tuple[str, ...] = ("miou_gt", "miou")


# ----------------------------------------------------------------------------------------------
# Cache I/O

def _check_image_id(image_id: str) -> str:
    image_id = str(image_id)
    if not image_id or "/" in image_id or "\\" in image_id or image_id.startswith("."):
        raise ValueError(f"bad image id {image_id!r}: must be a plain file name stem")
    return image_id


def write_cache_item(cache_dir: str | os.PathLike, image_id: str, image: np.ndarray,
                     probs: np.ndarray, label: np.ndarray) -> Path:
    """Write ``<cache_dir>/<image_id>.npz`` atomically (temporary file in the same dir, then rename).

    ``probs`` (C, H, W) softmax probabilities are stored as float16; ``label`` is uint8 (255 ignore).
    """
    image_id = _check_image_id(image_id)
    img = check_image(image)
    p = check_probs(np.asarray(probs), hw=img.shape[:2], tol=5e-3)
    label = np.asarray(label)
    if label.shape != img.shape[:2]:
        raise ValueError(f"label shape {label.shape} does not match image size {img.shape[:2]}")
    if label.dtype != np.uint8:
        if not np.issubdtype(label.dtype, np.integer) or label.min() < 0 or label.max() > 255:
            raise ValueError(f"label must hold uint8 class ids (255 = ignore), got dtype {label.dtype}")
        label = label.astype(np.uint8)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"{image_id}.npz"
    fd, tmp = tempfile.mkstemp(prefix=f".{image_id}.", suffix=".tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, image=img, probs=p.astype(np.float16), label=label)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return final


def _probs_to_f32(probs16: np.ndarray) -> np.ndarray:
    """float16 cache probabilities -> float32, renormalised (float16 rounding breaks sum == 1)."""
    p = probs16.astype(np.float32)
    s = p.sum(axis=0, keepdims=True)
    np.maximum(s, np.float32(1e-12), out=s)
    p /= s
    return p


def load_cache_item(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one cache file -> (image uint8 HxWx3, probs float32 CxHxW renormalised, label uint8 HxW)."""
    with np.load(path) as z:
        image, probs, label = z["image"], z["probs"], z["label"]
    return image, _probs_to_f32(probs), label


def list_cache(cache_dir: str | os.PathLike) -> list[Path]:
    """The cache files of a directory, sorted by name."""
    return sorted(p for p in Path(cache_dir).glob("*.npz") if not p.name.startswith("."))


def images_key(cache_files: Sequence[Path]) -> str:
    """Identity of a set of cache files (ids and sizes), so results rows match their image set."""
    parts = sorted(f"{Path(p).stem}:{os.stat(p).st_size}" for p in cache_files)
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Worker side

_STATE: dict = {}


# fork where the platform has it: workers start in milliseconds instead of re-importing numpy
# and pydensecrf. Safe here because workers run only numpy and pydensecrf (no OpenMP, no torch).
_START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def _init_worker(paths: list[str], num_classes: int) -> None:
    items = []
    for p in paths:
        with np.load(p) as z:
            items.append((np.ascontiguousarray(z["image"]), z["probs"], z["label"]))
    _STATE["items"] = items
    _STATE["num_classes"] = num_classes


def _run_task(task: tuple[int, list[tuple[int, dict | None]]]) -> tuple[int, list]:
    """One image, several configs: returns (image index, [(job index, confusion matrix)])."""
    idx, batch = task
    image, probs16, label = _STATE["items"][idx]
    num_classes = _STATE["num_classes"]
    probs = _probs_to_f32(probs16)
    out = []
    unary = None
    for job, pdict in batch:
        if pdict is None:  # no CRF: argmax of the softmax
            pred = probs.argmax(axis=0)
        else:
            if unary is None:
                unary = unary_from_probs(probs)
            pred = crf_from_unary(image, unary, CRFParams(**pdict)).argmax(axis=0)
        out.append((job, confusion_matrix(pred, label, num_classes, IGNORE_INDEX)))
    return idx, out


class _Evaluator:
    """Runs (config, image subset) jobs, in-process for one worker or on a process pool."""

    def __init__(self, cache_files: Sequence[str | os.PathLike], num_classes: int, workers: int = 1,
                 configs_per_task: int = 4):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.paths = [str(p) for p in cache_files]
        if not self.paths:
            raise ValueError("no cache files given")
        self.num_classes = int(num_classes)
        with np.load(self.paths[0]) as z:  # fail here, not as a broken worker pool
            missing = {"image", "probs", "label"} - set(z.files)
            if missing:
                raise ValueError(f"{self.paths[0]}: not a CRF cache item, missing {sorted(missing)}")
            c = z["probs"].shape[0]
        if c != self.num_classes:
            raise ValueError(f"{self.paths[0]}: probs have {c} classes, num_classes is "
                             f"{self.num_classes}")
        self.workers = int(workers)
        self.configs_per_task = max(1, int(configs_per_task))
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "_Evaluator":
        if self.workers == 1:
            _init_worker(self.paths, self.num_classes)
        else:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=mp.get_context(_START_METHOD),
                initializer=_init_worker, initargs=(self.paths, self.num_classes))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        else:
            _STATE.clear()

    def run(self, jobs: list[tuple[dict | None, Sequence[int]]], on_done=None, progress: bool = False,
            desc: str = "crf") -> list[np.ndarray]:
        """Confusion matrix per job, summed over the job's image indices.

        ``on_done(job_index, conf)`` is called as soon as every image of a job is finished.
        """
        n_c = self.num_classes
        confs = [np.zeros((n_c, n_c), np.int64) for _ in jobs]
        remaining = [len(set(imgs)) for _, imgs in jobs]
        tasks: list[tuple[int, list]] = []
        for start in range(0, len(jobs), self.configs_per_task):
            batch = range(start, min(start + self.configs_per_task, len(jobs)))
            per_image: dict[int, list] = {}
            for j in batch:
                for i in sorted(set(jobs[j][1])):
                    per_image.setdefault(i, []).append((j, jobs[j][0]))
            tasks.extend((i, per_image[i]) for i in sorted(per_image))
        total = sum(remaining)
        for j, r in enumerate(remaining):
            if r == 0 and on_done is not None:
                on_done(j, confs[j])

        from tqdm import tqdm
        bar = tqdm(total=total, desc=desc, unit="crf", disable=not progress, dynamic_ncols=True)

        def consume(result):
            _, out = result
            for j, conf in out:
                confs[j] += conf
                remaining[j] -= 1
                if remaining[j] == 0 and on_done is not None:
                    on_done(j, confs[j])
            bar.update(len(out))

        try:
            if self._pool is None:
                for t in tasks:
                    consume(_run_task(t))
            else:
                # Keep a bounded number of tasks in flight so that completion follows job order.
                it = iter(tasks)
                pending = set()
                limit = 4 * self.workers
                for t in itertools.islice(it, limit):
                    pending.add(self._pool.submit(_run_task, t))
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        consume(f.result())
                    for t in itertools.islice(it, len(done)):
                        pending.add(self._pool.submit(_run_task, t))
        finally:
            bar.close()
        return confs


# ----------------------------------------------------------------------------------------------
# Results file

def _row_key(params: CRFParams, key: str) -> tuple:
    return params.key() + (key,)


def _read_rows(results_path: Path | None) -> dict[tuple, dict]:
    rows: dict[tuple, dict] = {}
    if results_path is None or not Path(results_path).exists():
        return rows
    with open(results_path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
                params = CRFParams.from_dict(row, ignore_extra=True)
                row.setdefault("miou_gt", miou_gt(np.asarray(row["conf"])))
                rows[_row_key(params, row["images_key"])] = row
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after an interruption, or a foreign row
    return rows


def _append_row(results_path: Path | None, row: dict) -> None:
    if results_path is None:
        return
    results_path = Path(results_path)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    with open(results_path, "a+b") as f:
        # start on a fresh line if an interrupted run left a torn last line behind
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(row) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def miou_gt(conf: np.ndarray, classes: np.ndarray | None = None) -> float:
    """Mean IoU over the classes that have ground-truth pixels (rows of ``conf`` with a positive
    sum), or over the boolean mask ``classes``. Classes seen only as false positives are left out.
    """
    conf = np.asarray(conf, np.float64)
    mask = conf.sum(1) > 0 if classes is None else np.asarray(classes, bool)
    if not mask.any():
        return 0.0
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    iou = np.divide(tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(iou[mask].mean())


def objective_value(conf: np.ndarray, objective: str, classes: np.ndarray | None = None) -> float:
    """A search objective of a confusion matrix: ``"miou_gt"`` (over ``classes``, default the
    classes with ground truth in ``conf``) or ``"miou"`` (the usual mean IoU)."""
    return miou_gt(conf, classes) if objective == "miou_gt" else summarize(conf)["miou"]


def _make_row(params: CRFParams, conf: np.ndarray, n_images: int, key: str) -> dict:
    s = summarize(conf)
    return {**params.to_dict(), "miou": s["miou"], "miou_gt": miou_gt(conf),
            "pixel_acc": s["pixel_acc"], "n_images": n_images, "images_key": key,
            "conf": conf.tolist()}


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "conf"}


def _evaluate(ev: _Evaluator, configs: Sequence[CRFParams], image_idx: Sequence[int],
              results_path: Path | None, known: dict[tuple, dict], progress: bool, desc: str,
              base: dict[tuple, tuple[list[int], np.ndarray]] | None = None) -> tuple[list[dict], int]:
    """Evaluate configs on the images ``image_idx`` (all rows keyed by that image set).

    ``base`` optionally maps a config key to (already evaluated image indices, their confusion
    matrix), so that only the new images are run. Returns (rows in config order, CRF runs needed).
    """
    subset = [ev.paths[i] for i in image_idx]
    key = images_key(subset)
    n_img = len(set(image_idx))
    rows: list[dict | None] = [None] * len(configs)
    jobs, job_cfg, job_base = [], [], []
    runs = 0
    first: dict[tuple, int] = {}
    for c, params in enumerate(configs):
        if params.key() in first:  # duplicate config: filled in from its first occurrence below
            continue
        first[params.key()] = c
        hit = known.get(_row_key(params, key))
        done_idx, base_conf = (base or {}).get(params.key(), ([], None))
        todo = sorted(set(image_idx) - set(done_idx))
        runs += len(todo)
        if hit is not None:
            rows[c] = hit
            continue
        jobs.append((params.to_dict(), todo))
        job_cfg.append(c)
        job_base.append(base_conf)

    def on_done(j: int, conf: np.ndarray) -> None:
        if job_base[j] is not None:
            conf = conf + job_base[j]
        row = _make_row(configs[job_cfg[j]], conf, n_img, key)
        known[_row_key(configs[job_cfg[j]], key)] = row
        rows[job_cfg[j]] = row
        _append_row(results_path, row)

    if jobs:
        ev.run(jobs, on_done=on_done, progress=progress, desc=desc)
    for c, params in enumerate(configs):
        if rows[c] is None:
            rows[c] = rows[first[params.key()]]
    return rows, runs  # type: ignore[return-value]


def _as_paths(cache_files: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    if isinstance(cache_files, (str, os.PathLike)) and Path(cache_files).is_dir():
        return list_cache(cache_files)
    files = [Path(p) for p in cache_files]  # type: ignore[union-attr]
    if not files:
        raise ValueError("no cache files given")
    return files


def evaluate_configs(cache_files: Sequence[str | os.PathLike], configs: list[CRFParams],
                     num_classes: int, workers: int = 1, results_path: Path | None = None,
                     progress: bool = True) -> list[dict]:
    """mIoU and pixel accuracy of each config over all cache files (summed confusion matrices).

    Rows (params fields + miou + pixel_acc + n_images + images_key) are appended to
    ``results_path`` as each config finishes; configs already there for the same image set are
    read back instead of recomputed. Returns rows in the order of ``configs``.
    """
    files = _as_paths(cache_files)
    results_path = Path(results_path) if results_path is not None else None
    known = _read_rows(results_path)
    with _Evaluator(files, num_classes, workers) as ev:
        rows, _ = _evaluate(ev, list(configs), range(len(files)), results_path, known, progress,
                            "crf configs")
    return [_public(r) for r in rows]


def per_image_confusions(cache_files: Sequence[str | os.PathLike], configs: list[CRFParams | None],
                         num_classes: int, workers: int = 1, progress: bool = True) -> np.ndarray:
    """Confusion matrix of every (config, image) pair: int64 (n_configs, n_images, C, C).

    A config of None is the argmax without CRF. Any image subset's matrix of a config is then a
    sum over the image axis, which is how a search can be checked against the full grid on many
    subsets of one cache without running the grid again.
    """
    files = _as_paths(cache_files)
    # image-major, so that each task holds several configs of one image and builds its unary once
    jobs = [(None if p is None else p.to_dict(), [i]) for i in range(len(files)) for p in configs]
    with _Evaluator(files, num_classes, workers, configs_per_task=16) as ev:
        confs = ev.run(jobs, progress=progress, desc="per-image grid")
    out = np.stack(confs).reshape(len(files), len(configs), num_classes, num_classes)
    return out.transpose(1, 0, 2, 3)


def paper_grid(w1_grid: Sequence[float] = PAPER_W1_GRID,
               sigma_alpha_grid: Sequence[float] = PAPER_SIGMA_ALPHA_GRID,
               sigma_beta_grid: Sequence[float] = PAPER_SIGMA_BETA_GRID, w2: float = 3.0,
               sigma_gamma: float = 3.0, iterations: int = 10) -> list[CRFParams]:
    """The coarse grid as CRFParams, w1-major order."""
    return [CRFParams(w1=a, sigma_alpha=b, sigma_beta=c, w2=w2, sigma_gamma=sigma_gamma,
                      iterations=iterations)
            for a, b, c in itertools.product(w1_grid, sigma_alpha_grid, sigma_beta_grid)]


def _best(rows: list[dict], objective: str = "miou_gt") -> dict:
    # highest objective; ties go to the earliest row
    return max(enumerate(rows), key=lambda t: (t[1][objective], -t[0]))[1]


def _check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    return objective


def _summary(best: dict, full_rows: dict[tuple, dict], screen_rows: list[dict], runs: int,
             n_images: int, baseline: dict, objective: str, budget: int | None = None,
             screen_images: int | None = None) -> dict:
    return {
        "best": {**{k: best[k] for k in PARAM_FIELDS}, "miou": best["miou"],
                 "miou_gt": best["miou_gt"], "pixel_acc": best["pixel_acc"]},
        "objective": objective,
        "rows": [_public(r) for r in full_rows.values()],
        "screen_rows": [_public(r) for r in screen_rows],
        "n_evaluated": len(full_rows),
        "crf_runs": runs,
        "crf_run_budget": budget,
        "screen_images": screen_images,
        "full_pass_equivalents": runs / n_images,
        "n_images": n_images,
        "baseline_miou": baseline["miou"],
        "baseline_miou_gt": baseline["miou_gt"],
        "baseline_pixel_acc": baseline["pixel_acc"],
    }


def _baseline_per_image(ev: _Evaluator) -> tuple[list[np.ndarray], dict]:
    """Argmax (no CRF) confusion matrix of every image, and the summary over all of them."""
    confs = ev.run([(None, [i]) for i in range(len(ev.paths))])
    total = np.sum(confs, axis=0)
    s = summarize(total)
    return confs, {"miou": s["miou"], "miou_gt": miou_gt(total), "pixel_acc": s["pixel_acc"]}


def full_grid_search(cache_files, num_classes: int,
                     w1_grid: Sequence[float] = PAPER_W1_GRID,
                     sigma_alpha_grid: Sequence[float] = PAPER_SIGMA_ALPHA_GRID,
                     sigma_beta_grid: Sequence[float] = PAPER_SIGMA_BETA_GRID,
                     w2: float = 3.0, sigma_gamma: float = 3.0, iterations: int = 10,
                     workers: int = 1, results_path: Path | None = None,
                     progress: bool = True, objective: str = "miou_gt") -> dict:
    """Every config of the coarse grid on every image. Same result layout as coarse_to_fine_search."""
    _check_objective(objective)
    files = _as_paths(cache_files)
    results_path = Path(results_path) if results_path is not None else None
    known = _read_rows(results_path)
    configs = paper_grid(w1_grid, sigma_alpha_grid, sigma_beta_grid, w2, sigma_gamma, iterations)
    with _Evaluator(files, num_classes, workers) as ev:
        _, baseline = _baseline_per_image(ev)
        rows, runs = _evaluate(ev, configs, range(len(files)), results_path, known, progress,
                               "full grid")
    full = {CRFParams.from_dict(r, ignore_extra=True).key(): r for r in rows}
    return _summary(_best(rows, objective), full, [], runs, len(files), baseline, objective)


def _clipped_estimate(base_all: np.ndarray, conf_sub: np.ndarray, base_sub: np.ndarray,
                      scale: float) -> np.ndarray:
    """Confusion matrix of all images estimated from a subset: the no-CRF matrix of all images
    plus the CRF's change on the subset, scaled up to the whole set (a difference estimator)."""
    return np.maximum(base_all + (conf_sub - base_sub) * scale, 0.0)


def coarse_to_fine_search(cache_files, num_classes: int,
                          w1_grid: Sequence[float] = PAPER_W1_GRID,
                          sigma_alpha_grid: Sequence[float] = PAPER_SIGMA_ALPHA_GRID,
                          sigma_beta_grid: Sequence[float] = PAPER_SIGMA_BETA_GRID,
                          w2: float = 3.0, sigma_gamma: float = 3.0, iterations: int = 10,
                          fine: bool = True, workers: int = 1, results_path: Path | None = None,
                          progress: bool = True, *, screen_images: int = 4,
                          budget_fraction: float | None = 0.25,
                          fine_steps: tuple[float, float, float] = (0.5, 5.0, 0.5),
                          fine_rounds: int = 4, restarts: bool = True,
                          objective: str = "miou_gt", seed: int = 0) -> dict:
    """The coarse grid searched by screening and hill climbing, then a finer local search, all
    within a budget of CRF runs (``budget_fraction`` of what the full grid costs; None: no
    budget, every phase runs to its end).

    1. Screen: every coarse config on ``screen_images`` images (drawn with ``seed``; fewer when
       the screen would take more than half the budget, at least one). Each config
       is scored by a difference estimate of its objective on *all* images: the no-CRF confusion
       matrix of all images plus the config's change on the screened images, scaled up. Scoring
       the change rather than the subset's own mIoU keeps the class mix of the whole set.
    2. Climb: from the best screened config, evaluate the grid neighbours (one grid step along
       each axis) on all images and move to the best, until no neighbour is better.
    3. Fine: from the best config so far, try +-``fine_steps`` (w1, sigma_alpha, sigma_beta) along
       each axis on all images and move to the best, up to ``fine_rounds`` moves. Fine points may
       leave the coarse grid (an optimum on the grid's edge continues past it).
    4. Restarts (``restarts``): while the budget allows, climb again from the next best screened
       config not yet evaluated on all images, and refine any new best.

    A config already scored on the screened images costs only the remaining images. The screen
    and the scoring of the best screened config on all images always run; every later
    evaluation that would exceed the budget is skipped.

    ``objective`` ranks configs: ``"miou_gt"`` (default) is the mean IoU over the classes that
    have ground-truth pixels in the cross-validation images; ``"miou"`` also counts classes that
    only appear as false positives. On a small CV set a class with no ground truth enters
    ``"miou"`` with IoU 0 as soon as one pixel is predicted as it, which makes the surface jump by
    1/num_present_classes between neighbouring configs; ``"miou_gt"`` scores only what the CV
    ground truth can measure. Rows carry both.

    Returns {"best": params + miou + miou_gt + pixel_acc, "objective", "rows": every config
    evaluated on all images, "screen_rows": rows on the screened images (with "estimate", the
    objective estimated for all images), "n_evaluated": configs
    evaluated on all images, "crf_runs": CRF runs the search needs (config x image),
    "crf_run_budget", "full_pass_equivalents": crf_runs / n_images, "n_images",
    "baseline_miou", "baseline_miou_gt", "baseline_pixel_acc" (argmax, no CRF)}.
    """
    _check_objective(objective)
    if screen_images < 1 or fine_rounds < 0:
        raise ValueError(f"screen_images must be >= 1 and fine_rounds >= 0, got {screen_images} "
                         f"and {fine_rounds}")
    if budget_fraction is not None and not 0.0 < budget_fraction <= 1.0:
        raise ValueError(f"budget_fraction must be in (0, 1] or None, got {budget_fraction}")
    if len(fine_steps) != 3 or any(s <= 0 for s in fine_steps):
        raise ValueError(f"fine_steps must be three positive steps (w1, sigma_alpha, sigma_beta), "
                         f"got {fine_steps!r}")
    files = _as_paths(cache_files)
    results_path = Path(results_path) if results_path is not None else None
    known = _read_rows(results_path)
    n = len(files)
    all_idx = list(range(n))
    axes = [sorted(set(float(v) for v in g)) for g in (w1_grid, sigma_alpha_grid, sigma_beta_grid)]
    grid = paper_grid(*axes, w2=w2, sigma_gamma=sigma_gamma, iterations=iterations)
    shape = tuple(len(a) for a in axes)
    budget = (int(budget_fraction * len(grid) * n) if budget_fraction is not None
              else len(grid) * n * 1000)
    order = [int(i) for i in np.random.default_rng(seed).permutation(n)]
    # the screen may take at most half the budget, so that the climb has room on small CV sets
    k = min(n, screen_images, max(1, budget // (2 * len(grid))))
    screen_idx = sorted(order[:k])
    full: dict[tuple, dict] = {}
    screen_rows: list[dict] = []
    spent = 0

    def score(row: dict) -> float:
        return row[objective]

    with _Evaluator(files, num_classes, workers) as ev:
        base_confs, baseline = _baseline_per_image(ev)

        # 1. screen the coarse grid
        rows, spent = _evaluate(ev, grid, screen_idx, results_path, known, progress,
                                f"screen ({len(grid)} cfg x {k} img)")
        if k == n:
            full.update((p.key(), r) for p, r in zip(grid, rows))
            estimates = [score(r) for r in rows]
        else:
            base_all = np.sum(base_confs, axis=0)
            base_sub = np.sum([base_confs[i] for i in screen_idx], axis=0)
            classes = base_all.sum(1) > 0
            estimates = [objective_value(_clipped_estimate(base_all, np.asarray(r["conf"],
                                                                                np.float64),
                                                           base_sub, n / k), objective, classes)
                         for r in rows]
            screen_rows = [{**r, "estimate": e} for r, e in zip(rows, estimates)]
        screened = {p.key(): (screen_idx, np.asarray(r["conf"], np.int64))
                    for p, r in zip(grid, rows)}

        def evaluate_all(cands: list[CRFParams], desc: str) -> None:
            """Score unseen candidates on all images, in order, while the budget allows."""
            nonlocal spent
            todo, cost = [], spent
            for p in cands:
                if p.key() in full or p in todo:
                    continue
                c = n - len(screened.get(p.key(), ((), None))[0])
                if cost + c <= budget:
                    todo.append(p)
                    cost += c
            if todo:
                rows, r = _evaluate(ev, todo, all_idx, results_path, known, progress,
                                    f"{desc} ({len(todo)} cfg)", base=screened)
                spent += r
                full.update((p.key(), row) for p, row in zip(todo, rows))

        def at(cell: tuple[int, ...]) -> CRFParams:
            return grid[int(np.ravel_multi_index(cell, shape))]

        def climb(start: int) -> None:
            cur = tuple(int(i) for i in np.unravel_index(start, shape))
            evaluate_all([grid[start]], "climb")
            while at(cur).key() in full:
                nbrs = []
                for ax in range(3):
                    for d in (-1, 1):
                        nb = list(cur)
                        nb[ax] += d
                        if 0 <= nb[ax] < shape[ax]:
                            nbrs.append(tuple(nb))
                evaluate_all([at(nb) for nb in nbrs], "climb")
                scored = [c for c in [cur] + nbrs if at(c).key() in full]
                nxt = max(scored, key=lambda c: score(full[at(c).key()]))
                if nxt == cur:
                    return
                cur = nxt

        def refine() -> None:
            steps = dict(zip(("w1", "sigma_alpha", "sigma_beta"), fine_steps))
            for _ in range(fine_rounds):
                best = _best(list(full.values()), objective)
                cur = CRFParams.from_dict(best, ignore_extra=True)
                cands = []
                for name, step in steps.items():
                    for sign in (-1, 1):
                        v = round(getattr(cur, name) + sign * step, 6)
                        if v > 0:
                            cands.append(CRFParams(**{**cur.to_dict(), name: v}))
                evaluate_all(cands, "fine")
                if _best(list(full.values()), objective) is best:
                    return

        ranking = sorted(range(len(grid)), key=lambda c: (-estimates[c], c))
        climb(ranking[0])
        if not full:  # nothing fitted the budget: score the best screened config anyway
            rows, r = _evaluate(ev, [grid[ranking[0]]], all_idx, results_path, known, progress,
                                "best screened", base=screened)
            spent += r
            full[grid[ranking[0]].key()] = rows[0]
        if fine:
            refine()
        if restarts:
            for start in ranking[1:]:
                if budget - spent < n - k:
                    break
                if grid[start].key() in full:
                    continue
                before = _best(list(full.values()), objective)
                climb(start)
                if fine and _best(list(full.values()), objective) is not before:
                    refine()
    best = _best(list(full.values()), objective)
    return _summary(best, full, screen_rows, spent, n, baseline, objective, budget, k)


# ----------------------------------------------------------------------------------------------
# Synthetic data (tests, benchmark without a real cache)

def synthetic_item(rng: np.random.Generator, height: int = 120, width: int = 160,
                   num_classes: int = 6, blur: float | None = None, noise: float = 1.5,
                   pixel_noise: float = 8.0, texture: float = 25.0, contrast: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image of sharp-edged shapes on a textured background, its label, and softened noisy
    probabilities.

    Shapes are ellipses, boxes and thin bars with one flat colour each (plus pixel noise).
    Probabilities come from the one-hot label blurred by a Gaussian (edges leak over several
    pixels, thin bars fade) plus smooth noise, through a softmax: roughly the look of upsampled
    DCNN scores. Labels carry a partial void band along object edges, as in VOC.
    """
    from scipy import ndimage

    blur = blur if blur is not None else max(height, width) / 40
    label = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(int(rng.integers(2, 5))):
        c = int(rng.integers(1, num_classes))
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        ry, rx = rng.uniform(0.08, 0.3) * height, rng.uniform(0.08, 0.3) * width
        kind = rng.random()
        if kind < 0.4:
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        elif kind < 0.8:
            m = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        else:  # a thin slanted bar
            ang = rng.uniform(0, np.pi)
            d = np.abs((yy - cy) * np.cos(ang) - (xx - cx) * np.sin(ang))
            along = np.abs((yy - cy) * np.sin(ang) + (xx - cx) * np.cos(ang))
            m = (d <= rng.uniform(1.5, 4)) & (along <= max(ry, rx) * 1.5)
        label[m] = c
    palette = 128 + contrast * (rng.integers(20, 236, size=(num_classes, 3)) - 128.0)
    tex = np.stack([ndimage.gaussian_filter(rng.normal(0, 1, (height, width)), blur * 2)
                    for _ in range(3)], axis=-1)
    tex *= texture / (tex.std() + 1e-6)
    image = palette[label] + np.where(label[..., None] == 0, tex, 0)
    image += rng.normal(0, pixel_noise, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    onehot = (label[None] == np.arange(num_classes)[:, None, None]).astype(np.float32)
    logits = np.stack([ndimage.gaussian_filter(o, blur) for o in onehot]) * 4.0
    smooth = rng.normal(0, 1, (num_classes, height, width)).astype(np.float32)
    smooth = np.stack([ndimage.gaussian_filter(s, blur / 2) for s in smooth])
    smooth /= smooth.std() + 1e-6
    logits += noise * smooth
    logits -= logits.max(axis=0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=0, keepdims=True)
    edge = ndimage.morphological_gradient(label, size=3) > 0
    label = label.copy()
    label[edge & (rng.random(label.shape) < 0.5)] = IGNORE_INDEX
    return image, probs.astype(np.float32), label


def make_synthetic_cache(cache_dir: str | os.PathLike, n_images: int = 16, height: int = 120,
                         width: int = 160, num_classes: int = 6, seed: int = 0,
                         **item_kwargs) -> list[Path]:
    """Write ``n_images`` synthetic items in the cache format; returns the file paths.
    ``item_kwargs`` go to ``synthetic_item`` (blur, noise, pixel_noise, texture, contrast)."""
    rng = np.random.default_rng(seed)
    return [write_cache_item(cache_dir, f"synth_{i:04d}",
                             *synthetic_item(rng, height, width, num_classes, **item_kwargs))
            for i in range(n_images)]
