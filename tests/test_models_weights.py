"""Loading ImageNet checkpoints in torchvision's layout (fake tensors generated here)."""

import logging

import pytest
import torch
import torch.nn.functional as F

from deeplab_core.models import build_model, convert_vgg_fc, load_backbone_weights, unwrap
from deeplab_core.models.backbones import ResNet
from deeplab_core.models.weights import decimation_indices, filter_subset


def _bn(sd, prefix, c, g):
    sd[f"{prefix}.weight"] = torch.rand(c, generator=g) + 0.5
    sd[f"{prefix}.bias"] = torch.randn(c, generator=g)
    sd[f"{prefix}.running_mean"] = torch.randn(c, generator=g)
    sd[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(100)


def fake_torchvision_resnet(blocks=(3, 4, 6, 3), seed=0, width=64):
    """Random tensors with torchvision's ResNet key names and shapes (bottleneck, v1.5)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"conv1.weight": torch.randn(width, 3, 7, 7, generator=g)}
    _bn(sd, "bn1", width, g)
    inplanes = width
    for li, (n, mult) in enumerate(zip(blocks, (1, 2, 4, 8)), start=1):
        planes = width * mult
        for u in range(n):
            p = f"layer{li}.{u}"
            cin = inplanes if u == 0 else planes * 4
            sd[f"{p}.conv1.weight"] = torch.randn(planes, cin, 1, 1, generator=g)
            _bn(sd, f"{p}.bn1", planes, g)
            sd[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3, generator=g)
            _bn(sd, f"{p}.bn2", planes, g)
            sd[f"{p}.conv3.weight"] = torch.randn(planes * 4, planes, 1, 1, generator=g)
            _bn(sd, f"{p}.bn3", planes * 4, g)
            if u == 0:
                sd[f"{p}.downsample.0.weight"] = torch.randn(planes * 4, cin, 1, 1, generator=g)
                _bn(sd, f"{p}.downsample.1", planes * 4, g)
        inplanes = planes * 4
    sd["fc.weight"] = torch.randn(1000, inplanes, generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd


VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def fake_torchvision_vgg16(width_mult=1.0, fc=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd, cin = {}, 3
    for idx, c in zip(VGG_CONV_INDICES, VGG_CHANNELS):
        c = max(8, int(round(c * width_mult)))
        sd[f"features.{idx}.weight"] = torch.randn(c, cin, 3, 3, generator=g)
        sd[f"features.{idx}.bias"] = torch.randn(c, generator=g)
        cin = c
    sd["classifier.0.weight"] = torch.randn(fc, cin * 49, generator=g)
    sd["classifier.0.bias"] = torch.randn(fc, generator=g)
    sd["classifier.3.weight"] = torch.randn(fc, fc, generator=g)
    sd["classifier.3.bias"] = torch.randn(fc, generator=g)
    sd["classifier.6.weight"] = torch.randn(1000, fc, generator=g)
    sd["classifier.6.bias"] = torch.randn(1000, generator=g)
    return sd


def test_resnet50_torchvision_checkpoint_loads(tmp_path):
    sd = fake_torchvision_resnet()
    path = tmp_path / "resnet50.pth"
    torch.save(sd, path)
    model = build_model("v3_resnet101_os16_mg124", backbone="resnet50", pretrained_backbone=path)
    bb = unwrap(model).backbone
    assert torch.equal(bb.conv1.weight, sd["conv1.weight"])
    assert torch.equal(bb.layer3[5].conv2.weight, sd["layer3.5.conv2.weight"])
    assert torch.equal(bb.layer4[0].downsample[1].running_var, sd["layer4.0.downsample.1.running_var"])
    report = load_backbone_weights(model, path)
    assert report["missing"] == [] and report["unexpected"] == []
    assert set(report["ignored"]) == {"fc.weight", "fc.bias"}
    assert "layer1.0.conv1.weight" in report["loaded"]


def test_small_resnet_into_cascade_model_and_bare_backbone(tmp_path):
    sd = fake_torchvision_resnet((1, 1, 1, 1), width=16)
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    bb = ResNet((1, 1, 1, 1), cascade_blocks=3, width=16)
    report = load_backbone_weights(bb, path)  # blocks 5..7 are not part of ImageNet ResNet
    assert report["missing"] == []
    assert torch.equal(bb.layer4[0].conv2.weight, sd["layer4.0.conv2.weight"])


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    sd = fake_torchvision_resnet((1, 1, 1, 1), width=16)
    sd["layer2.0.conv2.weight"] = torch.randn(32, 32, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        load_backbone_weights(ResNet((1, 1, 1, 1), width=16), path)
    msg = str(err.value)
    assert "layer2.0.conv2.weight" in msg and "(32, 32, 5, 5)" in msg and "(32, 32, 3, 3)" in msg


def test_missing_and_unexpected_keys_in_one_message(tmp_path, caplog):
    sd = fake_torchvision_resnet((1, 1, 1, 1), width=16)
    del sd["layer1.0.bn2.running_mean"], sd["layer3.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    bb = ResNet((1, 1, 1, 1), width=16)
    before = bb.conv1.weight.clone()
    with pytest.raises(ValueError) as err:
        load_backbone_weights(bb, path)
    msg = str(err.value)
    assert "layer1.0.bn2.running_mean" in msg and "layer3.0.conv1.weight" in msg
    assert "2 missing" in msg and "extra.weight" in msg
    assert torch.equal(bb.conv1.weight, before)  # strict: nothing loaded
    with caplog.at_level(logging.WARNING):
        report = load_backbone_weights(bb, path, strict=False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "layer3.0.conv1.weight" in warnings[0].getMessage()
    assert report["unexpected"] == ["extra.weight"]
    assert torch.equal(bb.conv1.weight, sd["conv1.weight"])


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope" / "resnet101.pth"
    with pytest.raises(FileNotFoundError, match="resnet101.pth"):
        load_backbone_weights(build_model("micro"), path)


def test_vgg_largefov_conversion_from_checkpoint(tmp_path):
    sd = fake_torchvision_vgg16(width_mult=0.125, fc=256)
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    model = build_model("v1_largefov", width_mult=0.125, fc_channels=64)
    report = load_backbone_weights(model, path)
    assert "classifier.0.weight" in report["converted"]
    assert report["ignored"] == ["classifier.6.weight", "classifier.6.bias"]
    assert torch.equal(model.backbone.features[28].weight, sd["features.28.weight"])
    fc6, fc7 = model.head.fc6, model.head.fc7
    assert fc6.weight.shape == (64, 64, 3, 3) and fc7.weight.shape == (64, 64, 1, 1)
    keep = filter_subset(256, 64, seed=0)
    assert len(set(keep.tolist())) == 64
    full6 = sd["classifier.0.weight"].reshape(256, 64, 7, 7)
    torch.testing.assert_close(fc6.weight, full6[keep][:, :, ::3, ::3])
    torch.testing.assert_close(fc6.bias, sd["classifier.0.bias"][keep])
    torch.testing.assert_close(fc7.weight[:, :, 0, 0], sd["classifier.3.weight"][keep][:, keep])
    # ASPP branches receive the same converted fc6/fc7
    aspp = build_model("v2_aspp_l_vgg16", width_mult=0.125, aspp_hidden=64)
    load_backbone_weights(aspp, path)
    for branch in aspp.head.branches:
        torch.testing.assert_close(branch.fc6.weight, fc6.weight)


def test_vgg_7x7_keeps_all_filters(tmp_path):
    sd = fake_torchvision_vgg16(width_mult=0.125, fc=64)
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    model = build_model("v1_4x4_r4", width_mult=0.125, fc_channels=64)
    load_backbone_weights(model, path)
    w = sd["classifier.0.weight"].reshape(64, 64, 7, 7)
    torch.testing.assert_close(model.head.fc6.weight, w[:, :, ::2, ::2])
    torch.testing.assert_close(model.head.fc7.weight[:, :, 0, 0], sd["classifier.3.weight"])


def test_full_size_vgg_fc_conversion_shapes():
    fc6_w, fc6_b = torch.empty(4096, 25088), torch.zeros(4096)
    fc7_w, fc7_b = torch.empty(4096, 4096), torch.zeros(4096)
    lf = convert_vgg_fc(fc6_w, fc6_b, fc7_w, fc7_b, kernel=3, channels=1024, in_channels=512)
    assert lf["fc6.weight"].shape == (1024, 512, 3, 3) and lf["fc6.bias"].shape == (1024,)
    assert lf["fc7.weight"].shape == (1024, 1024, 1, 1) and lf["fc7.bias"].shape == (1024,)
    assert torch.equal(lf["keep"], filter_subset(4096, 1024, seed=0))
    assert not torch.equal(lf["keep"], filter_subset(4096, 1024, seed=1))
    assert decimation_indices(4).tolist() == [0, 2, 4, 6]
    assert decimation_indices(3).tolist() == [0, 3, 6]
    assert decimation_indices(7).tolist() == list(range(7))
    with pytest.raises(ValueError, match="fc6 weight"):
        convert_vgg_fc(torch.empty(4096, 1000), fc6_b, fc7_w, fc7_b, 3, 1024, 512)


def test_vgg_fc_shape_mismatch_is_refused(tmp_path):
    sd = fake_torchvision_vgg16(width_mult=0.125, fc=32)
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="cannot keep 64 of 32"):
        load_backbone_weights(build_model("v1_largefov", width_mult=0.125, fc_channels=64), path)
    sd["features.0.weight"] = torch.randn(8, 3, 5, 5)
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"features\.0\.weight.*\(8, 3, 5, 5\).*\(8, 3, 3, 3\)"):
        load_backbone_weights(build_model("v1_largefov", width_mult=0.125, fc_channels=32), path)


def fake_timm_xception65(width_mult: float, seed: int = 0) -> dict:
    """Random tensors named as timm's aligned Xception-65 (`timm.create_model("xception65")`,
    the port of DeepLab's TensorFlow ImageNet checkpoint): stem.{0,1}.conv/bn, then 21 blocks,
    blocks.N.stack.convK.{conv_dw,bn_dw,conv_pw,bn_pw} and blocks.N.shortcut.{conv,bn} where the
    channels or the stride change; head.fc the ImageNet classifier."""
    g = torch.Generator().manual_seed(seed)

    def c(v):  # the test's own width rule, as the model builder applies width_mult
        return max(8, int(round(v * width_mult)))

    sd = {"stem.0.conv.weight": torch.randn(c(32), 3, 3, 3, generator=g),
          "stem.1.conv.weight": torch.randn(c(64), c(32), 3, 3, generator=g)}
    _bn(sd, "stem.0.bn", c(32), g)
    _bn(sd, "stem.1.bn", c(64), g)
    blocks = ([(64, (128,) * 3, True), (128, (256,) * 3, True), (256, (728,) * 3, True)]
              + [(728, (728,) * 3, False)] * 16
              + [(728, (728, 1024, 1024), True), (1024, (1536, 1536, 2048), False)])
    for n, (cin, outs, shortcut) in enumerate(blocks):
        cur = c(cin)
        for k, out in enumerate(outs, start=1):
            p = f"blocks.{n}.stack.conv{k}"
            sd[f"{p}.conv_dw.weight"] = torch.randn(cur, 1, 3, 3, generator=g)
            _bn(sd, f"{p}.bn_dw", cur, g)
            sd[f"{p}.conv_pw.weight"] = torch.randn(c(out), cur, 1, 1, generator=g)
            _bn(sd, f"{p}.bn_pw", c(out), g)
            cur = c(out)
        if shortcut:
            sd[f"blocks.{n}.shortcut.conv.weight"] = torch.randn(c(outs[-1]), c(cin), 1, 1,
                                                                 generator=g)
            _bn(sd, f"blocks.{n}.shortcut.bn", c(outs[-1]), g)
    sd["head.fc.weight"] = torch.randn(1000, c(2048), generator=g)
    sd["head.fc.bias"] = torch.randn(1000, generator=g)
    return sd


def test_xception65_loads_the_timm_layout_of_the_imagenet_checkpoint(tmp_path):
    sd = fake_timm_xception65(width_mult=0.125)
    path = tmp_path / "tf_xception_65.pth"
    torch.save(sd, path)
    model = build_model("v3plus_xception65", num_classes=5, width_mult=0.125)
    report = load_backbone_weights(model, path)
    assert report["missing"] == [] and report["unexpected"] == []
    assert set(report["ignored"]) == {"head.fc.weight", "head.fc.bias"}
    bb = unwrap(model).backbone
    assert torch.equal(bb.conv1[0].weight, sd["stem.0.conv.weight"])
    assert torch.equal(bb.conv2[1].running_var, sd["stem.1.bn.running_var"])
    assert torch.equal(bb.entry[1].skip[0].weight, sd["blocks.1.shortcut.conv.weight"])
    assert torch.equal(bb.middle[15].sep2.depthwise.weight,
                       sd["blocks.18.stack.conv2.conv_dw.weight"])
    assert torch.equal(bb.exit[0].sep3.bn_point.bias, sd["blocks.19.stack.conv3.bn_pw.bias"])
    assert torch.equal(bb.exit[1].sep3.pointwise.weight,
                       sd["blocks.20.stack.conv3.conv_pw.weight"])
    n_tensors = sum(1 for k in sd if not k.startswith("head.") and
                    not k.endswith("num_batches_tracked"))
    assert len([k for k in report["loaded"] if not k.endswith("num_batches_tracked")]) == n_tensors


def test_resnet101_torchvision_layout_loads_every_block(tmp_path):
    sd = fake_torchvision_resnet((3, 4, 23, 3), width=8)
    path = tmp_path / "resnet101.pth"
    torch.save(sd, path)
    bb = ResNet((3, 4, 23, 3), width=8)
    report = load_backbone_weights(bb, path)
    assert report["missing"] == [] and report["unexpected"] == []
    assert torch.equal(bb.layer3[22].conv3.weight, sd["layer3.22.conv3.weight"])


# --- timm's Xception-65 computed independently ----------------------------------------------
# The blocks of timm's xception65 (timm/models/xception_aligned.py): (stride, start_with_relu,
# no_skip). Entry flow 3, middle flow 16, exit flow 2; the last block starts without a ReLU, keeps
# ReLUs inside its separable convolutions and adds no residual.
TIMM_X65_BLOCKS = ([(2, True, False)] * 3 + [(1, True, False)] * 16
                   + [(2, True, False), (1, False, True)])
TIMM_BN_EPS = 1e-3  # timm builds xception65 with BatchNorm2d(eps=.001), TensorFlow's epsilon


def _timm_conv(x, w, stride=1, dilation=1, groups=1):
    # timm's default padding '' is symmetric: ((stride - 1) + dilation * (k - 1)) // 2
    pad = ((stride - 1) + dilation * (w.shape[-1] - 1)) // 2
    return F.conv2d(x, w, None, stride, pad, dilation, groups)


def _eval_bn(x, sd, prefix, eps):
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], False, 0.0, eps)


def _timm_bn(x, sd, prefix):
    return _eval_bn(x, sd, prefix, TIMM_BN_EPS)


def timm_xception65_forward(sd, x, output_stride, multi_grid=(1, 1, 1)):
    """(features, stride-4 feature) of timm's xception65 written out over the timm-named
    tensors: stem, then every block as timm's XceptionModule runs it, its dilation set as
    XceptionAligned does for ``output_stride`` (a block whose stride is dropped keeps the
    current rate; later blocks multiply it). ``multi_grid`` multiplies the rates of the last
    block's three convolutions as DeepLab's TensorFlow code does (timm has none). The stride-4
    feature is timm's feature_info ``blocks.1.stack.act3``."""
    for i in (0, 1):
        x = F.relu(_timm_bn(_timm_conv(x, sd[f"stem.{i}.conv.weight"], 2 - i), sd, f"stem.{i}.bn"))
    cur_stride, rate, low = 2, 1, None
    for n, (stride, start_with_relu, no_skip) in enumerate(TIMM_X65_BLOCKS):
        dilation = rate
        if stride > 1:
            if cur_stride * stride > output_stride:
                rate, stride = rate * stride, 1
            else:
                cur_stride *= stride
        grid = multi_grid if n == len(TIMM_X65_BLOCKS) - 1 else (1, 1, 1)
        y = x
        for k in (1, 2, 3):
            p = f"blocks.{n}.stack.conv{k}"
            if start_with_relu:
                y = F.relu(y)
                if n == 1 and k == 3:
                    low = y
            y = _timm_bn(_timm_conv(y, sd[f"{p}.conv_dw.weight"], stride if k == 3 else 1,
                                    dilation * grid[k - 1], groups=y.shape[1]), sd, f"{p}.bn_dw")
            if not start_with_relu:
                y = F.relu(y)
            y = _timm_bn(_timm_conv(y, sd[f"{p}.conv_pw.weight"]), sd, f"{p}.bn_pw")
            if not start_with_relu:
                y = F.relu(y)
        if f"blocks.{n}.shortcut.conv.weight" in sd:
            x = _timm_bn(_timm_conv(x, sd[f"blocks.{n}.shortcut.conv.weight"], stride), sd,
                         f"blocks.{n}.shortcut.bn")
        x = y if no_skip else y + x
    return x, low


def _he_scaled(sd):
    """Convolution weights at He scale (std sqrt(1 / fan-in)), so that activations keep their
    size through the 65 layers and every ReLU cuts a real share of negative values."""
    return {k: (v / v[0].numel() ** 0.5 if k.endswith("weight") and v.dim() == 4 else v)
            for k, v in sd.items()}


def _max_rel_diff(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("output_stride,multi_grid", [(16, (1, 1, 1)), (8, (1, 1, 1)),
                                                      (16, (1, 2, 4))])
def test_timm_xception65_checkpoint_gives_timm_network_exactly(tmp_path, output_stride,
                                                              multi_grid):
    """A checkpoint in timm's layout loaded through pretrained_backbone into the
    v3plus_xception65 preset computes what timm's network computes with those tensors; in the
    paper's activation placement the same tensors compute something else."""
    sd = _he_scaled(fake_timm_xception65(width_mult=0.125, seed=3))
    path = tmp_path / "xception65-timm.pth"
    torch.save(sd, path)
    x = torch.randn(2, 3, 67, 81, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref_out, ref_low = timm_xception65_forward({k: v.double() for k, v in sd.items()}, x,
                                               output_stride, multi_grid)
    assert ref_out.shape[-2:] == ((67 - 1) // output_stride + 1, (81 - 1) // output_stride + 1)
    assert ref_low.shape[-2:] == (17, 21) and (ref_low == 0).float().mean() > 0.2

    diffs = {}
    for placement in ("tf", "paper"):
        model = build_model("v3plus_xception65", num_classes=3, width_mult=0.125,
                            output_stride=output_stride, multi_grid=multi_grid,
                            relu_placement=placement, pretrained_backbone=path)
        bb = unwrap(model).backbone.double().eval()
        assert bb.relu_placement == placement
        with torch.no_grad():
            feats = bb(x)
        diffs[placement] = (_max_rel_diff(feats["out"], ref_out),
                            _max_rel_diff(feats["low_level"], ref_low))
    assert max(diffs["tf"]) < 1e-12, diffs
    assert min(diffs["paper"]) > 0.05, diffs


def test_v3plus_xception65_preset_uses_tf_placement_and_default_stays_paper():
    from deeplab_core.models.backbones import Xception65

    with torch.device("meta"):
        preset = unwrap(build_model("v3plus_xception65")).backbone
        default = Xception65()
    assert preset.relu_placement == "tf" and default.relu_placement == "paper"
    bns = [m for m in preset.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == TIMM_BN_EPS for m in bns)
    assert all(m.eps == 1e-5 for m in default.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # one state dict fits both placements: same names, same shapes
    assert ({k: tuple(v.shape) for k, v in preset.state_dict().items()}
            == {k: tuple(v.shape) for k, v in default.state_dict().items()})
    with pytest.raises(ValueError, match="relu_placement must be one of paper, tf, got 'caffe'"):
        Xception65(middle_blocks=1, width_mult=0.125, relu_placement="caffe")
    with pytest.raises(ValueError, match="xception65 backbone only, not 'resnet101'"):
        build_model("v3plus_resnet101", relu_placement="tf")


def test_tf_placement_switch_in_place_and_trains():
    """set_relu_placement changes the computation, not the weights, and back again; the TF
    placement's in-place ReLUs leave a graph that back-propagates."""
    from deeplab_core.models.backbones import Xception65

    torch.manual_seed(0)
    bb = Xception65(8, (1, 2, 4), middle_blocks=2, width_mult=0.125).eval()
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        paper = bb(x)["out"]
        bb.set_relu_placement("tf")
        tf = bb(x)["out"]
        bb.set_relu_placement("paper")
        torch.testing.assert_close(bb(x)["out"], paper, rtol=0, atol=0)
    assert not torch.allclose(tf, paper)
    bb.set_relu_placement("tf")
    bb.train()
    feats = bb(torch.randn(2, 3, 33, 33))
    (feats["out"].square().mean() + feats["low_level"].mean()).backward()
    assert bb.entry[0].sep1.depthwise.weight.grad.abs().sum() > 0


def test_timm_checkpoint_into_paper_placement_is_reported(tmp_path, caplog):
    sd = fake_timm_xception65(width_mult=0.125)
    path = tmp_path / "xception65.pth"
    torch.save(sd, path)
    with caplog.at_level(logging.WARNING):
        exact = load_backbone_weights(build_model("v3plus_xception65", width_mult=0.125), path)
    assert exact["notes"] == [] and not caplog.records
    paper = build_model("v3plus_xception65", width_mult=0.125, relu_placement="paper")
    with caplog.at_level(logging.WARNING):
        report = load_backbone_weights(paper, path)
    assert len(report["notes"]) == 1 and "relu_placement='paper'" in report["notes"][0]
    assert str(path) in report["notes"][0]
    assert [r.getMessage() for r in caplog.records] == report["notes"]
    assert torch.equal(unwrap(paper).backbone.conv1[0].weight, sd["stem.0.conv.weight"])


def test_unreadable_checkpoint_is_one_clear_error(tmp_path):
    """timm's Hub weights come as model.safetensors, which torch.load cannot read."""
    header = b'{"stem.0.conv.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
    with pytest.raises(ValueError) as err:
        load_backbone_weights(build_model("v3plus_xception65", width_mult=0.125), path)
    msg = str(err.value)
    assert str(path) in msg and "safetensors.torch.load_file" in msg and "\n" not in msg


def _tv_bn(x, sd, prefix):
    return _eval_bn(x, sd, prefix, 1e-5)  # torchvision's BatchNorm2d default


def torchvision_resnet_forward(sd, x, blocks):
    """(layer4, layer1) outputs of torchvision's ResNet written out over its named tensors:
    7x7/2 stem, 3x3/2 max-pool, bottlenecks with the stride on the 3x3 convolution of each
    layer's first unit and a 1x1 conv + BN downsample there."""
    x = F.max_pool2d(F.relu(_tv_bn(F.conv2d(x, sd["conv1.weight"], None, 2, 3), sd, "bn1")),
                     3, 2, 1)
    low = None
    for li, n in enumerate(blocks, start=1):
        for u in range(n):
            p, stride = f"layer{li}.{u}", (2 if li > 1 and u == 0 else 1)
            y = F.relu(_tv_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
            y = F.relu(_tv_bn(F.conv2d(y, sd[f"{p}.conv2.weight"], None, stride, 1), sd,
                              f"{p}.bn2"))
            y = _tv_bn(F.conv2d(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                x = _tv_bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], None, stride), sd,
                           f"{p}.downsample.1")
            x = F.relu(y + x)
        if li == 1:
            low = x
    return x, low


def test_resnet101_torchvision_checkpoint_gives_torchvision_network_at_os32(tmp_path):
    """At output stride 32 (no atrous convolution) the loaded ResNet-101 computes torchvision's
    ImageNet network; OS 16 and 8 then run its last blocks atrous as DeepLab does."""
    blocks = (3, 4, 23, 3)
    sd = _he_scaled(fake_torchvision_resnet(blocks, seed=2, width=8))
    path = tmp_path / "resnet101-63fe2227.pth"
    torch.save(sd, path)
    x = torch.randn(2, 3, 97, 129, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    ref_out, ref_low = torchvision_resnet_forward({k: v.double() for k, v in sd.items()}, x,
                                                  blocks)
    bb = ResNet(blocks, output_stride=32, width=8)
    assert load_backbone_weights(bb, path)["missing"] == []
    bb = bb.double().eval()
    with torch.no_grad():
        feats = bb(x)
    assert feats["out"].shape == ref_out.shape == (2, 256, 4, 5)
    assert _max_rel_diff(feats["out"], ref_out) < 1e-12
    assert _max_rel_diff(feats["low_level"], ref_low) < 1e-12
    bb.set_output_stride(16)
    with torch.no_grad():
        assert bb(x)["out"].shape[-2:] == (7, 9)

