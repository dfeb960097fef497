"""Training loop: poly learning rate, loss, convergence, checkpoint resumption, NaN detection."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from conftest import TINY_NUM_CLASSES
from deeplab_core.data.dataset import SegmentationListDataset
from deeplab_core.data.transforms import train_transform
from deeplab_core.config import TrainConfig
from deeplab_core.engine.recipe import (loss_sum, lr_at, make_optimizer, poly_lr, scheduled_lr,
                                        segmentation_loss, set_group_lrs)
from deeplab_core.engine.train import run_fingerprint, train
from deeplab_core.runtime import resolve_device
from deeplab_core.models import build_model

CPU = torch.device("cpu")


class Interrupt(Exception):
    pass


def _micro(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("micro", num_classes=TINY_NUM_CLASSES)


def _dataset(list_file) -> SegmentationListDataset:
    return SegmentationListDataset(list_file, transform=train_transform(32, (0.75, 1.25)))


SEED = 3


def _settings(**kw) -> TrainConfig:
    base = dict(iterations=12, batch_size=4, lr=0.02, log_every=1, checkpoint_every=8)
    base.update(kw)
    return TrainConfig(**base)


def _fit(model, ds, cfg, **kw):
    """train() with the tests' seed, no progress bar."""
    kw.setdefault("seed", SEED)
    return train(model, ds, cfg, CPU, progress=False, **kw)


def _interrupt_at(step: int):
    def log(s: int, values: dict) -> None:
        if s == step:
            raise Interrupt(f"stopped at {s}")
    return log


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6), k


def _run_interrupted_then_resumed(list_file, tmp_path, settings):
    """Uninterrupted reference run, then a run stopped after the first checkpoint and resumed."""
    ref = _micro()
    ref_res = _fit(ref, _dataset(list_file), settings)
    ckpt = tmp_path / "resume.pt"
    with pytest.raises(Interrupt):
        _fit(_micro(), _dataset(list_file), settings, checkpoint_path=ckpt,
             log_metrics=_interrupt_at(settings.checkpoint_every + 1))
    state = torch.load(ckpt, weights_only=False)
    assert state["iteration"] == settings.checkpoint_every
    assert state["data_position"]["samples_seen"] == settings.checkpoint_every * settings.batch_size
    assert "scaler" in state and len(state["torch_rng"]) == 1
    resumed = _micro()
    res = _fit(resumed, _dataset(list_file), settings, checkpoint_path=ckpt)
    return ref, ref_res, resumed, res, ckpt


# ----------------------------------------------------------------------------- small pieces
def test_poly_lr_values():
    assert poly_lr(0.01, 0, 100, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0
    assert poly_lr(0.01, 150, 100, 0.9) == 0.0  # past the end: clamped
    assert poly_lr(0.2, 25, 100, 1.0) == pytest.approx(0.15)  # power 1: linear
    assert poly_lr(0.2, 99, 100, 0.0) == pytest.approx(0.2)   # power 0: constant


def test_segmentation_loss_ignores_255_and_sums_lists():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0, :] = 255
    la = segmentation_loss(a, target)
    keep = target != 255
    by_hand = torch.nn.functional.cross_entropy(a.permute(0, 2, 3, 1)[keep], target[keep])
    assert la.item() == pytest.approx(by_hand.item(), rel=1e-5)
    lb = segmentation_loss(b, target)
    assert segmentation_loss([a, b], target).item() == pytest.approx((la + lb).item(), rel=1e-6)
    assert segmentation_loss((a, b, a), target).item() == pytest.approx((2 * la + lb).item(),
                                                                        rel=1e-6)


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="cuda"):
            resolve_device("cuda")


def _fp(seed=SEED, run_key="", **kw) -> str:
    return run_fingerprint(_settings(**kw), seed, run_key)


def test_fingerprint_depends_on_run_defining_settings_only():
    for change in ({"lr": 0.03}, {"run_key": "other-data"}, {"seed": 4}, {"optimizer": "adamw"},
                   {"warmup_iters": 3}, {"batch_norm": "frozen"}, {"head_lr_mult": 10.0},
                   {"lr_policy": "step"}, {"amp": True}, {"loss_at": "score_map"}):
        assert _fp() != _fp(**change), change
    # logging / checkpoint cadence do not change what is computed
    assert _fp() == _fp(log_every=5, checkpoint_every=3)


