"""Units of the single-trial betas: the per-voxel rescale from the model's "plateau" units to "peak" units.

The model's kernels are unit-sum (nilearn's convention, :mod:`bids_m2i.glm.hrf_library`): a fitted beta is the
level a *sustained* response would reach (the plateau), in % signal change. That scale depends on the kernel's
shape: a trial of a few seconds reaches only part of the plateau, and how much depends on the HRF (a late, broad
kernel reaches 0.4 of it in 3 s, an early one with a deep undershoot more than 1). With a library HRF chosen per
voxel, the betas of two voxels with the same true response therefore differ by their kernels' ratio (issue 13,
docs/glm.md "Units of the betas": per-voxel slope spread 0.40 × the median against 0.12 for GLMsingle's).

GLMsingle's kernels are the trial's response normalised to peak 1 (``getcanonicalhrf``): its beta is the peak %
signal change of one trial's response, which is what users of single-trial betas (NSD, GLMsingle) expect. The
default ``beta_units="peak"`` gives ours that meaning by multiplying each voxel's betas by its own kernel's peak
response to one trial (:func:`kernel_peak_responses`): a pure per-voxel rescale, so every correlation, the
test-retest reliability, ncsnr and z-scored betas are unchanged.

Which trial: one of the **reference duration**, the median duration of the task and session's trials
(:func:`reference_duration`). Why not each trial's own duration: the model assumes a trial of any duration is
the same neural amplitude held for its duration, so a beta measures that amplitude whatever the duration; a
per-trial factor would multiply longer trials' betas by more than shorter ones', changing the ratios between the
trials of one voxel (their correlations, the decoders' inputs), and it would no longer be a per-voxel rescale.
With one duration per task and session, as in GLMsingle (one ``stimdur``) and in every dataset the app
simulates, the reference is that duration and the beta is the peak of each trial's own response. With mixed
durations, trial ``i``'s own peak is ``beta_i × peak(d_i) / peak(reference)`` (``peak(d)``: the same function at
duration ``d``); the sidecar records the reference and every kernel's factor.

The peak is taken on the model's oversampled grid (TR / oversampling): the peak of the continuous response.
GLMsingle normalises its kernel after resampling it at the TR from the onset, a maximum that can fall slightly
below the continuous one, depending on the TR.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

BETA_UNITS = ("peak", "plateau")


def check_beta_units(beta_units: str) -> str:
    if beta_units not in BETA_UNITS:
        raise UsageError(f"Unknown beta_units {beta_units!r}",
                         hint="use 'peak' (GLMsingle's scaling, the default) or 'plateau' (unit-sum kernels)")
    return beta_units


def reference_duration(durations) -> float:
    """The trial duration (s) the peak refers to: the median over the task and session's trials (0 when none is
    finite: an impulse, one grid sample, as the model treats a zero duration)."""
    values = np.asarray(durations, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else 0.0


def kernel_peak_responses(kernels: np.ndarray, duration: float, dt: float) -> np.ndarray:
    """Per kernel, the maximum of its response to a unit boxcar of ``duration`` s.

    Parameters
    ----------
    kernels : ndarray, shape (n_kernels, n_samples)
        HRFs sampled every ``dt`` s (the model's unit-sum kernels).
    duration : float
        Boxcar length (s); as in the model's regressors (:func:`bids_m2i.glm.design.convolve_events`), it covers
        ``round(duration / dt)`` samples, at least one.

    Returns
    -------
    ndarray, shape (n_kernels,)
        The peak of one trial's regressor per unit beta: the factor from plateau to peak units.
    """
    kernels = np.atleast_2d(np.asarray(kernels, dtype=float))
    boxcar = np.ones(max(1, int(round(duration / dt))))
    return np.array([np.convolve(kernel, boxcar).max() for kernel in kernels])


def voxel_peak_scale(kernel_peaks: np.ndarray, hrf_index: np.ndarray, assumed_index: int) -> np.ndarray:
    """Per voxel, the factor of its own kernel (``hrf_index``; -1 = the assumed HRF at ``assumed_index``)."""
    index = np.where(np.asarray(hrf_index) >= 0, hrf_index, assumed_index).astype(int)
    return np.asarray(kernel_peaks, dtype=np.float32)[index]


def to_peak_units(betas: np.ndarray, scale: np.ndarray) -> None:
    """Multiply each voxel's betas (trials × voxels) by its factor, in place (one float32 product per value)."""
    np.multiply(betas, scale[None, :].astype(betas.dtype, copy=False), out=betas)
