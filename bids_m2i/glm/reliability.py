"""Reliability of single-trial betas across repeated stimuli.

* :func:`ncsnr` — noise-ceiling signal-to-noise ratio as defined for the Natural Scenes Dataset (Allen et al.
  2022, Nat Neurosci 25:116, Methods "Noise ceiling"): betas z-scored per voxel within the session; noise
  variance = mean over images shown all repeats of the variance of the betas across those repeats (unbiased,
  n−1); signal variance = max(0, 1 − noise variance) (the total variance is 1 after z-scoring);
  ncsnr = signal sd / noise sd.
* :func:`noise_ceiling` — NSD's noise ceiling (% variance) for responses averaged over ``n`` trials.
* :func:`retest_reliability` — per voxel, mean over pairs of repeats of the correlation (over stimuli) between the
  betas of the two repeats.
* :class:`RepeatStructure` and :func:`leave_one_out_error` — the cross-validation criterion used to choose the
  number of noise PCs and the ridge fraction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

MISSING = {"n/a", "nan", "", "None"}


def _design_repeat_groups(stimulus: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Trial indices of each stimulus shown the design's number of repeats (the most common count ≥ 2)."""
    labels = np.asarray(stimulus).astype(str)
    counts = Counter(label for label in labels if label not in MISSING)
    repeated = [c for c in counts.values() if c >= 2]
    if not repeated:
        return [], 0
    frequency = Counter(repeated)
    n_repeats = max(frequency, key=lambda c: (frequency[c], c))
    groups = [np.flatnonzero(labels == label) for label, c in counts.items() if c == n_repeats]
    return groups, n_repeats


