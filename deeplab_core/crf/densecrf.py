"""Fully connected CRF post-processing (DeepLab v1/v2) on top of pydensecrf.

Energy (DeepLab v2 paper, Sec. 3.3, after Krähenbühl & Koltun 2011)::

    E(x) = sum_i theta_i(x_i) + sum_{i<j} theta_ij(x_i, x_j)

    theta_i(x_i)     = -log P(x_i)                      softmax probability at full image resolution
    theta_ij(x_i,x_j) = mu(x_i, x_j) * [ w1 * exp(-|p_i-p_j|^2 / (2 sigma_alpha^2)
                                                  -|I_i-I_j|^2 / (2 sigma_beta^2))
                                         + w2 * exp(-|p_i-p_j|^2 / (2 sigma_gamma^2)) ]

with the Potts compatibility mu(x_i, x_j) = [x_i != x_j], p the pixel position and I the RGB colour
(raw 0..255 values). Inference is mean-field for ``iterations`` steps.

Mapping onto pydensecrf (``pydensecrf.densecrf``)::

    d = DenseCRF2D(W, H, C)                     # width first
    d.setUnaryEnergy(U)                         # U = -log(max(P, floor)), float32, shape (C, H*W)
    d.addPairwiseGaussian(sxy=sigma_gamma, compat=w2)                         # smoothness kernel
    d.addPairwiseBilateral(sxy=sigma_alpha, srgb=sigma_beta, rgbim=I, compat=w1)  # appearance kernel
    Q = d.inference(iterations)                 # (C, H*W) marginals

pydensecrf scales the features by 1/sxy and 1/srgb and evaluates exp(-|f_i - f_j|^2 / 2), which is
exactly the papers' exp(-|p_i-p_j|^2 / 2 sigma^2) form; a scalar ``compat`` is a Potts compatibility
with weight w (it rewards equal labels by w instead of penalising unequal ones by w, which changes
the energy by a constant only). Both kernels use pydensecrf's defaults (diagonal kernel, symmetric
normalisation, the defaults of Krähenbühl's densecrf 2.x code). A weight of 0 leaves the kernel out.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pydensecrf.densecrf as dcrf

# Probabilities are clipped to this floor before the log (pydensecrf.utils.unary_from_softmax's default).
PROB_FLOOR = 1e-5
# Allowed deviation of sum_c P(c) from 1 per pixel.
SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CRFParams:
    """Fully connected CRF parameters in the papers' notation.

    Defaults: w1=4, sigma_alpha=67, sigma_beta=3 are the values of DeepLab v2's released
    ResNet-101 PASCAL VOC model (bi_w=4, bi_xy_std=67, bi_rgb_std=3), found by the papers' cross-
    validation; w2=3, sigma_gamma=3 are the values the v1/v2 papers fix for the smoothness kernel
    during that search (v2 Sec. 4.1); 10 mean-field iterations as in the papers.

    Weights must be >= 0 (0 switches that kernel off), standard deviations > 0, iterations >= 1.
    """

    w1: float = 4.0
    sigma_alpha: float = 67.0
    sigma_beta: float = 3.0
    w2: float = 3.0
    sigma_gamma: float = 3.0
    iterations: int = 10

    def __post_init__(self) -> None:
        for name in ("w1", "sigma_alpha", "sigma_beta", "w2", "sigma_gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"CRFParams.{name} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"CRFParams.{name} must be finite, got {value!r}")
            if name.startswith("w"):
                if value < 0:
                    raise ValueError(f"CRFParams.{name} must be >= 0, got {value!r}")
            elif value <= 0:
                raise ValueError(f"CRFParams.{name} must be > 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, (int, np.integer)) or it < 1:
            raise ValueError(f"CRFParams.iterations must be an integer >= 1, got {it!r}")
        object.__setattr__(self, "iterations", int(it))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, ignore_extra: bool = False) -> "CRFParams":
        """Build from a dict; missing fields take their defaults. Unknown keys raise ValueError
        unless ``ignore_extra`` (e.g. for a results row holding miou next to the parameters)."""
        names = {f.name for f in fields(cls)}
        extra = set(d) - names
        if extra and not ignore_extra:
            raise ValueError(f"unknown CRFParams fields: {sorted(extra)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "CRFParams":
        """The one reader of a CRF parameters file: the search's ``best_params.json`` (the
        parameters under ``"params"``, next to its scores) or a bare JSON mapping of the fields.
        Fields other than the parameters are ignored.

        FileNotFoundError names a missing file; ValueError names a file that does not hold CRF
        parameters (not JSON, not a mapping, a value out of range).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"missing CRF parameters file: {str(path)!r} does not exist "
                                    "or is not a file (run the crf_search stage)")
        try:
            raw = json.loads(path.read_text())
            return cls.from_row(raw.get("params", raw))
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} does not hold CRF parameters: {err}") from None

    @classmethod
    def from_row(cls, row: dict) -> "CRFParams":
        """The parameters of a search results row (a journal line, a ``rows`` entry of a search
        result, its ``best``): the parameter fields, next to the row's scores, which are
        ignored."""
        return cls.from_dict(row, ignore_extra=True)

    def key(self) -> tuple:
        """Hashable identity used to match results rows (floats rounded to avoid 0.1+0.2 issues)."""
        return (round(self.w1, 6), round(self.sigma_alpha, 6), round(self.sigma_beta, 6),
                round(self.w2, 6), round(self.sigma_gamma, 6), self.iterations)


