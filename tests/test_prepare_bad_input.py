"""Bad input to the prepare step: each case fails with an error that names the file, the id and
the rule, across the worker processes too, and leaves every earlier output byte-identical."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import pickle
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deeplab_core
from deeplab_core.config import ConfigError
from deeplab_core.data.io import DataError, ImageReadError, encode_label_png
from deeplab_core.data.synthetic import generate_synthetic
from deeplab_core.data.prepare import prepare_datasets
from deeplab_core.engine.protocol import ProtocolError
from deeplab_core.data.voc import read_split
from deeplab_core.engine.train import ResumeMismatch
from conftest import scratch_project
from pipelines.common import StageError

REPO = Path(__file__).resolve().parents[1]
VOC = Path("VOCdevkit/VOC2012")
SBD = Path("benchmark_RELEASE/dataset")
LABEL_MODE_RULE = "VOC labels must be palette ('P') or grayscale ('L') index images"
DECODE_RULE = "every image and label file must decode in full"
ID_ONCE_RULE = "a split file lists each image id once"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny synthetic VOC + SBD + COCO tree and the output prepared from it."""
    base = tmp_path_factory.mktemp("good")
    generate_synthetic(base / "raw", seed=5, image_size=(32, 40), n_voc_train=6, n_voc_val=4,
                       n_sbd_train=4, n_sbd_val=2, sbd_overlap_val=1, n_coco_train=4,
                       n_coco_val=2, progress=False)
    prepare_datasets(*_roots(base / "raw"), base / "prepared", progress=False, workers=2)
    return base


def _roots(raw: Path) -> tuple[Path, Path, Path]:
    return raw / VOC, raw / SBD, raw / "coco"


def _snapshot(*paths: Path) -> dict[str, str]:
    """md5 of every file under ``paths`` (a missing path is recorded as such)."""
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out[str(root)] = "<missing>" if not root.exists() else ""
        out.update({str(p): hashlib.md5(p.read_bytes()).hexdigest() for p in files})
    return out


@pytest.fixture
def work(good, tmp_path):
    """A copy of the good raw tree and of its prepared output (list paths stay valid)."""
    shutil.copytree(good / "raw", tmp_path / "raw")
    shutil.copytree(good / "prepared", tmp_path / "prepared")
    return tmp_path


def _voc_id(raw: Path, split: str = "train") -> str:
    return read_split(raw / VOC, split)[0]


def _fails(work: Path, exc_type: type, *parts: str, roots=None) -> BaseException:
    """prepare_datasets on ``work/raw`` (2 worker processes) raises ``exc_type`` whose message
    holds every one of ``parts``; the earlier output in ``work/prepared`` is untouched."""
    before = _snapshot(work / "prepared")
    with pytest.raises(exc_type) as ei:
        prepare_datasets(*(roots or _roots(work / "raw")), work / "prepared", progress=False,
                         workers=2)
    msg = str(ei.value)
    for part in parts:
        assert part in msg, (part, msg)
    assert _snapshot(work / "prepared") == before
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]  # no temporaries
    return ei.value


# ----------------------------------------------------------------------------- 1: labels
def _rgb_label(path: Path) -> None:
    Image.open(path).convert("RGB").save(path)


