"""Atrous convolution, multi-grid / cascade rates, and output-stride changes."""

import pytest
import torch
import torch.nn.functional as F

from deeplab_core.models import build_model, dilate_kernel, set_output_stride, unwrap
from deeplab_core.models.backbones import ResNet


@pytest.mark.parametrize("rate", [1, 2, 3, 5])
def test_atrous_conv_equals_dense_conv_with_zero_upsampled_kernel(rate):
    torch.manual_seed(rate)
    x = torch.randn(2, 4, 23, 19)
    w = torch.randn(5, 4, 3, 3)
    atrous = F.conv2d(x, w, dilation=rate, padding=rate)
    big = dilate_kernel(w, rate)
    assert big.shape[-1] == 3 + 2 * (rate - 1)
    dense = F.conv2d(x, big, padding=big.shape[-1] // 2)
    torch.testing.assert_close(atrous, dense, rtol=1e-4, atol=1e-4)


def test_atrous_conv_matches_definition_1d():
    # y[i] = sum_k x[i + r*k] w[k]  (no padding, k = 0..K-1)
    torch.manual_seed(0)
    x, w, r = torch.randn(40), torch.randn(3), 4
    y = F.conv1d(x.view(1, 1, -1), w.view(1, 1, -1), dilation=r).flatten()
    ref = torch.stack([sum(x[i + r * k] * w[k] for k in range(3)) for i in range(40 - 2 * r)])
    torch.testing.assert_close(y, ref)


def _rates(layer):
    return tuple(unit.conv2.dilation[0] for unit in layer)


def _strides(layer):
    return tuple(unit.conv2.stride[0] for unit in layer)


def test_multigrid_124_block4_rates_at_os16():
    with torch.device("meta"):
        model = build_model("v3_resnet101_os16_mg124")
    bb = unwrap(model).backbone
    assert _rates(bb.layer4) == (2, 4, 8)
    assert _strides(bb.layer4) == (1, 1, 1)
    assert set(_rates(bb.layer3)) == {1} and _strides(bb.layer3)[0] == 2
    set_output_stride(model, 8)
    assert _rates(bb.layer4) == (4, 8, 16)
    assert set(_rates(bb.layer3)) == {2} and _strides(bb.layer3)[0] == 1


def test_cascade_block_rates_double_each_block():
    with torch.device("meta"):
        model = build_model("v3_resnet101_block7_mg121")
    bb = unwrap(model).backbone
    assert _rates(bb.layer4) == (2, 4, 2)
    assert _rates(bb.layer5) == (4, 8, 4)
    assert _rates(bb.layer6) == (8, 16, 8)
    assert _rates(bb.layer7) == (16, 32, 16)
    for name in ("layer5", "layer6", "layer7"):
        layer = getattr(bb, name)
        assert len(layer) == 3 and layer[0].conv1.in_channels == 2048
        assert layer[-1].conv3.out_channels == 2048 and set(_strides(layer)) == {1}
    with torch.device("meta"):
        mg124 = build_model("v3_resnet101_block7_mg121", multi_grid=(1, 2, 4))
    assert _rates(unwrap(mg124).backbone.layer7) == (16, 32, 64)


def test_resnet_output_stride_geometry():
    torch.manual_seed(0)
    bb = ResNet((1, 1, 1, 1), output_stride=32).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for os_ in (32, 16, 8):
            bb.set_output_stride(os_)
            assert bb(x)["out"].shape[-1] == 64 // os_
    with pytest.raises(ValueError):
        bb.set_output_stride(12)


def test_set_output_stride_16_to_8_on_v3_model():
    torch.manual_seed(0)
    model = build_model("v3_resnet101_os16_mg124", num_classes=5, backbone="resnet50").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        s16 = model.score_map(x)
        assert model.head.aspp.rates == (6, 12, 18)
        set_output_stride(model, 8)
        s8 = model.score_map(x)
        y8 = model(x)
    assert model.head.aspp.rates == (12, 24, 36)
    assert s16.shape[-1] == 5 and s8.shape[-1] == 9  # (65-1)/16+1 -> (65-1)/8+1
    assert y8.shape == (1, 5, 65, 65)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    set_output_stride(model, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.score_map(x), s16)


def test_build_model_output_stride_argument():
    with torch.device("meta"):
        m = build_model("v3plus_xception65", output_stride=8)
    assert unwrap(m).output_stride == 8
    assert unwrap(m).head.rates == (12, 24, 36)
    m = build_model("micro", output_stride=8).eval()
    with torch.no_grad():
        feats = m.backbone(torch.randn(1, 3, 64, 64))
    assert feats["out"].shape[-1] == 8 and feats["low_level"].shape[-1] == 16


def test_xception_output_stride_and_separable_structure():
    from deeplab_core.models.backbones import Xception65
    from deeplab_core.models.layers import SeparableConv2d
    torch.manual_seed(0)
    bb = Xception65(16, middle_blocks=2, width_mult=0.125).eval()
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in bb.modules())
    seps = [m for m in bb.modules() if isinstance(m, SeparableConv2d)]
    assert all(s.depthwise.groups == s.depthwise.in_channels for s in seps)
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert bb(x)["out"].shape[-1] == 5 and bb(x)["low_level"].shape[-1] == 17
        bb.set_output_stride(8)
        assert bb(x)["out"].shape[-1] == 9
    assert bb.exit[1].sep3.depthwise.dilation == (4, 4)
    with torch.device("meta"):  # the full model has 16 middle-flow blocks
        assert len(Xception65().middle) == 16


