"""Figures of the single-trial GLM (SVG, identical bytes for identical inputs).

Drawn by :mod:`.svg`, not matplotlib: the GLM node's process does not import it (issue 13, speed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def collinearity(design) -> dict:
    """Variance inflation factor of every trial column (how much overlap with the others inflates its
    variance) and the largest absolute correlation between two trial columns."""
    columns = [c for c in design.columns if str(c).startswith("trial_")]
    if len(columns) < 2:
        return {"vif_median": float("nan"), "vif_max": float("nan"), "max_abs_corr": float("nan")}
    x = design[columns].to_numpy(dtype=float)
    x = x - x.mean(axis=0)
    full = design.to_numpy(dtype=float)
    vif = []
    for j in range(x.shape[1]):
        others = np.delete(full, design.columns.get_loc(columns[j]), axis=1)
        beta, *_ = np.linalg.lstsq(others, full[:, design.columns.get_loc(columns[j])], rcond=None)
        resid = full[:, design.columns.get_loc(columns[j])] - others @ beta
        total = np.sum(x[:, j] ** 2)
        r2 = 1 - np.sum(resid**2) / total if total > 0 else 0.0
        vif.append(1.0 / max(1e-12, 1 - r2))
    corr = np.corrcoef(x.T)
    np.fill_diagonal(corr, 0)
    return {"vif_median": float(np.median(vif)), "vif_max": float(np.max(vif)),
            "max_abs_corr": float(np.nanmax(np.abs(corr)))}


# the axes' box of both figures (pt): matplotlib's default subplot in an 8 x 4.5 in and a 5 x 3 in figure
DESIGN_BOX = (446.0, 250.0)
HISTOGRAM_BOX = (279.0, 166.0)


def plot_design_matrix(design, path: str | Path) -> Path:
    """Each column of the design scaled to a maximum |value| of 1, in gray (black = the lowest value), with
    the collinearity of the trial columns in the title."""
    from .svg import Axes, Figure, nice_ticks, png_gray, tick_count, tick_labels

    values = np.nan_to_num(design.to_numpy(dtype=float))
    scale = np.abs(values).max(axis=0)
    scale[scale == 0] = 1
    image = values / scale
    n_rows, n_cols = image.shape
    lo, hi = float(image.min()), float(image.max())
    # matplotlib's "gray" colour map over [min, max]: 256 levels
    levels = np.clip(np.floor((image - lo) / (hi - lo) * 256), 0, 255) if hi > lo else np.zeros_like(image)
    width, height = DESIGN_BOX
    # whole pixels per row and column, about two per point: sharp in a viewer that smooths images
    levels = np.repeat(np.repeat(levels.astype(np.uint8), max(1, math.ceil(2 * height / n_rows)), axis=0),
                       max(1, math.ceil(2 * width / n_cols)), axis=1)
    figure = Figure()
    axes = Axes(figure, 0.0, 0.0, width, height, xlim=(-0.5, n_cols - 0.5), ylim=(n_rows - 0.5, -0.5))
    figure.image(0.0, 0.0, width, height, png_gray(levels))
    axes.frame()
    xticks, xstep = nice_ticks(0, n_cols - 1, tick_count(width, 6 * len(str(n_cols))), integer=True)
    yticks, ystep = nice_ticks(0, n_rows - 1, tick_count(height, 10), integer=True)
    xlabel_top = axes.xticks(xticks, tick_labels(xticks, xstep))
    ylabel_right = axes.yticks(yticks, tick_labels(yticks, ystep))
    stats = collinearity(design)
    n_trials = sum(str(c).startswith("trial_") for c in design.columns)
    axes.labels(f"regressors ({n_trials} trials, then nuisance events and drifts)", "volume",
                f"Design matrix (first run, LSA). Trial collinearity: median VIF {stats['vif_median']:.2f}, "
                f"max VIF {stats['vif_max']:.2f}, max |r| {stats['max_abs_corr']:.2f}", xlabel_top, ylabel_right)
    return figure.save(path)


def plot_ncsnr_histogram(ncsnr, path: str | Path) -> Path:
    """Histogram (50 bins) of the finite ncsnr values with their median (dashed)."""
    from .svg import Axes, Figure, nice_ticks, tick_count, tick_labels

    values = np.asarray(ncsnr, dtype=float)
    values = values[np.isfinite(values)]
    width, height = HISTOGRAM_BOX
    figure = Figure()
    if values.size:
        counts, edges = np.histogram(values, bins=50)
        margin = 0.05 * (edges[-1] - edges[0])
        axes = Axes(figure, 0.0, 0.0, width, height, xlim=(edges[0] - margin, edges[-1] + margin),
                    ylim=(0.0, 1.05 * counts.max()))
        figure.rects([(float(axes.x(a)), float(axes.y(n)), float(axes.x(b)), float(axes.y(0)))
                      for a, b, n in zip(edges[:-1], edges[1:], counts) if n], "#4477aa")
        median_x = float(axes.x(np.median(values)))
        figure.line(median_x, 0.0, median_x, height, width=1.0, dash="3.7,1.6")
        title = f"ncsnr (median {np.median(values):.3f}, {np.mean(values > 0.2) * 100:.0f}% of voxels > 0.2)"
    else:
        axes = Axes(figure, 0.0, 0.0, width, height, xlim=(0.0, 1.0), ylim=(0.0, 1.0))
        title = "ncsnr: no repeated stimuli, not defined"
    axes.frame()
    xticks, xstep = nice_ticks(*axes.xlim, max_ticks=tick_count(width, 30))
    yticks, ystep = nice_ticks(*axes.ylim, max_ticks=tick_count(height, 10))
    xlabel_top = axes.xticks(xticks, tick_labels(xticks, xstep))
    ylabel_right = axes.yticks(yticks, tick_labels(yticks, ystep))
    axes.labels("noise ceiling SNR (NSD definition)", "voxels", title, xlabel_top, ylabel_right)
    return figure.save(path)
