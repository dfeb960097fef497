"""Inference and evaluation: predict_probs, evaluate, split_cv, model checkpoints, Segmenter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_NUM_CLASSES
from deeplab_core.data.dataset import SegmentationListDataset
from deeplab_core.engine.checkpoint import (FORMAT, build_from_spec, load_checkpoint, model_spec,
                                            save_checkpoint)
from deeplab_core.engine.evaluate import EvalAccumulator, evaluate, predict_probs, split_cv
from deeplab_core.engine.infer import Segmenter
from deeplab_core.engine.protocol import InferenceProtocol
from deeplab_core.models import build_model

CPU = torch.device("cpu")


def _micro(num_classes: int = TINY_NUM_CLASSES, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("micro", num_classes=num_classes).eval()


class LabelOracle(nn.Module):
    """Reads the label stored in channel 0 of the input and returns its one-hot logits."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lab = x[:, 0].round().long().clamp(0, self.num_classes - 1)
        return 10.0 * nn.functional.one_hot(lab, self.num_classes).permute(0, 3, 1, 2).float()


class ConstantModel(nn.Module):
    """Always predicts class `cls`."""

    def __init__(self, num_classes: int, cls: int):
        super().__init__()
        self.num_classes, self.cls = num_classes, cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.num_classes, *x.shape[-2:])
        out[:, self.cls] = 5.0
        return out


def _oracle_items(num_classes: int = 3) -> list[dict]:
    items = []
    for k, (h, w) in enumerate([(20, 24), (17, 30)]):
        label = np.zeros((h, w), dtype=np.int64)
        label[4:12, 5 + k:15] = 1
        label[13:, 18:] = 2
        label[3, 5 + k:15] = 255  # a void line along an object's edge
        image = torch.zeros(3, h, w)
        image[0] = torch.from_numpy(np.where(label == 255, 0, label)).float()
        items.append({"image": image, "label": torch.from_numpy(label), "id": f"img{k}",
                      "raw_image": torch.zeros(h, w, 3, dtype=torch.uint8)})
    return items


# ----------------------------------------------------------------------------- predict_probs
@pytest.mark.parametrize("scales, flip", [((1.0,), False), ((1.0, 0.5), True)])
def test_predict_probs_is_a_distribution_at_input_size(scales, flip):
    model = _micro()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 33, 45)
    probs = predict_probs(model, x, scales, flip)
    assert probs.shape == (2, TINY_NUM_CLASSES, 33, 45)
    assert torch.allclose(probs.sum(1), torch.ones(2, 33, 45), atol=1e-5)
    assert (probs >= 0).all()


