"""Torch dataset, collate, bootstrapping lists and manifests."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from deeplab_core.classes import HARD_CLASS_IDS
from deeplab_core.data.bootstrap import (hard_class_pixels, hard_image_list, read_hard_list,
                                         write_hard_list)
from deeplab_core.data.dataset import SegmentationListDataset, pad_collate
from deeplab_core.data.io import read_label_png, read_list_file, write_label_png, write_list_file
from deeplab_core.data.manifest import (build_manifest, read_manifest_jsonl, write_manifest_csv,
                                        write_manifest_jsonl)
from deeplab_core.data.synthetic import generate_synthetic
from deeplab_core.data.prepare import prepare_datasets
from deeplab_core.data.transforms import train_transform


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("ds")
    generate_synthetic(base / "raw", seed=2, image_size=(40, 56), n_voc_train=40, n_voc_val=6,
                       n_sbd_train=20, n_sbd_val=4, n_coco_train=4, n_coco_val=2,
                       sbd_overlap_val=2, progress=False)
    prepare_datasets(base / "raw", base / "raw", base / "raw" / "coco", base / "prep",
                     progress=False)
    return base / "prep"


def test_train_items(prepared):
    ds = SegmentationListDataset(prepared / "train_aug.txt", transform=train_transform(32))
    torch.manual_seed(0)
    item = ds[0]
    assert set(item) == {"image", "label", "id"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (32, 32) and item["label"].dtype == torch.int64
    assert item["id"] == ds.ids[0]
    # the random transform draws from torch's generator: same seed, same item; a second draw
    # differs
    again = SegmentationListDataset(prepared / "train_aug.txt", transform=train_transform(32))
    torch.manual_seed(0)
    assert torch.equal(again[0]["image"], item["image"])
    assert not torch.equal(ds[0]["image"], item["image"]) or not torch.equal(
        ds[0]["label"], item["label"])
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["id"]) == 4


def test_eval_items_carry_raw_image_and_pad_collate(prepared):
    ds = SegmentationListDataset(prepared / "val.txt")
    item = ds[0]
    img, lab = ds.get_raw(0)
    assert item["raw_image"].dtype == torch.uint8 and item["raw_image"].shape == img.shape
    assert item["image"].shape[1:] == lab.shape and torch.equal(item["label"],
                                                                torch.from_numpy(lab.astype(np.int64)))
    batch = pad_collate([ds[i] for i in range(len(ds))])
    H, W = batch["image"].shape[-2:]
    assert batch["label"].shape == (len(ds), H, W) and batch["raw_image"].shape == (len(ds), H, W, 3)
    for k in range(len(ds)):
        h, w = batch["size"][k].tolist()
        assert torch.equal(batch["label"][k, :h, :w], ds[k]["label"])
        assert (batch["label"][k, h:, :] == 255).all() and (batch["label"][k, :, w:] == 255).all()
        assert (batch["image"][k, :, h:, :] == 0).all()
    loader = DataLoader(ds, batch_size=3, collate_fn=pad_collate)
    assert sum(len(b["id"]) for b in loader) == len(ds)


def test_repeat_ids_duplicate_samples(prepared):
    base = SegmentationListDataset(prepared / "train_aug.txt")
    rep = [base.ids[1], base.ids[1], base.ids[3]]
    ds = SegmentationListDataset(prepared / "train_aug.txt", repeat_ids=rep)
    assert len(ds) == len(base) + 3 and ds.ids[-3:] == rep
    assert ds[len(base)]["id"] == base.ids[1]
    with pytest.raises(ValueError, match="not in"):
        SegmentationListDataset(prepared / "train_aug.txt", repeat_ids=["nope"])


def test_data_root_argument(prepared, tmp_path):
    rows = read_list_file(prepared / "val.txt")
    # the same samples, with paths relative to a different base folder given as data_root
    write_list_file(tmp_path / "l.txt", [(i, os.path.relpath(a, prepared.parent),
                                          os.path.relpath(b, prepared.parent)) for i, a, b in rows])
    ds = SegmentationListDataset(tmp_path / "l.txt", data_root=prepared.parent)
    assert len(ds) == len(rows) and ds[0]["id"] == rows[0][0]
    with pytest.raises(FileNotFoundError):
        SegmentationListDataset(tmp_path / "l.txt")[0]  # default base: the list's own folder


def test_mismatched_image_and_label_sizes_raise(prepared, tmp_path):
    rows = read_list_file(prepared / "val.txt")
    write_label_png(tmp_path / "small.png", np.zeros((3, 3), np.uint8))
    write_list_file(tmp_path / "bad.txt", [("x", str(rows[0][1]), str(tmp_path / "small.png"))])
    with pytest.raises(ValueError, match="small.png"):
        SegmentationListDataset(tmp_path / "bad.txt")[0]


def test_bootstrap_finds_hard_class_images(prepared, tmp_path):
    lf = prepared / "train_aug.txt"
    truth = [sid for sid, _, lab in read_list_file(lf)
             if np.isin(read_label_png(lab), HARD_CLASS_IDS).any()]
    assert truth and len(truth) < len(read_list_file(lf))
    ids = hard_image_list(lf, None, HARD_CLASS_IDS, min_pixels=1, repeats=2)
    assert ids == [i for i in truth for _ in range(2)]
    stats = hard_class_pixels(lf)
    big = max(max(v.values()) for v in stats.values() if v)
    assert len(hard_image_list(lf, min_pixels=big + 1)) == 0
    assert hard_image_list(lf, hard_class_ids=[9], repeats=1) == \
        [s for s, v in stats.items() if 9 in v]
    p = write_hard_list(tmp_path / "hard.json", ids, HARD_CLASS_IDS, 1, 2, str(lf))
    doc = json.loads(p.read_text())
    assert doc["count"] == len(ids) and doc["hard_classes"][0] == "bicycle"
    assert read_hard_list(p) == ids
    ds = SegmentationListDataset(lf, repeat_ids=read_hard_list(p))
    assert len(ds) == len(read_list_file(lf)) + len(ids)


def test_manifest_records_and_writers(prepared, tmp_path):
    recs = build_manifest(prepared / "val.txt")
    assert len(recs) == len(read_list_file(prepared / "val.txt"))
    r = recs[0]
    assert r["image_readable"] and r["label_readable"] and r["size_match"] and r["error"] is None
    assert r["image_mode"] == "RGB" and r["image_channels"] == 3 and r["label_mode"] == "P"
    assert r["label_values_valid"] and r["width"] > 0 and r["height"] > 0
    fracs = [r[k] for k in r if k.startswith("frac_")]
    assert len(fracs) == 21 and abs(sum(fracs) + r["ignore_fraction"] - 1) < 1e-9
    assert set(r["label_unique"]) <= set(range(21)) | {255}
    # paths as the list writes them (relative to its folder): the manifest does not depend on
    # where the project lives
    for key in ("image_path", "label_path"):
        assert not Path(r[key]).is_absolute() and (prepared / r[key]).is_file()
    write_manifest_jsonl(recs, tmp_path / "m.jsonl")
    assert read_manifest_jsonl(tmp_path / "m.jsonl") == recs
    write_manifest_csv(recs, tmp_path / "m.csv")
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert len(rows) == len(recs) and rows[0]["id"] == r["id"]
    assert rows[0]["label_unique"] == " ".join(map(str, r["label_unique"]))


def test_manifest_records_broken_files_without_raising(prepared, tmp_path):
    rows = read_list_file(prepared / "val.txt")
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    write_list_file(tmp_path / "l.txt", [("a", str(tmp_path / "broken.jpg"), str(rows[0][2])),
                                         ("b", str(rows[0][1]), str(tmp_path / "missing.png"))])
    a, b = build_manifest(tmp_path / "l.txt")
    assert not a["image_readable"] and "broken.jpg" in a["error"] and not a["size_match"]
    assert not b["label_exists"] and not b["label_readable"] and "missing.png" in b["error"]
