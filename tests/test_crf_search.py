"""CRF parameter search: cache format, resume, worker processes, coarse-to-fine cost."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deeplab_core.crf import search
from deeplab_core.crf.densecrf import CRFParams, dense_crf
from deeplab_core.crf.plots import plot_heatmaps
from deeplab_core.engine.metrics import confusion_matrix, summarize

NUM_CLASSES = 4
SMALL_GRID = dict(w1_grid=(3.0, 6.0), sigma_alpha_grid=(20.0, 40.0, 80.0),
                  sigma_beta_grid=(3.0, 6.0))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("crf_cache")
    return search.make_synthetic_cache(d, n_images=6, height=36, width=48,
                                       num_classes=NUM_CLASSES, seed=1)


def configs():
    return [CRFParams(w1=w, sigma_alpha=a, sigma_beta=b, iterations=5)
            for w, a, b in [(3, 20, 3), (6, 40, 6), (4, 80, 3), (5, 20, 5)]]


def count_crf_calls(monkeypatch):
    calls = []
    real = search.crf_from_unary

    def counting(image, unary, params):
        calls.append(params)
        return real(image, unary, params)

    monkeypatch.setattr(search, "crf_from_unary", counting)
    return calls


def test_cache_round_trip_is_atomic(tmp_path):
    rng = np.random.default_rng(0)
    image, probs, label = search.synthetic_item(rng, 20, 30, 5)
    path = search.write_cache_item(tmp_path, "img_001", image, probs, label)
    assert path == tmp_path / "img_001.npz"
    assert [p.name for p in tmp_path.iterdir()] == ["img_001.npz"]  # no temporary left behind
    with np.load(path) as z:
        assert z["probs"].dtype == np.float16 and z["image"].dtype == np.uint8
        assert z["label"].dtype == np.uint8
    im2, pr2, lab2 = search.load_cache_item(path)
    np.testing.assert_array_equal(im2, image)
    np.testing.assert_array_equal(lab2, label)
    assert pr2.dtype == np.float32 and pr2.shape == probs.shape
    np.testing.assert_allclose(pr2, probs, atol=2e-3)
    np.testing.assert_allclose(pr2.sum(0), 1.0, atol=1e-5)
    dense_crf(im2, pr2, CRFParams(iterations=2))  # loaded items pass the CRF's input checks
    assert search.list_cache(tmp_path) == [path]


def test_cache_writer_rejects_bad_items(tmp_path):
    rng = np.random.default_rng(0)
    image, probs, label = search.synthetic_item(rng, 20, 30, 3)
    with pytest.raises(ValueError, match="image id"):
        search.write_cache_item(tmp_path, "../x", image, probs, label)
    with pytest.raises(ValueError, match="label shape"):
        search.write_cache_item(tmp_path, "a", image, probs, label[:-1])
    with pytest.raises(ValueError, match="uint8"):
        search.write_cache_item(tmp_path, "a", image.astype(np.float32), probs, label)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_configs_matches_direct_computation(cache):
    cfg = configs()[:2]
    rows = search.evaluate_configs(cache, cfg, NUM_CLASSES, workers=1, results_path=None,
                                   progress=False)
    for p, row in zip(cfg, rows):
        conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
        for f in cache:
            image, probs, label = search.load_cache_item(f)
            conf += confusion_matrix(dense_crf(image, probs, p)[0], label, NUM_CLASSES)
        s = summarize(conf)
        assert row["miou"] == pytest.approx(s["miou"]) and row["pixel_acc"] == s["pixel_acc"]
        assert CRFParams.from_dict(row, ignore_extra=True) == p
        assert row["n_images"] == len(cache)
        assert "conf" not in row


def test_resume_skips_finished_configs(cache, tmp_path, monkeypatch):
    results = tmp_path / "crf_results.jsonl"
    calls = count_crf_calls(monkeypatch)
    cfg = configs()
    first = search.evaluate_configs(cache, cfg[:2], NUM_CLASSES, workers=1, results_path=results,
                                    progress=False)
    assert len(calls) == 2 * len(cache)
    assert len(results.read_text().splitlines()) == 2
    # an interrupted write leaves a torn last line: it must be ignored, not crash the reader
    with open(results, "a") as f:
        f.write('{"w1": 4.0, "sigma_al')
    calls.clear()
    rows = search.evaluate_configs(cache, cfg, NUM_CLASSES, workers=1, results_path=results,
                                   progress=False)
    assert {p.key() for p in calls} == {cfg[2].key(), cfg[3].key()}  # only the new configs ran
    assert len(calls) == 2 * len(cache)
    assert rows[:2] == first
    calls.clear()
    again = search.evaluate_configs(cache, cfg, NUM_CLASSES, workers=1, results_path=results,
                                    progress=False)
    assert calls == [] and again == rows
    lines = [json.loads(x) for x in results.read_text().splitlines()[:2]]
    assert all("miou" in r and "pixel_acc" in r for r in lines)


def test_resume_ignores_rows_of_another_image_set(cache, tmp_path, monkeypatch):
    results = tmp_path / "r.jsonl"
    cfg = configs()[:1]
    search.evaluate_configs(cache[:3], cfg, NUM_CLASSES, 1, results, progress=False)
    calls = count_crf_calls(monkeypatch)
    search.evaluate_configs(cache, cfg, NUM_CLASSES, 1, results, progress=False)
    assert len(calls) == len(cache)


def test_two_workers_give_the_same_rows(cache, tmp_path):
    cfg = configs()
    one = search.evaluate_configs(cache, cfg, NUM_CLASSES, workers=1,
                                  results_path=tmp_path / "one.jsonl", progress=False)
    two = search.evaluate_configs(cache, cfg, NUM_CLASSES, workers=2,
                                  results_path=tmp_path / "two.jsonl", progress=False)
    assert one == two
    assert len((tmp_path / "two.jsonl").read_text().splitlines()) == len(cfg)


def test_coarse_to_fine_costs_less_than_full_grid(cache, tmp_path):
    common = dict(w2=3.0, sigma_gamma=3.0, iterations=5, progress=False, **SMALL_GRID)
    full = search.full_grid_search(cache, NUM_CLASSES, workers=1,
                                   results_path=tmp_path / "full.jsonl", **common)
    c2f_args = dict(results_path=tmp_path / "c2f.jsonl", eta=2, min_screen_images=2, **common)
    coarse = search.coarse_to_fine_search(cache, NUM_CLASSES, workers=2, fine=False, **c2f_args)
    n_grid = 2 * 3 * 2
    assert full["n_evaluated"] == n_grid and full["crf_runs"] == n_grid * len(cache)
    assert coarse["crf_runs"] < full["crf_runs"] / 1.5
    assert coarse["n_evaluated"] < full["n_evaluated"]
    # same results file: the coarse stage is read back, only the fine stage runs
    c2f = search.coarse_to_fine_search(cache, NUM_CLASSES, workers=2, fine=True, fine_rounds=1,
                                       **c2f_args)
    assert c2f["best"]["miou"] >= coarse["best"]["miou"]
    assert c2f["baseline_miou"] == pytest.approx(full["baseline_miou"])
    assert full["best"]["miou"] > full["baseline_miou"]
    assert c2f["best"]["miou"] > c2f["baseline_miou"]
    # the fine stage never ends below the best coarse config it started from
    coarse_keys = {CRFParams(w1=w, sigma_alpha=a, sigma_beta=b, iterations=5).key()
                   for w in SMALL_GRID["w1_grid"] for a in SMALL_GRID["sigma_alpha_grid"]
                   for b in SMALL_GRID["sigma_beta_grid"]}
    coarse_full_rows = [r for r in c2f["rows"]
                        if CRFParams.from_dict(r, ignore_extra=True).key() in coarse_keys]
    assert c2f["best"]["miou"] >= max(r["miou"] for r in coarse_full_rows)
    assert all(r["n_images"] == len(cache) for r in c2f["rows"])
    assert all(r["n_images"] < len(cache) for r in c2f["screen_rows"])
    assert set(c2f["best"]) >= {"w1", "sigma_alpha", "sigma_beta", "w2", "sigma_gamma",
                                "iterations", "miou"}
    # the full grid's rows are what the heatmap plot takes
    out = plot_heatmaps(full["rows"], tmp_path / "heat.png")
    assert out.exists() and out.stat().st_size > 1000


def test_coarse_to_fine_resumes_without_recomputing(cache, tmp_path, monkeypatch):
    common = dict(w2=3.0, sigma_gamma=3.0, iterations=3, progress=False, eta=2,
                  min_screen_images=2, fine_rounds=1, workers=1, fine=True, **SMALL_GRID)
    results = tmp_path / "c2f.jsonl"
    first = search.coarse_to_fine_search(cache, NUM_CLASSES, results_path=results, **common)
    calls = count_crf_calls(monkeypatch)
    second = search.coarse_to_fine_search(cache, NUM_CLASSES, results_path=results, **common)
    assert calls == []
    assert second["best"] == first["best"] and second["crf_runs"] == first["crf_runs"]


def test_rung_sizes_cut_paper_grid_cost():
    sizes = search._rung_sizes(128, 100, eta=4, final_configs=2, min_screen_images=4)
    assert sizes[0] == 4 and sizes[-1] == 100 and sizes == sorted(sizes)
    kept = [128, 32, 8, 2]
    runs = sum(k * (n - p) for k, n, p in zip(kept, sizes, [0] + sizes[:-1]))
    assert runs / 100 < 128 / 4 - 12  # coarse stage leaves room for a 2-round fine stage


def test_search_arguments_are_checked(cache):
    with pytest.raises(ValueError, match="eta"):
        search.coarse_to_fine_search(cache, NUM_CLASSES, eta=1, progress=False)
    with pytest.raises(ValueError, match="fine_steps"):
        search.coarse_to_fine_search(cache, NUM_CLASSES, fine_steps=(0.5, -1, 1), progress=False)
    with pytest.raises(ValueError, match="workers"):
        search.evaluate_configs(cache, configs(), NUM_CLASSES, workers=0, progress=False)
    with pytest.raises(ValueError, match="no cache files"):
        search.evaluate_configs([], configs(), NUM_CLASSES, progress=False)
    with pytest.raises(ValueError, match="classes"):
        search.evaluate_configs(cache, configs(), NUM_CLASSES + 1, workers=2, progress=False)


def test_duplicate_configs_run_once(cache, tmp_path, monkeypatch):
    calls = count_crf_calls(monkeypatch)
    cfg = configs()[:1] * 3
    rows = search.evaluate_configs(cache, cfg, NUM_CLASSES, 1, tmp_path / "r.jsonl", progress=False)
    assert len(calls) == len(cache) and rows[0] == rows[1] == rows[2]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1