def check_optional_params(value, name: str = "crf_params") -> CRFParams | None:
    """``value`` when it is a CRFParams or None; a TypeError naming ``name`` otherwise (e.g. a
    plain dict, which must go through one of the readers first)."""
    if value is not None and not isinstance(value, CRFParams):
        raise TypeError(f"{name}: expected CRFParams or None, got {type(value).__name__} "
                        f"(CRFParams.from_file reads crf_search's best_params.json)")
    return value


def check_image(image_hwc_uint8: np.ndarray) -> np.ndarray:
    """Validate the RGB image for the colour term; returns a C-contiguous, writable uint8 HxWx3
    array (a copy when the input is neither: pydensecrf refuses read-only buffers, such as
    np.asarray of a PIL image)."""
    img = image_hwc_uint8
    if not isinstance(img, np.ndarray):
        raise ValueError(f"image must be a numpy array (H, W, 3) uint8, got {type(img).__name__}")
    if np.issubdtype(img.dtype, np.floating):
        raise ValueError(
            f"image has dtype {img.dtype}: the CRF colour term needs the raw RGB uint8 image "
            "(0..255), not a normalised float tensor")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3), got {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {img.dtype}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"image is empty: shape {img.shape}")
    if not (img.flags.c_contiguous and img.flags.writeable):
        img = np.array(img, order="C")
    return img


def check_probs(probs_chw: np.ndarray, hw: tuple[int, int] | None = None,
                tol: float = SUM_TOLERANCE) -> np.ndarray:
    """Validate softmax probabilities (C, H, W); returns them as float32 (no copy if already so)."""
    p = probs_chw
    if not isinstance(p, np.ndarray):
        raise ValueError(f"probs must be a numpy array (C, H, W), got {type(p).__name__}")
    if p.ndim != 3:
        raise ValueError(f"probs must have shape (C, H, W), got {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        raise ValueError(f"probs must be floating point softmax probabilities, got dtype {p.dtype}")
    if p.shape[0] < 1 or p.shape[1] < 1 or p.shape[2] < 1:
        raise ValueError(f"probs is empty: shape {p.shape}")
    if hw is not None and tuple(p.shape[1:]) != tuple(hw):
        raise ValueError(f"probs spatial size {tuple(p.shape[1:])} (H, W) does not match image size "
                         f"{tuple(hw)}; probabilities must be at full image resolution")
    if p.dtype != np.float32:
        p = p.astype(np.float32)
    lo = p.min()
    if not np.isfinite(lo):
        raise ValueError("probs contain NaN or inf")
    if lo < 0:
        raise ValueError(f"probs contain negative values (min {float(lo):.4g}); expected softmax output")
    s = p.sum(axis=0, dtype=np.float32)
    if not np.isfinite(s).all():  # +inf somewhere (NaN already caught by min)
        raise ValueError("probs contain NaN or inf")
    dev = float(np.abs(s - 1.0).max())
    if dev > tol:
        raise ValueError(f"probs do not sum to 1 over classes (max deviation {dev:.4g} > {tol:g}); "
                         "pass softmax probabilities, not logits")
    return p


def unary_from_probs(probs_chw_f32: np.ndarray, floor: float = PROB_FLOOR) -> np.ndarray:
    """-log(max(P, floor)) as a fresh C-contiguous float32 (C, H*W) array (one allocation)."""
    c = probs_chw_f32.shape[0]
    u = np.empty((c, probs_chw_f32.shape[1] * probs_chw_f32.shape[2]), dtype=np.float32)
    np.maximum(probs_chw_f32.reshape(c, -1), np.float32(floor), out=u)
    np.log(u, out=u)
    np.negative(u, out=u)
    return u


def crf_from_unary(image: np.ndarray, unary_c_n: np.ndarray, params: CRFParams) -> np.ndarray:
    """Run mean-field on validated inputs (contiguous uint8 image, float32 (C, H*W) unary).

    Returns the marginals Q as a float32 (C, H, W) array (a view on pydensecrf's result buffer).
    """
    h, w = image.shape[:2]
    c = unary_c_n.shape[0]
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(unary_c_n)
    if params.w2 > 0:
        d.addPairwiseGaussian(sxy=params.sigma_gamma, compat=params.w2)
    if params.w1 > 0:
        d.addPairwiseBilateral(sxy=params.sigma_alpha, srgb=params.sigma_beta, rgbim=image,
                               compat=params.w1)
    q = np.asarray(d.inference(params.iterations))
    return q.reshape(c, h, w)


def dense_crf(image_hwc_uint8: np.ndarray, probs_chw: np.ndarray,
              params: CRFParams | None = None, prob_floor: float = PROB_FLOOR
              ) -> tuple[np.ndarray, np.ndarray]:
    """Refine softmax probabilities with the fully connected CRF.

    Args:
        image_hwc_uint8: raw RGB image, (H, W, 3) uint8 (never a normalised tensor).
        probs_chw: softmax probabilities at full image resolution, (C, H, W), float16/32/64,
            non-negative and summing to 1 per pixel (tolerance 1e-3).
        params: CRF parameters (defaults: ``CRFParams()``).
        prob_floor: probabilities are clipped to at least this before -log.

    Returns:
        (labels (H, W) int64, marginals (C, H, W) float32 summing to 1 per pixel).

    Raises ValueError on bad input before any call into pydensecrf.
    """
    if params is None:
        params = CRFParams()
    elif not isinstance(params, CRFParams):
        raise ValueError(f"params must be a CRFParams, got {type(params).__name__}")
    if not (0 < prob_floor < 1):
        raise ValueError(f"prob_floor must be in (0, 1), got {prob_floor!r}")
    img = check_image(image_hwc_uint8)
    probs = check_probs(probs_chw, hw=img.shape[:2])
    q = crf_from_unary(img, unary_from_probs(probs, prob_floor), params)
    return q.argmax(axis=0), q