def _truncated_label(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("corrupt, exc_type, rule", [
    (_rgb_label, ImageReadError, LABEL_MODE_RULE),
    (_truncated_label, ImageReadError, DECODE_RULE),
], ids=["rgb", "truncated"])
def test_bad_voc_label_crosses_the_worker_pool_named(work, corrupt, exc_type, rule):
    sid = _voc_id(work / "raw", "val")
    label = work / "raw" / VOC / "SegmentationClass" / f"{sid}.png"
    corrupt(label)
    err = _fails(work, exc_type, str(label), f"(id {sid!r})", rule)
    assert isinstance(err, DataError) and isinstance(err, ValueError)
    assert err.path == label and err.item_id == sid


def test_label_value_outside_voc_classes_is_named(work):
    sid = _voc_id(work / "raw")
    label = work / "raw" / VOC / "SegmentationClass" / f"{sid}.png"
    lab = np.zeros((8, 8), np.uint8)
    lab[2, 2] = 50
    label.write_bytes(encode_label_png(lab))
    _fails(work, DataError, str(label), f"(id {sid!r})", "values [50]",
           "label values are VOC class indices 0..20 or 255")


# ----------------------------------------------------------------------------- 2, 3: split files
@pytest.mark.parametrize("split", ["train", "val"])
def test_empty_voc_split_is_named(work, split):
    path = work / "raw" / VOC / "ImageSets" / "Segmentation" / f"{split}.txt"
    path.write_text("\n")
    err = _fails(work, DataError, str(path), f"VOC {split} split is empty",
                 "a VOC segmentation split file lists at least one image id")
    assert err.item_id is None


@pytest.mark.parametrize("split_file", [VOC / "ImageSets/Segmentation/train.txt",
                                        VOC / "ImageSets/Segmentation/val.txt",
                                        SBD / "train.txt", SBD / "val.txt"],
                         ids=["voc-train", "voc-val", "sbd-train", "sbd-val"])
def test_duplicate_split_id_is_named(work, split_file):
    path = work / "raw" / split_file
    ids = path.read_text().split()
    path.write_text("\n".join(ids + [ids[0]]) + "\n")
    err = _fails(work, DataError, str(path), f"(id {ids[0]!r})", ID_ONCE_RULE,
                 f"lines 1 and {len(ids) + 1}")
    assert err.item_id == ids[0]


# ----------------------------------------------------------------------------- 4, 5: COCO
@pytest.mark.parametrize("key, bad, section", [("category_id", 999, "categories"),
                                               ("image_id", 987654321, "images")])
def test_coco_annotation_with_unknown_reference_is_named(work, key, bad, section):
    path = work / "raw" / "coco" / "annotations" / "instances_train2017.json"
    doc = json.loads(path.read_text())
    ann = doc["annotations"][1]
    ann[key] = bad
    path.write_text(json.dumps(doc))
    err = _fails(work, DataError, str(path), f"(annotation id {ann['id']})", f"{key} {bad}",
                 f"every annotation's {key} is the id of an entry in {section!r}")
    assert err.item_id == ann["id"]


# ----------------------------------------------------------------------------- quarantine
def test_quarantine_rejects_bad_labels_and_prepares_the_rest(good, work):
    """on_error="quarantine": a truncated VOC label, an RGB VOC label, a corrupt SBD annotation
    and a COCO annotation that does not decode do not stop prepare. rejected.json names each
    (split, id, file, rule); VOC and SBD samples keep their list line (counts hold) with the label
    path at the source file, for validate to quarantine; the COCO image is left out of its list;
    every other output equals the good run's."""
    from deeplab_core.classes import COCO_TO_VOC
    from deeplab_core.data.io import read_list_file

    raw = work / "raw"
    val_id, train_id = _voc_id(raw, "val"), _voc_id(raw, "train")
    _truncated_label(raw / VOC / "SegmentationClass" / f"{val_id}.png")
    _rgb_label(raw / VOC / "SegmentationClass" / f"{train_id}.png")
    good_aug = read_list_file(good / "prepared" / "train_aug.txt")
    sbd_id = next(i for i, _, lab in good_aug if "/sbd/" in str(lab))
    (raw / SBD / "cls" / f"{sbd_id}.mat").write_bytes(b"not a MATLAB file")
    coco_json = raw / "coco" / "annotations" / "instances_train2017.json"
    doc = json.loads(coco_json.read_text())
    ann = next(a for a in doc["annotations"] if a["category_id"] in COCO_TO_VOC)
    ann["segmentation"] = {"size": [1, 1], "counts": [1]}
    coco_json.write_text(json.dumps(doc))
    coco_name = Path(next(im["file_name"] for im in doc["images"]
                          if im["id"] == ann["image_id"])).stem

    out = work / "quarantined"
    summary = prepare_datasets(*_roots(raw), out, progress=False, workers=2,
                               on_error="quarantine")
    rejected = json.loads((out / "rejected.json").read_text())
    assert rejected["on_error"] == "quarantine"
    got = {(r["split"], r["id"]): r for r in rejected["samples"]}
    assert set(got) == {("val", val_id), ("train_aug", train_id), ("train_aug", sbd_id),
                        ("coco_train", coco_name)}
    assert summary["rejected"] == 4 and summary["coco"]["train"]["rejected"] == 1
    assert got[("val", val_id)]["rule"] == DECODE_RULE
    assert got[("train_aug", train_id)]["rule"].startswith(LABEL_MODE_RULE)
    assert got[("train_aug", sbd_id)]["rule"].startswith("an SBD annotation is a MATLAB file")
    assert got[("train_aug", sbd_id)]["file"].endswith(f"cls/{sbd_id}.mat")
    assert "does not match the image size" in got[("coco_train", coco_name)]["problem"]
    assert str(ann["id"]) in got[("coco_train", coco_name)]["problem"]
    for split in ("train_aug", "val"):
        lines = {i: (img, lab) for i, img, lab in read_list_file(out / f"{split}.txt")}
        before = {i: (img, lab) for i, img, lab in read_list_file(good / "prepared" /
                                                                  f"{split}.txt")}
        assert list(lines) == list(before)  # every sample kept: the counts hold
        for i, (img, lab) in lines.items():
            if (split, i) in got:
                assert Path(lab).resolve() == (out / got[(split, i)]["file"]).resolve()
                assert Path(lab).resolve().is_relative_to(raw)  # the source file, as it is
            else:
                assert Path(lab).read_bytes() == before[i][1].read_bytes()
    coco_ids = [i for i, _, _ in read_list_file(out / "coco_train.txt")]
    good_coco = [i for i, _, _ in read_list_file(good / "prepared" / "coco_train.txt")]
    assert coco_ids == [i for i in good_coco if i != coco_name]
    # the default mode still fails on the first of them, naming it
    with pytest.raises(DataError):
        prepare_datasets(*_roots(raw), work / "failed", progress=False, workers=2)
    assert not (work / "failed").exists()
    with pytest.raises(ValueError, match="on_error must be one of"):
        prepare_datasets(*_roots(raw), work / "x", progress=False, on_error="skip")


def test_good_data_prepares_an_empty_rejected_list(good):
    assert json.loads((good / "prepared" / "rejected.json").read_text()) == {
        "on_error": "fail", "samples": []}


# ----------------------------------------------------------------------------- 6: roots
def test_roots_that_are_not_the_datasets_are_named(work):
    raw = work / "raw"
    other = work / "raw" / "coco"  # a folder, but none of the three layouts
    voc, sbd, coco = _roots(raw)
    _fails(work, FileNotFoundError, f"no VOC2012 dataset at {str(other)!r}",
           "expected VOC2012 layout", roots=(other, sbd, coco))
    _fails(work, FileNotFoundError, f"no SBD dataset at {str(voc)!r}", "expected SBD layout",
           roots=(voc, voc, coco))
    _fails(work, FileNotFoundError, str(voc / "annotations" / "instances_train2017.json"),
           "expected COCO 2017 layout", roots=(voc, sbd, voc))


def test_output_built_aside_points_at_the_final_places(good, tmp_path):
    """The stage builds data/raw and data/prepared aside and moves both at the end: the lists
    must come out as if built in place."""
    raw_build, prepared_build = tmp_path / ".raw.build", tmp_path / ".prepared.build"
    shutil.copytree(good / "raw", raw_build)
    prepared_build.mkdir()
    prepare_datasets(*_roots(raw_build), tmp_path / "prepared", progress=False, workers=2,
                     build_dir=prepared_build, moved={raw_build: tmp_path / "raw"})
    assert not (tmp_path / "prepared").exists()
    prepared_build.rename(tmp_path / "prepared")

    def files(root: Path) -> dict:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert files(tmp_path / "prepared") == files(good / "prepared")


# ----------------------------------------------------------------------------- pickling
def _samples() -> dict[type, BaseException]:
    return {
        DataError: DataError("/d/instances_val2017.json", "category_id 7 is unknown", "a rule",
                             17, id_kind="annotation id"),
        ImageReadError: ImageReadError("/d/x.png", "label image has mode 'RGB'", "x", "a rule"),
        ConfigError: ConfigError("params.yaml: base.seed: expected an int"),
        StageError: StageError("prepare.voc_root = 'x': directory x does not exist"),
        ResumeMismatch: ResumeMismatch("ckpt.pt: written with bfloat16 on cuda, but this "
                                       "process would continue with float32 on cpu"),
        ProtocolError: ProtocolError("precision = 'fp8': expected one of float32, bfloat16, "
                                     "float16"),
    }


def _error_classes() -> set[type]:
    found = set()
    for info in pkgutil.walk_packages(deeplab_core.__path__, "deeplab_core."):
        mod = importlib.import_module(info.name)
        found |= {obj for obj in vars(mod).values() if inspect.isclass(obj)
                  and issubclass(obj, BaseException) and obj.__module__ == info.name}
    return found | {StageError}


def test_every_custom_error_class_survives_pickling():
    samples = _samples()
    assert _error_classes() <= set(samples), "add a sample of the new error class here"
    for cls, err in samples.items():
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err) and back.args == err.args
        assert vars(back) == vars(err)