def ncsnr(betas: np.ndarray, stimulus) -> np.ndarray:
    """NSD's noise-ceiling SNR per voxel.

    Parameters
    ----------
    betas : ndarray, shape (n_trials, n_voxels)
        Single-trial betas of one session (any units: they are z-scored here).
    stimulus : sequence of str, length n_trials
        Stimulus identity per trial (``n/a`` = none).

    Returns
    -------
    ncsnr : ndarray, shape (n_voxels,)
        0 where it is undefined: no stimulus repeated (the sidecar's ``n_repeated_stimuli`` is then 0 and
        the report says so), or a constant voxel. Never NaN, which viewers and thresholds mishandle
        (a NaN map was drawn as a saturated disc).
    """
    groups, n_repeats = _design_repeat_groups(stimulus)
    if not groups:
        return np.zeros(np.shape(betas)[1])
    betas = np.asarray(betas)
    if betas.dtype not in (np.float32, np.float64):
        betas = betas.astype(np.float64)
    sd = betas.std(0, ddof=1)
    z = np.where(sd > 0, (betas - betas.mean(0)) / np.where(sd > 0, sd, 1.0), 0.0)
    stacked = np.stack([z[g] for g in groups])  # (n_stimuli, n_repeats, n_voxels)
    noise_var = stacked.var(1, ddof=1).mean(0)
    signal_sd = np.sqrt(np.clip(1.0 - noise_var, 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(noise_var > 0, signal_sd / np.sqrt(noise_var), 0.0)


def noise_ceiling(ncsnr_values: np.ndarray, n_average: int = 1) -> np.ndarray:
    """NSD's noise ceiling (% of variance) for responses averaged over ``n_average`` trials."""
    snr2 = np.asarray(ncsnr_values, dtype=float) ** 2
    return 100.0 * snr2 / (snr2 + 1.0 / n_average)


def retest_reliability(betas: np.ndarray, stimulus) -> np.ndarray:
    """Per voxel, mean over pairs of repeats of the across-stimulus correlation of their betas.

    Repeats are taken in trial order (first showing, second showing, ...), over the stimuli shown the design's
    number of repeats.

    Returns
    -------
    reliability : ndarray, shape (n_voxels,)
    """
    betas = np.asarray(betas, dtype=np.float64)
    groups, n_repeats = _design_repeat_groups(stimulus)
    if len(groups) < 3:
        return np.full(betas.shape[1], np.nan)
    stacked = np.stack([betas[np.sort(g)] for g in groups], axis=1)  # (n_repeats, n_stimuli, n_voxels)
    centred = stacked - stacked.mean(1, keepdims=True)
    unit = centred / np.maximum(np.sqrt((centred ** 2).sum(1, keepdims=True)), 1e-30)
    pairs = [(a, b) for a in range(n_repeats) for b in range(a + 1, n_repeats)]
    return np.mean([(unit[a] * unit[b]).sum(0) for a, b in pairs], axis=0)


@dataclass
class RepeatStructure:
    """Which trials repeat which stimulus, for leave-one-repeat-out cross-validation.

    Attributes
    ----------
    trials : ndarray, shape (n_cv_trials,)
        Trials whose stimulus is shown at least twice.
    stimulus_of_trial : ndarray, shape (n_cv_trials,)
        Index (0..n_stimuli-1) of each such trial's stimulus.
    repeats_of_trial : ndarray, shape (n_cv_trials,)
        Number of showings of that stimulus.
    """

    trials: np.ndarray
    stimulus_of_trial: np.ndarray
    repeats_of_trial: np.ndarray
    n_stimuli: int
    _tensors: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_labels(cls, stimulus) -> "RepeatStructure":
        labels = np.asarray(stimulus).astype(str)
        counts = Counter(label for label in labels if label not in MISSING)
        repeated = sorted(label for label, c in counts.items() if c >= 2)
        index = {label: i for i, label in enumerate(repeated)}
        trials = np.array([i for i, label in enumerate(labels) if label in index], dtype=np.int64)
        stim = np.array([index[labels[i]] for i in trials], dtype=np.int64)
        reps = np.array([counts[labels[i]] for i in trials], dtype=np.int64)
        return cls(trials, stim, reps, len(repeated))

    @property
    def has_repeats(self) -> bool:
        return self.n_stimuli > 0

    def index_tensors(self, n_trials: int, dtype, device):
        """``(trials or None, stimulus_of_trial, repeats_of_trial - 1)`` as tensors, built once per device and
        dtype; ``trials`` is None when every trial of ``n_trials`` is repeated, in order (no gather needed)."""
        key = (n_trials, dtype, str(device))
        if key not in self._tensors:
            every = self.trials.size == n_trials and bool(np.array_equal(self.trials, np.arange(n_trials)))
            self._tensors[key] = (None if every else torch.as_tensor(self.trials, device=device),
                                  torch.as_tensor(self.stimulus_of_trial, device=device),
                                  torch.as_tensor(self.repeats_of_trial - 1, device=device, dtype=dtype))
        return self._tensors[key]


def leave_one_out_error(target: torch.Tensor, estimate: torch.Tensor, repeats: RepeatStructure) -> torch.Tensor:
    """Squared error of predicting each repeat's ``target`` by the mean of the other repeats' ``estimate``.

    With OLS betas as the target this is the identity-weighted analogue of a leave-one-run-out prediction of
    the held-out time series (the time-series error equals a quadratic form in the beta difference plus a
    constant), which is how GLMsingle cross-validates (Prince et al. 2022).

    Parameters
    ----------
    target, estimate : Tensor, shape (n_voxels, n_trials)

    Returns
    -------
    error : Tensor, shape (n_voxels,)
    """
    trials, stim, others = repeats.index_tensors(estimate.shape[1], estimate.dtype, estimate.device)
    selected = estimate if trials is None else estimate.index_select(1, trials)
    sums = torch.zeros(estimate.shape[0], repeats.n_stimuli, dtype=estimate.dtype, device=estimate.device)
    sums.index_add_(1, stim, selected)
    # in place (one buffer instead of four; the rows are large): prediction - target = -residual, same square
    deviation = sums.index_select(1, stim).sub_(selected).div_(others)
    deviation.sub_(target if trials is None else target.index_select(1, trials))
    return deviation.mul_(deviation).sum(1)
