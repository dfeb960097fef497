"""Model files the stages hand to each other: the weights plus what is needed to rebuild the
network (preset, classes, output stride, overrides), so no stage has to guess the architecture."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from deeplab_core.fileio import atomic_torch_save

FORMAT = "deeplab-checkpoint/1"


def model_spec(preset: str, num_classes: int, output_stride: int | None,
               overrides: dict | None = None) -> dict:
    return {"preset": preset, "num_classes": int(num_classes), "output_stride": output_stride,
            "overrides": dict(overrides or {})}


def build_from_spec(spec: dict, pretrained_backbone: str | None = None) -> nn.Module:
    from deeplab_core.models import build_model

    return build_model(spec["preset"], num_classes=spec["num_classes"],
                       output_stride=spec["output_stride"],
                       pretrained_backbone=pretrained_backbone, **spec.get("overrides", {}))


def save_checkpoint(path: Path, model: nn.Module, spec: dict, extra: dict | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "spec": spec, "state_dict": state,
                       "extra": dict(extra or {})}, Path(path))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network from a checkpoint written by `save_checkpoint`; returns (model, meta)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise ValueError(f"cannot read model checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (got keys "
                         f"{sorted(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__})")
    model = build_from_spec(ckpt["spec"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, {"spec": ckpt["spec"], "extra": ckpt.get("extra", {})}
