"""The generic dataset source: layout checks, class lists, prepared output, ignore index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deeplab_core.classes import load_class_list, parse_class_list
from deeplab_core.config import ConfigError, parse_params
from deeplab_core.data.generic import prepare_generic, read_generic_sources, write_example_dataset
from deeplab_core.data.io import DataError, read_label_png, read_list_file, write_label_png
from deeplab_core.data.manifest import build_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def example(tmp_path):
    return write_example_dataset(tmp_path / "ds", n_train=4, n_val=2)


def test_shipped_example_is_the_generator_output_layout():
    src = read_generic_sources(REPO / "examples" / "generic_tiny")
    assert src.classes.names == ("background", "disc", "bar", "ring")
    assert len(src.ids["train"]) == 12 and len(src.ids["val"]) == 6
    for image, mask in src.files.values():
        lab = read_label_png(mask).copy()
        assert lab.shape == (48, 64) and set(np.unique(lab)) <= {0, 1, 2, 3, 255}


def test_prepare_lists_images_and_masks_and_writes_class_list(example, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_generic(example, out)
    assert summary["train_aug"]["total"] == 4 and summary["val"]["total"] == 2
    rows = read_list_file(out / "train_aug.txt")
    assert [r[0] for r in rows] == [f"ex_{i:03d}" for i in range(4)]
    assert rows[0][2].resolve() == (example / "masks" / "ex_000.png").resolve()
    assert (out / "coco_train.txt").read_text() == ""
    classes = load_class_list(out / "classes.json", 4)
    assert classes.names[1] == "disc" and classes.palette[3].tolist() == [200, 40, 160]
    with pytest.raises(ValueError, match="base.num_classes = 21 .* names 4 classes"):
        load_class_list(out / "classes.json", 21)


def test_other_ignore_index_is_swapped_with_255(example, tmp_path):
    doc = json.loads((example / "classes.json").read_text())
    (example / "classes.json").write_text(json.dumps({**doc, "ignore_index": 9}))
    mask = example / "masks" / "ex_001.png"
    lab = read_label_png(mask).copy()
    lab[lab == 255] = 0
    lab[0, :5] = 9
    write_label_png(mask, lab)
    out = tmp_path / "prepared"
    prepare_generic(example, out)
    row = read_list_file(out / "train_aug.txt")[1]
    assert row[2] == out / "labels" / "generic" / "ex_001.png"
    conv = read_label_png(row[2])
    assert (conv[0, :5] == 255).all() and (conv[lab == 0][5:] == 0).all()
    assert json.loads((out / "classes.json").read_text())["ignore_index"] == 255


@pytest.mark.parametrize("doc, match", [
    ({"names": ["bg"]}, "at least 2"),
    ({"names": ["bg", "a", "a"]}, r"\['a'\] more than once"),
    ({"names": ["bg", "a"], "ignore_index": 1}, "'ignore_index' = 1"),
    ({"names": ["bg", "a"], "palette": [[0, 0, 0]]}, "one \\[r, g, b\\]"),
])
def test_bad_class_lists_are_named(doc, match):
    with pytest.raises(ValueError, match=match):
        parse_class_list(doc, "classes.json")


def test_layout_errors_name_file_and_id(example):
    (example / "masks" / "ex_002.png").unlink()
    with pytest.raises(FileNotFoundError, match="ex_002"):
        read_generic_sources(example)
    shutil.copy(example / "masks" / "ex_001.png", example / "masks" / "ex_002.png")
    with open(example / "val.txt", "a") as fh:
        fh.write("ex_000\n")
    with pytest.raises(DataError) as ei:
        read_generic_sources(example)
    assert "val.txt" in str(ei.value) and "'ex_000'" in str(ei.value)


def test_manifest_checks_values_against_the_class_list(example, tmp_path):
    mask = example / "masks" / "ex_000.png"
    lab = read_label_png(mask).copy()
    lab[0, 0] = 7                       # not a class of the 4-class list
    write_label_png(mask, lab)
    prepare_generic(example, tmp_path / "p")
    names = load_class_list(tmp_path / "p" / "classes.json").names
    recs = build_manifest(tmp_path / "p" / "train_aug.txt", class_names=names)
    assert [r["label_values_valid"] for r in recs] == [False, True, True, True]
    assert "frac_ring" in recs[0] and "frac_aeroplane" not in recs[0]


def test_params_for_a_generic_source():
    base = {"prepare": {"source": "generic", "generic_root": "x"}, "pretrain": {"enabled": False}}
    p = parse_params({**base, "base": {"num_classes": 4}, "bootstrap": {"hard_classes": ["bar"]}})
    assert p.bootstrap.class_ids(("background", "disc", "bar", "ring")) == [2]
    with pytest.raises(ValueError, match=r"hard_classes = \['bar'\].*'disc'"):
        p.bootstrap.class_ids(("background", "disc"))
    with pytest.raises(ConfigError, match="pretrain.enabled"):
        parse_params({"prepare": base["prepare"]})
    with pytest.raises(ConfigError, match="generic_root is not set"):
        parse_params({"prepare": {"source": "generic"}})
    with pytest.raises(ConfigError, match="base.num_classes = 4"):
        parse_params({"base": {"num_classes": 4}})


# ----------------------------------------------------------------------------- users' own formats
def _as_colour_mask(example: Path, sid: str) -> np.ndarray:
    """Replace ``sid``'s index mask by the RGB colour mask people export; returns the indices."""
    from PIL import Image

    classes = load_class_list(example / "classes.json")
    mask = example / "masks" / f"{sid}.png"
    lab = read_label_png(mask).copy()
    Image.fromarray(classes.full_palette()[lab]).save(mask)
    return lab


