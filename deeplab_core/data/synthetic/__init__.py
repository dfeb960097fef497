"""Deterministic synthetic stand-ins for PASCAL VOC 2012, SBD and COCO 2017, in their real formats.

:func:`generate_synthetic` writes, under ``root``::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg                (every VOC-style id, SBD ones included)
    VOCdevkit/VOC2012/SegmentationClass/<id>.png         palette PNG, 0..20 + 255 boundary band
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    benchmark_RELEASE/dataset/img/<id>.jpg
    benchmark_RELEASE/dataset/cls/<id>.mat               GTcls struct (Segmentation, Boundaries,
                                                         CategoriesPresent)
    benchmark_RELEASE/dataset/{train,val}.txt
    coco/{train2017,val2017}/<012d id>.jpg
    coco/annotations/instances_{train,val}2017.json      80 categories, polygons, list RLE crowds
    synthetic_summary.json

Scenes are built so that colour alone does not identify a class: every class has a shape family
(aeroplane = cross, bottle = tall narrow body with a neck, bicycle = two thin rings and a thin
frame, ...), object colours come from wide, overlapping distributions, the background is textured
and holds unlabelled clutter (including non-VOC objects), and classes appear in their usual
context (aeroplanes in the sky, boats on water, sofas and tables indoors, objects lower in the
frame are larger). The hard classes (bicycle, chair, diningtable, pottedplant, sofa) are drawn
about half as often as the others and have 1-3 px structures (spokes, legs, stems) next to parts
a network can see at 96x128 (2-3 px tyres and frame, a seat and often a solid back, a table top a
few pixels deep, a pot under a clump of foliage). Look-alike classes carry a cue of their own
(cats are striped, dogs wear a collar). Objects have hard edges in the image (a dense CRF can
snap to them); the image then gets a mild blur, noise and JPEG compression.

Every image depends only on ``(seed, dataset, id)``, so the output is byte-identical for a seed.

The package: :mod:`.shapes` (the shape-drawing kit and the shape of every class),
:mod:`.scenes` (scene sampling and rendering, the labels read off a scene) and :mod:`.writers`
(the VOC/SBD/COCO on-disk writers and :func:`generate_synthetic`).
"""

from deeplab_core.data.synthetic.scenes import (Scene, SceneObject, class_map, render_scene,
                                                voc_label_from_scene)
from deeplab_core.data.synthetic.writers import DEFAULT_IMAGE_SIZE, generate_synthetic

__all__ = ["DEFAULT_IMAGE_SIZE", "Scene", "SceneObject", "class_map", "generate_synthetic",
           "render_scene", "voc_label_from_scene"]
