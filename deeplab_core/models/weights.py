"""Loading ImageNet backbone checkpoints from local files.

Checkpoints use torchvision's parameter names: ResNet (``conv1.weight``, ``bn1.*``,
``layer1.0.conv1.weight``, ..., ``fc.*`` ignored) and VGG-16 (``features.N.*``,
``classifier.0/3/6.*``). For VGG-16 the ImageNet fc6/fc7 become convolutions as in DeepLab v1:
fc6 (4096 x 25088) is reshaped to 4096 x 512 x 7 x 7 and spatially decimated to the head's kernel
(4x4 or 3x3); when the head is narrower than 4096 (LargeFOV: 1024) a seeded random subset of the
filters is kept in fc6 and the same subset of rows and columns in fc7. ``classifier.6`` (the
1000-way ImageNet classifier) is ignored. Xception-65 loads the timm layout of the aligned
Xception-65 (``timm.create_model("xception65")``, whose ``tf_in1k`` weights are DeepLab's TensorFlow
ImageNet checkpoint, ``tf_xception_65-c9ae96e8.pth`` in older timm releases: ``stem.N.conv`` /
``bn``, ``blocks.N.stack.convK.conv_dw`` / ``bn_dw`` / ``conv_pw`` / ``bn_pw``,
``blocks.N.shortcut.conv`` / ``bn``; ``head.fc`` ignored) or this package's own layout
(``model.backbone.state_dict()``), as MobileNetV2 does. The timm tensors map one to one by name
and shape; the network they were trained in places its activations as TensorFlow's DeepLab does,
which ``Xception65(relu_placement="tf")`` reproduces exactly (the ``v3plus_xception65`` preset
builds it). Loading them into the paper placement is allowed (an initialisation of a different
network): the report's ``notes`` and a logged warning say so.
"""

from __future__ import annotations

import logging
import pathlib

import torch
from torch import nn

from .backbones import VGG16, MobileNetV2, ResNet, Xception65
from .deeplab import DeepLab, unwrap

log = logging.getLogger(__name__)

_BACKBONES = (VGG16, ResNet, Xception65, MobileNetV2)


