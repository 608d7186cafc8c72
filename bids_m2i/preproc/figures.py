"""Preprocessing figures (SVG, deterministic): motion traces, FD, carpet plot, temporal SD before/after.

Every function takes arrays and an output path and writes the file atomically. SVGs are byte-identical
for identical inputs: Agg backend, fixed ``svg.hashsalt``, no date in the metadata, text kept as paths.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..utils.atomic import atomic_path  # noqa: E402

_RC = {"svg.hashsalt": "bids_m2i", "svg.fonttype": "path", "font.size": 8, "axes.titlesize": 9,
       "figure.dpi": 100, "path.simplify": False}


def _save(fig, path: str | os.PathLike) -> Path:
    final = Path(path)
    fmt = final.suffix.lstrip(".").lower() or "svg"
    meta = {"Date": None} if fmt == "svg" else ({"Software": None} if fmt == "png" else None)
    with atomic_path(final) as tmp:
        with plt.rc_context(_RC):
            fig.savefig(tmp, format=fmt, metadata=meta, bbox_inches="tight")
    plt.close(fig)
    return final


def plot_motion_traces(params: np.ndarray, path, *, tr: float | None = None) -> Path:
    """Translations (mm) and rotations (deg) over time. params: (T, 6) trans_x..rot_z (mm, rad)."""
    params = np.asarray(params, dtype=np.float64)
    x = np.arange(len(params)) * (tr or 1.0)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(2, 1, figsize=(7, 3.6), sharex=True)
        for i, axis in enumerate("xyz"):
            axes[0].plot(x, params[:, i], lw=1, label=f"trans_{axis}")
            axes[1].plot(x, np.rad2deg(params[:, 3 + i]), lw=1, label=f"rot_{axis}")
        axes[0].set_ylabel("translation (mm)")
        axes[1].set_ylabel("rotation (deg)")
        axes[1].set_xlabel("time (s)" if tr else "volume")
        for ax in axes:
            ax.legend(loc="upper right", ncol=3, fontsize=7, frameon=False)
            ax.axhline(0, color="0.7", lw=0.5)
        axes[0].set_title("Head motion (relative to the participant reference)")
        return _save(fig, path)


def plot_framewise_displacement(fd: np.ndarray, path, *, threshold: float = 0.5, tr: float | None = None) -> Path:
    """FD trace (mm) with a dashed threshold line and the count of volumes above it."""
    fd = np.asarray(fd, dtype=np.float64)
    x = np.arange(len(fd)) * (tr or 1.0)
    above = int(np.nansum(fd > threshold))
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(7, 1.8))
        ax.plot(x, fd, lw=1, color="C3")
        ax.axhline(threshold, color="k", ls="--", lw=0.8)
        ax.set_ylabel("FD (mm)")
        ax.set_xlabel("time (s)" if tr else "volume")
        ax.set_title(f"Framewise displacement: {above} of {len(fd)} volumes above {threshold:g} mm")
        return _save(fig, path)


def plot_carpet(data: np.ndarray, mask: np.ndarray, path, *, confounds: dict | None = None,
                tr: float | None = None, max_rows: int = 1000) -> Path:
    """Carpet plot (Power 2017): in-mask voxels (rows) x time, each row z-scored; optional traces above.

    Parameters
    ----------
    data : (X, Y, Z, T); mask : (X, Y, Z) bool.
    confounds : optional {name: (T,) array} drawn above the carpet (e.g. FD, std_dvars).
    max_rows : rows kept (evenly spaced voxels), for a light figure.
    """
    ts = np.nan_to_num(np.asarray(data)[np.asarray(mask, dtype=bool)].astype(np.float64))
    if ts.shape[0] > max_rows:
        ts = ts[np.linspace(0, ts.shape[0] - 1, max_rows).round().astype(int)]
    ts = ts - ts.mean(axis=1, keepdims=True)
    sd = ts.std(axis=1, keepdims=True)
    ts = np.divide(ts, sd, out=np.zeros_like(ts), where=sd > 0)
    n_traces = len(confounds or {})
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(n_traces + 1, 1, figsize=(7, 1.0 * n_traces + 3),
                                 gridspec_kw={"height_ratios": [1] * n_traces + [3]}, sharex=True, squeeze=False)
        axes = axes[:, 0]
        extent = (0, ts.shape[1] * (tr or 1.0), ts.shape[0], 0)
        for ax, (name, values) in zip(axes[:-1], (confounds or {}).items()):
            ax.plot(np.arange(len(values)) * (tr or 1.0) + 0.5 * (tr or 1.0), values, lw=1)
            ax.set_ylabel(name, rotation=0, ha="right", va="center")
        if ts.shape[0]:
            axes[-1].imshow(ts, aspect="auto", cmap="gray", vmin=-2, vmax=2, interpolation="nearest", extent=extent)
        else:  # an empty brain mask: imshow of no rows printed matplotlib's "identical low and high ylims" warning
            axes[-1].text(0.5, 0.5, "no voxel in the brain mask", ha="center", va="center",
                          transform=axes[-1].transAxes)
        axes[-1].set_ylabel("voxels")
        axes[-1].set_xlabel("time (s)" if tr else "volume")
        axes[0].set_title("Carpet plot (z-scored in-mask voxels)")
        return _save(fig, path)


def plot_std_before_after(std_before: np.ndarray, std_after: np.ndarray, path, *, n_slices: int = 5) -> Path:
    """Temporal SD maps before vs after correction, ``n_slices`` axial slices each, same colour scale."""
    before = np.nan_to_num(np.asarray(std_before, dtype=np.float64))
    after = np.nan_to_num(np.asarray(std_after, dtype=np.float64))
    vmax = float(np.percentile(np.concatenate([before.ravel(), after.ravel()]), 99.5)) or 1.0
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(2, n_slices, figsize=(1.4 * n_slices, 3.0), squeeze=False)
        for row, (name, img) in enumerate((("before", before), ("after", after))):
            ks = np.linspace(0, img.shape[2] - 1, n_slices + 2)[1:-1].round().astype(int) if img.shape[2] > 2 \
                else np.zeros(n_slices, dtype=int)
            for col, k in enumerate(ks):
                ax = axes[row, col]
                ax.imshow(img[:, :, k].T, origin="lower", cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            axes[row, 0].set_ylabel(f"temporal SD\n{name}")
        axes[0, n_slices // 2].set_title("Temporal SD before / after head-motion correction")
        return _save(fig, path)


def temporal_std(data: np.ndarray) -> np.ndarray:
    """(X, Y, Z, T) -> (X, Y, Z) temporal SD (NaNs ignored)."""
    return np.nanstd(np.asarray(data, dtype=np.float32), axis=3)
