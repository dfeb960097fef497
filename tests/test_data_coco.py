"""COCO decoding and rasterisation (pycocotools), the COCO -> VOC mask rules (overlaps of
different classes, crowds, the 1000 px rule) on instance files in the official format."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from deeplab_core.classes import COCO_TO_VOC, IGNORE_INDEX
from deeplab_core.data.coco import (annotation_to_mask, coco_paths, coco_semantic_mask,
                                    images_with_voc_classes, load_coco_instances, mask_bbox,
                                    polygon_to_mask, polygons_to_mask, rle_area, rle_decode,
                                    rle_encode, rle_to_compressed)
from deeplab_core.data.io import DataError, read_label_png, read_list_file
from deeplab_core.data.prepare import prepare_datasets
from realformat import box, write_coco, write_voc


def test_rle_is_column_major_and_starts_with_zeros():
    m = np.zeros((3, 4), bool)
    m[0, 0] = True            # first pixel set: counts start with a zero-length run
    m[1:3, 2] = True          # column-major runs
    rle = rle_encode(m)
    assert rle == {"counts": [0, 1, 6, 2, 3], "size": [3, 4]}
    assert np.array_equal(rle_decode(rle), m)
    assert rle_encode(np.zeros((2, 2), bool))["counts"] == [4]


@pytest.mark.parametrize("seed", range(5))
def test_rle_list_and_string_forms_match_pycocotools(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 60, 2)
    m = rng.random((h, w)) < rng.uniform(0.05, 0.9)
    rle = rle_encode(m)
    assert np.array_equal(rle_decode(rle), m)
    comp = rle_to_compressed(rle)
    ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    assert comp["counts"] == ref["counts"].decode("ascii")  # the official string form
    assert np.array_equal(rle_decode(comp), m)
    assert rle_area(comp) == rle_area(rle) == int(m.sum())


def test_rle_decode_rejects_bad_input():
    with pytest.raises(ValueError, match="sum to 15, expected h\\*w = 4"):
        rle_decode({"counts": [5, 10], "size": [2, 2]})
    with pytest.raises(ValueError, match="sum to 1"):   # pycocotools would return garbage
        rle_decode({"counts": [1], "size": [2, 2]})
    with pytest.raises(ValueError, match="size"):
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


def _random_polygon(rng, h, w):
    n = int(rng.integers(3, 30))
    a = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(3, min(h, w) / 2, n)
    return np.stack([w / 2 + r * np.cos(a), h / 2 + r * np.sin(a)], 1).round(2).ravel().tolist()


def test_masks_equal_pycocotools_annToMask_on_an_official_format_file(tmp_path):
    """Polygons (one and several parts, partly outside the image), list RLE crowds and
    compressed RLE: every mask equals what ``COCO.annToMask`` gives for the same file."""
    rng = np.random.default_rng(0)
    h, w = 47, 61
    crowd = rng.random((h, w)) < 0.3
    anns = [{"image_id": 1, "category_id": 1, "segmentation": [_random_polygon(rng, h, w)]}
            for _ in range(20)]
    anns += [{"image_id": 1, "category_id": 18,
              "segmentation": [_random_polygon(rng, h, w), box(-5, -5, 12.5, 9.7)]},
             {"image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": rle_encode(crowd)},
             {"image_id": 1, "category_id": 17,
              "segmentation": rle_to_compressed(rle_encode(~crowd))}]
    path = write_coco(tmp_path, "train", [{"id": 1, "height": h, "width": w}], anns)
    ref = COCO(str(path))
    inst = load_coco_instances(path)
    for ann in inst.anns(1):
        assert np.array_equal(annotation_to_mask(ann, h, w), ref.annToMask(ann).astype(bool)), \
            ann["id"]


def test_overlap_of_different_classes_is_ignored_same_class_unites():
    person = {"category_id": 1, "segmentation": [box(0, 0, 6, 6)]}
    dog = {"category_id": 18, "segmentation": [box(3, 3, 9, 9)]}
    person2 = {"category_id": 1, "segmentation": [box(4, 0, 10, 3)]}
    lab = coco_semantic_mask([person, dog, person2], 10, 10)
    assert lab[1, 1] == 15 and lab[8, 8] == 12
    assert (lab[3:6, 3:6] == IGNORE_INDEX).all()      # person under dog: ambiguous
    assert (lab[0:3, 4:6] == 15).all()                 # person over person: one class
    assert (lab[0:3, 6:10] == 15).all()
    last = coco_semantic_mask([person, dog], 10, 10, overlap="last")
    assert last[4, 4] == 12


def test_crowd_rule():
    """A VOC-category crowd is 255 where no object covers it; objects keep their class over
    it; crowds of other categories are background."""
    h, w = 20, 20
    crowd_m = np.zeros((h, w), bool)
    crowd_m[0:10, 10:20] = True
    crowd_m[5:8, 5:8] = True
    person = {"category_id": 1, "segmentation": [box(0, 0, 10, 10)]}
    sheep_crowd = {"category_id": 20, "iscrowd": 1, "segmentation": rle_encode(crowd_m)}
    kite_crowd = {"category_id": 38, "iscrowd": 1,
                  "segmentation": rle_encode(np.ones((h, w), bool))}
    elephant = {"category_id": 22, "segmentation": [box(10, 10, 20, 20)]}
    lab = coco_semantic_mask([sheep_crowd, person, kite_crowd, elephant], h, w, COCO_TO_VOC)
    assert (lab[0:10, 0:10] == 15).all()
    assert (lab[0:10, 10:20] == IGNORE_INDEX).all()
    assert (lab[10:20, :] == 0).all()


def _coco_tree(tmp_path):
    """VOC (required by prepare) and a COCO train split of 64x64 images exercising the rules."""
    voc = write_voc(tmp_path / "raw", ["2008_000001", "2008_000002"], ["2008_000003"])
    s = 64
    images = [{"id": i, "height": s, "width": s} for i in range(1, 7)]
    many = np.zeros((s, s), bool)
    many[:, :40] = True
    anns = [
        {"image_id": 1, "category_id": 1, "segmentation": [box(0, 0, 30, 30)]},     # 900 px
        {"image_id": 2, "category_id": 1, "segmentation": [box(0, 0, 40, 30)]},     # 1200 px
        {"image_id": 3, "category_id": 1, "segmentation": [box(0, 0, 20, 30)]},     # 600 + 600
        {"image_id": 3, "category_id": 62, "segmentation": [box(30, 30, 50, 60)]},
        {"image_id": 4, "category_id": 1, "iscrowd": 1, "segmentation": rle_encode(many)},
        {"image_id": 4, "category_id": 18, "segmentation": [box(0, 0, 5, 5)]},      # 25 px
        {"image_id": 5, "category_id": 22, "segmentation": [box(0, 0, 60, 60)]},    # not VOC
        {"image_id": 6, "category_id": 1, "segmentation": [box(0, 0, 40, 40)]},     # 1600 px,
        {"image_id": 6, "category_id": 17, "segmentation": [box(0, 0, 40, 40)]},    # all 255
    ]
    coco = tmp_path / "raw" / "coco"
    write_coco(coco, "train", images, anns)
    write_coco(coco, "val", images[:1], anns[:1])
    return voc, coco


def test_prepare_keeps_coco_images_with_min_area_of_voc_pixels(tmp_path):
    voc, coco = _coco_tree(tmp_path)
    out = tmp_path / "prepared"
    summary = prepare_datasets(voc, None, coco, out, progress=False)
    rows = read_list_file(out / "coco_train.txt")
    assert [int(sid) for sid, _, _ in rows] == [2, 3]
    assert summary["coco"]["train"]["with_voc_classes"] == 5   # image 5: no VOC category
    assert summary["coco"]["train"]["dropped_under_min_area"] == 3
    lab = read_label_png(rows[1][2])
    assert (lab == 15).sum() == 600 and (lab == 9).sum() == 600
    summary = prepare_datasets(voc, None, coco, out, progress=False, coco_min_area=20)
    assert [int(s) for s, _, _ in read_list_file(out / "coco_train.txt")] == [1, 2, 3, 4]
    lab = read_label_png(read_list_file(out / "coco_train.txt")[3][2])
    assert (lab == 12).sum() == 25 and (lab == IGNORE_INDEX).sum() == 64 * 40 - 25


def test_undecodable_annotation_names_file_image_and_rule(tmp_path):
    voc, coco = _coco_tree(tmp_path)
    path = coco / "annotations" / "instances_train2017.json"
    doc = json.loads(path.read_text())
    doc["annotations"][1]["segmentation"] = {"counts": [5, 10], "size": [64, 64]}
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError) as ei:
        prepare_datasets(voc, None, coco, tmp_path / "prepared", progress=False, workers=2)
    msg = str(ei.value)
    assert str(path) in msg and "image id 2" in msg and "annotation 2" in msg
    assert "pycocotools" in msg and not (tmp_path / "prepared").exists()
