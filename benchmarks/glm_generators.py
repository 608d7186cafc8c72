"""Simulated sessions for ``bench_glm.py`` that are independent of the estimator under test.

Nothing here imports ``bids_m2i``: the generator shares no code, no HRF family, no time grid and no drift model
with ``bids_m2i.glm`` (whose own generator is ``bids_m2i.glm.simulation``). Its design follows issue 13:

* runs × volumes, TR 1.6 s, 3 s trials, every stimulus shown ``n_repeats`` times, each repeat in another run;
  onsets on the TR grid (as in NSD; GLMsingle's design matrix needs it), a trial every ``soa_volumes`` TR (3:
  4.8 s), with blank slots spread at random when the run has room;
* per-voxel HRF: either a double gamma with per-voxel delay and dispersion (``hrf_family="double-gamma"``), or
  one of GLMsingle's 20 library HRFs (``hrf_family="glmsingle-library"``; its table is read at benchmark time
  from the installed GLMsingle package, never copied here), each voxel's HRF a random blend of two
  neighbouring members so that it is not exactly one of them; or the family of m2i's demo simulator
  (``hrf_family="demo-simulator"``, docs/simulator.md "HRFs", restated here from its parameter ranges: the
  undershoot's ratio applies to the gamma densities, so it is shallower and later than the double gamma's, and
  the responses broader);
* each trial's response is a 3 s boxcar convolved with the voxel's HRF on a 0.05 s grid, sampled at the volume
  times, scaled so that a single trial's response peaks at the trial's amplitude (``beta``);
* noise (in % of a per-voxel baseline): per-voxel AR(1) with a per-voxel coefficient, global components shared
  by all voxels with voxel-specific loadings (slow AR(1) fluctuations and two aliased "physiological"
  oscillations), and a drift made of a linear trend, a quadratic and slow sinusoids (below 0.01 Hz);
* true betas of responsive voxels: ``mean + amplitude · (sqrt(rel) · stimulus effect + sqrt(1 − rel) · trial
  noise)`` with a per-voxel reliability ``rel``; stimulus effects have a low-rank part shared across voxels
  (correlated patterns, as real visual responses) plus a voxel-specific part.

Everything is returned as plain numpy arrays (no pandas, no torch), so that GLMsingle's environment can read
the same data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import gamma

FINE_DT = 0.05
NOISE_PRESETS = {"low": 0.5, "nsd": 1.0, "high": 2.0}


@dataclass
class Session:
    """One simulated session (plain arrays).

    Attributes
    ----------
    runs : list of ndarray, shape (n_voxels, n_volumes) float32, raw intensities
    tr : float
    onsets, durations : ndarray (n_trials,), seconds from the start of the trial's run
    trial_run : ndarray of int (n_trials,), run index (0-based) of each trial
    stimulus : ndarray of int (n_trials,)
    true_betas : ndarray, shape (n_trials, n_voxels): trials in session order (runs, then onset)
    responsive : ndarray of bool (n_voxels,)
    params : dict, the generator's parameters (for the record)
    """

    runs: list
    tr: float
    onsets: np.ndarray
    durations: np.ndarray
    trial_run: np.ndarray
    stimulus: np.ndarray
    true_betas: np.ndarray
    responsive: np.ndarray
    params: dict = field(default_factory=dict)


def _gamma_by_mode(t: np.ndarray, mode: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Gamma densities on ``t`` with per-voxel mode and scale (mode = (shape − 1) · scale), (n_voxels, t.size)."""
    return gamma.pdf(t[None], (mode / scale + 1.0)[:, None], scale=scale[:, None])


def double_gamma_hrfs(n_voxels: int, rng: np.random.Generator, length: float = 32.0):
    """Per-voxel double gammas (shape, scale parametrisation), shape (n_voxels, n_fine), peak 1.

    Time to peak 4–7 s, dispersion (gamma scale) 0.7–1.2 s, undershoot 7–11 s after the peak with ratio
    0.1–0.35 and scale 0.8–1.4 s.
    """
    t = np.arange(0, length, FINE_DT)
    peak = rng.uniform(4.0, 7.0, n_voxels)
    scale = rng.uniform(0.7, 1.2, n_voxels)
    u_peak = peak + rng.uniform(7.0, 11.0, n_voxels)
    u_scale = rng.uniform(0.8, 1.4, n_voxels)
    ratio = rng.uniform(0.1, 0.35, n_voxels)
    main, under = _gamma_by_mode(t, peak, scale), _gamma_by_mode(t, u_peak, u_scale)
    hrf = main / main.max(1, keepdims=True) - ratio[:, None] * under / under.max(1, keepdims=True)
    return hrf


