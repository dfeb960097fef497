"""Backbones: VGG-16 (v1/v2), ResNet-50/101 (v2/v3/v3+), aligned Xception-65 (v3+), MobileNetV2,
a small dense BasicBlock trunk (CPU preset)."""

from .basicnet import BasicNet
from .mobilenetv2 import MobileNetV2
from .resnet import ResNet
from .vgg import VGG16
from .xception import Xception65

__all__ = ["BasicNet", "VGG16", "ResNet", "Xception65", "MobileNetV2"]