def test_rgb_colour_masks_are_mapped_through_the_palette(example, tmp_path):
    labels = {sid: _as_colour_mask(example, sid) for sid in ("ex_000", "ex_004")}
    out = tmp_path / "prepared"
    prepare_generic(example, out)
    rows = {r[0]: r for r in read_list_file(out / "train_aug.txt") + read_list_file(out / "val.txt")}
    for sid, lab in labels.items():
        assert rows[sid][2] == out / "labels" / "generic" / f"{sid}.png"
        assert np.array_equal(read_label_png(rows[sid][2]), lab)
    assert rows["ex_001"][2].resolve() == (example / "masks" / "ex_001.png").resolve()
    recs = build_manifest(out / "train_aug.txt", class_names=("background", "disc", "bar", "ring"),
                          palette=load_class_list(out / "classes.json").full_palette())
    assert all(r["label_palette_ok"] and r["label_values_valid"] for r in recs)


def test_unknown_colour_is_named_with_its_pixel_count(example, tmp_path):
    from PIL import Image

    _as_colour_mask(example, "ex_002")
    mask = example / "masks" / "ex_002.png"
    rgb = np.asarray(Image.open(mask)).copy()
    rgb[:3, :7] = (1, 2, 3)
    Image.fromarray(rgb).save(mask)
    out = tmp_path / "prepared"
    prepare_generic(write_example_dataset(tmp_path / "good", n_train=4, n_val=2), out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DataError) as exc:
        prepare_generic(example, out)
    msg = str(exc.value)
    assert str(mask) in msg and "'ex_002'" in msg and "(1, 2, 3) x 21 px" in msg
    assert "rule: an RGB colour mask paints every pixel" in msg
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    summary = prepare_generic(example, out, on_error="quarantine")
    assert summary["rejected"] == 1
    rejected = json.loads((out / "rejected.json").read_text())["samples"]
    assert [(r["split"], r["id"]) for r in rejected] == [("train_aug", "ex_002")]
    assert "(1, 2, 3) x 21 px" in rejected[0]["problem"]


def test_image_extension_in_any_case(example):
    (example / "images" / "ex_001.jpg").rename(example / "images" / "ex_001.JPG")
    (example / "images" / "ex_003.jpg").rename(example / "images" / "ex_003.Jpeg")
    src = read_generic_sources(example)
    assert src.files["ex_001"][0].name == "ex_001.JPG"
    assert src.files["ex_003"][0].name == "ex_003.Jpeg"
