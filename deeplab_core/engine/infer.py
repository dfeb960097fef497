"""Inference on raw RGB images: normalisation, multi-scale + flip, optional dense CRF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deeplab_core.engine.checkpoint import load_checkpoint
from deeplab_core.engine.evaluate import predict_probs


class Segmenter:
    """`Segmenter.from_files(model.pt, crf.json)(image_hwc_uint8) -> mask_hw uint8`."""

    def __init__(self, model: torch.nn.Module, crf_params: dict | None = None,
                 scales: tuple[float, ...] = (1.0,), flip: bool = False,
                 device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.crf_params = crf_params
        self.scales = tuple(scales)
        self.flip = flip
        self.device = torch.device(device)

    @classmethod
    def from_files(cls, checkpoint: str | Path, crf_params_file: str | Path | None = None,
                   **kwargs) -> "Segmenter":
        model, _ = load_checkpoint(Path(checkpoint))
        crf = None
        if crf_params_file is not None:
            from deeplab_core.crf.densecrf import CRFParams

            crf = CRFParams.from_file(crf_params_file).to_dict()
        return cls(model, crf, **kwargs)

    def probabilities(self, image_hwc: np.ndarray) -> np.ndarray:
        from deeplab_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        if image_hwc.ndim != 3 or image_hwc.shape[2] != 3 or image_hwc.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image of shape HxWx3, got {image_hwc.dtype} "
                             f"{image_hwc.shape}")
        # A copy: torch cannot wrap a read-only array (np.asarray of a PIL image is one).
        x = torch.from_numpy(np.array(image_hwc, order="C")).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        x = ((x - mean) / std).unsqueeze(0).to(self.device)
        return predict_probs(self.model, x, self.scales, self.flip)[0].cpu().numpy()

    def __call__(self, image_hwc: np.ndarray, use_crf: bool = True) -> np.ndarray:
        probs = self.probabilities(image_hwc)
        if use_crf and self.crf_params is not None:
            from deeplab_core.crf.densecrf import CRFParams, dense_crf

            labels, _ = dense_crf(image_hwc, probs, CRFParams.from_dict(self.crf_params))
            return labels.astype(np.uint8)
        return probs.argmax(0).astype(np.uint8)
