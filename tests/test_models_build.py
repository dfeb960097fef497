"""Presets, the forward contract, overrides and multi-scale behaviour."""

import pytest
import torch
import torch.nn.functional as F

from deeplab_core.models import (MultiScaleInputs, build_model, count_parameters, get_config,
                                 list_presets, unwrap)


REQUIRED = {
    "v1_largefov", "v1_7x7", "v1_4x4_r4", "v1_4x4_r8", "v1_msc_largefov", "v2_aspp_s_vgg16",
    "v2_aspp_l_vgg16", "v2_aspp_l_resnet101", "v3_resnet101_os16_mg124",
    "v3_resnet101_block7_mg121", "v3plus_xception65", "v3plus_resnet101", "light", "micro",
}


def test_required_presets_listed():
    assert REQUIRED <= set(list_presets())


def test_micro_forward_contract():
    torch.manual_seed(0)
    model = build_model("micro", num_classes=4).eval()
    x = torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        y = model(x)
        s = model.score_map(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (2, 4, 65, 65)
    assert s.shape == (2, 4, 17, 17)  # v3+ decoder: stride 4
    # logits at input size are the bilinear (align_corners=False) upsampling of the score map
    ref = F.interpolate(s, size=(65, 65), mode="bilinear", align_corners=False)
    torch.testing.assert_close(y, ref)


def test_micro_is_fast():
    import time
    best = float("inf")
    for _ in range(3):  # best of three: the machine may be shared
        t = time.perf_counter()
        model = build_model("micro")
        with torch.no_grad():
            y = model.eval()(torch.randn(2, 3, 65, 65))
        best = min(best, time.perf_counter() - t)
    assert y.shape == (2, 21, 65, 65)
    assert best < 0.5


def test_micro_train_mode_batch1_and_backward():
    # image-pooling BN with a single pooled value falls back to running statistics
    model = build_model("micro", num_classes=3).train()
    x = torch.randn(1, 3, 33, 33)
    y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3, 33, 33)
    y.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


def test_micro_learns_fixed_batch():
    torch.manual_seed(0)
    model = build_model("micro", num_classes=2).train()
    target = torch.zeros(4, 33, 33, dtype=torch.long)
    for i in range(4):  # one bright square per image
        r, c = 3 + 5 * i, 20 - 4 * i
        target[i, r:r + 10, c:c + 10] = 1
    x = 0.1 * torch.randn(4, 3, 33, 33) + target[:, None].float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_unknown_override_key_lists_allowed_keys():
    with pytest.raises(ValueError) as err:
        build_model("micro", not_a_field=3)
    msg = str(err.value)
    assert "not_a_field" in msg and "aspp_rates" in msg and "msc_scales" in msg


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("v9_nope")


def test_overrides_change_the_model():
    cfg = get_config("v3plus_resnet101", aspp_rates=[3, 6, 9], separable=True)
    assert cfg.aspp_rates == (3, 6, 9) and cfg.separable
    wide = count_parameters("micro", width_mult=0.5)
    assert wide > count_parameters("micro")
    m = build_model("micro", aspp_rates=(1, 2, 3))
    assert m.head.rates == (1, 2, 3)
    fine = build_model("micro", low_level_stride=2).eval()
    with torch.no_grad():
        assert fine.score_map(torch.randn(1, 3, 64, 64)).shape[-1] == 32  # decoder at stride 2



def test_decoder_refines_with_the_number_of_3x3_convs_asked_for():
    two, one = build_model("micro").eval(), build_model("micro", decoder_convs=1).eval()
    assert (len(two.decoder.fuse), len(one.decoder.fuse)) == (2, 1)
    assert count_parameters("micro", decoder_convs=1) < count_parameters("micro")
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert one(x).shape == two(x).shape == (1, 21, 64, 64)
    with pytest.raises(ValueError, match="decoder_convs = 0: expected at least one"):
        build_model("micro", decoder_convs=0)


def test_multiscale_inputs_train_list_eval_tensor():
    torch.manual_seed(0)
    model = build_model("micro", num_classes=3, msc_scales=(1.0, 0.75, 0.5))
    assert isinstance(model, MultiScaleInputs)
    x = torch.randn(2, 3, 65, 65)
    outs = model.train()(x)
    assert isinstance(outs, list) and len(outs) == 4
    assert all(o.shape == (2, 3, 65, 65) for o in outs)
    model.eval()
    with torch.no_grad():
        y = model(x)
        maps = model.score_maps(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, 65, 65)
    # max fusion across scales at the scale-1 score-map size
    torch.testing.assert_close(maps[0], torch.stack(maps[1:]).amax(0))
    assert maps[0].shape[-2:] == maps[1].shape[-2:]


def test_v2_resnet_preset_uses_multiscale_inputs():
    assert get_config("v2_aspp_l_resnet101").msc_scales == (1.0, 0.75, 0.5)
    model = build_model("micro", msc_scales=(1.0,))
    assert not isinstance(model, MultiScaleInputs)


@pytest.mark.parametrize("preset", ["v1_largefov", "v1_7x7", "v1_4x4_r4", "v1_4x4_r8",
                                    "v1_msc_largefov", "v2_aspp_s_vgg16", "v2_aspp_l_vgg16"])
def test_vgg_score_map_306_gives_39(preset):
    # geometry does not depend on channel widths: a thin VGG keeps the test fast
    model = build_model(preset, num_classes=21, width_mult=0.125, fc_channels=16).eval()
    x = torch.randn(1, 3, 306, 306)
    with torch.no_grad():
        s = model.score_map(x)
        y = model(x)
    assert s.shape == (1, 21, 39, 39)
    assert y.shape == (1, 21, 306, 306)



def test_largefov_full_width_306_gives_39():
    model = build_model("v1_largefov", num_classes=21).eval()
    assert unwrap(model).output_stride == 8
    with torch.no_grad():
        s = model(torch.randn(1, 3, 306, 306), upsample=False)
    assert s.shape == (1, 21, 39, 39)


def test_v1_msc_branches_add_to_main_score_map():
    torch.manual_seed(0)
    model = build_model("v1_msc_largefov", num_classes=5, width_mult=0.125, fc_channels=16).eval()
    assert len(model.msc_branches.branches) == 5
    first = model.msc_branches.branches[0]
    assert first[0].kernel_size == (3, 3) and first[0].out_channels == 128
    assert first[2].kernel_size == (1, 1) and first[2].out_channels == 128
    x = torch.randn(1, 3, 97, 97)
    with torch.no_grad():
        full = model.score_map(x)
        main = model.head(model.backbone(x)["out"])
        extra = model.msc_branches(model.backbone(x, taps=True)["taps"], main.shape[-2:])
    torch.testing.assert_close(full, main + extra)
    assert extra.abs().sum() > 0


def test_xception_and_resnet_v3plus_small_forward():
    for preset in ("v3plus_xception65", "v3plus_resnet101"):
        model = build_model(preset, num_classes=3).eval()
        with torch.no_grad():
            s = model.score_map(torch.randn(1, 3, 65, 65))
        assert s.shape == (1, 3, 17, 17), preset
