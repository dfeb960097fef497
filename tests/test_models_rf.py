"""Parameter counts, theoretical receptive fields, and the v3 Figure 4 valid-weight statistics."""

import numpy as np
import pytest
import torch

from deeplab_core.models import (build_model, count_macs, count_parameters, list_presets,
                                 plot_valid_weights, receptive_field, rf_of,
                                 valid_weight_counts, valid_weight_curve, valid_weight_fractions)


@pytest.mark.parametrize("preset, millions", [
    ("v1_largefov", 20.5), ("v1_7x7", 134.3), ("v1_4x4_r4", 65.1), ("v1_4x4_r8", 65.1)])
def test_v1_parameter_counts_match_paper(preset, millions):
    assert abs(count_parameters(preset, num_classes=21) / 1e6 - millions) < 0.05


def test_parameter_counts_for_all_presets_and_classes():
    counts = {p: count_parameters(p) for p in list_presets()}
    assert all(n > 0 for n in counts.values())
    assert counts["micro"] < counts["light"] < 2e6
    # the classifier grows with the number of classes (fc8 of LargeFOV: 1024 x C + C)
    assert count_parameters("v1_largefov", num_classes=22) - counts["v1_largefov"] == 1025
    m = build_model("micro")
    assert count_parameters(m) == sum(p.numel() for p in m.parameters()) == counts["micro"]


def test_rf_chain_arithmetic():
    assert rf_of([(3, 1, 1)] * 2) == 5
    assert rf_of([(2, 2, 1), (3, 1, 1)]) == 6
    assert rf_of([(3, 1, 12)]) == 25


def test_vgg16_rf_with_2x2_pools():
    # original VGG-16 pool5 receptive field is 212; fc6 adds (k-1) * rate * 8 at output stride 8
    with torch.device("meta"):
        bb = build_model("v1_largefov").backbone
    assert rf_of(bb.rf_layers(pool_2x2=True)) == 212
    assert receptive_field("v1_7x7", pool_2x2=True) == 404
    assert receptive_field("v1_4x4_r4", pool_2x2=True) == 308
    assert receptive_field("v1_4x4_r8", pool_2x2=True) == 404
    assert receptive_field("v1_largefov", pool_2x2=True) == 404


def test_rf_released_pools_and_rate_effects():
    # the released 3x3 pools (pad 1) give a slightly larger field than VGG's 2x2 pools
    assert receptive_field("v1_largefov") == 419
    assert receptive_field("v1_largefov", pool_2x2=True) == 404
    # the largest ASPP rate sets the field: 3x3 at rate r adds 2 * r * 8 input pixels at OS8
    assert receptive_field("v2_aspp_l_vgg16") - receptive_field("v2_aspp_s_vgg16") == 2 * (24 - 12) * 8
    # turning strides into rates (16 -> 8) with doubled ASPP rates keeps the field in input pixels
    from deeplab_core.models import set_output_stride
    with torch.device("meta"):
        v3 = build_model("v3plus_xception65", decoder=False)
        v3plus = build_model("v3plus_xception65")
    rf16, rf16_dec = receptive_field(v3), receptive_field(v3plus)
    set_output_stride(v3, 8)
    set_output_stride(v3plus, 8)
    assert receptive_field(v3) == rf16
    # the decoder's bilinear step spans one output-stride cell; its two 3x3 convs run at stride 4
    assert rf16_dec == rf16 + 16 + 2 * 2 * 4
    assert receptive_field(v3plus) == rf16 + 8 + 2 * 2 * 4


def test_figure4_rate1_and_huge_rate():
    f1 = valid_weight_fractions(1, size=65)
    assert f1["all"] == pytest.approx((63 / 65) ** 2)
    assert f1["1"] == 0.0
    assert f1["4-6"] == pytest.approx((4 + 4 * 63) / 65 ** 2)  # corners: 4, borders: 6
    for r in (65, 66, 100):
        f = valid_weight_fractions(r, size=65)
        assert f == {"all": 0.0, "4-6": 0.0, "1": 1.0}
    counts = valid_weight_counts(65, 65)
    assert (counts == 1).all()


def test_figure4_curve_shape_and_monotone_collapse():
    curve = valid_weight_curve(65)
    assert len(curve["rate"]) == 65
    assert curve["all"][0] > 0.9 and curve["all"][-1] == 0.0
    assert curve["1"][0] == 0.0 and curve["1"][-1] == 1.0
    # a 3x3 filter has all 9 weights valid only where i-r >= 0 and i+r < 65
    r = 20
    assert curve["all"][r - 1] == pytest.approx(((65 - 2 * r) / 65) ** 2)
    assert np.all(curve["all"] + curve["4-6"] + curve["1"] <= 1 + 1e-9)


def test_figure4_plot_writes_png(tmp_path):
    path = plot_valid_weights(tmp_path / "fig4.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_count_macs_of_a_single_conv():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.zeros(1, 3, 10, 10)) == 8 * 10 * 10 * 27
    lin = torch.nn.Linear(5, 7)
    assert count_macs(lin, torch.zeros(2, 5)) == 2 * 7 * 5