def demo_simulator_hrfs(n_voxels: int, rng: np.random.Generator, length: float = 32.0):
    """Per-voxel HRFs of the demo simulator's family, shape (n_voxels, n_fine), peak 1: positive gamma with its
    mode at 4.5–7 s and scale 0.7–1.2 s, minus 0.08–0.40 × an undershoot gamma density whose mode is 6–11 s
    after the peak (scale 0.8–1.4 s); each parameter uniform and independent here (the simulator also smooths
    them over space)."""
    t = np.arange(0, length, FINE_DT)
    u = rng.uniform(size=(5, n_voxels))
    peak, scale = 4.5 + 2.5 * u[0], 0.7 + 0.5 * u[1]
    u_peak, u_scale = peak + 6.0 + 5.0 * u[2], 0.8 + 0.6 * u[3]
    ratio = 0.08 + 0.32 * u[4]
    hrf = _gamma_by_mode(t, peak, scale) - ratio[:, None] * _gamma_by_mode(t, u_peak, u_scale)
    return hrf / hrf.max(1, keepdims=True)


def glmsingle_library_hrfs(n_voxels: int, rng: np.random.Generator, table_path: str, length: float = 32.0):
    """Per-voxel HRFs blended from two neighbouring members of GLMsingle's library (Prince et al. 2022).

    ``table_path`` is the library table shipped with the installed GLMsingle package (501 samples at 0.1 s ×
    20 HRFs); it is read here, at benchmark time, and resampled to this generator's grid.
    """
    table = np.loadtxt(table_path)                                # (501, 20), 0.1 s
    grid = np.arange(table.shape[0]) * 0.1
    t = np.arange(0, length, FINE_DT)
    library = np.stack([np.interp(t, grid, table[:, j], right=0.0) for j in range(table.shape[1])])
    first = rng.integers(0, library.shape[0] - 1, n_voxels)
    weight = rng.uniform(0, 1, n_voxels)[:, None]
    hrf = (1 - weight) * library[first] + weight * library[first + 1]
    return hrf / hrf.max(1, keepdims=True)


def _ar1(rng, shape, phi):
    """AR(1) along the last axis, unit marginal variance; ``phi`` broadcastable to shape[:-1]."""
    phi = np.broadcast_to(np.asarray(phi, dtype=float), shape[:-1])
    out = np.empty(shape)
    out[..., 0] = rng.standard_normal(shape[:-1])
    innovation_sd = np.sqrt(1 - phi ** 2)
    for i in range(1, shape[-1]):
        out[..., i] = phi * out[..., i - 1] + innovation_sd * rng.standard_normal(shape[:-1])
    return out


def _schedule(rng, n_runs, n_volumes, tr, n_stimuli, n_repeats, soa_volumes=3, lead_volumes=5,
              tail_seconds=24.0):
    """Trial onsets (TR grid) and stimuli per run; each stimulus's repeats fall in different runs."""
    if n_repeats > n_runs:
        raise ValueError("n_repeats must not exceed n_runs")
    # stimulus s goes to runs (s + k * n_runs // n_repeats) % n_runs, k = 0..n_repeats-1: distinct runs
    step = n_runs // n_repeats
    per_run = [[] for _ in range(n_runs)]
    for s in rng.permutation(n_stimuli):
        base = int(np.argmin([len(per_run[r]) for r in range(step)]))  # balance the run loads
        for k in range(n_repeats):
            per_run[(base + k * step) % n_runs].append(int(s))
    slots = int((n_volumes * tr - tail_seconds) / tr - lead_volumes) // soa_volumes
    onsets, stimuli, runs = [], [], []
    for r in range(n_runs):
        trials = rng.permutation(per_run[r])
        if len(trials) > slots:
            raise ValueError(f"run {r}: {len(trials)} trials do not fit {slots} slots of {soa_volumes} TR")
        used = np.sort(rng.choice(slots, len(trials), replace=False))  # blank slots where there is room
        for slot, s in zip(used, trials):
            onsets.append((lead_volumes + slot * soa_volumes) * tr)
            stimuli.append(s)
            runs.append(r)
    return np.asarray(onsets), np.asarray(stimuli), np.asarray(runs)


