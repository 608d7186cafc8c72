"""Non-steady-state (dummy) volumes at the start of a run.

Before the longitudinal magnetisation reaches its steady state the first volumes are brighter. The idea
is that of nipype's/fMRIPrep's ``NonSteadyStateDetector`` (an outlier test on the global signal of the
first volumes), implemented here as: global signal ``g`` (mean in mask); robust z-scores
``z = 0.6745 (g - median) / MAD`` computed over the first ``max_volumes`` volumes; the non-steady
volumes are the *leading run* of volumes with ``z > threshold`` (3.5, the Iglewicz & Hoaglin 1993
modified z-score cut-off). Only leading volumes count: a bright volume later in the run is a spike, not a
dummy scan.
"""

from __future__ import annotations

import numpy as np


def detect_nonsteady_volumes(data: np.ndarray, mask: np.ndarray | None = None, *, threshold: float = 3.5,
                             max_volumes: int = 50) -> list[int]:
    """Indices of the initial non-steady-state volumes.

    Parameters
    ----------
    data : (X, Y, Z, T) run (raw or realigned).
    mask : optional (X, Y, Z) bool; default voxels whose temporal mean exceeds the mean of the temporal
        mean image (a crude head mask, enough for a global signal).
    threshold : modified z-score above which a leading volume is non-steady.
    max_volumes : volumes used for the robust statistics (dummies are within the first few).

    Returns
    -------
    list of int, e.g. ``[0, 1]``; empty when the run starts in steady state.
    """
    arr = np.asarray(data)
    n_vols = arr.shape[3]
    if n_vols < 5:
        return []
    head = arr[..., : min(n_vols, max_volumes)]
    if mask is None:
        mean_img = np.nan_to_num(head.mean(axis=3, dtype=np.float64))
        mask = mean_img > mean_img.mean()
    ts = np.nan_to_num(head[np.asarray(mask, dtype=bool)].astype(np.float64))
    if ts.shape[0] == 0:
        return []
    g = ts.mean(axis=0)
    median = np.median(g)
    mad = np.median(np.abs(g - median))
    if mad <= 0:
        mad = 1e-6 * max(abs(median), 1.0)
    z = 0.6745 * (g - median) / mad
    out = []
    for t, value in enumerate(z):
        if value > threshold:
            out.append(t)
        else:
            break
    return out
