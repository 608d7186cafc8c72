"""Voxel selection and z-scoring for decoding, with statistics from training rows only.

Selection, in order: the participant's brain mask (and an optional ``roi_mask`` in the same grid), then
optionally the ``top_k`` voxels by noise-ceiling SNR computed from the *training* trials (NSD's ncsnr,
Allen et al. 2022). Test and imagery trials never influence which voxels are kept or how they are scaled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import BadDataError

LOG = logging.getLogger("m2i.decoding")


def mask_indices(brain_mask: np.ndarray, roi_mask: np.ndarray | None = None) -> np.ndarray:
    """Flat (C-order) indices of the voxels inside ``brain_mask`` (and ``roi_mask`` when given).

    Both masks are boolean arrays in the participant grid (same shape).
    """
    brain = np.asarray(brain_mask).astype(bool)
    if roi_mask is not None:
        roi = np.asarray(roi_mask).astype(bool)
        if roi.shape != brain.shape:
            raise BadDataError(f"roi_mask has shape {roi.shape} but the brain mask has {brain.shape}",
                               hint="resample the ROI to the participant grid (the brain mask's grid)")
        brain = brain & roi
    if not brain.any():
        raise BadDataError("no voxel left after masking", hint="check the brain mask and roi_mask overlap")
    return np.flatnonzero(brain.reshape(-1))


def compute_ncsnr(betas: np.ndarray, labels) -> np.ndarray:
    """Noise-ceiling SNR per voxel (NSD): betas z-scored per voxel over the given rows; noise variance =
    mean over stimuli with >= 2 repeats of the within-stimulus variance (ddof 1); signal sd =
    sqrt(max(0, 1 - noise variance)); ncsnr = signal sd / noise sd.

    Parameters
    ----------
    betas : ndarray (n, v)   training rows only
    labels : array (n,)      stimulus identity

    Returns
    -------
    ndarray (v,) float32; zeros when no stimulus is repeated.
    """
    from scipy import sparse

    betas = np.asarray(betas, dtype=np.float32)
    labels = np.asarray(labels).astype(str)
    sd = betas.std(0, dtype=np.float64).astype(np.float32)
    z = (betas - betas.mean(0, dtype=np.float64).astype(np.float32)) / np.where(sd > 0, sd, 1.0)
    distinct, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    repeated = counts >= 2
    if not repeated.any():
        return np.zeros(betas.shape[1], dtype=np.float32)
    # per-stimulus sums through a sparse one-hot matrix (fast for thousands of trials and voxels)
    onehot = sparse.csr_matrix((np.ones(len(inverse)), (inverse, np.arange(len(inverse)))),
                               shape=(len(distinct), len(inverse)))
    sums = np.asarray(onehot @ z, dtype=np.float64)
    sq = np.asarray(onehot @ (z * z), dtype=np.float64)
    c = counts[:, None].astype(float)
    within_var = (sq - sums * sums / c) / np.maximum(c - 1, 1)
    noise_var = within_var[repeated].mean(0)
    signal_sd = np.sqrt(np.clip(1.0 - noise_var, 0.0, None))
    return (signal_sd / np.sqrt(np.maximum(noise_var, 1e-12))).astype(np.float32)


def select_top_k(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Column indices of the ``k`` highest scores (ties broken by index: deterministic), sorted."""
    scores = np.asarray(scores)
    if k is None or k >= len(scores):
        return np.arange(len(scores))
    order = np.lexsort((np.arange(len(scores)), -scores))
    return np.sort(order[: int(k)])


#: smallest voxel count the ``auto`` search tries (fewer voxels than this rarely decode images)
MIN_AUTO_VOXELS = 100


def candidate_voxel_counts(n_voxels: int, min_voxels: int | None = None) -> list[int]:
    """Nested voxel counts for the cross-validated choice: ``n, n/2, n/4, ...`` (rounded), down to
    ``min_voxels`` (default :data:`MIN_AUTO_VOXELS`, or ``n`` when smaller). Halving keeps the number of fits
    logarithmic in the mask size while the grid stays fine where it matters (a factor 2 in voxels)."""
    n_voxels = int(n_voxels)
    floor = min(n_voxels, MIN_AUTO_VOXELS if min_voxels is None else int(min_voxels))
    counts, count = [], float(n_voxels)
    while int(round(count)) >= max(floor, 1):
        counts.append(int(round(count)))
        count /= 2
    return counts


@dataclass
class VoxelScaler:
    """Per-voxel z-scoring with the statistics of the training rows.

    Attributes
    ----------
    columns : ndarray (v_kept,)   columns of the betas matrix that are kept
    mean, scale : ndarray (v_kept,)
    """

    columns: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, betas_train: np.ndarray, labels_train=None, top_k: int | None = None) -> "VoxelScaler":
        """Fit on training rows ``betas_train`` (n_train, v). With ``top_k``, keep the voxels of highest
        ncsnr among the training trials (needs ``labels_train`` with repeats). Constant voxels are
        dropped (they carry nothing and would divide by zero)."""
        betas_train = np.asarray(betas_train, dtype=np.float32)
        if not np.isfinite(betas_train).all():
            raise BadDataError("betas contain NaN or infinite values inside the mask",
                               hint="check the GLM outputs or restrict the mask")
        sd = betas_train.std(0, dtype=np.float64)
        varying = np.flatnonzero(sd > 0)
        columns = varying
        # top_k >= the varying voxels (e.g. betas already chosen by decoding/streaming.py): nothing to rank,
        # and ncsnr's temporaries would cost ~7x the matrix
        if top_k is not None and labels_train is not None and top_k < len(varying):
            snr = compute_ncsnr(betas_train[:, varying], labels_train)
            if np.any(snr > 0):
                columns = varying[select_top_k(snr, top_k)]
            else:
                LOG.warning("no repeated training stimuli: cannot rank voxels by ncsnr; keeping all %d",
                            len(varying))
        if len(columns) == 0:
            raise BadDataError("all voxels are constant over the training trials")
        mean = betas_train[:, columns].mean(0, dtype=np.float64).astype(np.float32)
        return cls(columns=columns, mean=mean, scale=sd[columns].astype(np.float32))

    def transform(self, betas: np.ndarray) -> np.ndarray:
        """(n, v) -> (n, v_kept) z-scored with the training mean and sd."""
        return (np.asarray(betas, dtype=np.float32)[:, self.columns] - self.mean) / self.scale

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"voxel_columns": self.columns.astype(np.int64), "voxel_mean": self.mean, "voxel_scale": self.scale}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "VoxelScaler":
        return cls(np.asarray(arrays["voxel_columns"]), np.asarray(arrays["voxel_mean"]),
                   np.asarray(arrays["voxel_scale"]))
