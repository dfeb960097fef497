"""VOC / SBD readers and image-reading errors."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab_core.classes import voc_palette
from deeplab_core.data.io import (ImageReadError, encode_label_png, read_image_rgb,
                                  read_label_png, read_list_file, write_list_file)
from deeplab_core.data.sbd import (load_sbd_image, load_sbd_label, read_gtcls, read_sbd_split,
                                   resolve_sbd_root)
from deeplab_core.data.synthetic import generate_synthetic
from deeplab_core.data.voc import (load_voc_image, load_voc_label, read_split, resolve_voc_root)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("readers")
    generate_synthetic(r, seed=5, image_size=(40, 56), n_voc_train=8, n_voc_val=4, n_sbd_train=6,
                       n_sbd_val=3, n_coco_train=2, n_coco_val=1, sbd_overlap_val=2,
                       progress=False)
    return r


def test_voc_root_forms_and_readers(root):
    a = resolve_voc_root(root)
    assert a == resolve_voc_root(root / "VOCdevkit") == resolve_voc_root(root / "VOCdevkit/VOC2012")
    train = read_split(root, "train")
    assert len(train) == 8 and read_split(a, "val") and len(read_split(a, "trainval")) == 12
    img = load_voc_image(root, train[0])
    lab = load_voc_label(root, train[0])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert lab.dtype == np.uint8 and lab.shape == img.shape[:2]
    assert np.array_equal(lab, np.asarray(Image.open(a / "SegmentationClass" / f"{train[0]}.png")))


def test_label_read_uses_palette_indices_not_colours(tmp_path):
    lab = np.zeros((4, 5), np.uint8)
    lab[1, 1], lab[2, 3], lab[0, 4] = 15, 255, 20
    p = tmp_path / "l.png"
    p.write_bytes(encode_label_png(lab))
    assert Image.open(p).mode == "P"
    assert np.array_equal(read_label_png(p), lab)
    # a palette with arbitrary colours still gives the indices
    img = Image.open(p)
    img.putpalette(bytes(range(256)) * 3)
    img.save(tmp_path / "odd.png")
    assert np.array_equal(read_label_png(tmp_path / "odd.png"), lab)
    # an RGB rendering of a label is refused instead of being guessed
    Image.fromarray(voc_palette()[lab]).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match="rgb.png"):
        read_label_png(tmp_path / "rgb.png")


def test_missing_paths_raise_file_not_found_naming_them(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="expected VOC2012 layout.*JPEGImages"):
        resolve_voc_root(tmp_path / "absent")
    fake = tmp_path / "VOC2012"
    (fake / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/train\.txt"):
        read_split(fake, "train")
    with pytest.raises(FileNotFoundError, match="2099_000001.jpg"):
        load_voc_image(root, "2099_000001")
    with pytest.raises(FileNotFoundError, match=r"SegmentationClass.2099_000001\.png"):
        load_voc_label(root, "2099_000001")
    with pytest.raises(FileNotFoundError, match="expected SBD layout"):
        resolve_sbd_root(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="2099_000001.mat"):
        load_sbd_label(root, "2099_000001")
    with pytest.raises(FileNotFoundError, match="missing image file.*nothing.jpg"):
        read_image_rgb(tmp_path / "nothing.jpg")


def test_corrupt_and_truncated_images_give_clear_errors(root, tmp_path):
    good = next((resolve_voc_root(root) / "JPEGImages").glob("*.jpg"))
    trunc = tmp_path / "truncated.jpg"
    trunc.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a jpeg at all" * 10)
    for p in (trunc, junk):
        with pytest.raises(ImageReadError) as ei:
            read_image_rgb(p)
        assert str(p) in str(ei.value) and "cannot read image file" in str(ei.value)
        assert isinstance(ei.value, ValueError)
    bad_label = tmp_path / "bad.png"
    bad_label.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_label_png(bad_label)


def test_grayscale_image_is_converted_to_rgb(tmp_path):
    Image.fromarray(np.full((6, 7), 90, np.uint8)).save(tmp_path / "g.jpg")
    img = read_image_rgb(tmp_path / "g.jpg")
    assert img.shape == (6, 7, 3)


def test_sbd_readers(root):
    ds = resolve_sbd_root(root)
    assert ds == resolve_sbd_root(root / "benchmark_RELEASE") == resolve_sbd_root(ds)
    train = read_sbd_split(root, "train")
    assert len(train) == 6 and len(read_sbd_split(root, "val")) == 3
    lab = load_sbd_label(root, train[0])
    img = load_sbd_image(root, train[0])
    assert lab.dtype == np.uint8 and lab.shape == img.shape[:2] and lab.max() <= 20
    assert read_gtcls(ds / "cls" / f"{train[0]}.mat")["Segmentation"].shape == lab.shape
    corrupt = root / "corrupt.mat"
    corrupt.write_bytes(b"MATLAB nonsense")
    with pytest.raises(ValueError, match="corrupt.mat"):
        read_gtcls(corrupt)


def test_list_file_roundtrip_and_resolution(tmp_path):
    lf = tmp_path / "sub" / "l.txt"
    write_list_file(lf, [("a", "../img/a.jpg", "labels/a.png"), ("b", "/abs/b.jpg", "b.png")])
    rows = read_list_file(lf)
    assert rows[0] == ("a", lf.parent / "../img/a.jpg", lf.parent / "labels/a.png")
    assert str(rows[1][1]) == "/abs/b.jpg"
    assert read_list_file(lf, data_root="/base")[0][2] == Path("/base/labels/a.png")
    with pytest.raises(ValueError):
        write_list_file(lf, [("a b", "x", "y")])
    lf.write_text("only two\n")
    with pytest.raises(ValueError, match="expected"):
        read_list_file(lf)
