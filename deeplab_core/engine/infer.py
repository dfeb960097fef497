"""Inference on raw RGB images: normalisation, multi-scale + flip, sliding-window tiles for large
images, optional dense CRF."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from deeplab_core.engine.checkpoint import load_checkpoint
from deeplab_core.engine.protocol import InferenceProtocol

if TYPE_CHECKING:
    from deeplab_core.crf.densecrf import CRFParams


class Segmenter:
    """`Segmenter.from_files(model.pt, crf.json)(image_hwc_uint8) -> mask_hw uint8`.

    Applies an InferenceProtocol to raw images: ``Segmenter(model, protocol=p)``, or the
    protocol's fields as keywords (``crf_params``, ``scales``, ``flip``, ``tile_size``,
    ``tile_overlap``). Images with a side longer than the tile size are predicted in overlapping
    tiles, so memory stays bounded by the tile; None predicts every image whole. Input images may
    be read-only arrays (``np.asarray(PIL.Image)``)."""

    def __init__(self, model: torch.nn.Module, crf_params: CRFParams | None = None,
                 scales: tuple[float, ...] = (1.0,), flip: bool = False,
                 device: str | torch.device = "cpu", tile_size: int | None = None,
                 tile_overlap: int = 256, protocol: InferenceProtocol | None = None) -> None:
        if protocol is None:
            if tile_size is not None and not 0 <= tile_overlap < tile_size:
                raise ValueError(f"tile_overlap {tile_overlap}: expected 0 <= overlap < "
                                 f"tile_size ({tile_size})")
            if crf_params is not None:
                from deeplab_core.crf.densecrf import check_optional_params
                check_optional_params(crf_params)
            protocol = InferenceProtocol(scales=tuple(scales), flip=flip, tile_size=tile_size,
                                         tile_overlap=tile_overlap, crf=crf_params)
        self.protocol = protocol
        self.device = torch.device(device)
        self.model = protocol.prepare(model).to(self.device).eval()

    @property
    def crf_params(self) -> CRFParams | None:
        return self.protocol.crf

    @classmethod
    def from_files(cls, checkpoint: str | Path, crf_params_file: str | Path | None = None,
                   **kwargs) -> "Segmenter":
        model, _ = load_checkpoint(Path(checkpoint))
        crf = None
        if crf_params_file is not None:
            from deeplab_core.crf.densecrf import CRFParams

            crf = CRFParams.from_file(crf_params_file)
        return cls(model, crf, **kwargs)

    def probabilities(self, image_hwc: np.ndarray) -> np.ndarray:
        """Softmax probabilities (C, H, W) float32 of one RGB uint8 HxWx3 image."""
        from deeplab_core.data.transforms import normalize

        if image_hwc.ndim != 3 or image_hwc.shape[2] != 3 or image_hwc.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape HxWx3, got {image_hwc.dtype} "
                             f"{image_hwc.shape}")
        x = normalize(image_hwc).unsqueeze(0).to(self.device)
        return self.protocol.probabilities(self.model, x)[0].cpu().numpy()

    def predict(self, image_hwc: np.ndarray, use_crf: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
        """(mask_hw uint8, probs_chw float32): the CRF's labels and marginals when `use_crf` and
        the protocol has CRF parameters, otherwise the network's argmax and softmax."""
        probs = self.probabilities(image_hwc)
        protocol = self.protocol if use_crf else self.protocol.with_overrides(crf=None)
        return protocol.refine(image_hwc, probs)

    def __call__(self, image_hwc: np.ndarray, use_crf: bool = True) -> np.ndarray:
        return self.predict(image_hwc, use_crf)[0]
