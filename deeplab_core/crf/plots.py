"""Plots of CRF parameter-search results."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    _pyplot().close(fig)
    return out_png


def plot_heatmaps(rows: list[dict], out_png: str | Path, title: str | None = None,
                  metric: str = "miou", label: str = "mIoU (%)") -> Path:
    """Heatmaps of ``metric`` over (sigma_alpha, sigma_beta), one panel per w1 value.

    ``rows`` are search rows (params fields + ``metric``); rows evaluated on image subsets (an
    ``n_images`` smaller than the largest one present) are left out. Missing cells stay blank.
    """
    plt = _pyplot()
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
        g[i, j] = np.nanmax([g[i, j], r[metric]])
    vals = np.array([r[metric] for r in rows]) * 100
    vmin, vmax = float(vals.min()), float(vals.max())
    best = max(rows, key=lambda r: r[metric])

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
    fig.colorbar(im, ax=axes.ravel().tolist(), label=label)
    fig.suptitle(title or f"CRF search: best {label} {best[metric] * 100:.2f} at w1={best['w1']:g}, "
                 f"sigma_alpha={best['sigma_alpha']:g}, sigma_beta={best['sigma_beta']:g}",
                 fontsize=9)
    return _save(fig, out_png)


def plot_search_trace(rows: list[dict], out_png: str | Path, metric: str = "miou_gt",
                      baseline: float | None = None, reference: float | None = None,
                      title: str | None = None) -> Path:
    """The configs a search scored on all images, in the order it scored them: each one's
    ``metric`` and the best so far, with the no-CRF ``baseline`` and an optional ``reference``
    (e.g. the full grid's best) as horizontal lines. Configs off the coarse grid (``on_grid``
    False in a row) are drawn as open markers."""
    plt = _pyplot()
    if not rows:
        raise ValueError("no rows to plot")
    vals = np.array([r[metric] for r in rows]) * 100
    on = np.array([bool(r.get("on_grid", True)) for r in rows])
    x = np.arange(1, len(rows) + 1)
    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
    ax.plot(x[on], vals[on], "o", color="tab:blue", label="coarse-grid config")
    if (~on).any():
        ax.plot(x[~on], vals[~on], "o", mfc="none", color="tab:orange", label="finer / off-grid")
    ax.step(x, np.maximum.accumulate(vals), where="post", color="black", lw=1.2,
            label="best so far")
    if baseline is not None:
        ax.axhline(baseline * 100, color="gray", ls=":", label="no CRF")
    if reference is not None:
        ax.axhline(reference * 100, color="tab:red", ls="--", label="reference")
    b = rows[int(vals.argmax())]
    ax.annotate(f"w1={b['w1']:g}, sa={b['sigma_alpha']:g}, sb={b['sigma_beta']:g}",
                (x[int(vals.argmax())], vals.max()), textcoords="offset points", xytext=(0, 6),
                ha="right" if vals.argmax() > 0.6 * len(rows) else "left", fontsize=8)
    ax.margins(y=0.15)
    ax.set_xlabel("config scored on all CV images (search order)")
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "CRF search trace", fontsize=9)
    return _save(fig, out_png)