# ----------------------------------------------------------------------------- the stage
def _project(tmp_path: Path, good: Path, prepare: dict) -> tuple[Path, dict]:
    """A scratch copy of the project whose data/ holds earlier outputs, with ``prepare`` merged
    into the micro params."""
    root = scratch_project(tmp_path / "proj", {"prepare": prepare})
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(good / "raw", root / "data" / "raw")
    shutil.copytree(good / "prepared", root / "data" / "prepared")
    (root / "data" / "metrics").mkdir()
    (root / "data" / "metrics" / "prepare.json").write_text('{"source": "synthetic"}\n')
    env = dict(os.environ, DEEPLAB_PARAMS=str(tmp_path / "params.yaml"))
    return root, env


def _stage_fails(root: Path, env: dict, *parts: str) -> str:
    data = root / "data"
    outs = (data / "raw", data / "prepared", data / "metrics" / "prepare.json")
    before = _snapshot(*outs)
    proc = subprocess.run([sys.executable, "-m", "pipelines.stages.prepare"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-4000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith("ERROR [prepare]: ")]
    assert line, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]  # the traceback: in the log only
    for part in parts:
        assert part in line[0], (part, line[0])
    assert _snapshot(*outs) == before
    assert sorted(p.name for p in data.iterdir()) == ["metrics", "prepared", "raw"]
    return line[0]


def test_stage_with_voc_root_not_voc_fails_before_writing(good, tmp_path, prefect_api_url):
    not_voc = tmp_path / "not_voc"
    (not_voc / "JPEG").mkdir(parents=True)
    root, env = _project(tmp_path, good, {"source": "real", "voc_root": str(not_voc)})
    _stage_fails(root, env, "FileNotFoundError: ", f"no VOC2012 dataset at {str(not_voc)!r}",
                 "expected VOC2012 layout")


def test_stage_with_rgb_label_fails_named_and_keeps_outputs(good, tmp_path, prefect_api_url):
    src = tmp_path / "src"
    shutil.copytree(good / "raw", src)
    sid = _voc_id(src)
    label = src / VOC / "SegmentationClass" / f"{sid}.png"
    _rgb_label(label)
    voc, sbd, coco = _roots(src)
    root, env = _project(tmp_path, good, {"source": "real", "voc_root": str(voc),
                                          "sbd_root": str(sbd), "coco_root": str(coco)})
    _stage_fails(root, env, "ImageReadError: ", str(label), f"(id {sid!r})", LABEL_MODE_RULE)
