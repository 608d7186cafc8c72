"""Small figures of the evaluation for the reports (SVG, identical bytes for identical inputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["plot_metrics_vs_chance", "plot_reconstruction_pairs"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "m2i"  # stable element ids
    return plt


def _save_svg(fig, path) -> Path:
    from ..utils.atomic import atomic_path

    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="svg", metadata={"Date": None, "Creator": "m2i"}, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def plot_metrics_vs_chance(frame: pd.DataFrame, path, alpha: float = 0.05) -> Path:
    """Bars of each metric's value next to its chance level, one panel per (condition, cue).

    Parameters
    ----------
    frame : DataFrame
        Rows of the metrics table (see ``table.METRICS_TABLE_COLUMNS``).
    path : str or Path
        SVG file to write.
    alpha : float
        Values with ``p_value < alpha`` get a star.
    """
    plt = _pyplot()
    frame = frame.dropna(subset=["value"])
    groups = list(frame.groupby(["condition", "cue"], sort=True))
    fig, axes = plt.subplots(len(groups) or 1, 1, figsize=(8, 2.6 * max(1, len(groups))), squeeze=False)
    for ax, ((condition, cue), rows) in zip(axes[:, 0], groups):
        labels = [f"{m}\n{s}" for m, s in zip(rows.metric, rows.feature_space)]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, rows.value, width=0.4, label="value", color="#3b75af")
        ax.bar(x + 0.2, rows.chance, width=0.4, label="chance", color="#bbbbbb")
        for xi, value, p in zip(x, rows.value, rows.p_value):
            if np.isfinite(p) and p < alpha:
                ax.text(xi - 0.2, value, "*", ha="center", va="bottom")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(f"{condition} / cue {cue}", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.legend(fontsize=7, frameon=False)
    if not groups:
        axes[0, 0].text(0.5, 0.5, "no metrics", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    return _save_svg(fig, path)


def plot_reconstruction_pairs(recon_images: Sequence, target_images: Sequence | None, path,
                              titles: Sequence[str] | None = None, max_items: int = 8) -> Path:
    """Targets (top row, when given) above their reconstructions (bottom row), for the first items."""
    from .metrics import images_to_tensor

    plt = _pyplot()
    n = min(len(recon_images), max_items)
    rows = 2 if target_images is not None else 1
    fig, axes = plt.subplots(rows, max(n, 1), figsize=(1.6 * max(n, 1), 1.7 * rows), squeeze=False)
    recon = images_to_tensor(list(recon_images[:n]), size=128)
    target = images_to_tensor(list(target_images[:n]), size=128) if target_images is not None else None
    for i in range(n):
        if target is not None:
            axes[0, i].imshow(target[i].permute(1, 2, 0).numpy())
        axes[rows - 1, i].imshow(recon[i].permute(1, 2, 0).numpy())
        if titles is not None:
            axes[0, i].set_title(str(titles[i]), fontsize=6)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    return _save_svg(fig, path)
