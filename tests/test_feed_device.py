"""What keeps a device fed, and what the CPU default keeps as it was: DataLoader workers sized by
"auto", pinned memory and prefetching on CUDA, evaluation read ahead by workers, autocast in
evaluation, CPU pool sizes configurable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_NUM_CLASSES
from deeplab_core.config import ConfigError, parse_params
from deeplab_core.data.dataset import SegmentationListDataset
from deeplab_core.data.transforms import eval_transform
from deeplab_core.engine.evaluate import evaluate
from deeplab_core.models import build_model
from deeplab_core.runtime import eval_autocast, loader_options, loader_workers, pool_workers

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_loader_workers_keep_the_cpu_as_it_was_and_size_cuda_to_the_machine(monkeypatch):
    assert loader_workers("auto", CPU) == 0
    assert loader_workers(3, CPU) == 3 and loader_workers(0, CUDA) == 0
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_workers("auto", CUDA) == 8
    assert loader_workers("auto", CUDA, processes=4) == 3
    assert loader_workers("auto", CUDA, processes=8) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert loader_workers("auto", CUDA, processes=8) == 1  # never none on a GPU
    assert pool_workers("auto") == 1 and pool_workers(5) == 5


def test_loader_options_pin_and_prefetch_only_where_they_help():
    assert loader_options(0, CPU) == {"num_workers": 0, "pin_memory": False}
    assert loader_options(0, CUDA) == {"num_workers": 0, "pin_memory": True}
    assert loader_options(4, CUDA) == {"num_workers": 4, "pin_memory": True,
                                       "persistent_workers": True, "prefetch_factor": 4}


def test_worker_settings_take_auto_or_a_count_and_name_a_bad_value():
    p = parse_params({"base": {"num_workers": "auto"}, "evaluate": {"crf_workers": "auto"},
                      "crf_search": {"workers": "auto"}, "prepare": {"workers": 3}})
    assert (p.base.num_workers, p.evaluate.crf_workers, p.crf_search.workers,
            p.prepare.workers) == ("auto", "auto", "auto", 3)
    assert parse_params({}).base.num_workers == "auto" and parse_params({}).evaluate.amp is False
    with pytest.raises(ConfigError, match=r"base\.num_workers = 'many': Input should be"):
        parse_params({"base": {"num_workers": "many"}})
    with pytest.raises(ConfigError, match=r"evaluate\.crf_workers = 0: Input should be greater"):
        parse_params({"evaluate": {"crf_workers": 0}})


def test_eval_autocast_dtype():
    assert eval_autocast(False, CPU) is None
    assert eval_autocast(True, CPU) == torch.bfloat16


def _eval(list_file, **kw):
    torch.manual_seed(0)
    model = build_model("micro", num_classes=TINY_NUM_CLASSES).eval()
    ds = SegmentationListDataset(list_file, transform=eval_transform())
    return evaluate(model, ds, TINY_NUM_CLASSES, CPU, trimap_widths=(1, 3), progress=False, **kw)


def test_evaluation_read_ahead_by_workers_gives_the_same_confusion(tiny_list):
    ref = _eval(tiny_list)
    ahead = _eval(tiny_list, num_workers=2)
    for key in ("plain",):
        a, b = ref["accumulators"][key], ahead["accumulators"][key]
        assert np.array_equal(a.conf, b.conf) and np.array_equal(a.trimap, b.trimap)
    assert ahead["n_images"] == ref["n_images"] and a.conf.sum() > 0


def test_evaluation_autocast_runs_in_bf16_and_stays_close(tiny_list):
    ref = _eval(tiny_list)
    bf16 = _eval(tiny_list, autocast=torch.bfloat16)
    a, b = ref["accumulators"]["plain"].conf, bf16["accumulators"]["plain"].conf
    assert a.sum() == b.sum()
    # the same pixels, nearly the same predictions: bf16 moves only near-ties
    assert np.trace(b) == pytest.approx(np.trace(a), rel=0.05)
