"""Cross-validation search of the CRF parameters over a cache of softmax probabilities.

The papers' protocol (DeepLab v1 Sec. 4, v2 Sec. 4.1): w2 = 3 and sigma_gamma = 3 fixed; a coarse
grid w1 in {3..6}, sigma_alpha in {30, 40, ..., 100}, sigma_beta in {3..6} with 10 mean-field
iterations on a held-out subset, then a finer search around the best point.

``coarse_to_fine_search`` screens the coarse grid on a few images, hill-climbs the grid on all
images from the best screened point, then searches with finer steps around the best, within a
budget of CRF runs. ``full_grid_search`` evaluates every coarse config on every image, for
comparison. The cache format is in ``crf.cache``; the configs are scored by ``crf.evaluator``.
"""

from __future__ import annotations

import itertools
from dataclasses import fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from deeplab_core.crf.cache import cache_paths
from deeplab_core.crf.densecrf import CRFParams
from deeplab_core.crf.evaluator import (Evaluator, check_objective, evaluate_jobs, miou_gt,
                                        objective_value, public, read_rows)
from deeplab_core.config import (PAPER_ITERATIONS, PAPER_SIGMA_ALPHA_GRID, PAPER_SIGMA_BETA_GRID,
                                PAPER_SIGMA_GAMMA, PAPER_W1_GRID, PAPER_W2)
from deeplab_core.metrics import summarize

PARAM_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(CRFParams))


def paper_grid(w1_grid: Sequence[float] = PAPER_W1_GRID,
               sigma_alpha_grid: Sequence[float] = PAPER_SIGMA_ALPHA_GRID,
               sigma_beta_grid: Sequence[float] = PAPER_SIGMA_BETA_GRID, w2: float = PAPER_W2,
               sigma_gamma: float = PAPER_SIGMA_GAMMA,
               iterations: int = PAPER_ITERATIONS) -> list[CRFParams]:
    """The coarse grid as CRFParams, w1-major order."""
    return [CRFParams(w1=a, sigma_alpha=b, sigma_beta=c, w2=w2, sigma_gamma=sigma_gamma,
                      iterations=iterations)
            for a, b, c in itertools.product(w1_grid, sigma_alpha_grid, sigma_beta_grid)]


def _best(rows: list[dict], objective: str = "miou_gt") -> dict:
    # highest objective; ties go to the earliest row
    return max(enumerate(rows), key=lambda t: (t[1][objective], -t[0]))[1]


