"""Figures people would rather look at than read: colourised masks, example predictions, the
trimap curve and per-class IoU bars. Matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deeplab_core.classes import VOC_CLASSES, voc_palette  # noqa: E402


def colorize(mask_hw: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Colours for a label mask from ``palette`` ((256, 3) uint8; default the VOC palette, where
    255 = ignore shows in cream)."""
    return (voc_palette() if palette is None else palette)[mask_hw.astype(np.uint8)]


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
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def save_trimap_plot(widths: list[int], curves: dict[str, list[float]], ylabel: str,
                     out_png: Path) -> None:
    """Accuracy (or mIoU) in a band around object boundaries vs band width (v1 paper, Fig. 5)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, ys in curves.items():
        ax.plot(widths, [100 * y for y in ys], marker="o", label=name)
    ax.set_xlabel("trimap width (pixels)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def save_per_class_bars(per_class: dict[str, dict[str, float | None]], out_png: Path,
                        class_names: Sequence[str] = VOC_CLASSES) -> None:
    """per_class: {series name: {class name: IoU or None}} -> grouped horizontal bars, one
    group per name of ``class_names`` (the dataset's class list)."""
    names = list(class_names)
    series = list(per_class)
    fig, ax = plt.subplots(figsize=(6, 7))
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
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