# ----------------------------------------------------------------------------- training
def test_training_lowers_the_loss(tiny_list):
    model = _micro()
    settings = _settings(iterations=30, lr=0.2, log_every=5, checkpoint_every=100)
    logged = []
    res = _fit(model, _dataset(tiny_list), settings, log_metrics=lambda s, v: logged.append((s, v)))
    assert [r["iteration"] for r in res.history] == [5, 10, 15, 20, 25, 30]
    assert [s for s, _ in logged] == [5, 10, 15, 20, 25, 30]
    assert logged[0][1]["train_loss"] == pytest.approx(res.history[0]["loss"])
    first, last = res.history[0]["loss"], res.history[-1]["loss"]
    assert last < 0.75 * first, res.history
    assert res.final_loss == last
    assert res.resumed_from == 0
    # the learning rate follows the poly schedule
    assert res.history[1]["lr"] == pytest.approx(poly_lr(0.2, 9, 30, 0.9))
    assert not model.training  # returned in eval mode


def test_same_seed_same_weights(tiny_list):
    a, b = _micro(), _micro()
    _fit(a, _dataset(tiny_list), _settings(iterations=4))
    _fit(b, _dataset(tiny_list), _settings(iterations=4))
    _assert_same_weights(a, b)


def test_resume_after_interruption_matches_uninterrupted_run(tiny_list, tmp_path):
    # batch_size * checkpoint_every = 32 (see test_resume_off_sampler_chunk below)
    settings = _settings(iterations=12, batch_size=4, checkpoint_every=8)
    ref, ref_res, resumed, res, ckpt = _run_interrupted_then_resumed(tiny_list, tmp_path,
                                                                      settings)
    assert res.resumed_from == 8
    assert [r["iteration"] for r in res.history] == list(range(1, 13))
    assert [r["loss"] for r in res.history] == pytest.approx([r["loss"] for r in ref_res.history],
                                                             rel=1e-5)
    _assert_same_weights(ref, resumed)
    final = torch.load(ckpt, weights_only=False)
    assert final["complete"] is True and final["iteration"] == 12
    assert "model" not in final
    assert [p.name for p in tmp_path.iterdir()] == ["resume.pt"]  # no temporary left behind


def test_finished_checkpoint_starts_afresh(tiny_list, tmp_path):
    settings = _settings(iterations=4, checkpoint_every=2)
    ckpt = tmp_path / "done.pt"
    first = _micro()
    _fit(first, _dataset(tiny_list), settings, checkpoint_path=ckpt)
    again = _micro()
    res = _fit(again, _dataset(tiny_list), settings, checkpoint_path=ckpt)
    assert res.resumed_from == 0
    assert len(res.history) == 4
    _assert_same_weights(first, again)


@pytest.mark.parametrize("change", [{"lr": 0.03}, {"run_key": "other-data"}, {"seed": 9}])
def test_checkpoint_from_other_settings_is_not_resumed(tiny_list, tmp_path, change):
    old = _settings(iterations=8, checkpoint_every=4)
    ckpt = tmp_path / "other.pt"
    with pytest.raises(Interrupt):
        _fit(_micro(), _dataset(tiny_list), old, checkpoint_path=ckpt,
             log_metrics=_interrupt_at(5))
    assert torch.load(ckpt, weights_only=False)["iteration"] == 4
    run = {"seed": change.get("seed", SEED), "run_key": change.get("run_key", "")}
    new = old.model_copy(update={k: v for k, v in change.items() if k not in run})
    fresh = _micro()
    res = _fit(fresh, _dataset(tiny_list), new, checkpoint_path=ckpt, **run)
    assert res.resumed_from == 0
    assert [r["iteration"] for r in res.history] == list(range(1, 9))
    ref = _micro()
    _fit(ref, _dataset(tiny_list), new, **run)
    _assert_same_weights(ref, fresh)
    assert torch.load(ckpt, weights_only=False)["fingerprint"] == run_fingerprint(
        new, run["seed"], run["run_key"])


def test_resume_off_sampler_chunk_matches_uninterrupted_run(tiny_list, tmp_path):
    settings = _settings(iterations=6, batch_size=4, checkpoint_every=3)
    ref, _, resumed, res, _ = _run_interrupted_then_resumed(tiny_list, tmp_path, settings)
    assert res.resumed_from == 3
    _assert_same_weights(ref, resumed)


