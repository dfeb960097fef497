"""Prepare step: train_aug rule, list files, labels, atomic output."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from deeplab_core.data import prepare as prepare_step
from deeplab_core.data.io import read_label_png, read_list_file
from deeplab_core.data.sbd import load_sbd_label, read_sbd_split
from deeplab_core.data.synthetic import generate_synthetic
from deeplab_core.data.prepare import prepare_datasets, trainaug_ids
from deeplab_core.data.voc import load_voc_label, read_split


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    raw = base / "raw"
    generate_synthetic(raw, seed=11, image_size=(40, 56), n_voc_train=16, n_voc_val=8,
                       n_sbd_train=14, n_sbd_val=6, n_coco_train=30, n_coco_val=5,
                       sbd_overlap_val=5, sbd_overlap_train=4, progress=False)
    out = base / "prepared"
    # 40x56 images: the 1000 px COCO rule scaled down to their size
    summary = prepare_datasets(raw / "VOCdevkit", raw / "benchmark_RELEASE", raw / "coco", out,
                               progress=False, coco_min_area=30)
    return raw, out, summary


def test_trainaug_rule():
    assert trainaug_ids(["a", "b"], ["v1", "v2"], ["b", "v1", "s1"], ["s2", "v2"]) == \
        ["a", "b", "s1", "s2"]


def test_train_aug_excludes_val_and_includes_sbd_only(prepared):
    raw, out, summary = prepared
    voc_train, voc_val = set(read_split(raw, "train")), set(read_split(raw, "val"))
    sbd = set(read_sbd_split(raw, "train")) | set(read_sbd_split(raw, "val"))
    rows = read_list_file(out / "train_aug.txt")
    ids = [r[0] for r in rows]
    assert ids == sorted(set(ids))
    assert not set(ids) & voc_val
    assert set(ids) == (voc_train | sbd) - voc_val
    sbd_only = sbd - voc_train - voc_val
    assert sbd_only and sbd_only <= set(ids)
    assert sbd & voc_val  # the overlap exists and was removed
    assert summary["train_aug"]["overlap_removed"] == len(sbd & voc_val)
    assert summary["train_aug"]["total"] == len(ids)
    assert summary["train_aug"]["from_sbd"] == len(sbd_only)
    for sid, img, lab in rows:  # VOC annotation preferred when an id has both
        assert img.is_file() and lab.is_file()
        expect = "voc" if sid in voc_train else "sbd"
        assert lab.parent.name == expect
        got = read_label_png(lab)
        ref = load_voc_label(raw, sid) if expect == "voc" else load_sbd_label(raw, sid)
        assert np.array_equal(got, ref)
        assert Image.open(lab).mode == "P"
        assert Image.open(img).size == got.shape[::-1]


def test_val_list_is_voc_val(prepared):
    raw, out, _ = prepared
    rows = read_list_file(out / "val.txt")
    assert [r[0] for r in rows] == read_split(raw, "val")
    assert all(r[2].parent.name == "voc" and r[2].is_file() for r in rows)


def test_list_paths_are_relative_to_list_folder_and_cwd_independent(prepared, tmp_path):
    raw, out, _ = prepared
    line = (out / "train_aug.txt").read_text().splitlines()[0].split()
    assert len(line) == 3
    assert not os.path.isabs(line[1]) and not os.path.isabs(line[2])
    assert line[2].startswith("labels/")
    old = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert all(p.is_file() for r in read_list_file(out / "val.txt") for p in r[1:])
    finally:
        os.chdir(old)


def test_coco_lists_keep_images_with_voc_classes(prepared):
    raw, out, summary = prepared
    for split in ("train", "val"):
        rows = read_list_file(out / f"coco_{split}.txt")
        doc = json.loads((raw / "coco/annotations" / f"instances_{split}2017.json").read_text())
        assert 0 < len(rows) <= len(doc["images"])
        assert summary["coco"][split]["written"] == len(rows)
        for sid, img, lab in rows:
            assert len(sid) == 12 and img.name == f"{sid}.jpg" and img.is_file()
            lv = read_label_png(lab)
            assert ((lv > 0) & (lv < 21)).any()
            assert set(np.unique(lv).tolist()) <= set(range(21)) | {255}
    assert summary["coco"]["train"]["with_voc_classes"] < summary["coco"]["train"]["images"]


def test_summary_json_written(prepared):
    _, out, summary = prepared
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["paths_relative_to"]


def test_without_sbd_and_coco(prepared, tmp_path):
    raw, _, _ = prepared
    s = prepare_datasets(raw, None, None, tmp_path / "p", progress=False)
    assert s["train_aug"]["total"] == len(read_split(raw, "train"))
    assert (tmp_path / "p" / "coco_train.txt").read_text() == ""


def test_killed_prepare_leaves_previous_output(prepared, tmp_path, monkeypatch):
    raw, _, _ = prepared
    out = tmp_path / "prep"
    prepare_datasets(raw, raw, raw / "coco", out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = {"n": 0}
    real = prepare_step._convert_mat

    def dying(job):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt("killed")
        return real(job)

    monkeypatch.setattr(prepare_step, "_convert_mat", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare_datasets(raw, raw, raw / "coco", out, progress=False)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]  # no temporary leftovers
    monkeypatch.setattr(prepare_step, "_convert_mat", real)
    (out / "labels" / "voc" / "stale.png").write_bytes(b"x")
    prepare_datasets(raw, raw, raw / "coco", out, progress=False)
    assert not (out / "labels" / "voc" / "stale.png").exists()  # re-run replaces the output


def test_missing_sbd_annotation_is_named(prepared, tmp_path):
    raw, _, _ = prepared
    copy = tmp_path / "raw"
    shutil.copytree(raw / "VOCdevkit", copy / "VOCdevkit")
    shutil.copytree(raw / "benchmark_RELEASE", copy / "benchmark_RELEASE")
    sbd_only = sorted(set(read_sbd_split(copy, "train")) - set(read_split(copy, "trainval")))
    (copy / "benchmark_RELEASE/dataset/cls" / f"{sbd_only[0]}.mat").unlink()
    with pytest.raises(FileNotFoundError, match=f"{sbd_only[0]}.mat"):
        prepare_datasets(copy, copy, None, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_parallel_workers_give_same_output(prepared, tmp_path):
    raw, out, _ = prepared
    out2 = tmp_path / "par"
    prepare_datasets(raw, raw, raw / "coco", out2, progress=False, workers=2,
                     coco_min_area=30)
    for name in ("train_aug.txt", "val.txt", "coco_train.txt", "coco_val.txt"):
        rows1 = [(i, a.resolve(), b.relative_to(out)) for i, a, b in read_list_file(out / name)]
        rows2 = [(i, a.resolve(), b.relative_to(out2)) for i, a, b in read_list_file(out2 / name)]
        assert rows1 == rows2
    a = sorted(p.relative_to(out) for p in (out / "labels").rglob("*.png"))
    b = sorted(p.relative_to(out2) for p in (out2 / "labels").rglob("*.png"))
    assert a == b
    assert all((out / p).read_bytes() == (out2 / p).read_bytes() for p in a)