def simulate(n_voxels: int = 20000, n_runs: int = 6, n_volumes: int = 200, tr: float = 1.6,
             trial_duration: float = 3.0, n_stimuli: int = 120, n_repeats: int = 3, noise: str = "nsd",
             hrf_family: str = "double-gamma", glmsingle_table: str | None = None,
             responsive_fraction: float = 0.3, thermal_sd: float = 0.7, global_sd: float = 0.45,
             drift_sd: float = 0.8, n_global: int = 6, soa_volumes: int = 3, seed: int = 0) -> Session:
    """Simulate one session (module docstring). ``noise`` scales thermal, global and drift noise:
    ``low`` 0.5, ``nsd`` 1, ``high`` 2 (:data:`NOISE_PRESETS`)."""
    rng = np.random.default_rng(seed)
    factor = NOISE_PRESETS[noise]
    onsets, stimulus, trial_run = _schedule(rng, n_runs, n_volumes, tr, n_stimuli, n_repeats, soa_volumes)
    n_trials = onsets.size

    # true single-trial amplitudes (peak of one trial's response, % of baseline)
    responsive = rng.random(n_voxels) < responsive_fraction
    mean = np.where(responsive, rng.uniform(0.3, 1.5, n_voxels), 0.0)
    amplitude = np.where(responsive, rng.lognormal(-0.3, 0.4, n_voxels), 0.0)
    reliability = rng.uniform(0.2, 0.8, n_voxels)
    latent = rng.standard_normal((n_stimuli, 8)) @ rng.standard_normal((8, n_voxels)) / np.sqrt(8)
    effect = np.sqrt(0.5) * latent + np.sqrt(0.5) * rng.standard_normal((n_stimuli, n_voxels))
    true_betas = mean + amplitude * (np.sqrt(reliability) * effect[stimulus]
                                     + np.sqrt(1 - reliability) * rng.standard_normal((n_trials, n_voxels)))

    if hrf_family == "double-gamma":
        hrf = double_gamma_hrfs(n_voxels, rng)
    elif hrf_family == "glmsingle-library":
        if not glmsingle_table:
            raise ValueError("hrf_family='glmsingle-library' needs glmsingle_table (the installed package's tsv)")
        hrf = glmsingle_library_hrfs(n_voxels, rng, glmsingle_table)
    elif hrf_family == "demo-simulator":
        hrf = demo_simulator_hrfs(n_voxels, rng)
    else:
        raise ValueError(f"unknown hrf_family {hrf_family!r}")
    boxcar = np.ones(int(round(trial_duration / FINE_DT)))
    response = np.stack([np.convolve(h, boxcar)[:h.size] for h in hrf])
    response /= np.abs(response).max(1, keepdims=True)          # one trial's response peaks at its beta

    baseline = rng.uniform(500.0, 1500.0, n_voxels)
    phi = rng.uniform(0.2, 0.6, n_voxels)
    loadings = rng.standard_normal((n_voxels, n_global)) * rng.uniform(0.5, 1.5, (n_voxels, 1))
    loadings *= global_sd / np.sqrt(n_global)
    physio_loadings = rng.standard_normal((n_voxels, 2)) * 0.3 * global_sd
    n_fine = int(np.ceil(n_volumes * tr / FINE_DT)) + response.shape[1]
    n_fft = int(2 ** np.ceil(np.log2(n_fine + response.shape[1])))
    response_f = np.fft.rfft(response, n_fft, axis=1)
    frame_times = tr * np.arange(n_volumes)
    sample = np.rint(frame_times / FINE_DT).astype(int)
    runs = []
    order = np.lexsort((onsets, trial_run))                       # session order: run, then onset
    onsets, stimulus, trial_run, true_betas = onsets[order], stimulus[order], trial_run[order], true_betas[order]
    for r in range(n_runs):
        in_run = np.flatnonzero(trial_run == r)
        impulses = np.zeros((n_voxels, n_fine))
        for i in in_run:
            impulses[:, int(round(onsets[i] / FINE_DT))] += true_betas[i]
        bold = np.fft.irfft(np.fft.rfft(impulses, n_fft, axis=1) * response_f, n_fft, axis=1)[:, sample]
        thermal = thermal_sd * _ar1(rng, (n_voxels, n_volumes), phi)
        slow = loadings @ _ar1(rng, (n_global, n_volumes), 0.9)
        freqs = rng.uniform(0.05, 0.3, 2)
        physio = np.stack([np.sin(2 * np.pi * f * frame_times + rng.uniform(0, 2 * np.pi)) for f in freqs])
        u = frame_times / frame_times[-1] - 0.5
        slow_waves = np.stack([np.sin(2 * np.pi * f * frame_times + rng.uniform(0, 2 * np.pi))
                               for f in rng.uniform(0.002, 0.01, 2)])
        drift = drift_sd * (rng.standard_normal((n_voxels, 1)) * u + 0.5 * rng.standard_normal((n_voxels, 1))
                            * (u ** 2 - 1 / 12) + 0.5 * rng.standard_normal((n_voxels, 2)) @ slow_waves)
        percent = bold + factor * (thermal + slow + physio_loadings @ physio + drift)
        runs.append((baseline[:, None] * (1.0 + percent / 100.0)).astype(np.float32))
    params = dict(n_voxels=n_voxels, n_runs=n_runs, n_volumes=n_volumes, tr=tr, trial_duration=trial_duration,
                  n_stimuli=n_stimuli, n_repeats=n_repeats, noise=noise, noise_factor=factor,
                  hrf_family=hrf_family, responsive_fraction=responsive_fraction, thermal_sd=thermal_sd,
                  global_sd=global_sd, drift_sd=drift_sd, n_global=n_global, soa_volumes=soa_volumes, seed=seed)
    return Session(runs=runs, tr=tr, onsets=onsets, durations=np.full(n_trials, trial_duration),
                   trial_run=trial_run, stimulus=stimulus, true_betas=true_betas.astype(np.float32),
                   responsive=responsive, params=params)
