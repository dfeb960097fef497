"""Images and labels as they occur in the real datasets and in users' own data, in their real
file formats: greyscale / CMYK / palette / alpha photos, EXIF-rotated photos, palette labels
whose indices an editor permuted, split and annotation files with bytes that are not UTF-8, and
near-duplicate copies of evaluation images (one reader and one rule for every stage)."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab_core.classes import voc_palette
from deeplab_core.data.coco import load_coco_instances
from deeplab_core.data.dataset import SegmentationListDataset
from deeplab_core.data.io import (IMAGE_RULE, ORIENTATION_RULE, PALETTE_RULE, DataError,
                                  ImageReadError, decode_image, image_size, read_label_png,
                                  read_list_file, read_sample, write_list_file)
from deeplab_core.data.manifest import (NEAR_DUPLICATE_BITS, build_manifest, near_duplicates,
                                        perceptual_hash)
from deeplab_core.data.prepare import prepare_datasets
from deeplab_core.data.voc import read_split
from realformat import (box, smooth_image, stored_for_orientation, write_cmyk_jpeg, write_coco,
                        write_exif_jpeg, write_grey_jpeg, write_palette_png,
                        write_permuted_palette_png, write_voc)

TRAIN = [f"2008_{i:06d}" for i in range(1, 7)]
VAL = [f"2009_{i:06d}" for i in range(1, 4)]


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(int) - b.astype(int)).mean()) < 6


# ----------------------------------------------------------------------------- colour modes
@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "1"])
def test_every_colour_mode_decodes_to_rgb(tmp_path, mode):
    rgb = smooth_image(1)
    img = Image.fromarray(rgb)
    img = img.convert(mode) if mode != "P" else img.quantize(64)
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    path = tmp_path / f"x.{fmt.lower()}"
    img.save(path, format=fmt)
    dec = decode_image(path)
    assert dec.mode == mode and dec.rgb.shape == (48, 64, 3) and dec.rgb.dtype == np.uint8
    with Image.open(path) as back:
        expected = np.asarray(back.convert("RGB"))
    assert np.array_equal(dec.rgb, expected)


def test_sixteen_bit_image_is_refused_by_the_rule(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(smooth_image(2)[..., 0].astype(np.uint16) * 257).save(path)
    with pytest.raises(ImageReadError) as exc:
        decode_image(path, "s1")
    assert exc.value.rule == IMAGE_RULE and "'s1'" in str(exc.value) and "I;16" in str(exc.value)
    assert str(pickle.loads(pickle.dumps(exc.value))) == str(exc.value)


# ----------------------------------------------------------------------------- EXIF orientation
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    shown = smooth_image(3)
    path = write_exif_jpeg(tmp_path / "phone.jpg", shown, orientation)
    with Image.open(path) as raw:
        assert np.asarray(raw).shape[:2] == stored_for_orientation(shown, orientation).shape[:2]
    dec = decode_image(path)
    assert dec.orientation == orientation
    assert _close(dec.rgb, shown)
    assert image_size(path) == shown.shape[:2]


def test_label_drawn_on_the_displayed_photo_trains_in_that_orientation(tmp_path):
    shown = smooth_image(4)
    label = np.zeros(shown.shape[:2], np.uint8)
    label[5:20, 10:30] = 12  # dog, drawn where the viewer shows it
    img = write_exif_jpeg(tmp_path / "img" / "a.jpg", shown, 6)
    lab = write_palette_png(tmp_path / "lab" / "a.png", label)
    write_list_file(tmp_path / "l.txt", [("a", "img/a.jpg", "lab/a.png")])
    image, got = SegmentationListDataset(tmp_path / "l.txt").get_raw(0)
    assert _close(image, shown) and np.array_equal(got, label)
    # a label drawn on the stored pixels no longer fits the photo as displayed: named error
    write_palette_png(lab, stored_for_orientation(label, 6))
    with pytest.raises(DataError) as exc:
        read_sample(img, lab, "a")
    assert exc.value.rule == ORIENTATION_RULE and "EXIF orientation 6" in str(exc.value)
    assert str(lab) in str(exc.value) and str(img) in str(exc.value)


def test_upside_down_photo_is_turned_before_it_meets_its_label(tmp_path):
    shown = smooth_image(5)
    img = write_exif_jpeg(tmp_path / "a.jpg", shown, 3)
    label = np.zeros(shown.shape[:2], np.uint8)
    label[:10] = 3
    lab = write_palette_png(tmp_path / "a.png", label)
    image, got = read_sample(img, lab)
    assert _close(image, shown) and not _close(image, np.rot90(shown, 2))


def test_manifest_records_what_the_reader_returns(tmp_path):
    shown = smooth_image(6)
    label = np.zeros(shown.shape[:2], np.uint8)
    write_grey_jpeg(tmp_path / "g.jpg", shown)
    write_cmyk_jpeg(tmp_path / "c.jpg", shown)
    write_exif_jpeg(tmp_path / "r.jpg", shown, 6)
    write_palette_png(tmp_path / "l.png", label)
    write_list_file(tmp_path / "m.txt", [(k, f"{k}.jpg", "l.png") for k in ("g", "c", "r")])
    recs = {r["id"]: r for r in build_manifest(tmp_path / "m.txt", palette=voc_palette())}
    assert {k: r["image_mode"] for k, r in recs.items()} == {"g": "L", "c": "CMYK", "r": "RGB"}
    for r in recs.values():
        assert r["image_channels"] == 3 and r["size_match"] and r["error"] is None
        assert (r["height"], r["width"]) == (48, 64) and r["label_palette_ok"] is True
    assert recs["r"]["image_orientation"] == 6


# ----------------------------------------------------------------------------- palettes
def test_permuted_palette_is_named_with_the_colours_that_moved(tmp_path):
    label = np.zeros((20, 30), np.uint8)
    label[2:8, 2:8] = 3      # bird
    label[10:15, 10:20] = 2  # bicycle
    path = write_permuted_palette_png(tmp_path / "x.png", label, 2, 3)
    assert np.array_equal(read_label_png(path), np.where(label == 3, 2, np.where(label == 2, 3,
                                                                                   label)))
    with pytest.raises(DataError) as exc:
        read_label_png(path, "x", voc_palette(), ("background", "aeroplane", "bicycle", "bird"))
    msg = str(exc.value)
    assert exc.value.rule == PALETTE_RULE and "'x'" in msg and str(path) in msg
    assert "index 2 (bicycle) holds the colour (128, 128, 0) of class 3 (bird)" in msg
    assert "index 3 (bird) holds the colour (0, 128, 0) of class 2 (bicycle)" in msg
    write_palette_png(path, label)  # the VOC palette: accepted
    assert np.array_equal(read_label_png(path, "x", voc_palette()), label)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_prepare_refuses_a_permuted_voc_label_or_quarantines_it(tmp_path):
    raw = tmp_path / "raw"
    voc = write_voc(raw, TRAIN, VAL)
    out = tmp_path / "prepared"
    prepare_datasets(raw / "VOCdevkit", None, None, out, progress=False)
    before = _snapshot(out)
    sid = TRAIN[1]
    label = read_label_png(voc / "SegmentationClass" / f"{sid}.png").copy()
    cls = int(max(set(np.unique(label)) - {0, 255}))
    other = 1 if cls != 1 else 2
    write_permuted_palette_png(voc / "SegmentationClass" / f"{sid}.png", label, cls, other)
    with pytest.raises(DataError) as exc:
        prepare_datasets(raw / "VOCdevkit", None, None, out, progress=False, workers=2)
    assert exc.value.rule == PALETTE_RULE and f"'{sid}'" in str(exc.value)
    assert "palette colours moved" in str(exc.value)
    assert _snapshot(out) == before
    prepare_datasets(raw / "VOCdevkit", None, None, out, progress=False, on_error="quarantine")
    rejected = json.loads((out / "rejected.json").read_text())["samples"]
    assert [(r["split"], r["id"], r["rule"]) for r in rejected] == [("train_aug", sid,
                                                                     PALETTE_RULE)]


# ----------------------------------------------------------------------------- text files
def test_split_file_with_a_non_utf8_byte_names_file_line_and_rule(tmp_path):
    voc = write_voc(tmp_path, TRAIN, VAL)
    split = voc / "ImageSets" / "Segmentation" / "train.txt"
    split.write_bytes(b"2008_000001\n2008_0000\xff2\n")
    with pytest.raises(DataError) as exc:
        read_split(voc, "train")
    msg = str(exc.value)
    assert str(split) in msg and "(line 2)" in msg and "0xff" in msg and "column 10" in msg
    assert "rule: a split file is UTF-8 text" in msg


def test_list_file_with_a_non_utf8_byte_is_named(tmp_path):
    lf = tmp_path / "l.txt"
    lf.write_bytes(b"a img/a.jpg lab/a.png\n\xfe b c\n")
    with pytest.raises(DataError, match=r"\(line 2\): byte 0xfe at column 1 is not UTF-8"):
        read_list_file(lf)


def test_coco_annotation_file_errors_name_the_line(tmp_path):
    write_coco(tmp_path, "val", [{"id": 1, "height": 40, "width": 60}],
               [{"image_id": 1, "category_id": 18, "segmentation": [box(5, 5, 30, 30)]}])
    path = tmp_path / "annotations" / "instances_val2017.json"
    text = json.dumps(json.loads(path.read_text()), indent=1)
    lines = text.splitlines()
    lines[4] = lines[4].replace('"', '"\udcff', 1)
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape"))
    with pytest.raises(DataError) as exc:
        load_coco_instances(path)
    assert "(line 5)" in str(exc.value) and "0xff" in str(exc.value)
    path.write_text(text.replace("]", "", 1))
    with pytest.raises(DataError, match=r"\(line \d+\): .*rule: a COCO instances file"):
        load_coco_instances(path)


# ----------------------------------------------------------------------------- near-duplicates
def _copies(rgb: np.ndarray) -> dict[str, np.ndarray]:
    img = Image.fromarray(rgb)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    h, w = rgb.shape[:2]
    dy, dx = max(1, int(h * 0.03)), max(1, int(w * 0.03))
    return {"jpeg_q90": np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")),
            "resized": np.asarray(img.resize((int(w * 0.6), int(h * 0.6)), Image.BILINEAR)),
            "cropped": np.asarray(img.crop((dx, dy, w - dx, h - dy)))}


@pytest.fixture(scope="module")
def synthetic_images(tmp_path_factory):
    """The synthetic default's images (its own generator, default size), one per id."""
    from deeplab_core.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("syn")
    generate_synthetic(root, seed=0, n_voc_train=150, n_voc_val=50, n_sbd_train=100,
                       n_sbd_val=20, sbd_overlap_val=5, n_coco_train=150, n_coco_val=20,
                       progress=False)
    files = {}
    for p in sorted(root.rglob("*.jpg")):
        files.setdefault(p.stem, p)
    return [decode_image(p).rgb for p in files.values()]