def test_predict_probs_averages_flips():
    class LeftRight(nn.Module):
        """Class 1 on the left half of whatever it sees, class 0 on the right."""

        def forward(self, x):
            w = x.shape[-1]
            out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            out[:, 1, :, : w // 2] = 10.0
            out[:, 0, :, w // 2:] = 10.0
            return out

    probs = predict_probs(LeftRight(), torch.zeros(1, 3, 4, 8), (1.0,), flip=True)
    # the flipped pass puts class 1 on the right half: the average is uniform
    assert torch.allclose(probs, torch.full_like(probs, 0.5), atol=1e-4)
    single = predict_probs(LeftRight(), torch.zeros(1, 3, 4, 8), (1.0,), flip=False)
    assert single[0, 1, 0, 0] > 0.99 and single[0, 1, 0, 7] < 0.01


def test_predict_probs_puts_model_in_eval_mode():
    model = _micro().train()
    predict_probs(model, torch.randn(1, 3, 32, 32))
    assert not model.training


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_perfect_model_scores_one():
    items = _oracle_items()
    seen = []
    out = evaluate(LabelOracle(3), items, 3, CPU, InferenceProtocol(flip=True),
                   trimap_widths=(1, 3), class_names=("bg", "a", "b"),
                   on_prediction=lambda i, raw, probs, pred, lab: seen.append((i, probs, pred,
                                                                                lab)),
                   progress=False)
    assert out["n_images"] == 2 and out["crf"] is None
    plain = out["plain"]
    assert plain["miou"] == pytest.approx(1.0)
    assert plain["pixel_acc"] == pytest.approx(1.0)
    assert plain["per_class_iou"] == pytest.approx({"bg": 1.0, "a": 1.0, "b": 1.0})
    assert [r["band_width"] for r in plain["trimap"]] == [1, 3]
    assert all(r["pixel_acc"] == pytest.approx(1.0) for r in plain["trimap"])
    n_valid = sum(int((it["label"] != 255).sum()) for it in items)
    assert out["accumulators"]["plain"].conf.sum() == n_valid
    assert [s[0] for s in seen] == ["img0", "img1"]
    for (_, probs, pred, lab), item in zip(seen, items):
        assert probs.shape == (3,) + tuple(item["label"].shape)
        keep = lab != 255
        np.testing.assert_array_equal(pred[keep], lab[keep])


def test_evaluate_constant_model_matches_hand_count():
    items = _oracle_items()
    out = evaluate(ConstantModel(3, 0), items, 3, CPU, trimap_widths=(), progress=False)
    labels = np.concatenate([it["label"].numpy().ravel() for it in items])
    labels = labels[labels != 255]
    bg = float((labels == 0).mean())
    assert out["plain"]["pixel_acc"] == pytest.approx(bg)
    # background IoU = bg share; classes 1 and 2 are never predicted: IoU 0
    assert out["plain"]["miou"] == pytest.approx(bg / 3)
    assert out["plain"]["trimap"] == []


def test_eval_accumulator_merge_adds_counts():
    items = _oracle_items()
    a, b = EvalAccumulator(3, (2,)), EvalAccumulator(3, (2,))
    lab0, lab1 = items[0]["label"].numpy(), items[1]["label"].numpy()
    a.add(np.where(lab0 == 255, 0, lab0), lab0)
    b.add(np.zeros_like(lab1), lab1)
    m = a.merge(b)
    np.testing.assert_array_equal(m.conf, a.conf + b.conf)
    np.testing.assert_array_equal(m.trimap, a.trimap + b.trimap)
    assert m.report()["pixel_acc"] < 1.0 and a.report()["pixel_acc"] == 1.0


def test_evaluate_on_list_dataset(tiny_list):
    ds = SegmentationListDataset(tiny_list)
    out = evaluate(_micro(), ds, TINY_NUM_CLASSES, CPU, trimap_widths=(2,), progress=False)
    assert out["n_images"] == 6
    assert out["accumulators"]["plain"].conf.sum() == 6 * 32 * 40
    assert 0.0 <= out["plain"]["miou"] <= 1.0
    assert out["plain"]["trimap"][0]["band_width"] == 2


# ----------------------------------------------------------------------------- split_cv
def test_split_cv_properties():
    ids = [f"id{i:02d}" for i in range(10)]
    cv, rest = split_cv(ids, 3, seed=5)
    assert len(cv) == 3 and len(rest) == 7
    assert set(cv).isdisjoint(rest)
    assert sorted(cv + rest) == ids
    assert cv == sorted(cv) and rest == sorted(rest)
    assert split_cv(ids, 3, seed=5) == (cv, rest)
    assert split_cv(list(ids), 3, seed=5)[0] == cv
    others = {tuple(split_cv(ids, 3, seed=s)[0]) for s in range(6)}
    assert len(others) > 1  # the seed matters


def test_split_cv_too_small_val_is_a_clear_error():
    with pytest.raises(ValueError, match=r"crf_search.cv_images = 10 but val has 3 images: "
                                         r"expected at most 2"):
        split_cv(["a", "b", "c"], 10)
    cv, rest = split_cv(["a", "b", "c"], 2)
    assert len(cv) == 2 and len(rest) == 1
    cv, rest = split_cv(["a", "b"], 1)
    assert len(cv) == 1 and len(rest) == 1 and set(cv + rest) == {"a", "b"}


@pytest.mark.parametrize("ids", [[], ["only"]])
def test_split_cv_needs_two_ids(ids):
    with pytest.raises(ValueError, match=f"need at least 2 val images.*got {len(ids)}"):
        split_cv(ids, 1)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    spec = model_spec("micro", TINY_NUM_CLASSES, 16)
    torch.manual_seed(0)
    model = build_from_spec(spec)
    # move the batch-norm statistics away from their defaults so that they must be saved
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    model.eval()
    path = tmp_path / "m" / "model.pt"
    save_checkpoint(path, model, spec, extra={"stage": "test", "miou": 0.5})
    loaded, meta = load_checkpoint(path)
    assert meta == {"spec": spec, "extra": {"stage": "test", "miou": 0.5}}
    assert not loaded.training
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert torch.load(path, weights_only=True)["format"] == FORMAT


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_load_checkpoint_truncated_file_names_path(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, _micro(), model_spec("micro", TINY_NUM_CLASSES, 16))
    bad = tmp_path / "truncated.pt"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as exc:
        load_checkpoint(bad)
    assert str(bad) in str(exc.value) and "cannot read model checkpoint" in str(exc.value)


def test_load_checkpoint_garbage_file_names_path(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a checkpoint\x00\x01\x02" * 10)
    with pytest.raises(ValueError) as exc:
        load_checkpoint(bad)
    assert str(bad) in str(exc.value)


def test_load_checkpoint_foreign_torch_file(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=f"{FORMAT}.*weights"):
        load_checkpoint(other)


# ----------------------------------------------------------------------------- Segmenter
def test_segmenter_from_files_returns_mask(tmp_path):
    path = tmp_path / "model.pt"
    model = _micro()
    save_checkpoint(path, model, model_spec("micro", TINY_NUM_CLASSES, 16))
    seg = Segmenter.from_files(path, scales=(1.0, 0.75), flip=True)
    image = np.random.default_rng(0).integers(0, 256, size=(30, 42, 3), dtype=np.uint8)
    mask = seg(image)
    assert mask.shape == (30, 42) and mask.dtype == np.uint8
    probs = seg.probabilities(image)
    assert probs.shape == (TINY_NUM_CLASSES, 30, 42)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(mask, probs.argmax(0))


@pytest.mark.parametrize("image", [
    np.random.default_rng(0).random((16, 16, 3)),             # float
    np.zeros((16, 16), dtype=np.uint8),                       # gray
    np.zeros((16, 16, 4), dtype=np.uint8),                    # RGBA
])
def test_segmenter_rejects_non_rgb_uint8(image):
    seg = Segmenter(_micro())
    with pytest.raises(ValueError, match=r"expected an RGB uint8 image of shape HxWx3, got "
                                         + str(image.dtype)):
        seg(image)
