"""COCO RLE / polygon handling and VOC semantic masks."""

import json

import numpy as np
import pytest

from deeplab_core.classes import COCO_TO_VOC, IGNORE_INDEX
from deeplab_core.data.coco import (annotation_to_mask, coco_paths, coco_semantic_mask,
                                    images_with_voc_classes, load_coco_instances, mask_bbox,
                                    polygon_to_mask, polygons_to_mask, rle_area,
                                    rle_counts_to_string, rle_decode, rle_encode,
                                    rle_string_to_counts, rle_to_compressed)


def test_rle_is_column_major_and_starts_with_zeros():
    m = np.zeros((3, 4), bool)
    m[0, 0] = True            # first pixel set: counts start with a zero-length run
    m[1:3, 2] = True          # column-major runs
    rle = rle_encode(m)
    assert rle == {"counts": [0, 1, 6, 2, 3], "size": [3, 4]}
    assert np.array_equal(rle_decode(rle), m)
    assert rle_encode(np.zeros((2, 2), bool))["counts"] == [4]


@pytest.mark.parametrize("seed", range(5))
def test_rle_roundtrip_list_and_string(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 60, 2)
    m = rng.random((h, w)) < rng.uniform(0.05, 0.9)
    if seed == 0:
        m = np.zeros((h, w), bool)
        m[5:40, 3:20] = True  # long runs -> multi-character groups
    rle = rle_encode(m)
    assert np.array_equal(rle_decode(rle), m)
    comp = rle_to_compressed(rle)
    assert isinstance(comp["counts"], str)
    assert rle_string_to_counts(comp["counts"]) == rle["counts"]
    assert np.array_equal(rle_decode(comp), m)
    assert rle_area(comp) == rle_area(rle) == int(m.sum())


def test_rle_string_handles_negative_deltas_and_large_counts():
    counts = [0, 250000, 3, 7, 1, 400000, 2, 2, 90000, 1]
    s = rle_counts_to_string(counts)
    assert s.isascii() and all(48 <= ord(c) < 48 + 64 for c in s)
    assert rle_string_to_counts(s) == counts
    assert rle_counts_to_string([3]) == "3"


def test_rle_decode_rejects_bad_input():
    with pytest.raises(ValueError):
        rle_decode({"counts": [5, 10], "size": [2, 2]})
    with pytest.raises(ValueError):
        rle_decode({"counts": [1]})


def test_square_polygon_area_is_exact():
    m = polygon_to_mask([10, 10, 20, 10, 20, 20, 10, 20], 40, 40)
    assert m.sum() == 100
    assert m[10:20, 10:20].all()
    assert mask_bbox(m) == [10.0, 10.0, 10.0, 10.0]
    # (N, 2) arrays and either orientation give the same
    m2 = polygon_to_mask(np.array([[10, 10], [10, 20], [20, 20], [20, 10]]), 40, 40)
    assert np.array_equal(m, m2)


def test_polygon_clipping_and_shapes():
    assert polygon_to_mask([-5, -5, 5, -5, 5, 5, -5, 5], 10, 10).sum() == 25
    tri = polygon_to_mask([0, 0, 40, 0, 0, 40], 50, 50)
    assert abs(tri.sum() - 800) <= 40
    assert polygon_to_mask([1, 1, 2, 2], 5, 5).sum() == 0  # degenerate
    union = polygons_to_mask([[0, 0, 4, 0, 4, 4, 0, 4], [2, 2, 6, 2, 6, 6, 2, 6]], 10, 10)
    assert union.sum() == 16 + 16 - 4


def test_annotation_to_mask_all_forms():
    m = np.zeros((8, 9), bool)
    m[2:6, 3:7] = True
    poly = {"segmentation": [[3, 2, 7, 2, 7, 6, 3, 6]], "iscrowd": 0}
    lst = {"segmentation": rle_encode(m), "iscrowd": 1}
    comp = {"segmentation": rle_to_compressed(rle_encode(m)), "iscrowd": 0}
    for ann in (poly, lst, comp):
        assert np.array_equal(annotation_to_mask(ann, 8, 9), m)
    with pytest.raises(ValueError, match="size"):
        annotation_to_mask(lst, 9, 8)


