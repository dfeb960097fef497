"""PASCAL VOC 2012 val mIoU (%) as the DeepLab papers print them, transcribed for the tests
independently of the presets and grids (which must agree with it, not the other way round).

`checked` is True for the figures whose table and value were checked against the paper text by
the project's review (issue 19 lists them); False for figures transcribed from memory of the
papers and not checked against the text: presets and grids mark those "(unverified)".

Papers: v1 = Chen et al., ICLR 2015 (DeepLab-CRF); v2 = TPAMI 2017 (DeepLab, ASPP); v3 = arXiv
1706.05587 (Rethinking atrous convolution); v3+ = ECCV 2018 (encoder-decoder, Xception).
"""

from __future__ import annotations

from typing import NamedTuple


class Figure(NamedTuple):
    paper: str
    table: str
    miou: float
    row: str
    checked: bool


FIGURES: tuple[Figure, ...] = (
    # v1: VGG-16, train_aug, no COCO
    Figure("v1", "Table 1", 62.25, "DeepLab-LargeFOV (fc6 3x3 rate 12, 1024 channels), "
           "before the CRF", False),
    Figure("v1", "Table 1", 67.64, "DeepLab-CRF-LargeFOV", False),
    Figure("v1", "Table 2", 67.64, "DeepLab-CRF-LargeFOV (field-of-view table)", False),
    # v2: ASPP on VGG-16 (train_aug, no COCO), before / after the CRF
    Figure("v2", "Table 3", 65.76, "VGG-16 LargeFOV, before CRF", False),
    Figure("v2", "Table 3", 69.84, "VGG-16 LargeFOV, after CRF", False),
    Figure("v2", "Table 3", 66.98, "VGG-16 ASPP-S (rates 2,4,8,12), before CRF", False),
    Figure("v2", "Table 3", 69.73, "VGG-16 ASPP-S, after CRF", False),
    Figure("v2", "Table 3", 68.96, "VGG-16 ASPP-L (rates 6,12,18,24), before CRF", False),
    Figure("v2", "Table 3", 71.57, "VGG-16 ASPP-L, after CRF", False),
    # v2: ResNet-101 + MSC + COCO + Aug + ASPP-L
    Figure("v2", "Table 4", 76.35, "ResNet-101 + MSC + COCO + Aug + ASPP-L, before CRF", False),
    Figure("v2", "Table 4", 77.69, "ResNet-101 + MSC + COCO + Aug + ASPP-L, after CRF", False),
    # v3 Table 2: cascaded blocks, ResNet-101, output stride 16, no multi-grid
    Figure("v3", "Table 2", 68.39, "ResNet-101 block4", False),
    Figure("v3", "Table 2", 73.21, "ResNet-101 up to block5", False),
    Figure("v3", "Table 2", 75.34, "ResNet-101 up to block6", False),
    Figure("v3", "Table 2", 75.76, "ResNet-101 up to block7", False),
    # v3 Table 3: multi-grid on the cascaded ResNet-101, output stride 16
    Figure("v3", "Table 3", 76.66, "block7, multi-grid (1,2,1), train and eval OS16", True),
    # v3 Table 4: inference strategy of the block7 MG(1,2,1) model
    Figure("v3", "Table 4", 76.66, "block7 MG(1,2,1): train OS16, eval OS16", True),
    Figure("v3", "Table 4", 78.05, "block7 MG(1,2,1): eval OS8", True),
    Figure("v3", "Table 4", 78.93, "block7 MG(1,2,1): eval OS8 + multi-scale", True),
    Figure("v3", "Table 4", 79.35, "block7 MG(1,2,1): eval OS8 + multi-scale + flip", True),
    # v3 Table 5: ASPP with multi-grid and image pooling, output stride 16
    Figure("v3", "Table 5", 75.36, "MG(1,1,1), ASPP(6,12,18), no image pooling", False),
    Figure("v3", "Table 5", 75.93, "MG(1,2,4), ASPP(6,12,18), no image pooling", False),
    Figure("v3", "Table 5", 77.21, "MG(1,2,4), ASPP(6,12,18) + image pooling", True),
    # v3 Table 6: inference strategy of the ASPP model
    Figure("v3", "Table 6", 77.21, "ASPP model: train OS16, eval OS16", True),
    Figure("v3", "Table 6", 78.51, "ASPP model: eval OS8", False),
    Figure("v3", "Table 6", 79.45, "ASPP model: eval OS8 + multi-scale", False),
    Figure("v3", "Table 6", 79.77, "ASPP model: eval OS8 + multi-scale + flip", False),
    Figure("v3", "Table 6", 82.70, "ASPP model pretrained on COCO, eval OS8 + MS + flip", True),
    # v3+ Table 5: Xception-65 encoder, ImageNet-1K pretraining
    Figure("v3+", "Table 5", 79.17, "Xception-65 (ImageNet-1K), no decoder, train and eval "
           "OS16, single scale", True),
)


def figures_of(paper: str) -> set[tuple[str, float]]:
    """{(table, mIoU)} of one paper."""
    return {(f.table, f.miou) for f in FIGURES if f.paper == paper}


def checked(paper: str, table: str, miou: float) -> bool:
    return any(f.checked for f in FIGURES
               if (f.paper, f.table, f.miou) == (paper, table, miou))
