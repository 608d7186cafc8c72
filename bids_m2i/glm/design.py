"""Design matrices for single-trial GLMs: one task of one session, runs modelled separately.

Each run gets its own convolved regressors (no HRF spill across runs), its own drift (nilearn's cosine or
polynomial basis with a constant) and its own confounds. Because every column lives in one run, the whole
session model is block diagonal and every fit below is done run by run.

Regressors are computed as nilearn's ``compute_regressor`` computes them (boxcar on an oversampled grid that
starts ``min_onset`` s before the first frame, convolution with a unit-sum kernel, linear interpolation at the
frame times), but for all events and all kernels at once: the convolution of a boxcar with a kernel is a
difference of the kernel's cumulative sum, so every regressor value is two look-ups.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import BadDataError

#: seconds before the first frame where the oversampled grid starts (nilearn's ``min_onset``): an event that starts
#: earlier is not modelled
MIN_ONSET = -24.0

LOGGER = logging.getLogger("m2i.glm")


@dataclass
class RunData:
    """One run of BOLD data for the single-trial GLM.

    Parameters
    ----------
    data : ndarray, shape (n_voxels, n_volumes)
        BOLD time series (raw scanner units, or already in % signal change; see ``data_units`` of
        :func:`~bids_m2i.glm.estimate.estimate_single_trial_betas`).
    tr : float
        Repetition time in seconds.
    run : str
        Run label as in the trials table's ``run`` column (``"n/a"`` when the dataset has no run entity).
    frame_times : ndarray, shape (n_volumes,), optional
        Time (s) that each volume represents; wins over the slice-timing options.
    slice_timing : sequence of float, optional
        BIDS ``SliceTiming`` (s). The model's time reference is then the median slice time:
        ``frame_times = arange(n) * tr + median(slice_timing)``.
    slice_time_ref : float, optional
        Reference as a fraction of the TR (nilearn's ``slice_time_ref``), used when no ``slice_timing``.
    confounds : ndarray, shape (n_volumes, n_confounds), optional
        Extra nuisance regressors (e.g. motion). NaNs (first row of derivatives) are set to 0.
    """

    data: np.ndarray
    tr: float
    run: str = "n/a"
    frame_times: np.ndarray | None = None
    slice_timing: list | None = None
    slice_time_ref: float | None = None
    confounds: np.ndarray | None = None

    @property
    def n_volumes(self) -> int:
        return int(self.data.shape[1])

    def model_frame_times(self) -> np.ndarray:
        """Frame times (s) used by the model, shape (n_volumes,)."""
        if self.frame_times is not None:
            return np.asarray(self.frame_times, dtype=float)
        start = 0.0
        if self.slice_timing is not None and len(self.slice_timing):
            start = float(np.median(np.asarray(self.slice_timing, dtype=float)))
        elif self.slice_time_ref is not None:
            start = float(self.slice_time_ref) * float(self.tr)
        return start + float(self.tr) * np.arange(self.n_volumes)


def high_res_grid(frame_times: np.ndarray, oversampling: int = 50, min_onset: float = MIN_ONSET) -> np.ndarray:
    """nilearn's oversampled time grid for one run, shape (n_high_res,)."""
    n_frames = frame_times.size
    first, last = float(frame_times.min()), float(frame_times.max())
    n_high = (n_frames - 1) / (last - first) * (last * (1 + 1.0 / (n_frames - 1)) - first - min_onset) * oversampling
    return np.linspace(first + min_onset, last * (1 + 1.0 / (n_frames - 1)), int(np.rint(n_high + 1)))


def convolve_events(onsets: np.ndarray, durations: np.ndarray, frame_times: np.ndarray, kernels: np.ndarray,
                    oversampling: int = 50, min_onset: float = MIN_ONSET) -> np.ndarray:
    """Convolved regressors of single events, for several kernels at once.

    Parameters
    ----------
    onsets, durations : ndarray, shape (n_events,)
        Seconds, in the same clock as ``frame_times``.
    frame_times : ndarray, shape (n_volumes,)
    kernels : ndarray, shape (n_kernels, n_samples)
        HRFs sampled every ``tr / oversampling`` s (as nilearn's ``glover_hrf``).

    Returns
    -------
    regressors : ndarray, shape (n_kernels, n_volumes, n_events)
        Equal to ``nilearn.glm.first_level.compute_regressor([[onset], [duration], [1]], kernel, frame_times)``
        for each event and kernel (unit amplitude).
    """
    onsets = np.asarray(onsets, dtype=float)
    durations = np.asarray(durations, dtype=float)
    kernels = np.atleast_2d(np.asarray(kernels, dtype=float))
    grid = high_res_grid(frame_times, oversampling, min_onset)
    n_high = grid.size
    dropped = onsets < frame_times[0] + min_onset
    if dropped.any():
        warnings.warn(f"{int(dropped.sum())} event(s) start more than {-min_onset} s before the first volume and "
                      "are not modelled", UserWarning, stacklevel=2)
    t_on = np.minimum(np.searchsorted(grid, onsets), n_high - 1)
    t_off = np.minimum(np.searchsorted(grid, onsets + durations), n_high - 1)
    # nilearn gives zero-duration events one high-res sample
    t_off = np.where((t_off < n_high - 1) & (t_off == t_on), t_off + 1, t_off)

    # linear interpolation of the high-res signal at each frame time: samples left/right and weights
    right = np.clip(np.searchsorted(grid, frame_times, side="left"), 1, n_high - 1)
    left = right - 1
    weight_right = (frame_times - grid[left]) / (grid[right] - grid[left])

    # cumulative kernel: conv(boxcar[on:off], h)[i] = C[i - on] - C[i - off], C[m] = sum(h[:m + 1]), 0 if m < 0
    cumulative = np.concatenate([np.zeros((kernels.shape[0], 1)), np.cumsum(kernels, axis=1)], axis=1)
    n_kernel = kernels.shape[1]

    def sample(index):  # (n_volumes,) high-res indices -> (n_kernels, n_volumes, n_events)
        lag_on = np.clip(index[:, None] - t_on[None, :] + 1, 0, n_kernel)
        lag_off = np.clip(index[:, None] - t_off[None, :] + 1, 0, n_kernel)
        return cumulative[:, lag_on] - cumulative[:, lag_off]

    values = sample(left) * (1 - weight_right)[None, :, None] + sample(right) * weight_right[None, :, None]
    values[:, :, dropped] = 0.0
    return values


def polynomial_degree(frame_times: np.ndarray) -> int:
    """GLMdenoise's drift degree for a run: round(duration in minutes / 2), at least 1 (Kay et al. 2013)."""
    frame_times = np.asarray(frame_times, dtype=float)
    step = float(np.median(np.diff(frame_times))) if frame_times.size > 1 else 0.0
    return max(1, int(np.floor(frame_times.size * step / 120.0 + 0.5)))


def cosine_drift(frame_times: np.ndarray, high_pass: float) -> np.ndarray:
    """DCT-II cosines below ``high_pass`` (Hz) and a constant last, shape (n_volumes, order + 1).

    The discrete cosine set of SPM's high-pass filter (Friston et al. 2000), with nilearn's column order,
    count (``floor(2 n high_pass dt)``, at most n - 1) and scaling (``sqrt(2 / n)``), so that designs equal
    nilearn's (test)."""
    frame_times = np.asarray(frame_times, dtype=float)
    n = frame_times.size
    dt = (frame_times[-1] - frame_times[0]) / (n - 1) if n > 1 else 0.0
    order = int(min(n - 1, np.floor(2 * n * high_pass * dt)))
    basis = np.ones((n, order + 1))
    index = np.arange(n) + 0.5
    for k in range(1, order + 1):
        basis[:, k - 1] = np.sqrt(2.0 / n) * np.cos(np.pi / n * index * k)
    return basis


def polynomial_drift(frame_times: np.ndarray, order: int) -> np.ndarray:
    """Polynomials of degree 1..order of ``t / max(t)``, each orthogonal to the lower degrees, then a
    constant, shape (n_volumes, order + 1) (nilearn's column order and scaling: test).

    Gram-Schmidt without normalisation is the QR factorisation's ``Q`` scaled by ``diag(R)``."""
    frame_times = np.asarray(frame_times, dtype=float)
    monomials = (frame_times[:, None] / frame_times.max()) ** np.arange(int(order) + 1)[None]
    q, r = np.linalg.qr(monomials)
    orthogonal = q * np.diag(r)[None]
    return np.hstack([orthogonal[:, 1:], orthogonal[:, :1]])


def drift_regressors(frame_times: np.ndarray, drift_model: str | None = "cosine", high_pass: float = 0.01,
                     drift_order: int | None = 1) -> np.ndarray:
    """Drift basis of one run including the constant (nilearn's sets), shape (n_volumes, n_drift).

    ``drift_model="polynomial"`` with ``drift_order=None`` takes the degree from the run's duration
    (:func:`polynomial_degree`). Our own code rather than nilearn's ``make_first_level_design_matrix``:
    importing nilearn's GLM module (it pulls in scikit-learn) cost more CPU than the whole fit of a small
    session."""
    if drift_model == "polynomial" and drift_order is None:
        drift_order = polynomial_degree(frame_times)
    if drift_model == "polynomial":
        return polynomial_drift(frame_times, int(drift_order))
    if drift_model == "cosine":
        return cosine_drift(frame_times, high_pass)
    if drift_model is None:
        return np.ones((np.asarray(frame_times).size, 1))
    from ..errors import UsageError

    raise UsageError(f"Unknown drift model {drift_model!r}", hint="use 'cosine', 'polynomial' or None")


@dataclass
class RunDesign:
    """Everything about one run's model that does not depend on the HRF.

    Attributes
    ----------
    trial_index : ndarray, shape (n_run_trials,)
        Positions of this run's trials in the session's (onset-ordered) trial list.
    trial_onsets, trial_durations : ndarray, shape (n_run_trials,)
    nuisance_onsets, nuisance_durations : ndarray, shape (n_nuisance_events,)
    nuisance_groups : ndarray, shape (n_nuisance_events, n_nuisance_types)
        0/1 membership of each nuisance event in its event type (one regressor per type present).
    fixed_nuisance : ndarray, shape (n_volumes, n_fixed)
        Drift (with constant) and confounds.
    """

    frame_times: np.ndarray
    tr: float
    trial_index: np.ndarray
    trial_onsets: np.ndarray
    trial_durations: np.ndarray
    nuisance_onsets: np.ndarray
    nuisance_durations: np.ndarray
    nuisance_groups: np.ndarray
    nuisance_types: list
    fixed_nuisance: np.ndarray

    @property
    def trial_slice(self) -> slice:
        """This run's trials are a contiguous block of the session order (runs, then onset)."""
        if self.trial_index.size == 0:
            return slice(0, 0)
        return slice(int(self.trial_index[0]), int(self.trial_index[-1]) + 1)

    def event_regressors(self, kernels: np.ndarray, oversampling: int = 50, min_onset: float = MIN_ONSET):
        """Trial and nuisance-event regressors for each kernel.

        Returns
        -------
        trials : ndarray, shape (n_kernels, n_volumes, n_run_trials)
        nuisance : ndarray, shape (n_kernels, n_volumes, n_nuisance_types)
        """
        onsets = np.concatenate([self.trial_onsets, self.nuisance_onsets])
        durations = np.concatenate([self.trial_durations, self.nuisance_durations])
        regs = convolve_events(onsets, durations, self.frame_times, kernels, oversampling, min_onset)
        n_trials = self.trial_onsets.size
        nuisance = regs[:, :, n_trials:] @ self.nuisance_groups
        return regs[:, :, :n_trials], nuisance


def order_trials(trials: pd.DataFrame, run_labels: list[str]) -> pd.DataFrame:
    """Trials (role == trial) in session order: runs in the given order, then onset.

    Returns a copy with a fresh 0..n-1 index and a ``run_position`` column.
    """
    if "role" not in trials.columns:
        raise BadDataError("The trials table has no 'role' column",
                           hint="build it with bids_m2i.bids.events (contracts.md, trials table)")
    rows = trials[trials["role"] == "trial"].copy()
    position = {label: i for i, label in enumerate(run_labels)}
    rows["run_position"] = rows["run"].astype(str).map(position)
    return rows.sort_values(["run_position", "onset"], kind="stable").reset_index(drop=True)


def build_run_designs(runs: list[RunData], trials: pd.DataFrame, drift_model: str | None = "cosine",
                      high_pass: float = 0.01, drift_order: int | None = 1):
    """HRF-independent part of every run's model.

    Parameters
    ----------
    runs : list of RunData
    trials : DataFrame
        Trials-table rows of one task and session (roles ``trial`` and ``nuisance``; ``ignore`` skipped).

    Returns
    -------
    designs : list of RunDesign
    trial_rows : DataFrame
        Trials in session order (row i = beta i).
    """
    labels = [str(r.run) for r in runs]
    if len(set(labels)) != len(labels):
        raise BadDataError(f"Two runs share the label(s) {sorted({x for x in labels if labels.count(x) > 1})}",
                           hint="give every RunData its run label from the BIDS file name")
    table = trials.copy()
    table["run"] = table["run"].astype(str)
    unknown = sorted(set(table.loc[table["role"] != "ignore", "run"]) - set(labels))
    if unknown:
        if len(runs) == 1 and len(set(table["run"])) == 1:
            table["run"] = labels[0]  # one run: labels need not match ('n/a' vs '1')
        else:
            raise BadDataError(f"Events refer to run(s) {unknown} for which no BOLD run was given (have {labels})",
                               hint="pass one RunData per run of this task and session")
    trial_rows = order_trials(table, labels)
    if trial_rows.empty:
        raise BadDataError("No trials (role == 'trial') in this task and session",
                           hint="check the events mapping (--events-map / --print-trials)")
    nuisance_rows = table[table["role"] == "nuisance"]
    nuisance_types = sorted(nuisance_rows["event_type"].astype(str).unique()) if len(nuisance_rows) else []
    designs = []
    for position, run in enumerate(runs):
        frame_times = run.model_frame_times()
        in_run = trial_rows["run_position"] == position
        nuisance = nuisance_rows[nuisance_rows["run"] == labels[position]]
        types_here = [t for t in nuisance_types if (nuisance["event_type"].astype(str) == t).any()]
        groups = np.zeros((len(nuisance), len(types_here)))
        for j, t in enumerate(types_here):
            groups[(nuisance["event_type"].astype(str) == t).to_numpy(), j] = 1.0
        fixed = drift_regressors(frame_times, drift_model, high_pass, drift_order)
        if run.confounds is not None:
            confounds = np.asarray(run.confounds, dtype=float)
            if confounds.ndim == 1:
                confounds = confounds[:, None]
            if confounds.shape[0] != run.n_volumes:
                raise BadDataError(f"Run {labels[position]}: confounds have {confounds.shape[0]} rows but the BOLD "
                                   f"has {run.n_volumes} volumes", hint="pass one confound row per volume")
            fixed = np.concatenate([np.nan_to_num(confounds, nan=0.0), fixed], axis=1)
        onsets = trial_rows.loc[in_run, "onset"].to_numpy(dtype=float)
        late = onsets > frame_times[-1]
        if late.any():
            LOGGER.warning("run %s: %d trial(s) start after the last volume; their betas are 0",
                           labels[position], int(late.sum()))
        designs.append(RunDesign(
            frame_times=frame_times, tr=float(run.tr),
            trial_index=np.flatnonzero(in_run.to_numpy()),
            trial_onsets=onsets,
            trial_durations=trial_rows.loc[in_run, "duration"].to_numpy(dtype=float),
            nuisance_onsets=nuisance["onset"].to_numpy(dtype=float),
            nuisance_durations=nuisance["duration"].to_numpy(dtype=float),
            nuisance_groups=groups, nuisance_types=types_here, fixed_nuisance=fixed))
    return designs, trial_rows.drop(columns=["run_position"])
