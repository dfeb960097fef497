"""Model presets and ``build_model``.

Each preset is an ``ArchSpec`` (the architecture; not the params.yaml ``model`` section, which
names a preset); ``build_model(preset, num_classes, output_stride, pretrained_backbone,
**overrides)`` replaces any of its fields (unknown keys raise ValueError).
"""

from __future__ import annotations

import dataclasses
import pathlib
from dataclasses import dataclass

from torch import nn

from .backbones import VGG16, BasicNet, MobileNetV2, ResNet, Xception65
from .backbones.xception import RELU_PLACEMENTS
from .deeplab import DeepLab, set_output_stride
from .heads import ASPP, ASPPv2, ClassifierHead, Decoder, MSCFeatureBranches, V1Head, V3Head
from .msc import MultiScaleInputs


@dataclass(frozen=True)
class ArchSpec:
    backbone: str  # vgg16 | resnet50 | resnet101 | xception65 | mobilenetv2 | basicnet
    head: str                         # v1 | aspp_v2 | aspp_v3 | cascade
    output_stride: int = 16           # base output stride the rates below refer to
    # v1 / v2-VGG fc6-fc7-fc8
    fc6_kernel: int = 3
    fc6_rate: int = 12
    fc_channels: int = 1024
    dropout: float = 0.5
    # ASPP (v2: branch rates; v3: atrous branch rates at the base output stride)
    aspp_rates: tuple[int, ...] = (6, 12, 18)
    aspp_channels: int = 256
    aspp_hidden: int | None = 1024    # v2 branch fc6/fc7 width; None = single 3x3 classifier
    aspp_dropout: float = 0.1
    image_pooling: bool = True
    separable: bool = False           # depthwise-separable atrous convs in ASPP and decoder
    # backbone
    multi_grid: tuple[int, ...] = (1, 1, 1)
    cascade_blocks: int = 0           # v3 cascade: extra copies of block4 (blocks 5..)
    width_mult: float = 1.0           # channel multiplier (MobileNetV2, BasicNet, Xception, VGG)
    mobilenet_settings: tuple[tuple[int, int, int, int], ...] | None = None
    # Xception-65 activations: "paper" (the v3+ figure) or "tf" (DeepLab's TensorFlow network,
    # which the public ImageNet checkpoint was trained as; backbones/xception.py)
    relu_placement: str = "paper"
    low_level_stride: int = 4         # decoder low-level feature stride (MobileNetV2, BasicNet: 2/4)
    # v3+ decoder
    decoder: bool = False
    decoder_channels: int = 256
    low_level_channels: int = 48
    decoder_convs: int = 2            # 3x3 convs after the concat (v3+ Table 2: two)
    # multi-scale
    msc_scales: tuple[float, ...] | None = None   # v2 multi-scale inputs, max fusion
    msc_features: bool = False        # v1 DeepLab-MSc MLP branches on image + pool1..pool4
    msc_feature_channels: int = 128
    # Bilinear upsampling convention of score maps and decoder features. The papers' code
    # (Caffe's Interp layer, TensorFlow's resize_bilinear(align_corners=True)) aligns corner
    # pixels: with 8k+1 crops (321, 513) score-map cell i then sits exactly over input pixel
    # stride * i, the pixel the score-map labels are sampled at (engine.recipe.score_map_labels).
    align_corners: bool = False


_VGG_V1 = dict(backbone="vgg16", head="v1", output_stride=8, align_corners=True)
_PAPER = dict(align_corners=True)