class _NaNAfter(Dataset):
    """Wraps a dataset; items from call number `after` on carry a NaN image."""

    def __init__(self, base: Dataset, after: int):
        self.base, self.after, self.calls = base, after, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        if self.calls >= self.after:
            item["image"] = torch.full_like(item["image"], math.nan)
        self.calls += 1
        return item


def test_nan_loss_raises_naming_the_iteration(tiny_list):
    ds = _NaNAfter(_dataset(tiny_list), after=3 * 4)  # batch size 4: iteration 3 is the first bad
    with pytest.raises(FloatingPointError, match=r"loss became nan at iteration 3 \(lr"):
        _fit(_micro(), ds, _settings(iterations=10))


# ----------------------------------------------------------------------------- optimizer, warmup
def test_scheduled_lr_warms_up_linearly_then_follows_poly():
    assert [scheduled_lr(0.1, it, 100, 0.9, warmup=4) for it in range(4)] == pytest.approx(
        [0.025, 0.05, 0.075, 0.1])
    for it in (4, 50, 99):
        assert scheduled_lr(0.1, it, 100, 0.9, warmup=4) == pytest.approx(poly_lr(0.1, it, 100, 0.9))
    assert [scheduled_lr(0.1, it, 10, 0.9) for it in range(10)] == pytest.approx(
        [poly_lr(0.1, it, 10, 0.9) for it in range(10)])


def test_optimizer_choice_defaults_to_sgd():
    model = torch.nn.Conv2d(2, 3, 1)
    assert TrainConfig(iterations=1, batch_size=2, lr=0.1).optimizer == "sgd"
    sgd = make_optimizer(model, _settings())
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    adamw = make_optimizer(model, _settings(optimizer="adamw", momentum=0.8, weight_decay=0.01))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.999)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.01]
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(model, _settings().model_copy(update={"optimizer": "lbfgs"}))


def test_adamw_with_warmup_trains_and_resumes(tiny_list, tmp_path):
    settings = _settings(iterations=12, batch_size=4, checkpoint_every=8, optimizer="adamw",
                         lr=0.005, warmup_iters=3)
    ref, ref_res, resumed, res, _ = _run_interrupted_then_resumed(tiny_list, tmp_path, settings)
    assert res.resumed_from == 8
    assert res.history[0]["lr"] == pytest.approx(0.005 / 3)
    assert res.history[2]["lr"] == pytest.approx(0.005)
    assert [r["loss"] for r in res.history] == pytest.approx([r["loss"] for r in ref_res.history],
                                                             rel=1e-5)
    _assert_same_weights(ref, resumed)
    assert ref_res.history[-1]["loss"] < ref_res.history[0]["loss"]


def test_empty_dataset_is_rejected():
    class Empty(Dataset):
        def __len__(self):
            return 0

    with pytest.raises(ValueError, match="training dataset is empty"):
        _fit(_micro(), Empty(), _settings())


# ----------------------------------------------------------------------------- papers' recipes
def test_step_policy_drops_by_gamma_every_step_size():
    cfg = _settings(lr=1e-3, iterations=6000, lr_policy="step", lr_step_size=2000, lr_gamma=0.1)
    got = [lr_at(cfg, it) for it in (0, 1999, 2000, 3999, 4000, 5999)]
    assert got == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    warm = cfg.model_copy(update={"warmup_iters": 4})
    assert [lr_at(warm, it) for it in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert lr_at(_settings(lr=0.01, iterations=100), 50) == pytest.approx(0.01 * 0.5 ** 0.9)


def _group_of(opt, param) -> dict:
    return next(g for g in opt.param_groups if any(p is param for p in g["params"]))


def test_param_groups_classifier_at_10x_bias_2x_no_decay_on_norm_and_bias():
    model = _micro()
    cfg = _settings(head_lr_mult=10.0, bias_lr_mult=2.0, bias_weight_decay=False,
                    norm_weight_decay=False, weight_decay=5e-4)
    opt = make_optimizer(model, cfg)
    set_group_lrs(opt, 0.001)
    cls = model.decoder.classifier
    assert _group_of(opt, cls.weight)["lr"] == pytest.approx(0.01)
    assert _group_of(opt, cls.weight)["weight_decay"] == 5e-4
    assert _group_of(opt, cls.bias)["lr"] == pytest.approx(0.02)
    assert _group_of(opt, cls.bias)["weight_decay"] == 0.0
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = next(m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d))
    assert _group_of(opt, bn.weight)["weight_decay"] == 0.0
    assert _group_of(opt, bn.weight)["lr"] == pytest.approx(0.001)
    assert (_group_of(opt, conv.weight)["lr"], _group_of(opt, conv.weight)["weight_decay"]) == (
        pytest.approx(0.001), 5e-4)  # the ASPP is outside the classifier scope
    n_opt = sum(len(g["params"]) for g in opt.param_groups)
    assert n_opt == len(list(model.parameters()))  # every parameter exactly once


