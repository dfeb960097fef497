"""CRF parameter search: cache format, resume, worker processes, coarse-to-fine cost."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deeplab_core.crf import cache as crf_cache, evaluator, search
from deeplab_core.engine import probability_cache
from deeplab_core.engine.protocol import InferenceProtocol
from deeplab_core.crf.densecrf import CRFParams, dense_crf
from deeplab_core.crf.plots import plot_heatmaps, plot_search_trace
from deeplab_core.metrics import confusion_matrix, summarize
from tests.crf_fixtures import make_synthetic_cache, synthetic_item

NUM_CLASSES = 4
SMALL_GRID = dict(w1_grid=(3.0, 6.0), sigma_alpha_grid=(20.0, 40.0, 80.0),
                  sigma_beta_grid=(3.0, 6.0))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("crf_cache")
    return make_synthetic_cache(d, n_images=6, height=36, width=48,
                                num_classes=NUM_CLASSES, seed=1)


def configs():
    return [CRFParams(w1=w, sigma_alpha=a, sigma_beta=b, iterations=5)
            for w, a, b in [(3, 20, 3), (6, 40, 6), (4, 80, 3), (5, 20, 5)]]


def count_crf_calls(monkeypatch):
    calls = []
    real = evaluator.crf_from_unary

    def counting(image, unary, params):
        calls.append(params)
        return real(image, unary, params)

    monkeypatch.setattr(evaluator, "crf_from_unary", counting)
    return calls


def test_cache_round_trip_is_atomic(tmp_path):
    rng = np.random.default_rng(0)
    image, probs, label = synthetic_item(rng, 20, 30, 5)
    path = crf_cache.write_cache_item(tmp_path, "img_001", image, probs, label)
    assert path == tmp_path / "img_001.npz"
    assert [p.name for p in tmp_path.iterdir()] == ["img_001.npz"]  # no temporary left behind
    with np.load(path) as z:
        assert z["probs"].dtype == np.float16 and z["image"].dtype == np.uint8
        assert z["label"].dtype == np.uint8
    im2, pr2, lab2 = crf_cache.load_cache_item(path)
    np.testing.assert_array_equal(im2, image)
    np.testing.assert_array_equal(lab2, label)
    assert pr2.dtype == np.float32 and pr2.shape == probs.shape
    np.testing.assert_allclose(pr2, probs, atol=2e-3)
    np.testing.assert_allclose(pr2.sum(0), 1.0, atol=1e-5)
    dense_crf(im2, pr2, CRFParams(iterations=2))  # loaded items pass the CRF's input checks
    assert crf_cache.list_cache(tmp_path) == [path]


def test_cache_writer_rejects_bad_items(tmp_path):
    rng = np.random.default_rng(0)
    image, probs, label = synthetic_item(rng, 20, 30, 3)
    with pytest.raises(ValueError, match="image id"):
        crf_cache.write_cache_item(tmp_path, "../x", image, probs, label)
    with pytest.raises(ValueError, match="label shape"):
        crf_cache.write_cache_item(tmp_path, "a", image, probs, label[:-1])
    with pytest.raises(ValueError, match="uint8"):
        crf_cache.write_cache_item(tmp_path, "a", image.astype(np.float32), probs, label)
    assert list(tmp_path.iterdir()) == []


def test_probability_cache_is_reused_for_its_key_and_rebuilt_for_another(tmp_path):
    import torch

    from deeplab_core.engine.evaluate import predict_probs

    rng = np.random.default_rng(0)
    model = torch.nn.Conv2d(3, NUM_CLASSES, kernel_size=1)
    dataset = []
    for image_id in ("a", "b"):
        image, _, label = synthetic_item(rng, 12, 16, NUM_CLASSES)
        dataset.append({"id": image_id, "raw_image": image, "label": torch.from_numpy(label),
                        "image": torch.from_numpy(image).permute(2, 0, 1).float() / 255})
    ids = [item["id"] for item in dataset]
    root = tmp_path / "cache"
    key = {"model_md5": "m1", "cv_ids": ids, "flip": True}
    assert not crf_cache.cache_is_current(root, key, ids)
    files = probability_cache.build_probability_cache(
        model, dataset, root, key, "cpu", InferenceProtocol(scales=(1.0, 0.5), flip=True),
        progress=False)
    assert files == crf_cache.probability_cache_files(root, ids) == [root / "probs" / "a.npz",
                                                                       root / "probs" / "b.npz"]
    assert json.loads((root / "meta.json").read_text()) == {"key": key}
    image, probs, label = crf_cache.load_cache_item(files[1])
    np.testing.assert_array_equal(image, dataset[1]["raw_image"])
    np.testing.assert_array_equal(label, dataset[1]["label"].numpy())
    expected = predict_probs(model, dataset[1]["image"][None], (1.0, 0.5), True)[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=2e-3)

    (root / "results.jsonl").write_text('{"w1": 3.0}\n')  # a search journal beside the items
    assert crf_cache.cache_is_current(root, json.loads(json.dumps(key)), ids)  # same key: reuse
    assert not crf_cache.cache_is_current(root, {**key, "flip": False}, ids)
    assert not crf_cache.cache_is_current(root, key, ids + ["c"])  # an item is missing
    files[0].unlink()
    assert not crf_cache.cache_is_current(root, key, ids)

    new_key = {**key, "model_md5": "m2"}
    files = probability_cache.build_probability_cache(model, dataset[:1], root, new_key, "cpu",
                                              progress=False)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "meta.json", "probs", "probs/a.npz"]  # journal and old items wiped
    assert crf_cache.cache_is_current(root, new_key, ["a"])
    assert not crf_cache.cache_is_current(root, key, ["a"])


def test_evaluate_configs_matches_direct_computation(cache):
    cfg = configs()[:2]
    rows = evaluator.evaluate_configs(cache, cfg, NUM_CLASSES, workers=1, results_path=None,
                                      progress=False)
    for p, row in zip(cfg, rows):
        conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
        for f in cache:
            image, probs, label = crf_cache.load_cache_item(f)
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
    first = evaluator.evaluate_configs(cache, cfg[:2], NUM_CLASSES, workers=1, results_path=results,
                                       progress=False)
    assert len(calls) == 2 * len(cache)
    assert len(results.read_text().splitlines()) == 2
    # an interrupted write leaves a torn last line: it must be ignored, not crash the reader
    with open(results, "a") as f:
        f.write('{"w1": 4.0, "sigma_al')
    calls.clear()
    rows = evaluator.evaluate_configs(cache, cfg, NUM_CLASSES, workers=1, results_path=results,
                                      progress=False)
    assert {p.key() for p in calls} == {cfg[2].key(), cfg[3].key()}  # only the new configs ran
    assert len(calls) == 2 * len(cache)
    assert rows[:2] == first
    calls.clear()
    again = evaluator.evaluate_configs(cache, cfg, NUM_CLASSES, workers=1, results_path=results,
                                       progress=False)
    assert calls == [] and again == rows
    lines = [json.loads(x) for x in results.read_text().splitlines()[:2]]
    assert all("miou" in r and "pixel_acc" in r for r in lines)


def test_resume_ignores_rows_of_another_image_set(cache, tmp_path, monkeypatch):
    results = tmp_path / "r.jsonl"
    cfg = configs()[:1]
    evaluator.evaluate_configs(cache[:3], cfg, NUM_CLASSES, 1, results, progress=False)
    calls = count_crf_calls(monkeypatch)
    evaluator.evaluate_configs(cache, cfg, NUM_CLASSES, 1, results, progress=False)
    assert len(calls) == len(cache)


def test_two_workers_give_the_same_rows(cache, tmp_path):
    cfg = configs()
    one = evaluator.evaluate_configs(cache, cfg, NUM_CLASSES, workers=1,
                                     results_path=tmp_path / "one.jsonl", progress=False)
    two = evaluator.evaluate_configs(cache, cfg, NUM_CLASSES, workers=2,
                                     results_path=tmp_path / "two.jsonl", progress=False)
    assert one == two
    assert len((tmp_path / "two.jsonl").read_text().splitlines()) == len(cfg)


def test_sorted_journal_depends_on_its_rows_alone(cache, tmp_path, monkeypatch):
    """Workers finish rows in any order; the sorted journal (part of the crf_search stage's DVC
    output) is the same file whatever that order, keeps one line per row, drops torn lines, and
    still resumes."""
    cfg = configs()
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    evaluator.evaluate_configs(cache, cfg, NUM_CLASSES, workers=1, results_path=one,
                               progress=False)
    lines = one.read_text().splitlines()
    # the same rows in another arrival order, one of them twice, and a torn last line
    two.write_text("\n".join(lines[::-1] + [lines[1], '{"w1": 4.0, "sigma_al']))
    assert one.read_bytes() != two.read_bytes()
    evaluator.sort_journal(one)
    evaluator.sort_journal(two)
    assert one.read_bytes() == two.read_bytes()
    assert sorted(one.read_text().splitlines()) == sorted(lines)
    assert sorted(tmp_path.iterdir()) == [one, two]  # no temporary left behind
    calls = count_crf_calls(monkeypatch)
    again = evaluator.evaluate_configs(cache, cfg, NUM_CLASSES, workers=1, results_path=two,
                                       progress=False)
    assert calls == [] and len(again) == len(cfg)  # a sorted journal resumes like any other


def _grid_keys(iterations):
    return {CRFParams(w1=w, sigma_alpha=a, sigma_beta=b, iterations=iterations).key()
            for w in SMALL_GRID["w1_grid"] for a in SMALL_GRID["sigma_alpha_grid"]
            for b in SMALL_GRID["sigma_beta_grid"]}


def test_coarse_to_fine_stays_within_budget(cache, tmp_path):
    common = dict(w2=3.0, sigma_gamma=3.0, iterations=5, progress=False, **SMALL_GRID)
    full = search.full_grid_search(cache, NUM_CLASSES, workers=1,
                                   results_path=tmp_path / "full.jsonl", **common)
    n_grid, n = 2 * 3 * 2, len(cache)
    assert full["n_evaluated"] == n_grid and full["crf_runs"] == n_grid * n
    c2f = search.coarse_to_fine_search(cache, NUM_CLASSES, workers=2, screen_images=2,
                                       budget_fraction=0.7, results_path=tmp_path / "c2f.jsonl",
                                       **common)
    assert c2f["crf_run_budget"] == int(0.7 * n_grid * n) == 50
    assert c2f["screen_images"] == 2  # 2 x 12 screening runs fit in half the budget
    assert n_grid * 2 <= c2f["crf_runs"] <= c2f["crf_run_budget"]
    assert c2f["crf_runs"] < full["crf_runs"]
    assert c2f["baseline_miou"] == pytest.approx(full["baseline_miou"])
    assert full["best"]["miou_gt"] > full["baseline_miou_gt"]
    assert c2f["best"]["miou_gt"] > c2f["baseline_miou_gt"]
    assert all(r["n_images"] == n for r in c2f["rows"])
    assert len(c2f["screen_rows"]) == n_grid
    assert all(r["n_images"] == 2 and 0 <= r["estimate"] <= 1 for r in c2f["screen_rows"])
    assert set(c2f["best"]) >= {"w1", "sigma_alpha", "sigma_beta", "w2", "sigma_gamma",
                                "iterations", "miou", "miou_gt"}
    # a small budget: the screen shrinks to one image so that it takes at most half the budget
    # (here it cannot), and the screen and the best screened config still run
    tiny = search.coarse_to_fine_search(cache, NUM_CLASSES, screen_images=2, budget_fraction=0.1,
                                        results_path=tmp_path / "c2f.jsonl", **common)
    assert tiny["screen_images"] == 1 and len(tiny["screen_rows"]) == n_grid
    assert tiny["n_evaluated"] == 1 and tiny["crf_runs"] == n_grid * 1 + (n - 1)
    # the full grid's rows are what the heatmap plot takes
    out = plot_heatmaps(full["rows"], tmp_path / "heat.png", metric="miou_gt")
    assert out.exists() and out.stat().st_size > 1000
    trace = [{**r, "on_grid": i % 2 == 0} for i, r in enumerate(c2f["rows"])]
    out = plot_search_trace(trace, tmp_path / "trace.png", baseline=c2f["baseline_miou_gt"],
                            reference=full["best"]["miou_gt"])
    assert out.exists() and out.stat().st_size > 1000
    with pytest.raises(ValueError, match="no rows"):
        plot_search_trace([], tmp_path / "empty.png")


def test_screening_every_image_then_climbing_finds_the_full_grid_best(cache, tmp_path):
    common = dict(w2=3.0, sigma_gamma=3.0, iterations=5, progress=False, **SMALL_GRID)
    full = search.full_grid_search(cache, NUM_CLASSES, results_path=tmp_path / "r.jsonl",
                                   **common)
    exact = search.coarse_to_fine_search(cache, NUM_CLASSES, screen_images=len(cache),
                                         budget_fraction=None, fine=False, restarts=False,
                                         results_path=tmp_path / "r.jsonl", **common)
    assert exact["best"] == full["best"]
    assert exact["screen_rows"] == []  # the screen was the full grid


def test_climb_ends_on_a_grid_local_maximum_and_fine_polls_around_it(cache, tmp_path):
    common = dict(w2=3.0, sigma_gamma=3.0, iterations=5, progress=False, screen_images=2,
                  budget_fraction=None, restarts=False, **SMALL_GRID)
    coarse = search.coarse_to_fine_search(cache, NUM_CLASSES, fine=False, **common)
    scored = {(r["w1"], r["sigma_alpha"], r["sigma_beta"]): r["miou_gt"] for r in coarse["rows"]}
    b = coarse["best"]
    axes = [SMALL_GRID["w1_grid"], SMALL_GRID["sigma_alpha_grid"], SMALL_GRID["sigma_beta_grid"]]
    pos = [axes[0].index(b["w1"]), axes[1].index(b["sigma_alpha"]), axes[2].index(b["sigma_beta"])]
    for ax in range(3):
        for d in (-1, 1):
            nb = list(pos)
            nb[ax] += d
            if 0 <= nb[ax] < len(axes[ax]):
                key = tuple(axes[i][nb[i]] for i in range(3))
                assert key in scored and scored[key] <= b["miou_gt"]
    fine = search.coarse_to_fine_search(cache, NUM_CLASSES, fine=True,
                                        fine_steps=(0.5, 5.0, 0.5), **common)
    assert fine["best"]["miou_gt"] >= b["miou_gt"]
    keys = {(r["w1"], r["sigma_alpha"], r["sigma_beta"]) for r in fine["rows"]}
    for ax, step in enumerate((0.5, 5.0, 0.5)):
        for sign in (-1, 1):
            p = [b["w1"], b["sigma_alpha"], b["sigma_beta"]]
            p[ax] += sign * step
            assert tuple(p) in keys  # off-grid points, past the grid's edge included
    assert not {CRFParams.from_dict(r, ignore_extra=True).key() for r in fine["rows"]} <= \
        _grid_keys(5)


def test_difference_estimate_is_exact_on_the_whole_set():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 50, (3, 3)).astype(np.float64)
    crf = rng.integers(0, 50, (3, 3)).astype(np.float64)
    np.testing.assert_array_equal(search._clipped_estimate(base, crf, base, 1.0), crf)
    est = search._clipped_estimate(base, crf, base * 0.5, 2.0)  # subset = half of every cell
    np.testing.assert_array_equal(est, np.maximum(2 * crf, 0))
    assert (search._clipped_estimate(base, np.zeros((3, 3)), base * 10, 5.0) == 0).all()


def test_miou_gt_leaves_out_classes_without_ground_truth():
    conf = np.array([[50, 0, 0], [10, 30, 0], [0, 0, 0]])  # class 2: no ground truth, no pred
    assert evaluator.miou_gt(conf) == pytest.approx(summarize(conf)["miou"])
    assert evaluator.miou_gt(conf) == pytest.approx((50 / 60 + 30 / 40) / 2)
    conf_fp = conf.copy()
    conf_fp[0, 2] = 1  # one pixel predicted as class 2, which has no ground truth
    assert summarize(conf_fp)["miou"] == pytest.approx((50 / 61 + 30 / 40 + 0) / 3)
    assert evaluator.miou_gt(conf_fp) == pytest.approx((50 / 61 + 30 / 40) / 2)
    assert evaluator.miou_gt(conf_fp, classes=np.array([True, False, False])) == pytest.approx(50 / 61)
    assert evaluator.miou_gt(np.zeros((3, 3))) == 0.0


def test_coarse_to_fine_resumes_without_recomputing(cache, tmp_path, monkeypatch):
    common = dict(w2=3.0, sigma_gamma=3.0, iterations=3, progress=False, screen_images=2,
                  budget_fraction=0.6, workers=1, fine=True, **SMALL_GRID)
    results = tmp_path / "c2f.jsonl"
    first = search.coarse_to_fine_search(cache, NUM_CLASSES, results_path=results, **common)
    calls = count_crf_calls(monkeypatch)
    second = search.coarse_to_fine_search(cache, NUM_CLASSES, results_path=results, **common)
    assert calls == []
    assert second["best"] == first["best"] and second["crf_runs"] == first["crf_runs"]
    assert second["rows"] == first["rows"]


def test_search_arguments_are_checked(cache):
    with pytest.raises(ValueError, match="budget_fraction"):
        search.coarse_to_fine_search(cache, NUM_CLASSES, budget_fraction=0, progress=False)
    with pytest.raises(ValueError, match="screen_images"):
        search.coarse_to_fine_search(cache, NUM_CLASSES, screen_images=0, progress=False)
    with pytest.raises(ValueError, match="objective"):
        search.full_grid_search(cache, NUM_CLASSES, objective="accuracy", progress=False)
    with pytest.raises(ValueError, match="fine_steps"):
        search.coarse_to_fine_search(cache, NUM_CLASSES, fine_steps=(0.5, -1, 1), progress=False)
    with pytest.raises(ValueError, match="workers"):
        evaluator.evaluate_configs(cache, configs(), NUM_CLASSES, workers=0, progress=False)
    with pytest.raises(ValueError, match="no cache files"):
        evaluator.evaluate_configs([], configs(), NUM_CLASSES, progress=False)
    with pytest.raises(ValueError, match="classes"):
        evaluator.evaluate_configs(cache, configs(), NUM_CLASSES + 1, workers=2, progress=False)


def test_duplicate_configs_run_once(cache, tmp_path, monkeypatch):
    calls = count_crf_calls(monkeypatch)
    cfg = configs()[:1] * 3
    rows = evaluator.evaluate_configs(cache, cfg, NUM_CLASSES, 1, tmp_path / "r.jsonl", progress=False)
    assert len(calls) == len(cache) and rows[0] == rows[1] == rows[2]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1


def test_a_crf_that_hurts_on_cv_is_not_chosen(tmp_path):
    """Probabilities whose argmax is already the label, on images whose colours say nothing
    (every class the same colour): the CRF only smooths, so it can only lose against no CRF on
    the CV images. The search keeps the no-CRF outcome, and the stage's protocol has no CRF."""
    from pipelines.stages.crf_search import baseline_row, best_params_record, write_table
    from pipelines.stages.eval_data import stage_protocol
    from pipelines.common import get_params

    rng = np.random.default_rng(3)
    files = []
    for i in range(3):
        image, _, label = synthetic_item(rng, 48, 64, num_classes=4, contrast=0.0)
        label[label == 255] = 0
        probs = np.full((4, 48, 64), 0.1, np.float32)
        np.put_along_axis(probs, label[None].astype(np.int64), 0.7, axis=0)
        files.append(crf_cache.write_cache_item(tmp_path / "probs", f"i{i}", image, probs, label))
    result = search.full_grid_search(files, 4, w1_grid=(5.0, 10.0), sigma_alpha_grid=(60.0,),
                                     sigma_beta_grid=(5.0,), iterations=5, progress=False)
    assert result["baseline_miou_gt"] == 1.0 and result["best"]["miou_gt"] < 1.0
    decision = search.crf_decision(result)
    assert decision["crf_chosen"] is False and decision["cv_gain"] < 0
    assert decision["reason"].startswith("no CRF: the best CRF did not beat the network alone "
                                         "on the 3 CV images")
    write_table(tmp_path / "table.csv", result["rows"], [], baseline_row(result), "miou_gt")
    first = (tmp_path / "table.csv").read_text().splitlines()[1]
    assert first.startswith("none,")  # the no-CRF outcome ranks first
    record = best_params_record(result, CRFParams.from_row(result["best"]).to_dict(),
                                ["i0", "i1", "i2"], type("Cfg", (), {"strategy": "full"}))
    best_file = tmp_path / "best_params.json"
    best_file.write_text(json.dumps(record))
    protocol, searched, why = stage_protocol(get_params(), best_file)
    assert protocol.crf is None and searched == CRFParams.from_row(result["best"])
    assert why["crf_chosen"] is False
    # the same file with the decision flipped: the protocol applies the searched CRF
    best_file.write_text(json.dumps({**record, "crf_chosen": True}))
    assert stage_protocol(get_params(), best_file)[0].crf == searched