def _summary(best: dict, full_rows: dict[tuple, dict], screen_rows: list[dict], runs: int,
             n_images: int, baseline: dict, objective: str, budget: int | None = None,
             screen_images: int | None = None) -> dict:
    return {
        "best": {**{k: best[k] for k in PARAM_FIELDS}, "miou": best["miou"],
                 "miou_gt": best["miou_gt"], "pixel_acc": best["pixel_acc"]},
        "objective": objective,
        "rows": [public(r) for r in full_rows.values()],
        "screen_rows": [public(r) for r in screen_rows],
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


def _baseline_per_image(ev: Evaluator) -> tuple[list[np.ndarray], dict]:
    """Argmax (no CRF) confusion matrix of every image, and the summary over all of them."""
    confs = ev.run([(None, [i]) for i in range(len(ev.paths))])
    total = np.sum(confs, axis=0)
    s = summarize(total)
    return confs, {"miou": s["miou"], "miou_gt": miou_gt(total), "pixel_acc": s["pixel_acc"]}


def full_grid_search(cache_files, num_classes: int,
                     w1_grid: Sequence[float] = PAPER_W1_GRID,
                     sigma_alpha_grid: Sequence[float] = PAPER_SIGMA_ALPHA_GRID,
                     sigma_beta_grid: Sequence[float] = PAPER_SIGMA_BETA_GRID,
                     w2: float = PAPER_W2, sigma_gamma: float = PAPER_SIGMA_GAMMA,
                     iterations: int = PAPER_ITERATIONS, workers: int = 1,
                     results_path: Path | None = None, progress: bool = True,
                     objective: str = "miou_gt") -> dict:
    """Every config of the coarse grid on every image. Same result layout as coarse_to_fine_search."""
    check_objective(objective)
    files = cache_paths(cache_files)
    results_path = Path(results_path) if results_path is not None else None
    known = read_rows(results_path)
    configs = paper_grid(w1_grid, sigma_alpha_grid, sigma_beta_grid, w2, sigma_gamma, iterations)
    with Evaluator(files, num_classes, workers) as ev:
        _, baseline = _baseline_per_image(ev)
        rows, runs = evaluate_jobs(ev, configs, range(len(files)), results_path, known,
                                   progress, "full grid")
    full = {CRFParams.from_row(r).key(): r for r in rows}
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
                          w2: float = PAPER_W2, sigma_gamma: float = PAPER_SIGMA_GAMMA,
                          iterations: int = PAPER_ITERATIONS,
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
    _check_search_args(objective, screen_images, fine_rounds, budget_fraction, fine_steps)
    files = cache_paths(cache_files)
    axes = [sorted(set(float(v) for v in g)) for g in (w1_grid, sigma_alpha_grid, sigma_beta_grid)]
    grid = paper_grid(*axes, w2=w2, sigma_gamma=sigma_gamma, iterations=iterations)
    with Evaluator(files, num_classes, workers) as ev:
        search = _CoarseToFine(ev, grid, tuple(len(a) for a in axes), objective, results_path,
                               progress, budget_fraction, screen_images, seed)
        ranking = search.screen()
        search.climb(ranking[0])
        search.score_best_screened(ranking[0])
        if fine:
            search.refine(fine_steps, fine_rounds)
        if restarts:
            search.restart(ranking[1:], fine_steps, fine_rounds if fine else None)
    return search.summary()


def _check_search_args(objective: str, screen_images: int, fine_rounds: int,
                       budget_fraction: float | None, fine_steps: Sequence[float]) -> None:
    check_objective(objective)
    if screen_images < 1 or fine_rounds < 0:
        raise ValueError(f"screen_images must be >= 1 and fine_rounds >= 0, got {screen_images} "
                         f"and {fine_rounds}")
    if budget_fraction is not None and not 0.0 < budget_fraction <= 1.0:
        raise ValueError(f"budget_fraction must be in (0, 1] or None, got {budget_fraction}")
    if len(fine_steps) != 3 or any(s <= 0 for s in fine_steps):
        raise ValueError(f"fine_steps must be three positive steps (w1, sigma_alpha, sigma_beta), "
                         f"got {fine_steps!r}")


class _CoarseToFine:
    """The state of one coarse-to-fine search: configs scored on all images (``full``), those
    scored on the screened images only (``screened``) and the CRF runs spent of the budget."""

    def __init__(self, ev: Evaluator, grid: list[CRFParams], shape: tuple[int, ...],
                 objective: str, results_path: Path | None, progress: bool,
                 budget_fraction: float | None, screen_images: int, seed: int):
        self.ev, self.grid, self.shape, self.objective = ev, grid, shape, objective
        self.results_path = Path(results_path) if results_path is not None else None
        self.known = read_rows(self.results_path)
        self.progress = progress
        self.n = n = len(ev.paths)
        self.all_idx = list(range(n))
        self.budget = (int(budget_fraction * len(grid) * n) if budget_fraction is not None
                       else len(grid) * n * 1000)
        order = [int(i) for i in np.random.default_rng(seed).permutation(n)]
        # the screen may take at most half the budget, so that the climb has room on small CV sets
        self.k = min(n, screen_images, max(1, self.budget // (2 * len(grid))))
        self.screen_idx = sorted(order[:self.k])
        self.full: dict[tuple, dict] = {}
        self.screened: dict[tuple, tuple[list[int], np.ndarray]] = {}
        self.screen_rows: list[dict] = []
        self.spent = 0
        self.base_confs, self.baseline = _baseline_per_image(ev)

    def _evaluate(self, configs: list[CRFParams], image_idx: Sequence[int], desc: str,
                  base=None) -> list[dict]:
        rows, runs = evaluate_jobs(self.ev, configs, image_idx, self.results_path, self.known,
                                   self.progress, desc, base=base)
        self.spent += runs
        return rows

    def screen(self) -> list[int]:
        """Every grid config on the screened images; returns the grid indices, best estimate first."""
        grid, k, n = self.grid, self.k, self.n
        rows = self._evaluate(grid, self.screen_idx, f"screen ({len(grid)} cfg x {k} img)")
        if k == n:
            self.full.update((p.key(), r) for p, r in zip(grid, rows))
            estimates = [r[self.objective] for r in rows]
        else:
            base_all = np.sum(self.base_confs, axis=0)
            base_sub = np.sum([self.base_confs[i] for i in self.screen_idx], axis=0)
            classes = base_all.sum(1) > 0
            estimates = [objective_value(
                _clipped_estimate(base_all, np.asarray(r["conf"], np.float64), base_sub, n / k),
                self.objective, classes) for r in rows]
            self.screen_rows = [{**r, "estimate": e} for r, e in zip(rows, estimates)]
        self.screened = {p.key(): (self.screen_idx, np.asarray(r["conf"], np.int64))
                         for p, r in zip(grid, rows)}
        return sorted(range(len(grid)), key=lambda c: (-estimates[c], c))

    def evaluate_all(self, cands: list[CRFParams], desc: str) -> None:
        """Score unseen candidates on all images, in order, while the budget allows."""
        todo, cost = [], self.spent
        for p in cands:
            if p.key() in self.full or p in todo:
                continue
            c = self.n - len(self.screened.get(p.key(), ((), None))[0])
            if cost + c <= self.budget:
                todo.append(p)
                cost += c
        if todo:
            rows = self._evaluate(todo, self.all_idx, f"{desc} ({len(todo)} cfg)",
                                  base=self.screened)
            self.full.update((p.key(), row) for p, row in zip(todo, rows))

    def _at(self, cell: tuple[int, ...]) -> CRFParams:
        return self.grid[int(np.ravel_multi_index(cell, self.shape))]

    def _neighbours(self, cell: tuple[int, ...]) -> list[tuple[int, ...]]:
        nbrs = []
        for ax in range(3):
            for d in (-1, 1):
                nb = list(cell)
                nb[ax] += d
                if 0 <= nb[ax] < self.shape[ax]:
                    nbrs.append(tuple(nb))
        return nbrs

    def climb(self, start: int) -> None:
        """Hill-climb the grid from config ``start``, one grid step along each axis at a time."""
        cur = tuple(int(i) for i in np.unravel_index(start, self.shape))
        self.evaluate_all([self.grid[start]], "climb")
        while self._at(cur).key() in self.full:
            nbrs = self._neighbours(cur)
            self.evaluate_all([self._at(nb) for nb in nbrs], "climb")
            scored = [c for c in [cur] + nbrs if self._at(c).key() in self.full]
            nxt = max(scored, key=lambda c: self.full[self._at(c).key()][self.objective])
            if nxt == cur:
                return
            cur = nxt

    def score_best_screened(self, best: int) -> None:
        """When nothing fitted the budget, score the best screened config on all images anyway."""
        if self.full:
            return
        p = self.grid[best]
        rows = self._evaluate([p], self.all_idx, "best screened", base=self.screened)
        self.full[p.key()] = rows[0]

    def best(self) -> dict:
        return _best(list(self.full.values()), self.objective)

    def refine(self, fine_steps: Sequence[float], fine_rounds: int) -> None:
        """From the best config so far, try +-``fine_steps`` along each axis; move to the best."""
        steps = dict(zip(("w1", "sigma_alpha", "sigma_beta"), fine_steps))
        for _ in range(fine_rounds):
            best = self.best()
            cur = CRFParams.from_row(best)
            cands = []
            for name, step in steps.items():
                for sign in (-1, 1):
                    v = round(getattr(cur, name) + sign * step, 6)
                    if v > 0:
                        cands.append(replace(cur, **{name: v}))
            self.evaluate_all(cands, "fine")
            if self.best() is best:
                return

    def restart(self, starts: list[int], fine_steps: Sequence[float],
                fine_rounds: int | None) -> None:
        """Climb again from the next screened configs while the budget allows; refine a new best
        (``fine_rounds`` None: no refinement)."""
        for start in starts:
            if self.budget - self.spent < self.n - self.k:
                break
            if self.grid[start].key() in self.full:
                continue
            before = self.best()
            self.climb(start)
            if fine_rounds is not None and self.best() is not before:
                self.refine(fine_steps, fine_rounds)

    def summary(self) -> dict:
        return _summary(self.best(), self.full, self.screen_rows, self.spent, self.n,
                        self.baseline, self.objective, self.budget, self.k)


def crf_decision(result: dict) -> dict:
    """Whether the CRF earns its place: the best config must beat the no-CRF baseline (the
    network's argmax) on the search's objective over the CV images; a tie keeps the simpler model.

    Returns {"crf_chosen": bool, "cv_gain": best - baseline on the objective, "reason": one
    line saying which was chosen and why}."""
    objective = result["objective"]
    best, base = result["best"][objective], result[f"baseline_{objective}"]
    gain = best - base
    chosen = gain > 0
    n = result.get("n_images")
    verdict = "CRF applied" if chosen else "no CRF"
    comparison = ("beat" if chosen else "did not beat")
    reason = (f"{verdict}: the best CRF {comparison} the network alone on the {n} CV images "
              f"({objective} {100 * best:.2f} % vs {100 * base:.2f} %, {100 * gain:+.2f} points)")
    return {"crf_chosen": chosen, "cv_gain": gain, "reason": reason}