PRESETS: dict[str, ArchSpec] = {
    # DeepLab v1 (VGG-16, output stride 8)
    "v1_largefov": ArchSpec(**_VGG_V1, fc6_kernel=3, fc6_rate=12, fc_channels=1024),
    "v1_7x7": ArchSpec(**_VGG_V1, fc6_kernel=7, fc6_rate=4, fc_channels=4096),
    "v1_4x4_r4": ArchSpec(**_VGG_V1, fc6_kernel=4, fc6_rate=4, fc_channels=4096),
    "v1_4x4_r8": ArchSpec(**_VGG_V1, fc6_kernel=4, fc6_rate=8, fc_channels=4096),
    "v1_msc_largefov": ArchSpec(**_VGG_V1, fc6_kernel=3, fc6_rate=12, fc_channels=1024,
                                msc_features=True),
    # DeepLab v2
    "v2_aspp_s_vgg16": ArchSpec(**_PAPER, backbone="vgg16", head="aspp_v2", output_stride=8,
                                aspp_rates=(2, 4, 8, 12), aspp_hidden=1024),
    "v2_aspp_l_vgg16": ArchSpec(**_PAPER, backbone="vgg16", head="aspp_v2", output_stride=8,
                                aspp_rates=(6, 12, 18, 24), aspp_hidden=1024),
    "v2_aspp_l_resnet101": ArchSpec(**_PAPER, backbone="resnet101", head="aspp_v2", output_stride=8,
                                    aspp_rates=(6, 12, 18, 24), aspp_hidden=None,
                                    msc_scales=(1.0, 0.75, 0.5)),
    # DeepLab v3 (ResNet-101, output stride 16 for training)
    "v3_resnet101_os16_mg124": ArchSpec(**_PAPER, backbone="resnet101", head="aspp_v3", output_stride=16,
                                        multi_grid=(1, 2, 4), aspp_rates=(6, 12, 18)),
    "v3_resnet101_block7_mg121": ArchSpec(**_PAPER, backbone="resnet101", head="cascade", output_stride=16,
                                          multi_grid=(1, 2, 1), cascade_blocks=3),
    # DeepLab v3+
    # The activations of the reference TensorFlow network, whose runs the preset's figures come
    # from and whose ImageNet checkpoint loads into it exactly.
    "v3plus_xception65": ArchSpec(**_PAPER, backbone="xception65", head="aspp_v3", output_stride=16,
                                  aspp_rates=(6, 12, 18), separable=True, decoder=True,
                                  relu_placement="tf"),
    "v3plus_resnet101": ArchSpec(**_PAPER, backbone="resnet101", head="aspp_v3", output_stride=16,
                                 aspp_rates=(6, 12, 18), decoder=True),
    # CPU presets. light: a small dense BasicBlock trunk (dense 3x3 convs train faster from
    # scratch on a CPU than depthwise ones), ASPP with image pooling, v3+ decoder on stride-4
    # features. micro (unit tests): MobileNetV2 trunk, separable ASPP, v3+ decoder.
    "light": ArchSpec(backbone="basicnet", head="aspp_v3", output_stride=16, width_mult=1.0,
                      aspp_rates=(2, 4, 6), aspp_channels=64, separable=False, decoder=True,
                      decoder_channels=64, low_level_channels=24, aspp_dropout=0.0,
                      low_level_stride=4),
    "micro": ArchSpec(backbone="mobilenetv2", head="aspp_v3", output_stride=16, width_mult=0.25,
                      aspp_rates=(1, 2), aspp_channels=16, separable=True, decoder=True,
                      decoder_channels=16, low_level_channels=8, aspp_dropout=0.0,
                      mobilenet_settings=((1, 16, 1, 1), (6, 24, 1, 2), (6, 32, 1, 2),
                                          (6, 64, 1, 2), (6, 96, 1, 1), (6, 160, 1, 2))),
}


def list_presets() -> list[str]:
    return list(PRESETS)


