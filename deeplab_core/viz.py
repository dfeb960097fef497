"""Figures people would rather look at than read: colourised masks, example predictions, the
training loss curve, the trimap curve and per-class IoU bars. Matplotlib with the Agg backend
(no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deeplab_core.classes import voc_palette  # noqa: E402
from deeplab_core.fileio import atomic_write_bytes  # noqa: E402


def _save(fig, out_png: Path, dpi: int) -> None:
    """Write the figure as a PNG in one step (no half-written file) and close it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())


def colorize(mask_hw: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Colours for a label mask from ``palette`` ((256, 3) uint8; default the VOC palette, where
    255 = ignore shows in cream)."""
    return (voc_palette() if palette is None else palette)[np.asarray(mask_hw).astype(np.uint8)]


def overlay(image_hwc: np.ndarray, mask_hw: np.ndarray, alpha: float = 0.5,
            palette: np.ndarray | None = None) -> np.ndarray:
    """The image with the mask's palette colours blended in (`alpha` = colour weight) wherever
    the mask is not background (class 0); uint8 HxWx3."""
    image = np.asarray(image_hwc)
    mask = np.asarray(mask_hw)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape}: expected HxWx3 and HxW "
                         f"of the same height and width")
    out = image.astype(np.float32)
    fg = mask != 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colorize(mask[fg], palette).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def save_examples(rows: list[dict], out_png: Path, palette: np.ndarray | None = None) -> None:
    """rows: dicts with 'id', 'image' (HxWx3 uint8), 'label', 'pred' and optionally 'pred_crf';
    masks coloured with ``palette`` (see :func:`colorize`)."""
    if not rows:
        return
    cols = 4 if any("pred_crf" in r for r in rows) else 3
    fig, axes = plt.subplots(len(rows), cols, figsize=(3 * cols, 2.4 * len(rows)), squeeze=False)
    titles = ["image", "ground truth", "DeepLab", "DeepLab + CRF"][:cols]
    for r, row in enumerate(rows):
        panels = [row["image"], colorize(row["label"], palette), colorize(row["pred"], palette)]
        if cols == 4:
            panels.append(colorize(row.get("pred_crf", row["pred"]), palette))
        for c, img in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
        axes[r][0].set_ylabel(str(row["id"]), fontsize=8)
    fig.tight_layout()
    _save(fig, out_png, dpi=80)


def save_trimap_plot(widths: list[int], panels: dict[str, dict[str, list[float]]],
                     out_png: Path, title: str | None = None) -> None:
    """One panel per metric (e.g. {"mean IoU (%)": {"DeepLab": [...], "DeepLab + CRF": [...]},
    "pixel accuracy (%)": {...}}), each curve a metric (0..1) per trimap band width, as in the
    v2 paper's Fig. 10 (mean IoU within a band around object boundaries)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (ylabel, curves) in zip(axes[0], panels.items()):
        for name, ys in curves.items():
            ax.plot(widths, [np.nan if y is None else 100 * y for y in ys], marker="o",
                    label=name)
        ax.set_xlabel("trimap width (pixels)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, out_png, dpi=100)


def save_per_class_bars(per_class: dict[str, dict[str, float | None]], out_png: Path) -> None:
    """per_class: {series name: {class name: IoU or None}} -> grouped horizontal bars, classes in
    the order of the first series."""
    names = list(next(iter(per_class.values()), {}))
    series = list(per_class)
    fig, ax = plt.subplots(figsize=(6, max(3.0, 0.3 * len(names) + 0.7)))
    h = 0.8 / max(len(series), 1)
    y = np.arange(len(names))
    for i, s in enumerate(series):
        vals = [100 * (per_class[s].get(n) or 0.0) for n in names]
        ax.barh(y + i * h, vals, height=h, label=s)
    ax.set_yticks(y + h * (len(series) - 1) / 2)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("IoU (%)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, out_png, dpi=100)


def save_loss_curve(history: list[dict], out_png: Path, title: str | None = None) -> None:
    """The training loss (mean over each logging interval) against the iteration, and the
    learning rate on a second axis; ``history`` rows hold 'iteration', 'loss' and optionally
    'lr'. An empty history (training disabled) draws an empty, labelled chart."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    its = [r["iteration"] for r in history]
    ax.plot(its, [r["loss"] for r in history], color="tab:blue", label="loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss", color="tab:blue")
    ax.grid(alpha=0.3)
    if history and all("lr" in r for r in history):
        lr_ax = ax.twinx()
        lr_ax.plot(its, [r["lr"] for r in history], color="tab:orange", linestyle="--",
                   label="learning rate")
        lr_ax.set_ylabel("learning rate", color="tab:orange")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if not history:
        ax.text(0.5, 0.5, "no training (stage disabled)", ha="center", va="center",
                transform=ax.transAxes)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, out_png, dpi=100)
