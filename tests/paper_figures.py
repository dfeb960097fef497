"""PASCAL VOC 2012 val mIoU (%) as the DeepLab papers print them, transcribed for the tests
independently of the presets and grids (which must agree with it, not the other way round).

`checked` is True for the figures whose table, row and value were checked against the papers'
text (issue 19): v1's tables and v2's Tables 1, 3 and 4 against the papers' extracted text with
their table captions and the sentences that describe each row; v3's Tables 1-6 likewise (Table 5's
rows are ordered by the text: MG (1,2,1) beats (1,1,1), (1,2,4) beats both, rate 24 costs 0.12,
image pooling reaches 77.21); v3+'s Tables 3 and 5 likewise (Table 5's 81.39 is the row with
decoder, SC, eval OS8, MS and flip and no COCO, in the block the text calls the separable one).
False marks a figure not checked against the text: presets and grids
mark those "(unverified)".

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
           "before the CRF", True),
    Figure("v1", "Table 1", 67.64, "DeepLab-CRF-LargeFOV", True),
    Figure("v1", "Table 2", 67.64, "DeepLab-CRF-LargeFOV (field-of-view table)", True),
    # v2: ASPP on VGG-16 (train_aug, no COCO), before / after the CRF
    Figure("v2", "Table 3", 65.76, "VGG-16 LargeFOV, before CRF", True),
    Figure("v2", "Table 3", 69.84, "VGG-16 LargeFOV, after CRF", True),
    Figure("v2", "Table 3", 66.98, "VGG-16 ASPP-S (rates 2,4,8,12), before CRF", True),
    Figure("v2", "Table 3", 69.73, "VGG-16 ASPP-S, after CRF", True),
    Figure("v2", "Table 3", 68.96, "VGG-16 ASPP-L (rates 6,12,18,24), before CRF", True),
    Figure("v2", "Table 3", 71.57, "VGG-16 ASPP-L, after CRF", True),
    # v2 Table 4: ResNet-101 + MSC (scales 0.5, 0.75, 1, max fusion) + COCO + Aug (random scaling
    # 0.5-1.5) + ASPP; the text names the branch "ASPP" (ASPP-L's rates 6,12,18,24 in its Fig. 7)
    Figure("v2", "Table 4", 76.35, "ResNet-101 + MSC + COCO + Aug + ASPP, before CRF", True),
    Figure("v2", "Table 4", 77.69, "ResNet-101 + MSC + COCO + Aug + ASPP, after CRF", True),
    # v3 Table 2: cascaded blocks, ResNet-101, output stride 16, no multi-grid
    Figure("v3", "Table 2", 68.39, "ResNet-101 block4", True),
    Figure("v3", "Table 2", 73.21, "ResNet-101 up to block5", True),
    Figure("v3", "Table 2", 75.34, "ResNet-101 up to block6", True),
    Figure("v3", "Table 2", 75.76, "ResNet-101 up to block7", True),
    # v3 Table 1: ResNet-50 cascaded to block7, trained and evaluated at each output stride
    Figure("v3", "Table 1", 75.18, "ResNet-50 block7, output stride 8", True),
    Figure("v3", "Table 1", 73.88, "ResNet-50 block7, output stride 16", True),
    Figure("v3", "Table 1", 70.06, "ResNet-50 block7, output stride 32", True),
    # v3 Table 3: multi-grid on the cascaded ResNet-101, output stride 16 (block7 column)
    Figure("v3", "Table 3", 75.76, "block7, multi-grid (1,1,1)", True),
    Figure("v3", "Table 3", 76.11, "block7, multi-grid (1,2,3)", True),
    Figure("v3", "Table 3", 76.02, "block7, multi-grid (1,2,4)", True),
    Figure("v3", "Table 3", 74.62, "block7, multi-grid (2,2,2)", True),
    Figure("v3", "Table 3", 76.66, "block7, multi-grid (1,2,1), train and eval OS16", True),
    # v3 Table 4: inference strategy of the block7 MG(1,2,1) model
    Figure("v3", "Table 4", 76.66, "block7 MG(1,2,1): train OS16, eval OS16", True),
    Figure("v3", "Table 4", 78.05, "block7 MG(1,2,1): eval OS8", True),
    Figure("v3", "Table 4", 78.93, "block7 MG(1,2,1): eval OS8 + multi-scale", True),
    Figure("v3", "Table 4", 79.35, "block7 MG(1,2,1): eval OS8 + multi-scale + flip", True),
    # v3 Table 5: ASPP with multi-grid and image pooling, output stride 16
    Figure("v3", "Table 5", 75.36, "MG(1,1,1), ASPP(6,12,18), no image pooling", True),
    Figure("v3", "Table 5", 75.93, "MG(1,2,1), ASPP(6,12,18), no image pooling", True),
    Figure("v3", "Table 5", 76.58, "MG(1,2,4), ASPP(6,12,18), no image pooling", True),
    Figure("v3", "Table 5", 76.46, "MG(1,2,4), ASPP(6,12,18,24), no image pooling", True),
    Figure("v3", "Table 5", 77.21, "MG(1,2,4), ASPP(6,12,18) + image pooling", True),
    # v3 Table 6: inference strategy of the ASPP model
    Figure("v3", "Table 6", 77.21, "ASPP model: train OS16, eval OS16", True),
    Figure("v3", "Table 6", 78.51, "ASPP model: eval OS8", True),
    Figure("v3", "Table 6", 79.45, "ASPP model: eval OS8 + multi-scale", True),
    Figure("v3", "Table 6", 79.77, "ASPP model: eval OS8 + multi-scale + flip", True),
    Figure("v3", "Table 6", 82.70, "ASPP model pretrained on COCO, eval OS8 + MS + flip", True),
    # v3+ Table 3: ResNet-101 encoder (ImageNet), train OS16
    # v3+ Table 1: the decoder's 1x1 projection of the Conv2 features (ResNet-101, OS16, one
    # [3x3, 256] refinement), by its output channels
    *(Figure("v3+", "Table 1", v, f"decoder, low-level projection to {c} channels", False)
      for c, v in ((8, 77.61), (16, 77.92), (32, 78.16), (48, 78.21), (64, 77.94))),
    Figure("v3+", "Table 3", 77.21, "ResNet-101, no decoder, eval OS16, single scale", True),
    Figure("v3+", "Table 3", 78.85, "ResNet-101 + decoder, eval OS16, single scale", True),
    Figure("v3+", "Table 3", 80.57, "ResNet-101 + decoder, eval OS8 + multi-scale + flip", True),
    # v3+ Table 5: Xception-65 encoder, ImageNet-1K pretraining, train OS16, no COCO
    Figure("v3+", "Table 5", 79.17, "Xception-65 (ImageNet-1K), no decoder, train and eval "
           "OS16, single scale", True),
    Figure("v3+", "Table 5", 81.39, "Xception-65 (ImageNet-1K) + decoder + separable "
           "convolutions (SC), eval OS8 + multi-scale + flip", True),
)


def figures_of(paper: str) -> set[tuple[str, float]]:
    """{(table, mIoU)} of one paper."""
    return {(f.table, f.miou) for f in FIGURES if f.paper == paper}


def checked(paper: str, table: str, miou: float) -> bool:
    return any(f.checked for f in FIGURES
               if (f.paper, f.table, f.miou) == (paper, table, miou))