def test_v1_head_rates():
    with torch.device("meta"):
        m7 = build_model("v1_7x7")
        lf = build_model("v1_largefov")
        aspp = build_model("v2_aspp_s_vgg16")
    assert m7.head.fc6.kernel_size == (7, 7) and m7.head.fc6.dilation == (4, 4)
    assert m7.head.fc6.out_channels == 4096
    assert lf.head.fc6.kernel_size == (3, 3) and lf.head.fc6.dilation == (12, 12)
    assert lf.head.fc6.out_channels == 1024
    assert [b.fc6.dilation[0] for b in aspp.head.branches] == [2, 4, 8, 12]
    bb = lf.backbone
    assert [bb.features[i].dilation[0] for i in (24, 26, 28)] == [2, 2, 2]
    assert bb.features[23].stride == 1 and bb.features[30].stride == 1
    assert bb.features[23].kernel_size == 3 and bb.features[23].padding == 1


def test_basicnet_output_stride_geometry_and_rates():
    from deeplab_core.models.backbones import BasicNet
    torch.manual_seed(0)
    bb = BasicNet(output_stride=32, width_mult=0.25).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for os_ in (32, 16, 8):
            bb.set_output_stride(os_)
            feats = bb(x)
            assert feats["out"].shape[-1] == 64 // os_
            assert feats["low_level"].shape[-1] == 16
    # at OS8 the stride-16 and stride-32 stages become atrous: their first conv keeps the rate
    # before the unit, every later conv runs at the rate after it
    first16, first32 = bb.blocks[3], bb.blocks[5]
    assert first16.conv1.stride == (1, 1) and first16.conv1.dilation == (1, 1)
    assert first16.conv2.dilation == (2, 2)
    assert first32.conv1.dilation == (2, 2) and first32.conv2.dilation == (4, 4)
    assert first32.shortcut[0].stride == (1, 1)
    assert BasicNet(16, width_mult=0.25, low_level_stride=2)(x)["low_level"].shape[-1] == 32
    with pytest.raises(ValueError):
        bb.set_output_stride(12)


def test_light_preset_is_a_dense_v3plus_model():
    m = build_model("light").eval()
    assert type(m.backbone).__name__ == "BasicNet" and m.has_image_pooling
    assert m.decoder is not None and m.output_stride == 16
    with torch.no_grad():
        assert m(torch.randn(1, 3, 50, 66)).shape == (1, 21, 50, 66)
