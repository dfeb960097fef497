"""Scoring CRF configs on a cache: worker processes, the results journal, the objectives.

Work runs in worker processes (pydensecrf holds the GIL). Each task is one image with a small batch
of configs; every worker loads the whole cache once, in its initializer. Each finished config is
appended to a JSON-lines results file (the journal), and configs already in that file are not
recomputed.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Sequence

import numpy as np

from deeplab_core.classes import IGNORE_INDEX
from deeplab_core.crf.cache import CACHE_KEYS, cache_paths, images_key, probs_to_f32
from deeplab_core.crf.densecrf import CRFParams, crf_from_unary, unary_from_probs
from deeplab_core.metrics import confusion_matrix, iou_from_confusion, summarize

OBJECTIVES: tuple[str, ...] = ("miou_gt", "miou")


# ----------------------------------------------------------------------------------------------
# Objectives

def miou_gt(conf: np.ndarray, classes: np.ndarray | None = None) -> float:
    """Mean IoU over the classes that have ground-truth pixels (rows of ``conf`` with a positive
    sum), or over the boolean mask ``classes``. Classes seen only as false positives are left out.
    """
    conf = np.asarray(conf, np.float64)
    mask = conf.sum(1) > 0 if classes is None else np.asarray(classes, bool)
    if not mask.any():
        return 0.0
    iou = np.nan_to_num(iou_from_confusion(conf), nan=0.0)  # a class never seen counts 0
    return float(iou[mask].mean())


def objective_value(conf: np.ndarray, objective: str, classes: np.ndarray | None = None) -> float:
    """A search objective of a confusion matrix: ``"miou_gt"`` (over ``classes``, default the
    classes with ground truth in ``conf``) or ``"miou"`` (the usual mean IoU)."""
    return miou_gt(conf, classes) if objective == "miou_gt" else summarize(conf)["miou"]


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    return objective


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


def _run_task(task: tuple[int, list[tuple[int, CRFParams | None]]]) -> tuple[int, list]:
    """One image, several configs: returns (image index, [(job index, confusion matrix)])."""
    idx, batch = task
    image, probs16, label = _STATE["items"][idx]
    num_classes = _STATE["num_classes"]
    probs = probs_to_f32(probs16)
    out = []
    unary = None
    for job, params in batch:
        if params is None:  # no CRF: argmax of the softmax
            pred = probs.argmax(axis=0)
        else:
            if unary is None:
                unary = unary_from_probs(probs)
            pred = crf_from_unary(image, unary, params).argmax(axis=0)
        out.append((job, confusion_matrix(pred, label, num_classes, IGNORE_INDEX)))
    return idx, out


class Evaluator:
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
            missing = CACHE_KEYS - set(z.files)
            if missing:
                raise ValueError(f"{self.paths[0]}: not a CRF cache item, missing {sorted(missing)}")
            c = z["probs"].shape[0]
        if c != self.num_classes:
            raise ValueError(f"{self.paths[0]}: probs have {c} classes, num_classes is "
                             f"{self.num_classes}")
        self.workers = int(workers)
        self.configs_per_task = max(1, int(configs_per_task))
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "Evaluator":
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

    def run(self, jobs: list[tuple[CRFParams | None, Sequence[int]]], on_done=None,
            progress: bool = False, desc: str = "crf") -> list[np.ndarray]:
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


def _journal(results_path: Path | None) -> dict[tuple, tuple[dict, str]]:
    """The journal's valid rows by (config, image set) key, each with its line as written; a torn
    last line after an interruption, or a foreign row, is skipped. A later duplicate wins."""
    out: dict[tuple, tuple[dict, str]] = {}
    if results_path is None or not Path(results_path).exists():
        return out
    with open(results_path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
                params = CRFParams.from_row(row)
                row.setdefault("miou_gt", miou_gt(np.asarray(row["conf"])))
                out[_row_key(params, row["images_key"])] = (row, line)
            except (ValueError, KeyError, TypeError):
                continue
    return out


def read_rows(results_path: Path | None) -> dict[tuple, dict]:
    return {key: row for key, (row, _) in _journal(results_path).items()}


def append_row(results_path: Path | None, row: dict) -> None:
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


def sort_journal(results_path: Path | None) -> None:
    """Rewrite the journal (atomically) with one line per (config, image set), sorted by config
    and image set, torn or foreign lines dropped.

    Rows are appended as worker processes finish them, so two runs of the same search write the
    same rows in different orders; sorted, the file depends on its rows alone (it sits inside a
    DVC output, whose hash must not change between identical runs)."""
    from deeplab_core.fileio import atomic_write_text

    if results_path is None or not Path(results_path).exists():
        return
    rows = _journal(results_path)
    atomic_write_text(results_path, "".join(rows[k][1] + "\n" for k in sorted(rows)))


def make_row(params: CRFParams, conf: np.ndarray, n_images: int, key: str) -> dict:
    s = summarize(conf)
    return {**params.to_dict(), "miou": s["miou"], "miou_gt": miou_gt(conf),
            "pixel_acc": s["pixel_acc"], "n_images": n_images, "images_key": key,
            "conf": conf.tolist()}


def public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "conf"}


def evaluate_jobs(ev: Evaluator, configs: Sequence[CRFParams], image_idx: Sequence[int],
                  results_path: Path | None, known: dict[tuple, dict], progress: bool, desc: str,
                  base: dict[tuple, tuple[list[int], np.ndarray]] | None = None
                  ) -> tuple[list[dict], int]:
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
        jobs.append((params, todo))
        job_cfg.append(c)
        job_base.append(base_conf)

    def on_done(j: int, conf: np.ndarray) -> None:
        if job_base[j] is not None:
            conf = conf + job_base[j]
        row = make_row(configs[job_cfg[j]], conf, n_img, key)
        known[_row_key(configs[job_cfg[j]], key)] = row
        rows[job_cfg[j]] = row
        append_row(results_path, row)

    if jobs:
        ev.run(jobs, on_done=on_done, progress=progress, desc=desc)
    for c, params in enumerate(configs):
        if rows[c] is None:
            rows[c] = rows[first[params.key()]]
    return rows, runs  # type: ignore[return-value]


def evaluate_configs(cache_files: Sequence[str | os.PathLike], configs: list[CRFParams],
                     num_classes: int, workers: int = 1, results_path: Path | None = None,
                     progress: bool = True) -> list[dict]:
    """mIoU and pixel accuracy of each config over all cache files (summed confusion matrices).

    Rows (params fields + miou + pixel_acc + n_images + images_key) are appended to
    ``results_path`` as each config finishes; configs already there for the same image set are
    read back instead of recomputed. Returns rows in the order of ``configs``.
    """
    files = cache_paths(cache_files)
    results_path = Path(results_path) if results_path is not None else None
    known = read_rows(results_path)
    with Evaluator(files, num_classes, workers) as ev:
        rows, _ = evaluate_jobs(ev, list(configs), range(len(files)), results_path, known,
                                progress, "crf configs")
    return [public(r) for r in rows]


def per_image_confusions(cache_files: Sequence[str | os.PathLike], configs: list[CRFParams | None],
                         num_classes: int, workers: int = 1, progress: bool = True) -> np.ndarray:
    """Confusion matrix of every (config, image) pair: int64 (n_configs, n_images, C, C).

    A config of None is the argmax without CRF. Any image subset's matrix of a config is then a
    sum over the image axis, which is how a search can be checked against the full grid on many
    subsets of one cache without running the grid again.
    """
    files = cache_paths(cache_files)
    # image-major, so that each task holds several configs of one image and builds its unary once
    jobs = [(p, [i]) for i in range(len(files)) for p in configs]
    with Evaluator(files, num_classes, workers, configs_per_task=16) as ev:
        confs = ev.run(jobs, progress=progress, desc="per-image grid")
    out = np.stack(confs).reshape(len(files), len(configs), num_classes, num_classes)
    return out.transpose(1, 0, 2, 3)
