"""Acquisition of one run: BOLD + physiological noise move with the head; drift, coil and thermal noise don't.

Signal of scanner voxel ``x`` at volume ``n`` (slice acquired at ``t = n TR + slice_time``)::

    S = coil(x) * (1 + drift(t) * drift_map(x) / 100) * head(p) * (1 + F(p, t) / 100)  (+ complex noise)
    F = BOLD (visual voxels) + global physiological components + voxel AR(1) noise     (% signal change)

with ``p`` the head point under ``x`` for the pose at time ``t`` (``motion.py``). The magnitude of signal
plus complex Gaussian noise gives Rician background, as a real magnitude image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import brain as brain_mod
from .motion import MovingHeadSampler, motion_trajectory, sample_trajectory


def slice_times(n_slices: int, tr: float) -> np.ndarray:
    """Interleaved ascending acquisition (0, 2, 4, ..., 1, 3, ...), seconds from the volume start."""
    order = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    times = np.empty(n_slices)
    for position, slice_index in enumerate(order):
        times[slice_index] = position * tr / n_slices
    return np.round(times, 4)


def ar1(rng: np.random.Generator, n_time: int, phi: float, size) -> np.ndarray:
    """AR(1) series with unit marginal variance, shape ``(n_time, *size)``."""
    out = rng.standard_normal(size=(n_time, *np.atleast_1d(size)), dtype=np.float32)  # float32: big grids
    out[1:] *= np.float32(np.sqrt(1 - phi ** 2))  # out[0] is already in the stationary distribution
    for t in range(1, n_time):
        out[t] += np.float32(phi) * out[t - 1]
    return out


def simulate_run(*, run, geometry, sampler: MovingHeadSampler, brain_mask: np.ndarray, model, kernels,
                 drives: np.ndarray, coil: np.ndarray, cfg: dict, tr: float, slice_offsets: np.ndarray | None,
                 rng_noise: np.random.Generator, rng_motion: np.random.Generator, motion_offset: np.ndarray,
                 with_motion: bool = True, with_noise: bool = True):
    """Simulate one run.

    Returns
    -------
    data : (nx, ny, nz, n_volumes) float64, scanner units.
    pose_per_volume : (n_volumes, 6) head pose at the middle of each volume's acquisition (mm, rad).
    """
    n_vol = run.n_volumes
    nz = geometry.shape[2]
    offsets = np.zeros(nz) if slice_offsets is None else np.asarray(slice_offsets)
    duration = n_vol * tr + tr
    n_fine = int(np.ceil(duration / brain_mod.FINE_DT)) + 2

    # --- fluctuations that move with the head (% signal change), on the motion-free voxel grid
    fluct = np.zeros((n_vol, *geometry.shape), dtype=np.float32)
    bold_fine = brain_mod.bold_timecourses(kernels, drives, run.events, n_fine)
    ijk = model.ijk
    sample_times = np.arange(n_vol)[:, None] * tr + offsets[ijk[:, 2]][None, :]  # (n_vol, n_vox)
    position = sample_times / brain_mod.FINE_DT
    low = np.floor(position).astype(int)
    frac = position - low
    cols = np.arange(len(ijk))[None, :]
    bold = (1 - frac) * bold_fine[cols, low] + frac * bold_fine[cols, low + 1]
    fluct[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]] = bold

    if with_noise:
        mask = brain_mask.astype(np.float32)
        loadings = brain_mod.smooth_field(rng_noise, geometry.shape, sigma_vox=3.0, n=cfg["n_global"])
        time_s = np.arange(n_vol) * tr
        for k in range(cfg["n_global"]):
            slow = ar1(rng_noise, n_vol, 0.9, 1)[:, 0]
            # aliased respiration/cardiac: a wandering oscillation
            freq = rng_noise.uniform(0.02, 0.12)
            wobble = np.sin(2 * np.pi * freq * time_s + rng_noise.uniform(0, 2 * np.pi))
            course = (slow + wobble) / np.sqrt(2)
            spatial = ((0.6 + 0.4 * np.abs(loadings[k])) * mask).astype(np.float32)
            fluct += (cfg["physio_sd"] * course[:, None, None, None]).astype(np.float32) * spatial[None]
        voxel_noise = ar1(rng_noise, n_vol, cfg["ar_phi"], geometry.shape)
        voxel_noise = ndimage.gaussian_filter(voxel_noise, sigma=(0, 0.6, 0.6, 0.6))
        voxel_noise /= voxel_noise.std() + 1e-12
        fluct += np.float32(cfg["ar_sd"]) * voxel_noise * mask[None]
        del voxel_noise

    # --- motion: pose of each slice, on a 0.1 s trajectory
    if with_motion:
        trajectory = motion_trajectory(rng_motion, duration, brain_mod.FINE_DT, cfg, offset=motion_offset)
        slice_clock = np.arange(n_vol)[:, None] * tr + offsets[None, :]
        pose_slices = sample_trajectory(trajectory, brain_mod.FINE_DT, slice_clock)  # (n_vol, nz, 6)
        pose_volume = sample_trajectory(trajectory, brain_mod.FINE_DT, np.arange(n_vol) * tr + offsets.mean())
    else:
        pose_slices = None
        pose_volume = np.zeros((n_vol, 6))

    # --- scanner frame: drift, coil sensitivity, thermal noise
    time_s = np.arange(n_vol) * tr
    if with_noise:
        span = max(time_s[-1], tr)
        drift = rng_noise.normal(0, cfg["drift_pct"]) * (time_s / span - 0.5)
        for period in (span * 2, span):
            drift += rng_noise.normal(0, cfg["drift_pct"] / 3) * np.cos(2 * np.pi * time_s / period
                                                                         + rng_noise.uniform(0, 2 * np.pi))
        drift_map = 1 + 0.3 * brain_mod.smooth_field(rng_noise, geometry.shape, sigma_vox=4.0)[0]
    else:
        drift = np.zeros(n_vol)
        drift_map = np.ones(geometry.shape)

    data = np.empty((*geometry.shape, n_vol))
    for n in range(n_vol):
        pose = None if pose_slices is None else pose_slices[n]
        volume = sampler.sample(fluct[n].astype(np.float64), pose)
        volume = coil * (1 + drift[n] * drift_map / 100.0) * volume
        if with_noise:
            real = volume + rng_noise.normal(0, cfg["thermal_sd"], geometry.shape)
            imag = rng_noise.normal(0, cfg["thermal_sd"], geometry.shape)
            volume = np.hypot(real, imag)
        data[..., n] = volume
    return data, pose_volume