def test_near_duplicate_copies_are_found(synthetic_images):
    originals = synthetic_images[:40]
    ref = [perceptual_hash(x) for x in originals]
    for kind in ("jpeg_q90", "resized", "cropped"):
        query = [perceptual_hash(_copies(x)[kind]) for x in originals]
        hits = near_duplicates(query, ref)
        assert [h[0] if h else None for h in hits] == list(range(len(originals))), kind
        assert all(h[1] <= NEAR_DUPLICATE_BITS for h in hits)


def test_no_false_positive_near_duplicate_on_the_synthetic_data(synthetic_images):
    hashes = [perceptual_hash(x) for x in synthetic_images]
    assert len(hashes) >= 400
    for k in range(len(hashes)):
        others = hashes[:k] + [None] + hashes[k + 1:]
        assert near_duplicates([hashes[k]], others) == [None], k


# ----------------------------------------------------------------------------- COCO as it comes
def test_greyscale_and_cmyk_coco_images_go_through_prepare_validate_and_pretraining(tmp_path):
    """COCO 2017 holds greyscale JPEGs (and users' trees CMYK ones): prepare lists them, the
    validate suite passes them (it checks what the reader returns) and the pretraining dataset
    reads them as RGB."""
    from deeplab_core.config import ValidateConfig
    from pipelines.stages.expectations import run_suite

    write_voc(tmp_path / "raw", TRAIN, VAL)
    images = [{"id": k, "height": 40, "width": 60} for k in (1, 2, 3)]
    anns = [{"image_id": k, "category_id": 18, "segmentation": [box(5, 5, 40, 30)]}
            for k in (1, 2, 3)]
    coco = tmp_path / "raw" / "coco"
    write_coco(coco, "train", images, anns)
    write_coco(coco, "val", images[:1], anns[:1])
    shown = smooth_image(9, 40, 60)
    write_grey_jpeg(coco / "train2017" / "000000000001.jpg", shown)
    write_cmyk_jpeg(coco / "train2017" / "000000000002.jpg", shown)
    out = tmp_path / "prepared"
    prepare_datasets(tmp_path / "raw" / "VOCdevkit", None, coco, out, progress=False,
                     coco_min_area=50)
    recs = build_manifest(out / "coco_train.txt", palette=voc_palette())
    assert [r["image_mode"] for r in recs] == ["L", "CMYK", "RGB"]
    import pandas as pd

    result = run_suite(pd.DataFrame.from_records(recs), ValidateConfig(), 1, "coco_train", 3)
    assert result["success"], result["failures"]
    ds = SegmentationListDataset(out / "coco_train.txt")
    for k in range(3):
        item = ds[k]
        assert item["image"].shape == (3, 40, 60) and item["label"].shape == (40, 60)
        assert int((item["label"] == 12).sum()) > 500  # the dog, VOC class 12


def test_class_list_with_a_non_utf8_byte_or_bad_json_names_the_line(tmp_path):
    from deeplab_core.classes import load_class_list

    path = tmp_path / "classes.json"
    path.write_bytes(b'{"names": ["background",\n "caf\xe9"]}')  # Latin-1, as old editors save
    with pytest.raises(ValueError) as exc:
        load_class_list(path)
    assert str(path) in str(exc.value) and "(line 2)" in str(exc.value)
    assert "byte 0xe9" in str(exc.value)
    assert "rule: a class list is UTF-8 JSON" in str(exc.value)
    path.write_text('{"names": ["background"\n "x"]}')
    with pytest.raises(ValueError, match=r"\(line 2\): Expecting ',' delimiter: line 2 column 2"):
        load_class_list(path)
