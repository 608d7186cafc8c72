"""Simulated sessions with known single-trial responses, for tests and ``benchmarks/bench_glm.py``.

The generator does not hand the estimators their own assumptions:

* each voxel's HRF comes from a continuous family unlike the double gammas of the library: a Gaussian peak
  (time to peak 4–7.5 s, width growing with latency) minus a broad Gaussian undershoot, gated by a smooth onset;
* the neural response is built on a 0.1 s grid and convolved voxel by voxel (FFT), then sampled at the
  acquisition times (no oversampling grid shared with nilearn);
* noise = per-voxel AR(1) + global components shared by all voxels (per run, AR(1), random loadings) +
  smooth drifts, in % of a per-voxel baseline intensity.

True single-trial betas of a responsive voxel are ``mean + amplitude · (stimulus effect + trial variability)``
with the stimulus part explaining ``reliability`` of the across-repeat variance, so the truth's own
test-retest correlation is about ``reliability``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .design import RunData

TRIAL_COLUMNS = ["onset", "duration", "task", "session", "run", "role", "event_type", "condition", "cue",
                 "stimulus", "category", "stim_file", "cue_text"]
FINE_DT = 0.1


@dataclass
class SimulatedSession:
    """A simulated task session.

    Attributes
    ----------
    runs : list of RunData
        Raw-intensity data (n_voxels, n_volumes) per run.
    trials : DataFrame
        Trials table (contracts.md columns), trials in session order, nuisance events after them.
    true_betas : ndarray, shape (n_trials, n_voxels)
        Amplitude of each trial's response (% of baseline), rows in session order (runs, then onset).
    responsive : ndarray of bool, shape (n_voxels,)
    time_to_peak : ndarray, shape (n_voxels,)
        Seconds, of each voxel's true HRF.
    """

    runs: list
    trials: pd.DataFrame
    true_betas: np.ndarray
    responsive: np.ndarray
    time_to_peak: np.ndarray


def voxel_hrfs(n_voxels: int, rng: np.random.Generator, spread: bool = True, length: float = 32.0):
    """Per-voxel HRFs on the fine grid, unit sum, shape (n_voxels, n_samples), and their times to peak."""
    t = np.arange(0, length, FINE_DT)
    peak = rng.uniform(4.0, 7.5, n_voxels) if spread else np.full(n_voxels, 5.2)
    width = (rng.uniform(1.1, 1.6, n_voxels) if spread else np.full(n_voxels, 1.35)) * peak / 5.0
    under_delay = rng.uniform(5.0, 9.0, n_voxels) if spread else np.full(n_voxels, 7.0)
    under_ratio = rng.uniform(0.1, 0.4, n_voxels) if spread else np.full(n_voxels, 0.25)
    under_width = rng.uniform(2.5, 4.0, n_voxels) if spread else np.full(n_voxels, 3.2)
    main = np.exp(-0.5 * ((t[None] - peak[:, None]) / width[:, None]) ** 2)
    under = np.exp(-0.5 * ((t[None] - (peak + under_delay)[:, None]) / under_width[:, None]) ** 2)
    onset_gate = 1.0 / (1.0 + np.exp(-(t[None] - 1.0) / 0.3))
    hrf = (main - under_ratio[:, None] * under) * onset_gate
    hrf /= hrf.sum(1, keepdims=True)
    return hrf, t[np.argmax(hrf, axis=1)]


def _ar1(rng, shape, phi):
    """AR(1) series along the last axis with unit marginal variance."""
    innovations = rng.standard_normal(shape) * np.sqrt(1 - phi ** 2)
    out = np.empty(shape)
    out[..., 0] = rng.standard_normal(shape[:-1])
    for i in range(1, shape[-1]):
        out[..., i] = phi * out[..., i - 1] + innovations[..., i]
    return out


def simulate_session(n_voxels: int = 2000, n_runs: int = 6, n_volumes: int = 200, tr: float = 1.6,
                     trial_duration: float = 3.0, n_stimuli: int = 120, n_repeats: int = 3,
                     responsive_fraction: float = 0.5, reliability: float = 0.64, noise_sd: float = 1.0,
                     ar_phi: float = 0.5, n_global: int = 5, global_sd: float = 1.0, drift_sd: float = 1.0,
                     hrf_spread: bool = True, nuisance_per_run: int = 0, repeats_across_runs: bool = True,
                     seed: int = 0, dtype=np.float32) -> SimulatedSession:
    """Simulate one task session (see module docstring). Stimuli are shown ``n_repeats`` times, each
    repeat in a different run when ``repeats_across_runs`` (needs ``n_runs`` divisible by ``n_repeats``).
    ``n_repeats=1`` gives a design without repeats."""
    rng = np.random.default_rng(seed)
    n_trials = n_stimuli * n_repeats
    if n_trials % n_runs:
        raise ValueError("n_stimuli * n_repeats must be divisible by n_runs")
    per_run = n_trials // n_runs
    # stimulus s is shown in runs offset + k * (n_runs / n_repeats): repeats in different runs
    if repeats_across_runs and n_repeats > 1 and n_runs % n_repeats == 0:
        step = n_runs // n_repeats
        run_of = [[(s % step) + k * step for k in range(n_repeats)] for s in range(n_stimuli)]
        run_stimuli = [[] for _ in range(n_runs)]
        for s, runs_s in enumerate(run_of):
            for r in runs_s:
                run_stimuli[r].append(s)
    else:
        order = rng.permutation(np.repeat(np.arange(n_stimuli), n_repeats))
        run_stimuli = [list(order[r * per_run:(r + 1) * per_run]) for r in range(n_runs)]

    run_length = n_volumes * tr
    rows, nuisance_rows = [], []
    for r in range(n_runs):
        stimuli = rng.permutation(run_stimuli[r])
        soa = rng.uniform(4.0, 5.6, len(stimuli))
        onsets = 6.0 + np.concatenate([[0.0], np.cumsum(soa[:-1])])
        if onsets[-1] > run_length - 28.0:  # keep ~28 s after the last trial for its response
            onsets = 6.0 + (onsets - 6.0) * (run_length - 34.0) / (onsets[-1] - 6.0)
        for onset, s in zip(onsets, stimuli):
            rows.append([round(float(onset), 3), trial_duration, "sim", "01", str(r + 1), "trial", "stimulus",
                         "perception", "image", f"img-{s:04d}", "n/a", f"img-{s:04d}.png", "n/a"])
        for onset in np.sort(rng.choice(onsets, min(nuisance_per_run, len(onsets)), replace=False)):
            nuisance_rows.append([round(float(onset) + trial_duration + 0.1, 3), 0.5, "sim", "01", str(r + 1),
                                  "nuisance", "response", "n/a", "none", "n/a", "n/a", "n/a", "n/a"])
    trials = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    nuisance = pd.DataFrame(nuisance_rows, columns=TRIAL_COLUMNS)

    responsive = rng.random(n_voxels) < responsive_fraction
    mean_response = np.where(responsive, rng.uniform(0.5, 2.0, n_voxels), 0.0)
    amplitude = np.where(responsive, rng.uniform(0.5, 1.5, n_voxels), 0.0)
    stimulus_effect = rng.standard_normal((n_stimuli, n_voxels)) * np.sqrt(reliability)
    stim_index = trials["stimulus"].str[4:].astype(int).to_numpy()
    trial_effect = rng.standard_normal((n_trials, n_voxels)) * np.sqrt(1.0 - reliability)
    true_betas = mean_response + amplitude * (stimulus_effect[stim_index] + trial_effect)
    nuisance_amp = np.where(responsive, rng.uniform(0.5, 1.5, n_voxels), 0.0)

    hrf, time_to_peak = voxel_hrfs(n_voxels, rng, hrf_spread)
    baseline = rng.uniform(800.0, 1200.0, n_voxels)
    n_fine = int(np.ceil((run_length + 40.0) / FINE_DT))
    n_fft = int(2 ** np.ceil(np.log2(n_fine + hrf.shape[1])))
    hrf_f = np.fft.rfft(hrf, n_fft, axis=1)
    loadings = rng.standard_normal((n_voxels, n_global)) * global_sd / np.sqrt(max(n_global, 1))
    runs = []
    frame_times = tr * np.arange(n_volumes)
    sample_index = np.rint(frame_times / FINE_DT).astype(int)
    for r in range(n_runs):
        in_run = np.flatnonzero(trials["run"].to_numpy() == str(r + 1))
        events = np.zeros((in_run.size + 1, n_fine))
        for row, i in enumerate(in_run):
            start = int(round(trials.at[i, "onset"] / FINE_DT))
            events[row, start:start + int(round(trials.at[i, "duration"] / FINE_DT))] = 1.0
        for _, ev in nuisance[nuisance["run"] == str(r + 1)].iterrows():
            start = int(round(ev["onset"] / FINE_DT))
            events[-1, start:start + int(round(ev["duration"] / FINE_DT))] = 1.0
        weights = np.concatenate([true_betas[in_run], nuisance_amp[None]], axis=0)  # (events, voxels)
        neural = weights.T @ events                                                  # (voxels, fine)
        bold = np.fft.irfft(np.fft.rfft(neural, n_fft, axis=1) * hrf_f, n_fft, axis=1)[:, sample_index]
        noise = noise_sd * _ar1(rng, (n_voxels, n_volumes), ar_phi)
        if n_global:
            noise += loadings @ _ar1(rng, (n_global, n_volumes), 0.8)
        t = frame_times / run_length
        drift = drift_sd * (rng.standard_normal((n_voxels, 1)) * (t - 0.5)[None]
                            + rng.standard_normal((n_voxels, 1)) * np.cos(np.pi * t)[None]
                            + 0.5 * rng.standard_normal((n_voxels, 1)) * np.cos(2 * np.pi * t)[None])
        percent = bold + noise + drift
        runs.append(RunData(data=(baseline[:, None] * (1.0 + percent / 100.0)).astype(dtype), tr=tr,
                            run=str(r + 1)))
    table = pd.concat([trials, nuisance], ignore_index=True) if len(nuisance) else trials
    return SimulatedSession(runs=runs, trials=table, true_betas=true_betas.astype(np.float32),
                            responsive=responsive, time_to_peak=time_to_peak)


def r_trial(estimated: np.ndarray, truth: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Per voxel, correlation over trials of estimated vs true betas, shape (n_selected,)."""
    est = estimated[:, voxels] - estimated[:, voxels].mean(0)
    tru = truth[:, voxels] - truth[:, voxels].mean(0)
    denom = np.sqrt((est ** 2).sum(0) * (tru ** 2).sum(0))
    return (est * tru).sum(0) / np.maximum(denom, 1e-30)