def test_semantic_mask_maps_classes_background_and_crowd():
    h, w = 20, 20
    person = {"category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]}
    elephant = {"category_id": 22, "iscrowd": 0, "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]]}
    crowd_m = np.zeros((h, w), bool)
    crowd_m[0:10, 10:20] = True
    crowd_m[5:8, 5:8] = True  # overlaps the person: the person keeps its label
    sheep_crowd = {"category_id": 20, "iscrowd": 1, "segmentation": rle_encode(crowd_m)}
    kite_crowd = {"category_id": 38, "iscrowd": 1,
                  "segmentation": rle_encode(np.ones((h, w), bool))}
    chair = {"category_id": 62, "iscrowd": 0, "segmentation": [[12, 12, 16, 12, 16, 16, 12, 16]]}
    lab = coco_semantic_mask([person, elephant, sheep_crowd, kite_crowd, chair], h, w, COCO_TO_VOC)
    assert lab.dtype == np.uint8 and lab.shape == (h, w)
    assert (lab[0:10, 0:10] == 15).all()            # person -> VOC 15
    assert (lab[0:10, 10:20] == IGNORE_INDEX).all()  # VOC-category crowd -> ignore
    assert (lab[12:16, 12:16] == 9).all()            # chair (COCO 62) -> VOC 9
    rest = lab[10:20, 10:20].copy()
    rest[2:6, 2:6] = 0
    assert (rest == 0).all()                         # elephant and kite crowd -> background


def test_semantic_mask_overlap_modes():
    a = {"category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 6, 0, 6, 6, 0, 6]]}
    b = {"category_id": 18, "iscrowd": 0, "segmentation": [[3, 3, 9, 3, 9, 9, 3, 9]]}
    last = coco_semantic_mask([a, b], 10, 10)
    assert last[4, 4] == 12 and last[1, 1] == 15
    ign = coco_semantic_mask([a, b], 10, 10, overlap="ignore")
    assert ign[4, 4] == IGNORE_INDEX and ign[1, 1] == 15 and ign[8, 8] == 12


def test_load_instances_and_filter(tmp_path):
    doc = {"images": [{"id": 1, "file_name": "000000000001.jpg", "height": 10, "width": 10},
                      {"id": 2, "file_name": "000000000002.jpg", "height": 10, "width": 10},
                      {"id": 3, "file_name": "000000000003.jpg", "height": 10, "width": 10}],
           "annotations": [
               {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 16.0,
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
               {"id": 2, "image_id": 2, "category_id": 22, "iscrowd": 0, "area": 16.0,
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
               {"id": 3, "image_id": 3, "category_id": 1, "iscrowd": 1, "area": 4.0,
                "segmentation": rle_encode(np.eye(10, dtype=bool))}],
           "categories": [{"id": 1, "name": "person"}, {"id": 22, "name": "elephant"}]}
    p = tmp_path / "instances_train2017.json"
    p.write_text(json.dumps(doc))
    inst = load_coco_instances(p)
    assert inst.image_ids() == [1, 2, 3] and len(inst.anns(1)) == 1 and inst.anns(99) == []
    assert images_with_voc_classes(inst) == [1]     # crowd-only and non-VOC images dropped
    assert inst.semantic_mask(1).sum() == 16 * 15


def test_load_instances_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_instances(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_coco_instances(bad)
    bad.write_text("{}")
    with pytest.raises(ValueError, match="missing key"):
        load_coco_instances(bad)
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        coco_paths(tmp_path, "val")


def _reference_raster(poly, h, w):
    """Brute-force even-odd test of every pixel centre."""
    xy = np.asarray(poly, float).reshape(-1, 2)
    py, px = np.mgrid[0:h, 0:w] + 0.5
    inside = np.zeros((h, w), bool)
    for (xa, ya), (xb, yb) in zip(xy, np.roll(xy, -1, axis=0)):
        if ya == yb:
            continue
        crosses = (ya > py) != (yb > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_int = xa + (py - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (px < x_int)
    return inside


@pytest.mark.parametrize("seed", range(12))
def test_polygon_raster_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    h, w = 37, 53
    n = int(rng.integers(3, 40))
    if seed % 3 == 0:  # star-like, possibly self-intersecting, partly outside, on half pixels
        pts = rng.uniform(-10, 60, (n, 2))
    elif seed % 3 == 1:
        a = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(5, 20, n)
        pts = np.stack([26 + r * np.cos(a), 18 + r * np.sin(a)], 1)
    else:
        pts = rng.integers(0, 40, (n, 2)).astype(float) + rng.choice([0.0, 0.5], (n, 2))
    assert np.array_equal(polygon_to_mask(pts.ravel(), h, w), _reference_raster(pts, h, w))