def decimation_indices(kernel: int, size: int = 7) -> torch.Tensor:
    """Evenly spaced taps of a ``size`` kernel kept when subsampling it to ``kernel`` (7->4: 0,2,4,6;
    7->3: 0,3,6)."""
    if not 1 <= kernel <= size:
        raise ValueError(f"cannot decimate a {size}x{size} kernel to {kernel}x{kernel}")
    if kernel == 1:
        return torch.tensor([size // 2])
    return torch.linspace(0, size - 1, kernel).round().long()


def filter_subset(total: int, keep: int, seed: int = 0) -> torch.Tensor:
    """Sorted seeded random subset of ``keep`` of ``total`` filter indices (all when equal)."""
    if keep > total:
        raise ValueError(f"cannot keep {keep} of {total} filters")
    if keep == total:
        return torch.arange(total)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[:keep].sort().values


def convert_vgg_fc(fc6_w: torch.Tensor, fc6_b: torch.Tensor, fc7_w: torch.Tensor, fc7_b: torch.Tensor,
                   kernel: int, channels: int, in_channels: int, seed: int = 0,
                   ) -> dict[str, torch.Tensor]:
    """ImageNet fc6/fc7 (linear) -> convolutional fc6 (channels x in_channels x k x k) and fc7
    (channels x channels x 1 x 1)."""
    n_out, n_in = fc6_w.shape
    if tuple(fc7_w.shape) != (n_out, n_out):
        raise ValueError(f"fc7 weight of shape {tuple(fc7_w.shape)} does not follow fc6 ({n_out} outputs)")
    if n_in % in_channels or n_in // in_channels != 49:
        raise ValueError(f"fc6 weight of shape {tuple(fc6_w.shape)} is not {n_out} x {in_channels}*7*7")
    keep = filter_subset(n_out, channels, seed)
    idx = decimation_indices(kernel)
    w6 = fc6_w.reshape(n_out, in_channels, 7, 7).index_select(2, idx).index_select(3, idx)
    w6 = w6.index_select(0, keep).contiguous()
    w7 = fc7_w.index_select(0, keep).index_select(1, keep).reshape(channels, channels, 1, 1)
    return {"fc6.weight": w6, "fc6.bias": fc6_b[keep].clone(),
            "fc7.weight": w7, "fc7.bias": fc7_b[keep].clone(), "keep": keep}


def _read_checkpoint(path: str | pathlib.Path) -> dict[str, torch.Tensor]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch.save file (safetensors, truncated, foreign)
        hint = (" (a safetensors file: torch.load reads it through the safetensors package "
                "when that is installed; or convert it with safetensors.torch.load_file and "
                "torch.save)" if path.suffix == ".safetensors" else "")
        raise ValueError(f"cannot read backbone checkpoint {path} with torch.load{hint}: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                         ) from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()
            if isinstance(v, torch.Tensor)}


_TIMM_XCEPTION_PARTS = {"conv_dw": "depthwise", "bn_dw": "bn_depth", "conv_pw": "pointwise",
                        "bn_pw": "bn_point"}


def _timm_xception_key(key: str, n_entry: int, n_middle: int) -> str:
    """A timm aligned-Xception key in this package's Xception65 layout (unchanged when it is
    not one: ``head.*`` and foreign keys are left for the matcher to report)."""
    parts = key.split(".")
    if parts[0] == "stem" and len(parts) >= 3:
        return ".".join([f"conv{int(parts[1]) + 1}", {"conv": "0", "bn": "1"}.get(parts[2],
                                                                               parts[2])]
                        + parts[3:])
    if parts[0] != "blocks" or len(parts) < 4 or not parts[1].isdigit():
        return key
    i = int(parts[1])
    unit = (f"entry.{i}" if i < n_entry else f"middle.{i - n_entry}"
            if i < n_entry + n_middle else f"exit.{i - n_entry - n_middle}")
    if parts[2] == "shortcut":
        return ".".join([unit, "skip", {"conv": "0", "bn": "1"}.get(parts[3], parts[3])]
                        + parts[4:])
    if parts[2] == "stack" and parts[3].startswith("conv") and len(parts) >= 5:
        sep = f"sep{parts[3][4:]}"
        return ".".join([unit, sep, _TIMM_XCEPTION_PARTS.get(parts[4], parts[4])] + parts[5:])
    return key


def _from_public_layout(sd: dict[str, torch.Tensor], backbone: nn.Module
                        ) -> tuple[dict[str, torch.Tensor], str | None]:
    """``sd`` renamed into the backbone's layout when it is a public layout this module reads
    (timm's aligned Xception-65), and that layout's name (None: ResNet and VGG checkpoints
    already use torchvision's names, or the checkpoint is in this package's layout)."""
    if isinstance(backbone, Xception65) and "stem.0.conv.weight" in sd:
        ne, nm = len(backbone.entry), len(backbone.middle)
        return {_timm_xception_key(k, ne, nm): v for k, v in sd.items()}, "timm xception65"
    return sd, None


def _placement_note(path: str | pathlib.Path, layout: str | None, backbone: nn.Module
                    ) -> str | None:
    """Why the loaded network is not the one a timm Xception-65 checkpoint was trained as (None
    when it is, or the checkpoint is not in that layout)."""
    if layout != "timm xception65" or backbone.relu_placement == "tf":
        return None
    return (f"{path} is in timm's xception65 layout, trained with TensorFlow's activation "
            f"placement, but the Xception65 uses relu_placement={backbone.relu_placement!r}: "
            f"the weights initialise a different network (relu_placement='tf', as the "
            f"v3plus_xception65 preset sets, is the exact one)")


def _locate(model_or_backbone: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    if isinstance(model_or_backbone, _BACKBONES):
        return model_or_backbone, None
    try:
        m: DeepLab = unwrap(model_or_backbone)
    except TypeError:
        raise TypeError(f"no known backbone in {type(model_or_backbone).__name__}") from None
    return m.backbone, m.head


def _check_shape(key: str, src: torch.Tensor, dst: torch.Tensor) -> None:
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"shape mismatch for {key!r}: checkpoint {tuple(src.shape)} "
                         f"vs model {tuple(dst.shape)}")


def _backbone_prefixes(backbone: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(prefixes of backbone keys an ImageNet checkpoint lacks, prefixes of checkpoint keys the
    backbone has no use for): the cascaded blocks DeepLabv3 adds to ResNet, the classifiers."""
    if isinstance(backbone, ResNet):
        return tuple(f"layer{i}." for i in range(5, 5 + backbone.cascade_blocks)), ("fc.",)
    if isinstance(backbone, VGG16):
        return (), ("classifier.",)
    if isinstance(backbone, Xception65):
        return (), ("head.",)
    return (), ()


def _match_backbone_keys(sd: dict[str, torch.Tensor], backbone: nn.Module,
                         target: dict[str, torch.Tensor],
                         report: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """The checkpoint tensors that go into the backbone's ``target`` state dict (shapes checked);
    records the ignored, unexpected and missing keys in ``report``."""
    skip_prefixes, ignore_prefixes = _backbone_prefixes(backbone)
    expected = {k for k in target if not k.startswith(skip_prefixes)}
    updates: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in expected:
            _check_shape(k, v, target[k])
            updates[k] = v
        elif k.startswith(ignore_prefixes):
            report["ignored"].append(k)
        else:
            report["unexpected"].append(k)
    report["missing"] = sorted(k for k in expected - set(sd) if not k.endswith("num_batches_tracked"))
    return updates


def _convert_vgg_head(sd: dict[str, torch.Tensor], backbone: nn.Module, head: nn.Module | None,
                      seed: int, report: dict[str, list[str]]
                      ) -> list[tuple[nn.Conv2d, torch.Tensor, str, str]]:
    """(module, tensor, parameter name, key) for the fc6/fc7 convolutions of a VGG LargeFOV head,
    converted from the checkpoint's fully connected classifier; records the converted (or
    missing) classifier keys in ``report``. Empty for other backbones and heads."""
    head_updates: list[tuple[nn.Conv2d, torch.Tensor, str, str]] = []
    pairs = head.fc_pairs() if head is not None and hasattr(head, "fc_pairs") else []
    if not (isinstance(backbone, VGG16) and pairs):
        return head_updates
    fc_keys = [f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
    absent = [k for k in fc_keys if k not in sd]
    if absent:
        report["missing"] += absent
        return head_updates
    for n, (fc6, fc7) in enumerate(pairs):
        conv = convert_vgg_fc(sd["classifier.0.weight"], sd["classifier.0.bias"],
                              sd["classifier.3.weight"], sd["classifier.3.bias"],
                              fc6.kernel_size[0], fc6.out_channels, backbone.out_channels, seed)
        for name, mod in (("fc6", fc6), ("fc7", fc7)):
            for p in ("weight", "bias"):
                key = f"head[{n}].{name}.{p}"
                _check_shape(key, conv[f"{name}.{p}"], getattr(mod, p))
                head_updates.append((mod, conv[f"{name}.{p}"], p, key))
    for k in fc_keys:
        report["ignored"].remove(k)
        report["converted"].append(k)
    return head_updates


def load_backbone_weights(model_or_backbone: nn.Module, path: str | pathlib.Path,
                          strict: bool = True, seed: int = 0) -> dict[str, list[str]]:
    """Load an ImageNet checkpoint (local file) into the backbone of ``model_or_backbone``.

    Shape mismatches raise ValueError naming the key and both shapes. Missing and unexpected keys
    are gathered into one message: a ValueError when ``strict``, else one logged warning.
    Returns ``{"loaded": [...], "converted": [...], "missing": [...], "unexpected": [...],
    "ignored": [...], "notes": [...]}``; ``notes`` (also logged as warnings) says when the
    network differs from the one the checkpoint was trained in (a timm Xception-65 checkpoint
    loaded into the paper's activation placement).
    """
    backbone, head = _locate(model_or_backbone)
    sd, layout = _from_public_layout(_read_checkpoint(path), backbone)
    target = backbone.state_dict()
    report: dict[str, list[str]] = {"loaded": [], "converted": [], "missing": [], "unexpected": [],
                                    "ignored": [], "notes": []}
    updates = _match_backbone_keys(sd, backbone, target, report)
    head_updates = _convert_vgg_head(sd, backbone, head, seed, report)

    if report["missing"] or report["unexpected"]:
        msg = (f"checkpoint {path} does not match {type(backbone).__name__}: "
               f"{len(report['missing'])} missing key(s) {report['missing']}; "
               f"{len(report['unexpected'])} unexpected key(s) {report['unexpected']}")
        if strict:
            raise ValueError(msg)
        log.warning(msg)

    with torch.no_grad():
        for k, v in updates.items():
            target[k].copy_(v)
        for mod, v, p, _ in head_updates:
            getattr(mod, p).copy_(v)
    report["loaded"] = sorted(updates)
    note = _placement_note(path, layout, backbone)
    if note:
        report["notes"].append(note)
        log.warning(note)
    return report
