"""DeepLab models: v1 (VGG-16 + atrous fc6), v2 (ASPP, multi-scale inputs), v3 (ASPP with image
pooling, multi-grid, cascade), v3+ (encoder-decoder, Xception-65), plus light CPU presets.

    model = build_model("v3_resnet101_os16_mg124", num_classes=21)
    logits = model(images)            # N x C x H x W at the input resolution
    set_output_stride(model, 8)       # evaluate a model trained at OS16 at OS8
"""

from .deeplab import DeepLab, set_output_stride, unwrap
from .layers import dilate_kernel, rf_of
from .msc import MultiScaleInputs
from .presets import PRESETS, ArchSpec, build_model, get_config, list_presets
from .receptive_field import (count_macs, count_parameters, plot_valid_weights, receptive_field,
                              valid_weight_counts, valid_weight_curve, valid_weight_fractions)
from .weights import convert_vgg_fc, load_backbone_weights

__all__ = [
    "build_model", "list_presets", "set_output_stride", "load_backbone_weights",
    "DeepLab", "MultiScaleInputs", "ArchSpec", "PRESETS", "get_config", "unwrap",
    "receptive_field", "count_parameters", "count_macs", "rf_of", "dilate_kernel",
    "valid_weight_counts", "valid_weight_fractions", "valid_weight_curve", "plot_valid_weights",
    "convert_vgg_fc",
]