def get_config(preset: str, **overrides: object) -> ArchSpec:
    """The preset's ``ArchSpec`` with ``overrides`` applied (unknown keys raise ValueError)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    allowed = [f.name for f in dataclasses.fields(ArchSpec)]
    unknown = sorted(k for k in overrides if k not in allowed)
    if unknown:
        raise ValueError(f"unknown override key(s) {unknown} for preset {preset!r}; "
                         f"allowed keys: {', '.join(allowed)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return _check_relu_placement(dataclasses.replace(PRESETS[preset], **fixed))


def _check_relu_placement(cfg: ArchSpec) -> ArchSpec:
    if cfg.relu_placement not in RELU_PLACEMENTS:
        raise ValueError(f"relu_placement must be one of {', '.join(RELU_PLACEMENTS)}, "
                         f"got {cfg.relu_placement!r}")
    if cfg.relu_placement != "paper" and cfg.backbone != "xception65":
        raise ValueError(f"relu_placement {cfg.relu_placement!r} applies to the xception65 "
                         f"backbone only, not {cfg.backbone!r}")
    return cfg


def _build_backbone(cfg: ArchSpec) -> nn.Module:
    name, os_ = _check_relu_placement(cfg).backbone, cfg.output_stride
    if name == "vgg16":
        return VGG16(os_, width_mult=cfg.width_mult)
    if name in ("resnet50", "resnet101", "resnet152"):
        return ResNet(int(name[6:]), os_, cfg.multi_grid, cfg.cascade_blocks)
    if name == "xception65":
        return Xception65(os_, cfg.multi_grid, width_mult=cfg.width_mult,
                          relu_placement=cfg.relu_placement)
    if name == "mobilenetv2":
        kw = {"settings": cfg.mobilenet_settings} if cfg.mobilenet_settings else {}
        return MobileNetV2(os_, cfg.width_mult, low_level_stride=cfg.low_level_stride, **kw)
    if name == "basicnet":
        return BasicNet(os_, cfg.width_mult, low_level_stride=cfg.low_level_stride)
    raise ValueError(f"unknown backbone {name!r}")


def build_from_config(cfg: ArchSpec, num_classes: int = 21) -> nn.Module:
    backbone = _build_backbone(cfg)
    cin = backbone.out_channels
    decoder = None
    if cfg.head == "v1":
        head: nn.Module = V1Head(cin, num_classes, cfg.fc6_kernel, cfg.fc6_rate, cfg.fc_channels,
                                 cfg.dropout)
    elif cfg.head == "aspp_v2":
        head = ASPPv2(cin, num_classes, cfg.aspp_rates, cfg.aspp_hidden, cfg.dropout)
    elif cfg.head == "aspp_v3":
        aspp_kw = dict(channels=cfg.aspp_channels, rates=cfg.aspp_rates,
                       image_pooling=cfg.image_pooling, separable=cfg.separable,
                       dropout=cfg.aspp_dropout)
        if cfg.decoder:
            head = ASPP(cin, **aspp_kw)
        else:
            head = V3Head(cin, num_classes, **aspp_kw)
    elif cfg.head == "cascade":
        head = ClassifierHead(cin, num_classes)
    else:
        raise ValueError(f"unknown head {cfg.head!r}")
    if cfg.decoder:
        if cfg.head != "aspp_v3":
            raise ValueError("the v3+ decoder needs head='aspp_v3'")
        decoder = Decoder(cfg.aspp_channels, backbone.low_level_channels, num_classes,
                          cfg.low_level_channels, cfg.decoder_channels, cfg.separable,
                          cfg.align_corners, cfg.decoder_convs)
    msc = None
    if cfg.msc_features:
        if not isinstance(backbone, VGG16):
            raise ValueError("msc_features (DeepLab-MSc) is defined for the VGG-16 backbone")
        msc = MSCFeatureBranches(backbone.tap_channels, backbone.tap_strides(), num_classes,
                                 cfg.output_stride, cfg.msc_feature_channels,
                                 cfg.align_corners)
    model: nn.Module = DeepLab(cfg, backbone, head, decoder, msc)
    if cfg.msc_scales and tuple(cfg.msc_scales) != (1.0,):
        model = MultiScaleInputs(model, tuple(cfg.msc_scales))
    return model


def build_model(preset: str, num_classes: int = 21, output_stride: int | None = None,
                pretrained_backbone: str | pathlib.Path | None = None,
                **overrides: object) -> nn.Module:
    """Build a DeepLab model from a preset.

    ``output_stride`` changes the stride after construction (as ``set_output_stride``), so atrous
    rates keep referring to the preset's base stride (v3 ASPP rates double at OS8).
    ``pretrained_backbone`` is a local ImageNet checkpoint loaded with ``load_backbone_weights``.
    """
    cfg = get_config(preset, **overrides)
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    model = build_from_config(cfg, num_classes)
    if output_stride is not None and output_stride != cfg.output_stride:
        set_output_stride(model, output_stride)
    if pretrained_backbone is not None:
        from .weights import load_backbone_weights
        load_backbone_weights(model, pretrained_backbone)
    return model
