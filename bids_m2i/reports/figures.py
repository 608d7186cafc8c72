"""Figures of the single-trial GLM and decoding stages (SVG, deterministic bytes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "m2i"  # stable ids: identical inputs give identical files
    return plt


def save_svg(fig, path: str | Path) -> Path:
    from ..utils.atomic import atomic_path

    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None, "Creator": "m2i"}, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


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


def plot_design_matrix(design, path: str | Path) -> Path:
    plt = _pyplot()
    values = design.to_numpy(dtype=float)
    scale = np.abs(values).max(axis=0)
    scale[scale == 0] = 1
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.imshow(values / scale, aspect="auto", cmap="gray", interpolation="nearest")
    ax.set_xlabel(f"regressors ({sum(str(c).startswith('trial_') for c in design.columns)} trials, then nuisance "
                  "events and drifts)")
    ax.set_ylabel("volume")
    stats = collinearity(design)
    ax.set_title(f"Design matrix (first run, LSA). Trial collinearity: median VIF {stats['vif_median']:.2f}, "
                 f"max VIF {stats['vif_max']:.2f}, max |r| {stats['max_abs_corr']:.2f}", fontsize=9)
    return save_svg(fig, path)


def plot_ncsnr_histogram(ncsnr, path: str | Path) -> Path:
    plt = _pyplot()
    values = np.asarray(ncsnr, dtype=float)
    values = values[np.isfinite(values)]
    fig, ax = plt.subplots(figsize=(5, 3))
    if values.size:
        ax.hist(values, bins=50, color="#4477aa")
        ax.axvline(np.median(values), color="k", ls="--", lw=1)
        ax.set_title(f"ncsnr (median {np.median(values):.3f}, {np.mean(values > 0.2) * 100:.0f}% of voxels > 0.2)",
                     fontsize=9)
    else:
        ax.set_title("ncsnr: no repeated stimuli, not defined", fontsize=9)
    ax.set_xlabel("noise ceiling SNR (NSD definition)")
    ax.set_ylabel("voxels")
    return save_svg(fig, path)
