"""Synthetic generator: determinism, real on-disk formats, overlaps, class balance."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from deeplab_core.classes import COCO_CATEGORIES, COCO_TO_VOC, HARD_CLASS_IDS, voc_palette
from deeplab_core.data.synthetic import generate_synthetic

TINY = dict(image_size=(48, 64), n_voc_train=24, n_voc_val=8, n_sbd_train=20, n_sbd_val=6,
            n_coco_train=12, n_coco_val=4, sbd_overlap_val=4, progress=False)


def _tree_digest(root: Path, pattern: str = "**/*") -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.glob(pattern)) if p.is_file()}


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    summary = generate_synthetic(root, seed=3, **TINY)
    return root, summary


def test_same_seed_gives_identical_bytes(syn, tmp_path):
    root, _ = syn
    again = tmp_path / "again"
    generate_synthetic(again, seed=3, **TINY)
    a, b = _tree_digest(root), _tree_digest(again)
    labels = [k for k in a if k.endswith(".png")]
    assert labels and all(a[k] == b[k] for k in labels)
    assert a == b  # images, .mat files and JSON too


def test_other_seed_differs(syn, tmp_path):
    root, _ = syn
    other = tmp_path / "other"
    generate_synthetic(other, seed=4, **TINY)
    assert _tree_digest(root, "**/*.png") != _tree_digest(other, "**/*.png")


def test_rerun_replaces_and_leaves_no_temporaries(tmp_path):
    kw = dict(TINY, n_voc_train=6, n_voc_val=3, n_sbd_train=4, n_sbd_val=2, sbd_overlap_val=1,
              sbd_overlap_train=1, n_coco_train=2, n_coco_val=1)
    generate_synthetic(tmp_path, seed=0, **kw)
    stale = tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "stale.jpg"
    stale.write_bytes(b"x")
    generate_synthetic(tmp_path, seed=0, **kw)
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "VOCdevkit", "benchmark_RELEASE", "coco", "synthetic_summary.json"]


def test_voc_layout_and_palette_png(syn):
    root, summary = syn
    voc = root / "VOCdevkit" / "VOC2012"
    sets = voc / "ImageSets" / "Segmentation"
    train = sets.joinpath("train.txt").read_text().split()
    val = sets.joinpath("val.txt").read_text().split()
    trainval = sets.joinpath("trainval.txt").read_text().split()
    assert len(train) == 24 and len(val) == 8 and sorted(train + val) == trainval
    assert not set(train) & set(val)
    assert all(len(i) == 11 and i[4] == "_" and i[:4].isdigit() and i[5:].isdigit() for i in train)
    pal = voc_palette()
    seen = set()
    for i in train + val:
        img = Image.open(voc / "SegmentationClass" / f"{i}.png")
        assert img.mode == "P"
        got = np.frombuffer(bytes(img.getpalette()), np.uint8).reshape(-1, 3)
        assert np.array_equal(got[:256], pal[:len(got)])
        lab = np.asarray(img)
        vals = set(np.unique(lab).tolist())
        assert vals <= set(range(21)) | {255}
        seen |= vals
        jpg = Image.open(voc / "JPEGImages" / f"{i}.jpg")
        assert jpg.format == "JPEG" and jpg.mode == "RGB" and jpg.size == img.size
    assert 255 in seen and len(seen - {0, 255}) >= 5


def test_void_band_is_thin_and_on_boundaries(syn):
    root, _ = syn
    voc = root / "VOCdevkit" / "VOC2012"
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    for i in ids:
        lab = np.asarray(Image.open(voc / "SegmentationClass" / f"{i}.png"))
        fg = (lab > 0) & (lab < 255)
        if not fg.any():
            continue
        band = lab == 255
        # the band is a thin ring: far fewer pixels than the objects, and it touches them
        assert band.sum() < fg.sum() * 1.5 + 40
        from scipy import ndimage
        assert (band & ~ndimage.binary_dilation(fg, iterations=2)).sum() <= 0.1 * band.sum() + 12


def test_sbd_mat_has_real_gtcls_layout(syn):
    root, _ = syn
    ds = root / "benchmark_RELEASE" / "dataset"
    train = (ds / "train.txt").read_text().split()
    val = (ds / "val.txt").read_text().split()
    assert len(train) == 20 and len(val) == 6
    m = scipy.io.loadmat(ds / "cls" / f"{train[0]}.mat")
    gt = m["GTcls"][0, 0]
    assert set(gt.dtype.names) == {"Segmentation", "Boundaries", "CategoriesPresent"}
    seg = gt["Segmentation"]
    assert seg.dtype == np.uint8 and seg.ndim == 2
    assert set(np.unique(seg).tolist()) <= set(range(21))  # no 255 band in SBD
    b = gt["Boundaries"]
    assert b.shape == (20, 1) and b.dtype == object
    assert all(scipy.sparse.issparse(b[k, 0]) and b[k, 0].shape == seg.shape for k in range(20))
    present = sorted(int(c) for c in gt["CategoriesPresent"].ravel())
    assert present == sorted(set(np.unique(seg).tolist()) - {0})
    for c in present:  # boundary of a present class lies on that class
        bk = b[c - 1, 0].toarray().astype(bool)
        assert bk.any() and np.all(seg[bk] == c)
    img = Image.open(ds / "img" / f"{train[0]}.jpg")
    assert img.size == (seg.shape[1], seg.shape[0])


def test_sbd_overlaps_voc_val_with_same_image(syn):
    root, summary = syn
    voc = root / "VOCdevkit" / "VOC2012"
    ds = root / "benchmark_RELEASE" / "dataset"
    val = set((voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split())
    sbd_train = set((ds / "train.txt").read_text().split())
    sbd_all = sbd_train | set((ds / "val.txt").read_text().split())
    overlap = sbd_all & val
    assert len(overlap) == 4 and sbd_train & val
    assert sorted(overlap) == summary["sbd"]["overlap_voc_val"]
    for i in overlap:
        assert (voc / "JPEGImages" / f"{i}.jpg").read_bytes() == (ds / "img" / f"{i}.jpg").read_bytes()
        voc_lab = np.asarray(Image.open(voc / "SegmentationClass" / f"{i}.png"))
        sbd_lab = scipy.io.loadmat(ds / "cls" / f"{i}.mat")["GTcls"][0, 0]["Segmentation"]
        keep = voc_lab != 255
        assert np.array_equal(voc_lab[keep], sbd_lab[keep])
    # SBD-only ids exist too, with their images also under JPEGImages (as in VOC2012)
    trainval = set((voc / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split())
    only = sbd_all - trainval
    assert only and all((voc / "JPEGImages" / f"{i}.jpg").is_file() for i in only)


def test_coco_json_categories_polygons_and_crowd_rle(syn):
    root, _ = syn
    for split, n in (("train", 12), ("val", 4)):
        doc = json.loads((root / "coco" / "annotations" / f"instances_{split}2017.json").read_text())
        assert [(c["id"], c["name"]) for c in doc["categories"]] == list(COCO_CATEGORIES)
        assert len(doc["categories"]) == 80
        assert len(doc["images"]) == n
        for im in doc["images"]:
            assert im["file_name"] == f"{im['id']:012d}.jpg"
            assert (root / "coco" / f"{split}2017" / im["file_name"]).is_file()
        ids = {im["id"]: im for im in doc["images"]}
        for a in doc["annotations"]:
            assert a["image_id"] in ids and a["area"] > 0 and len(a["bbox"]) == 4
            if a["iscrowd"]:
                seg = a["segmentation"]
                assert isinstance(seg["counts"], list)
                im = ids[a["image_id"]]
                assert seg["size"] == [im["height"], im["width"]]
                assert sum(seg["counts"]) == im["height"] * im["width"]
            else:
                assert isinstance(a["segmentation"], list)
                assert all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])


def test_coco_has_voc_and_non_voc_categories_and_crowds(tmp_path):
    generate_synthetic(tmp_path, seed=1, image_size=(48, 64), n_voc_train=2, n_voc_val=1,
                       n_sbd_train=1, n_sbd_val=0, sbd_overlap_val=0, sbd_overlap_train=0,
                       n_coco_train=60, n_coco_val=2, progress=False)
    doc = json.loads((tmp_path / "coco/annotations/instances_train2017.json").read_text())
    cats = {a["category_id"] for a in doc["annotations"]}
    assert cats & set(COCO_TO_VOC) and cats - set(COCO_TO_VOC)
    assert any(a["iscrowd"] for a in doc["annotations"])
    with_voc = {a["image_id"] for a in doc["annotations"] if a["category_id"] in COCO_TO_VOC}
    assert len(with_voc) < len(doc["images"])  # some images hold no VOC class


def test_hard_classes_are_rarer(tmp_path):
    s = generate_synthetic(tmp_path, seed=0, image_size=(48, 64), n_voc_train=150, n_voc_val=30,
                           n_sbd_train=30, n_sbd_val=10, n_coco_train=20, n_coco_val=4,
                           sbd_overlap_val=4, progress=False)
    counts = np.array([sum(s["class_images"][k][name] for k in ("voc", "sbd", "coco"))
                       for name in s["class_images"]["voc"]])
    hard = counts[list(HARD_CLASS_IDS)]
    easy = counts[[c for c in range(1, 21) if c not in HARD_CLASS_IDS]]
    assert hard.min() > 0
    assert hard.mean() < 0.7 * easy.mean()
    assert hard.max() < np.median(easy)


def test_default_size_is_fast_enough(tmp_path):
    import time
    t = time.process_time()  # CPU time: robust to other load on the machine
    generate_synthetic(tmp_path, seed=0, n_voc_train=20, n_voc_val=6, n_sbd_train=16, n_sbd_val=4,
                       n_coco_train=20, n_coco_val=4, sbd_overlap_val=2, progress=False)
    per_image = (time.process_time() - t) / (26 + 16 + 24)
    assert per_image < 0.05  # the default ~700-image dataset takes well under a minute
