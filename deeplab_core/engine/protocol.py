"""The inference protocol: how a trained network turns an image into a segmentation.

One value holds every setting that changes what a model scores on the same images: the input
scales averaged, horizontal flips, the output stride at inference (None: as trained), the tiling
of large images, the numeric precision, and the dense-CRF parameters (None: no CRF). The evaluate
stage measures a model under one protocol; the registered model carries the same protocol (a JSON
file beside its weights) and applies it when served, so the number a model is promoted on is the
number it serves.

    protocol = InferenceProtocol.from_config(params.inference, crf=chosen_crf_or_None)
    model = protocol.prepare(model)                 # output stride
    probs = protocol.probabilities(model, x_nchw)   # scales, flip, tiles, precision
    labels, probs = protocol.refine(image_hwc, probs_chw)   # the CRF, when the protocol has one
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from deeplab_core.crf.densecrf import CRFParams

PRECISIONS = ("float32", "bfloat16", "float16")
OUTPUT_STRIDES = (8, 16, 32)
PROTOCOL_FILE = "protocol.json"


class ProtocolError(ValueError):
    """An inference protocol (a file, a mapping, a setting) that cannot be applied; the message
    names the field, the value and what is expected."""


@dataclass(frozen=True)
class InferenceProtocol:
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    output_stride: int | None = None      # None: the stride the network was trained at
    tile_size: int | None = None          # None: every image whole
    tile_overlap: int = 256
    precision: str = "float32"
    crf: "CRFParams | None" = None

    def __post_init__(self) -> None:
        scales = self.scales
        if isinstance(scales, (int, float)) or not scales:
            raise ProtocolError(f"scales = {scales!r}: expected a non-empty list of numbers > 0")
        try:
            scales = tuple(float(s) for s in scales)
        except (TypeError, ValueError):
            raise ProtocolError(f"scales = {self.scales!r}: expected numbers > 0") from None
        if any(not math.isfinite(s) or s <= 0 for s in scales):
            raise ProtocolError(f"scales = {list(scales)}: every scale must be > 0")
        object.__setattr__(self, "scales", scales)
        if not isinstance(self.flip, (bool, np.bool_)):
            raise ProtocolError(f"flip = {self.flip!r}: expected true or false")
        object.__setattr__(self, "flip", bool(self.flip))
        if self.output_stride is not None and self.output_stride not in OUTPUT_STRIDES:
            raise ProtocolError(f"output_stride = {self.output_stride!r}: expected one of "
                                f"{list(OUTPUT_STRIDES)} or null (as trained)")
        if self.tile_size is not None and (not isinstance(self.tile_size, int)
                                           or self.tile_size < 1):
            raise ProtocolError(f"tile_size = {self.tile_size!r}: expected an integer >= 1 or "
                                "null (whole images)")
        if not isinstance(self.tile_overlap, int) or self.tile_overlap < 0 or (
                self.tile_size is not None and self.tile_overlap >= self.tile_size):
            raise ProtocolError(f"tile_overlap = {self.tile_overlap!r}: expected 0 <= overlap "
                                f"< tile_size ({self.tile_size})")
        if self.precision not in PRECISIONS:
            raise ProtocolError(f"precision = {self.precision!r}: expected one of "
                                f"{list(PRECISIONS)}")
        if self.crf is not None:
            from deeplab_core.crf.densecrf import check_optional_params
            check_optional_params(self.crf, "crf")

    # ------------------------------------------------------------------ building and files
    @classmethod
    def from_config(cls, cfg: Any, crf: "CRFParams | None" = None) -> "InferenceProtocol":
        """The protocol of params.yaml's ``inference`` section (deeplab_core.config
        .InferenceConfig) with ``crf``: the CRF the search chose, or None. The one builder of a
        protocol from parameters; ``cfg.crf`` false drops the CRF whatever is passed."""
        return cls(scales=tuple(cfg.scales), flip=cfg.flip, output_stride=cfg.output_stride,
                   tile_size=cfg.tile_size, tile_overlap=cfg.tile_overlap,
                   precision=cfg.precision, crf=crf if cfg.crf else None)

    def to_dict(self) -> dict:
        return {"scales": list(self.scales), "flip": self.flip,
                "output_stride": self.output_stride, "tile_size": self.tile_size,
                "tile_overlap": self.tile_overlap, "precision": self.precision,
                "crf": None if self.crf is None else self.crf.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "InferenceProtocol":
        if not isinstance(d, dict):
            raise ProtocolError(f"expected a mapping of protocol fields, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        extra = sorted(set(d) - set(names))
        if extra:
            raise ProtocolError(f"unknown protocol field(s) {extra}; expected {names}")
        kw = dict(d)
        if kw.get("crf") is not None:
            from deeplab_core.crf.densecrf import CRFParams
            try:
                kw["crf"] = CRFParams.from_dict(kw["crf"])
            except (ValueError, TypeError, AttributeError) as err:
                raise ProtocolError(f"crf = {kw['crf']!r}: {err}") from None
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "InferenceProtocol":
        """Read a protocol JSON file (``save``'s); FileNotFoundError or ProtocolError naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"inference protocol file not found: {str(path)!r}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise ProtocolError(f"{path}: not an inference protocol: {err}") from None

    def save(self, path: str | os.PathLike) -> Path:
        from deeplab_core.fileio import atomic_write_json
        return atomic_write_json(Path(path), self.to_dict())

    def with_overrides(self, **changes: Any) -> "InferenceProtocol":
        """A copy with the given fields replaced (those given as None for scales, flip, tiling
        and precision are left as they are; ``crf`` and ``output_stride`` take None as a
        value)."""
        keep_none = {"crf", "output_stride", "tile_size"}
        return replace(self, **{k: v for k, v in changes.items()
                                if v is not None or k in keep_none})

    def describe(self) -> str:
        """One line for a model card or a log."""
        crf = ("no CRF" if self.crf is None else "dense CRF "
               + ", ".join(f"{k} {v:g}" for k, v in self.crf.to_dict().items()))
        tiles = ("whole images" if self.tile_size is None
                 else f"tiles {self.tile_size} px overlapping {self.tile_overlap} px")
        return (f"scales {', '.join(f'{s:g}' for s in self.scales)}; flip "
                f"{'on' if self.flip else 'off'}; output stride "
                f"{self.output_stride or 'as trained'}; {tiles}; {self.precision}; {crf}")

    @property
    def passes_per_image(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    # ------------------------------------------------------------------ applying
    def prepare(self, model: nn.Module) -> nn.Module:
        """The network at the protocol's output stride (set in place; unchanged when None)."""
        if self.output_stride is not None:
            from deeplab_core.models import set_output_stride
            set_output_stride(model, self.output_stride)
        return model

    def probabilities(self, model: nn.Module, image_nchw: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, C, H, W) float32 of a normalised batch: scales and flips
        averaged, large images in tiles, at the protocol's precision."""
        from deeplab_core.engine.tiling import predict_probs_tiled

        h, w = image_nchw.shape[-2:]
        tile = self.tile_size or max(h, w)
        overlap = min(self.tile_overlap, tile - 1)
        dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
        return predict_probs_tiled(model, image_nchw, tile, overlap, self.scales, self.flip,
                                   autocast=dtype[self.precision])

    def refine(self, image_hwc: np.ndarray, probs_chw: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """(labels uint8 HxW, probabilities CxHxW): the CRF's when the protocol has one, the
        argmax and the probabilities otherwise."""
        if self.crf is None:
            return probs_chw.argmax(0).astype(np.uint8), probs_chw
        from deeplab_core.crf.densecrf import dense_crf
        labels, q = dense_crf(image_hwc, probs_chw, self.crf)
        return labels.astype(np.uint8), q


def refine_labels(protocol: InferenceProtocol, image_hwc: np.ndarray,
                  probs_chw: np.ndarray) -> np.ndarray:
    """The labels of ``protocol.refine`` of one image: a job for a worker process."""
    return protocol.refine(image_hwc, probs_chw)[0]
