"""Plots of CRF parameter-search results."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_heatmaps(rows: list[dict], out_png: str | Path, title: str | None = None) -> Path:
    """mIoU heatmaps over (sigma_alpha, sigma_beta), one panel per w1 value.

    ``rows`` are search rows (params fields + miou); rows evaluated on image subsets (an
    ``n_images`` smaller than the largest one present) are left out. Missing cells stay blank.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("no rows to plot")
    n_max = max(r.get("n_images", 0) for r in rows)
    rows = [r for r in rows if r.get("n_images", 0) == n_max]
    w1s = sorted({float(r["w1"]) for r in rows})
    alphas = sorted({float(r["sigma_alpha"]) for r in rows})
    betas = sorted({float(r["sigma_beta"]) for r in rows})
    grids = {w: np.full((len(betas), len(alphas)), np.nan) for w in w1s}
    for r in rows:
        g = grids[float(r["w1"])]
        i, j = betas.index(float(r["sigma_beta"])), alphas.index(float(r["sigma_alpha"]))
        g[i, j] = np.nanmax([g[i, j], r["miou"]])
    vals = np.array([r["miou"] for r in rows]) * 100
    vmin, vmax = float(vals.min()), float(vals.max())
    best = max(rows, key=lambda r: r["miou"])

    ncol = min(4, len(w1s))
    nrow = int(np.ceil(len(w1s) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol + 1.2, 2.9 * nrow + 0.7), squeeze=False,
                             layout="constrained")
    im = None
    for ax, w in zip(axes.ravel(), w1s):
        im = ax.imshow(grids[w] * 100, origin="lower", aspect="auto", cmap="viridis",
                       vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-6)
        ax.set_title(f"w1 = {w:g}")
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas], rotation=90, fontsize=7)
        ax.set_yticks(range(len(betas)), [f"{b:g}" for b in betas], fontsize=7)
        ax.set_xlabel("sigma_alpha")
        ax.set_ylabel("sigma_beta")
        if float(best["w1"]) == w:
            ax.plot(alphas.index(float(best["sigma_alpha"])), betas.index(float(best["sigma_beta"])),
                    marker="*", color="red", markersize=12)
    for ax in axes.ravel()[len(w1s):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="mIoU (%)")
    fig.suptitle(title or f"CRF search: best mIoU {best['miou'] * 100:.2f}% at w1={best['w1']:g}, "
                 f"sigma_alpha={best['sigma_alpha']:g}, sigma_beta={best['sigma_beta']:g}",
                 fontsize=9)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