def test_param_groups_head_scope_and_defaults():
    model = _micro()
    opt = make_optimizer(model, _settings(head_lr_mult=10.0, head_lr_scope="head"))
    set_group_lrs(opt, 0.1)
    conv = next(m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d))
    assert _group_of(opt, conv.weight)["lr"] == pytest.approx(1.0)
    assert _group_of(opt, next(model.backbone.parameters()))["lr"] == pytest.approx(0.1)
    plain = make_optimizer(model, _settings(weight_decay=1e-4))  # defaults: one group
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 1e-4


def test_v1_head_marks_only_fc8_as_classifier():
    from deeplab_core.models.heads import ASPPv2, V1Head

    head = V1Head(8, 3, channels=16)
    assert [n for n, m in head.named_modules() if getattr(m, "is_classifier", False)] == ["fc8"]
    aspp = ASPPv2(8, 3, rates=(2, 4), hidden=None)
    assert [n for n, m in aspp.named_modules() if getattr(m, "is_classifier", False)] == [
        "branches.0.conv", "branches.1.conv"]


def test_frozen_batch_norm_keeps_statistics_and_affine(tiny_list):
    model = _micro()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.weight.detach().clone()) for m in bns]
    _fit(model, _dataset(tiny_list), _settings(iterations=3, batch_norm="frozen"))
    for m, (mean, weight) in zip(bns, before):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.weight.detach(), weight)
        assert m.weight.requires_grad  # thawed again after training
    tuned = _micro()
    _fit(tuned, _dataset(tiny_list), _settings(iterations=3, bn_momentum=0.5))
    tuned_bns = [m for m in tuned.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert tuned_bns[0].momentum == 0.5
    assert not torch.equal(tuned_bns[0].running_mean, before[0][0])


def test_accumulated_micro_batches_take_the_same_steps(tiny_list):
    cfg = _settings(iterations=4, batch_size=4, batch_norm="frozen")
    a, b = _micro(), _micro()
    ra = _fit(a, _dataset(tiny_list), cfg)
    rb = _fit(b, _dataset(tiny_list), cfg.model_copy(update={"accumulate_steps": 2}))
    assert [r["loss"] for r in rb.history] == pytest.approx([r["loss"] for r in ra.history],
                                                            rel=1e-5)
    _assert_same_weights(a, b)
    # uneven micro-batches (2 + 1 + 1) take the same steps too
    c = _micro()
    rc = _fit(c, _dataset(tiny_list), cfg.model_copy(update={"accumulate_steps": 3}))
    assert [r["loss"] for r in rc.history] == pytest.approx([r["loss"] for r in ra.history],
                                                            rel=1e-5)
    _assert_same_weights(a, c)
    with pytest.raises(ValueError, match="batch_size 4 is smaller than accumulate_steps 5"):
        TrainConfig(iterations=1, batch_size=4, accumulate_steps=5)


def test_bf16_autocast_on_cpu_and_channels_last_train(tiny_list):
    cfg = _settings(iterations=3)
    ref = _fit(_micro(), _dataset(tiny_list), cfg)
    bf16 = _fit(_micro(), _dataset(tiny_list), cfg.model_copy(update={"amp": True}))
    assert bf16.history[0]["loss"] == pytest.approx(ref.history[0]["loss"], rel=0.02)
    assert bf16.history[0]["loss"] != ref.history[0]["loss"]  # it did run in bf16
    nhwc = _micro()
    res = _fit(nhwc, _dataset(tiny_list), cfg.model_copy(update={"channels_last": True}))
    assert [r["loss"] for r in res.history] == pytest.approx(
        [r["loss"] for r in ref.history], rel=1e-4)
    with pytest.raises(ValueError, match="amp_dtype 'float16' needs a CUDA device"):
        _fit(_micro(), _dataset(tiny_list), cfg.model_copy(update={"amp": True,
                                                                 "amp_dtype": "float16"}))


def test_loss_at_score_map_uses_nearest_downsampled_labels(tiny_list):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 8, 10))
    target[0, :2] = 255
    total, count = loss_sum(logits, target)
    small = target[:, ::2, ::2]  # nearest at factor 2 takes the top-left pixel of each 2x2
    by_hand = torch.nn.functional.cross_entropy(logits, small, ignore_index=255, reduction="sum")
    assert total.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert count == int((small != 255).sum())
    res = _fit(_micro(), _dataset(tiny_list), _settings(iterations=2, loss_at="score_map"))
    full = _fit(_micro(), _dataset(tiny_list), _settings(iterations=2))
    assert math.isfinite(res.history[0]["loss"])
    assert res.history[0]["loss"] != pytest.approx(full.history[0]["loss"], rel=1e-6)


