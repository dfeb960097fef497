"""Dataset readers (VOC 2012, SBD, COCO 2017, generic image/mask folders), the synthetic data
generator, the prepare step (train_aug lists), transforms, the torch dataset, bootstrapping lists and data manifests.

Names are loaded on first use, so that reading data does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # io
    "DataError": "io", "ImageReadError": "io", "read_image_rgb": "io", "read_label_png": "io",
    "decode_image": "io", "read_sample": "io",
    "read_list_file": "io", "write_list_file": "io", "write_label_png": "io",
    # readers
    "read_split": "voc", "load_voc_image": "voc", "load_voc_label": "voc",
    "resolve_voc_root": "voc",
    "read_sbd_split": "sbd", "load_sbd_label": "sbd", "load_sbd_image": "sbd",
    "resolve_sbd_root": "sbd",
    "load_coco_instances": "coco", "coco_semantic_mask": "coco", "images_with_voc_classes": "coco",
    "rle_encode": "coco", "rle_decode": "coco", "polygon_to_mask": "coco",
    "polygons_to_mask": "coco", "annotation_to_mask": "coco", "CocoInstances": "coco",
    # generation / preparation
    "generate_synthetic": "synthetic", "prepare_datasets": "prepare", "trainaug_ids": "prepare",
    "read_generic_sources": "generic", "prepare_generic": "generic",
    "write_example_dataset": "generic",
    # torch side
    "IMAGENET_MEAN": "transforms", "IMAGENET_STD": "transforms", "train_transform": "transforms",
    "eval_transform": "transforms", "SegmentationListDataset": "dataset", "pad_collate": "dataset",
    # lists and manifests
    "hard_image_list": "bootstrap", "write_hard_list": "bootstrap", "read_hard_list": "bootstrap",
    "build_manifest": "manifest", "write_manifest_jsonl": "manifest",
    "write_manifest_csv": "manifest", "class_frequencies": "manifest",
    "perceptual_hash": "manifest", "near_duplicates": "manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
