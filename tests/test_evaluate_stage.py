"""The evaluate and crf_search stages' own pieces: the rows and headline of the full metric set,
the report printed from them, the CRF search's probability cache made with evaluate's inference
setting, and what `dvc plots show` draws."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_NUM_CLASSES, confident_micro_model, scratch_project
from deeplab_core.engine.checkpoint import model_spec, save_checkpoint
from deeplab_core.engine.evaluate import EvalAccumulator
from deeplab_core.engine.protocol import InferenceProtocol
from pipelines.stages import evaluate as ev
from pipelines.tools.report import format_report

NAMES = ("bg", "a", "b")


def _reports():
    """Plain and CRF reports of hand-made predictions (the CRF one fixes one pixel)."""
    label = np.array([[0, 0, 1, 1], [0, 2, 2, 1]], dtype=np.uint8)
    plain_pred = np.array([[0, 1, 1, 1], [0, 2, 0, 1]], dtype=np.uint8)
    crf_pred = np.array([[0, 0, 1, 1], [0, 2, 0, 1]], dtype=np.uint8)
    out = []
    for pred in (plain_pred, crf_pred):
        acc = EvalAccumulator(3, (1, 2))
        acc.add(pred, label)
        out.append(acc.report(NAMES))
    return out


def test_headline_rows_and_trimap_carry_every_metric_before_and_after_crf():
    plain, crf = _reports()
    h = ev.headline(plain, crf)
    assert h["pixel_acc"] == pytest.approx(6 / 8) and h["pixel_acc_crf"] == pytest.approx(7 / 8)
    assert h["crf_gain"] == pytest.approx(h["miou_crf"] - h["miou"])
    assert {f"{k}{s}" for k in ev.HEADLINE_KEYS for s in ("", "_no_crf", "_crf")} <= set(h)
    assert set(ev.headline(plain, None)) == ({f"{k}{s}" for k in ev.HEADLINE_KEYS
                                              for s in ("", "_no_crf")} | {"crf_applied"})
    # the headline is the model as served: the CRF's numbers exactly when it is applied
    served = ev.headline(plain, crf, applied=True)
    assert served["crf_applied"] is True and served["miou"] == served["miou_crf"]
    assert served["miou_no_crf"] == h["miou"] == h["miou_no_crf"] and h["crf_applied"] is False
    with pytest.raises(ValueError, match="no CRF report"):
        ev.headline(plain, None, applied=True)
    assert ev.per_class_rows(plain, crf, NAMES, applied=True)[0]["recall"] == 1.0
    rows = ev.per_class_rows(plain, crf, NAMES)
    assert [r["class"] for r in rows] == list(NAMES)
    # class bg: 3 gt pixels; plain predicts bg at 3 places (2 right), CRF at 4 (3 right)
    assert rows[0]["recall"] == pytest.approx(2 / 3) and rows[0]["recall_crf"] == 1.0
    assert rows[0]["precision"] == pytest.approx(2 / 3)
    assert rows[0]["precision_crf"] == pytest.approx(3 / 4)
    trimap = ev.trimap_rows(plain, crf)
    assert [r["band_width"] for r in trimap] == [1, 2]
    assert {"miou", "miou_crf", "pixel_acc", "pixel_acc_crf", "mean_pixel_acc"} <= set(trimap[0])
    assert "miou_crf" not in ev.trimap_rows(plain, None)[0]


def test_report_prints_the_metric_set_per_class_and_trimap(tmp_path):
    plain, crf = _reports()
    d = tmp_path / "data"
    (d / "metrics").mkdir(parents=True)
    (d / "eval").mkdir()
    (d / "plots").mkdir()
    settings = {"scales": [1.0], "flip": False, "output_stride": 8}
    metrics = {**ev.headline(plain, crf), "eval_set": "val_holdout", "n_images": 1,
               "eval_settings": settings, "val_full": ev.headline(plain, crf),
               "crf_cv_subset": ev.headline(plain, None)}
    (d / "metrics" / "evaluate.json").write_text(json.dumps(metrics))
    (d / "eval" / "per_class.json").write_text(json.dumps(ev.per_class_rows(plain, crf, NAMES)))
    (d / "plots" / "trimap.json").write_text(json.dumps(ev.trimap_rows(plain, crf)))
    text = format_report(d)
    assert "eval output stride 8" in text
    acc_line = next(line for line in text.splitlines() if line.startswith("pixel accuracy"))
    assert acc_line.split()[-2:] == ["75.00", "87.50"]
    h = metrics
    f1_line = next(line for line in text.splitlines() if line.startswith("mean F1"))
    assert f1_line.split()[-2:] == [f"{100 * h['mean_f1']:.2f}", f"{100 * h['mean_f1_crf']:.2f}"]
    bg = next(line for line in text.splitlines() if line.strip().startswith("bg"))
    assert "66.67|100.00" in bg  # recall before|after
    band = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in band] == [1, 2]


@pytest.fixture
def micro_checkpoint(tmp_path) -> Path:
    path = tmp_path / "model.pt"
    save_checkpoint(path, confident_micro_model(TINY_NUM_CLASSES),
                    model_spec("micro", TINY_NUM_CLASSES, 16))
    return path


def test_crf_cache_holds_probabilities_of_evaluates_inference_setting(tiny_list, tmp_path,
                                                                      micro_checkpoint):
    from deeplab_core.engine.checkpoint import load_checkpoint
    from deeplab_core.engine.evaluate import predict_probs
    from pipelines.stages.crf_search import build_cache
    from pipelines.stages.eval_data import eval_dataset

    ids = ["s1", "s3"]
    cache = tmp_path / "cache"
    setting = InferenceProtocol(scales=(0.75, 1.25), flip=True, output_stride=8)
    files = build_cache.fn(micro_checkpoint, tiny_list, ids, cache, "cpu", setting)
    model, _ = load_checkpoint(micro_checkpoint)
    from deeplab_core.models import set_output_stride
    set_output_stride(model, 8)
    item = eval_dataset(tiny_list, ids)[0]
    expected = predict_probs(model, item["image"].unsqueeze(0), (0.75, 1.25), True)[0].numpy()
    cached = np.load(files[0])["probs"].astype(np.float32)
    np.testing.assert_allclose(cached, expected, atol=2e-3)
    plain = predict_probs(model, item["image"].unsqueeze(0))[0].numpy()
    assert np.abs(cached - plain).max() > 1e-2  # the setting made a difference
    stamp = files[0].stat().st_mtime_ns
    assert build_cache.fn(micro_checkpoint, tiny_list, ids, cache, "cpu", setting) == files
    assert files[0].stat().st_mtime_ns == stamp  # same setting: reused
    build_cache.fn(micro_checkpoint, tiny_list, ids, cache, "cpu",
                   setting.with_overrides(flip=False))
    assert json.loads((cache / "meta.json").read_text())["key"]["protocol"]["flip"] is False


def test_only_crf_search_evaluate_and_register_depend_on_the_inference_params():
    import yaml

    from conftest import REPO

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    readers = {name for name, st in stages.items()
               if any(p == "inference" or p.startswith("inference.") for p in st.get("params", []))}
    assert readers == {"crf_search", "evaluate", "register"}


def test_dvc_plots_are_static_images_drawn_offline(tmp_path):
    """`dvc plots show` on the project's dvc.yaml: each plot once, every one an image (drawn
    without the vega scripts a browser would fetch from the internet): the two loss curves and
    the trimap figure; no trimap-vs-step chart, no loss data drawn a second time."""
    from deeplab_core import viz

    root = scratch_project(tmp_path / "p")
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, check=True)
    plots = root / "data" / "plots"
    plots.mkdir(parents=True)
    history = [{"iteration": i, "loss": 1.0 / (i + 1), "lr": 0.01 * (1 - i / 4)}
               for i in range(1, 4)]
    for stage in ("pretrain", "finetune"):
        (plots / f"{stage}_loss.json").write_text(json.dumps(history))
        viz.save_loss_curve(history, plots / f"{stage}_loss.png", title=stage)
    (plots / "trimap.json").write_text(json.dumps([{"band_width": 1, "miou": 0.5}]))
    viz.save_trimap_plot([1, 2], {"mean IoU (%)": {"DeepLab": [0.4, 0.5]}}, plots / "trimap.png")
    out = subprocess.run([dvc, "plots", "show", "--json"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    shown = {k: [p["type"] for p in v] for k, v in json.loads(out)["data"].items()}
    assert shown == {"data/plots/pretrain_loss.png": ["image"],
                     "data/plots/finetune_loss.png": ["image"],
                     "data/plots/trimap.png": ["image"]}
    html = subprocess.run([dvc, "plots", "show", "-o", str(tmp_path / "html")], cwd=root,
                          check=True, capture_output=True, text=True)
    page = (tmp_path / "html" / "index.html").read_text()
    assert "vega" not in page.lower(), html.stdout  # nothing the page must fetch
    assert page.count("<img") == 3