def test_step_batches_split_each_global_batch_among_ranks_and_micro_batches():
    from deeplab_core.engine.distributed import DistContext
    from deeplab_core.engine.train import _StepBatches

    whole = list(_StepBatches(50, 8, seed=5, start=2, stop=4))
    assert [len(b) for b in whole] == [8, 8]
    parts = {r: list(_StepBatches(50, 8, 5, 2, 4, micro=2, ctx=DistContext(r, 2)))
             for r in (0, 1)}
    for step in range(2):
        # micro-batch j of rank r holds slots (j * 2 + r) * 2 .. + 2 of the step's global batch
        got = sorted(k for r in (0, 1) for b in parts[r][2 * step:2 * step + 2] for k in b)
        assert got == sorted(whole[step])
    assert [k[2] for k in parts[1][0]] == [2, 3] and [k[2] for k in parts[1][1]] == [6, 7]
    # 6 over 2 processes x 2 micro-batches: shares 2, 2, 1, 1 covering the batch once
    uneven = {r: list(_StepBatches(50, 6, 5, 0, 1, micro=2, ctx=DistContext(r, 2)))
              for r in (0, 1)}
    assert [[k[2] for k in b] for b in uneven[0]] == [[0, 1], [4]]
    assert [[k[2] for k in b] for b in uneven[1]] == [[2, 3], [5]]
    with pytest.raises(ValueError, match="batch_size 2 is smaller than the 4 training processes"):
        _StepBatches(50, 2, 5, 0, 1, micro=1, ctx=DistContext(0, 4))


PRESET_BATCHES = sorted((Path(__file__).resolve().parents[1] / "presets").glob("*.yaml"))


@pytest.mark.parametrize("world", [1, 2, 4, 8])
@pytest.mark.parametrize("batch,accumulate", [(20, 1), (10, 2), (16, 1), (8, 1), (10, 1),
                                              (5, 2), (9, 4)])
def test_batch_shares_cover_the_global_batch_once_on_1_2_4_8_processes(world, batch, accumulate):
    from deeplab_core.engine.train import batch_shares, micro_steps

    if batch < world:
        with pytest.raises(ValueError, match=f"batch_size {batch} is smaller than the {world}"):
            batch_shares(batch, accumulate, world)
        return
    shares = batch_shares(batch, accumulate, world)
    micro = micro_steps(batch, accumulate, world)
    assert len(shares) == micro and all(len(row) == world for row in shares)
    assert micro == min(accumulate, batch // world)
    slots = sorted(s for row in shares for lo, n in row for s in range(lo, lo + n))
    assert slots == list(range(batch))  # every sample of the step once, none twice
    sizes = [n for row in shares for _, n in row]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    if batch % (world * accumulate) == 0:  # even split: the layout as before
        m = batch // (world * accumulate)
        assert shares == [[((j * world + r) * m, m) for r in range(world)]
                          for j in range(accumulate)]


@pytest.mark.parametrize("world", [1, 2, 4, 8])
@pytest.mark.parametrize("preset", PRESET_BATCHES, ids=lambda p: p.stem)
def test_every_preset_batch_divides_on_1_2_4_8_processes(preset, world):
    from deeplab_core.config import load_params
    from deeplab_core.engine.train import batch_shares

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", [preset])
    for cfg in (params.pretrain, params.finetune):
        shares = batch_shares(cfg.batch_size, cfg.accumulate_steps, world)
        assert sum(n for row in shares for _, n in row) == cfg.batch_size


def test_bad_recipe_values_name_the_key():
    from deeplab_core.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match=r"finetune\.batch_norm = 'freeze'"):
        parse_params({"finetune": {"batch_norm": "freeze"}})
    with pytest.raises(ConfigError, match=r"pretrain\.lr_policy = 'cosine'"):
        parse_params({"pretrain": {"lr_policy": "cosine"}})
    with pytest.raises(ConfigError, match=r"base\.nproc = 0"):
        parse_params({"base": {"nproc": 0}})


