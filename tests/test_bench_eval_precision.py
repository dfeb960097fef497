"""benchmarks/bench_eval_precision.py: its comparison of evaluations at float32 and lower
precisions (deeplab_core's evaluate on real list-file images) and the deltas it reports."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_eval_precision as bep  # noqa: E402

from tests.conftest import TINY_NUM_CLASSES  # noqa: E402


def _report(miou: float, iou: dict) -> dict:
    return {"miou": miou, "per_class_iou": iou}


def test_score_deltas_in_points_as_served_and_without_the_crf():
    ref = {"plain": _report(0.40, {"a": 0.5, "b": 0.3, "c": None}),
           "crf": _report(0.50, {"a": 0.6, "b": 0.4, "c": None})}
    low = {"plain": _report(0.41, {"a": 0.5, "b": 0.32, "c": 0.1}),
           "crf": _report(0.49, {"a": 0.57, "b": 0.4, "c": None})}
    results = {"float32": {"result": ref, "label_change": 0.0, "max_prob_delta": 0.0},
               "bfloat16": {"result": low, "label_change": 0.002, "max_prob_delta": 0.03}}
    served = bep.score_deltas(results, applied=True)
    assert served["float32"]["delta_miou"] == 0 and served["float32"]["max_class"] is None
    s = served["bfloat16"]
    assert s["miou"] == pytest.approx(49.0) and s["miou_no_crf"] == pytest.approx(41.0)
    assert s["delta_miou"] == pytest.approx(-1.0)
    assert s["delta_miou_no_crf"] == pytest.approx(1.0)
    assert s["max_class_delta"] == pytest.approx(3.0) and s["max_class"] == "a"
    assert (s["label_change"], s["max_prob_delta"]) == (0.002, 0.03)
    plain = bep.score_deltas(results, applied=False)["bfloat16"]
    # served = the network alone; class c (undefined at float32) is skipped
    assert plain["delta_miou"] == pytest.approx(1.0)
    assert plain["max_class_delta"] == pytest.approx(2.0) and plain["max_class"] == "b"
    line = bep.format_row("bfloat16", s, 0.8)
    assert "mIoU  49.00 % (-1.000 pt)" in line and "max |ΔIoU| 3.000 pt (a)" in line
    assert "labels changed 0.2000 %" in line and line.endswith("time x0.80")


def test_compare_precisions_runs_the_library_evaluation_at_each_precision(tiny_list):
    from deeplab_core.data.dataset import SegmentationListDataset
    from deeplab_core.data.transforms import eval_transform
    from deeplab_core.engine.evaluate import evaluate
    from deeplab_core.engine.protocol import InferenceProtocol
    from deeplab_core.models import build_model

    torch.manual_seed(0)
    model = build_model("light", num_classes=TINY_NUM_CLASSES)
    data = SegmentationListDataset(tiny_list, transform=eval_transform())
    seen = []

    def run(prec, on_prediction):
        seen.append(prec)
        return evaluate(model, data, TINY_NUM_CLASSES, torch.device("cpu"),
                        protocol=InferenceProtocol(precision=prec),
                        on_prediction=on_prediction, progress=False)

    out = bep.compare_precisions(run, ["bfloat16"])
    assert seen == ["float32", "bfloat16"]
    assert out["float32"]["label_change"] == 0 and out["float32"]["max_prob_delta"] == 0
    low = out["bfloat16"]
    # bfloat16 has an 8-bit mantissa: the probabilities move, but by far less than 1
    assert 0 < low["max_prob_delta"] < 0.5
    assert 0 <= low["label_change"] < 0.5
    again = bep.compare_precisions(run, ["bfloat16"])["bfloat16"]
    assert again["max_prob_delta"] == low["max_prob_delta"]
    # a repeated comparison gives the same confusion matrices (the figures are reproducible)
    assert np.array_equal(again["result"]["accumulators"]["plain"].conf,
                          low["result"]["accumulators"]["plain"].conf)
    assert low["result"]["accumulators"]["plain"].conf.sum() == sum(
        data[i]["label"].numel() for i in range(len(data)))


def test_lower_precisions_of_the_cpu_and_the_cpu_name():
    assert bep.lower_precisions(torch.device("cpu")) == ["bfloat16"]
    name = bep.cpu_name()
    assert name and ("bf16" in name or "no bf16 instructions" in name)


def test_a_checkout_without_pipeline_outputs_is_named_and_exits_2(tmp_path, capsys):
    assert bep.main(["--root", str(tmp_path)]) == 2
    assert f"{tmp_path / 'params.yaml'} not found" in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    assert bep.main(["--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data' / 'models' / 'finetune' / 'model.pt'} not found" in err
    assert "run the pipeline in" in err


@pytest.mark.parametrize("argv,message", [
    (["--images", "0"], "--images 0: expected an integer >= 1"),
    (["--repeats", "-1"], "--repeats -1: expected an integer >= 1"),
    (["--precisions", "float8"], "invalid choice: 'float8'"),
])
def test_bad_arguments_exit_2_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bep.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