@pytest.mark.parametrize("crop,cells,stride", [(321, 41, 8), (513, 65, 8), (513, 33, 16),
                                               (306, 39, 8), (513, 129, 4)])
def test_score_map_labels_sit_at_stride_times_i(crop, cells, stride):
    from deeplab_core.engine.recipe import score_map_labels, score_map_positions

    pos = score_map_positions(crop, cells)
    assert pos.tolist() == [stride * i for i in range(cells)]
    # every pixel labelled with its own (row, column): the sampled labels name their pixels
    rows = torch.arange(crop)[:, None].expand(crop, crop)
    cols = torch.arange(crop)[None, :].expand(crop, crop)
    target = torch.stack([rows * 1000 + cols])
    small = score_map_labels(target, (cells, cells))
    want = torch.tensor([[stride * i * 1000 + stride * j for j in range(cells)]
                         for i in range(cells)])
    assert torch.equal(small[0], want)
    if (crop - 1) % (cells - 1) == 0:  # the papers' 8k+1 crops: align_corners upsampling agrees
        ramp = torch.arange(cells, dtype=torch.float64)[None, None, None, :].expand(1, 1, 1, cells)
        up = F.interpolate(ramp, size=(1, crop), mode="bilinear", align_corners=True)[0, 0, 0]
        assert torch.equal(up[pos], torch.arange(cells, dtype=torch.float64))


def test_score_map_loss_reads_the_pixels_under_the_cells_at_321():
    """Only the pixels 8i, 8j are labelled: all 41 x 41 cells must find a label (nearest
    interpolation read column 313 for the last cell, 23 of 41 columns off by >= 4 px)."""
    from deeplab_core.engine.recipe import loss_sum

    target = torch.full((1, 321, 321), 255, dtype=torch.long)
    target[0, ::8, ::8] = 1
    logits = torch.zeros(1, 3, 41, 41)
    total, count = loss_sum(logits, target)
    assert count == 41 * 41
    assert total.item() == pytest.approx(41 * 41 * math.log(3), rel=1e-6)
    nearest = F.interpolate(target[:, None].float(), size=(41, 41), mode="nearest")
    assert int((nearest != 255).sum()) < 41 * 41  # the old rule misses cells


def test_paper_models_upsample_with_aligned_corners():
    from deeplab_core.models import build_model
    from deeplab_core.models.deeplab import aligns_corners

    assert aligns_corners(build_model("v1_largefov", num_classes=3))
    assert not aligns_corners(build_model("micro", num_classes=3))  # the CPU default as it was
    m = build_model("v1_largefov", num_classes=3).eval()
    x = torch.zeros(1, 3, 321, 321)
    with torch.no_grad():
        s = m.score_map(x)
        up = m(x)
    assert s.shape[-2:] == (41, 41)
    torch.testing.assert_close(up[..., ::8, ::8], s)  # cell i lands on pixel 8i exactly


# ----------------------------------------------------------------------------- resume robustness
def _interrupted_checkpoint(list_file, tmp_path, settings):
    ckpt = tmp_path / "resume.pt"
    with pytest.raises(Interrupt):
        _fit(_micro(), _dataset(list_file), settings, checkpoint_path=ckpt,
             log_metrics=_interrupt_at(settings.checkpoint_every + 1))
    return ckpt


def test_checkpoint_records_the_resolved_precision_and_device(tiny_list, tmp_path):
    from deeplab_core.engine.train import ResumeMismatch

    settings = _settings(iterations=6, checkpoint_every=3)
    ckpt = _interrupted_checkpoint(tiny_list, tmp_path, settings)
    state = torch.load(ckpt, weights_only=False)
    assert state["runtime"] == {"dtype": "float32", "device": "cpu"}
    # the same run written where `auto` resolved to bf16 on a GPU: resuming here must refuse
    state["runtime"] = {"dtype": "bfloat16", "device": "cuda"}
    torch.save(state, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(ResumeMismatch, match=r"resume\.pt: this run's checkpoint \(iteration 3\) "
                                             r"was written with bfloat16 on cuda, but this "
                                             r"process would continue with float32 on cpu"):
        _fit(_micro(), _dataset(tiny_list), settings, checkpoint_path=ckpt)
    assert ckpt.read_bytes() == before  # nothing lost
    import pickle
    err = ResumeMismatch("x")
    assert str(pickle.loads(pickle.dumps(err))) == "x"


def test_resume_under_another_world_size_warns_that_rng_is_not_restored(tiny_list, tmp_path):
    settings = _settings(iterations=6, checkpoint_every=3)
    ckpt = _interrupted_checkpoint(tiny_list, tmp_path, settings)
    state = torch.load(ckpt, weights_only=False)
    state["torch_rng"] = state["torch_rng"] * 2  # as two processes write it
    torch.save(state, ckpt)
    with pytest.warns(RuntimeWarning, match=r"written by 2 process\(es\) and is resumed by 1: "
                                            r"random states not restored"):
        res = _fit(_micro(), _dataset(tiny_list), settings, checkpoint_path=ckpt)
    assert res.resumed_from == 3


def test_bn_momentum_is_per_optimizer_step_under_accumulation():
    from deeplab_core.engine.recipe import bn_momentum_per_step, per_micro_batch_momentum

    assert (1 - per_micro_batch_momentum(0.0003, 2)) ** 2 == pytest.approx(0.9997, abs=1e-15)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) + 2.0
    one = torch.nn.BatchNorm2d(3, momentum=0.0003)
    two = torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=0.0003))
    one(x)  # one update with the recipe's momentum
    with bn_momentum_per_step(two, 2):
        assert two[0].momentum == pytest.approx(per_micro_batch_momentum(0.0003, 2))
        two(x)
        two(x)  # two micro-batches with the same statistics
    assert two[0].momentum == 0.0003  # restored
    torch.testing.assert_close(two[0].running_mean, one.running_mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(two[0].running_var, one.running_var, rtol=1e-6, atol=1e-9)
    plain = torch.nn.Sequential(torch.nn.BatchNorm2d(3, momentum=0.0003))
    plain(x)
    plain(x)  # what happened before: the decay applied twice per step
    assert not torch.allclose(plain[0].running_mean, one.running_mean, rtol=1e-6, atol=1e-9)


def test_training_with_accumulation_leaves_the_bn_momentum_as_set(tiny_list):
    model = _micro()
    _fit(model, _dataset(tiny_list), _settings(iterations=2, accumulate_steps=2,
                                               bn_momentum=0.25))
    assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.25}


def test_deterministic_switch_trains_alike_on_cpu_and_restores_the_flags(tiny_list):
    cfg = _settings(iterations=3)
    ref = _fit(_micro(), _dataset(tiny_list), cfg)
    det = _fit(_micro(), _dataset(tiny_list), cfg.model_copy(update={"deterministic": True}))
    assert [r["loss"] for r in det.history] == [r["loss"] for r in ref.history]
    assert not torch.are_deterministic_algorithms_enabled()
    assert run_fingerprint(cfg, SEED) == run_fingerprint(
        cfg.model_copy(update={"deterministic": True}), SEED)  # a kernel choice: resumable


@pytest.mark.parametrize("align", [True, False])
def test_deterministic_bilinear_and_loss_paths_match_the_usual_kernels(align):
    from deeplab_core.engine.recipe import _gathered_loss_sum
    from deeplab_core.models.layers import resize_bilinear

    torch.manual_seed(0)
    x = torch.randn(2, 3, 17, 13, requires_grad=True)
    ref = F.interpolate(x, size=(65, 49), mode="bilinear", align_corners=align)
    mm = resize_bilinear(x, (65, 49), align, separable=True)
    torch.testing.assert_close(mm, ref, rtol=1e-5, atol=1e-6)
    g_ref, = torch.autograd.grad(ref.square().sum(), x)
    g_mm, = torch.autograd.grad(mm.square().sum(), x)
    torch.testing.assert_close(g_mm, g_ref, rtol=1e-5, atol=1e-5)
    y = torch.randint(0, 3, (2, 17, 13))
    y[0, :3] = 255
    total, count = _gathered_loss_sum(x.detach(), y)
    assert count == int((y != 255).sum())
    assert total.item() == pytest.approx(F.cross_entropy(x.detach(), y, ignore_index=255,
                                                         reduction="sum").item(), rel=1e-6)
