"""Confound time series of a realigned run: motion parameters, FD, DVARS, standardised DVARS, global signal.

Definitions
-----------
- ``framewise_displacement`` (Power et al. 2012, NeuroImage 59:2142): sum of the absolute differences
  of the three translations (mm) and of the three rotations converted to arc length on a sphere of
  ``radius`` mm (default 50): ``FD_t = sum|d trans| + radius * sum|d rot|``.
- ``dvars``: data scaled so that the median of all in-mask values (all voxels, all volumes) is 1000;
  ``DVARS_t = sqrt(mean over mask voxels of (x_t - x_{t-1})^2)`` (Power 2012; Smyser 2010).
- ``std_dvars``: DVARS divided by its expected value under stationarity (T. Nichols, "Notes on
  creating a standardized version of DVARS", 2013, arXiv:1704.01469; Afyouni & Nichols 2018,
  NeuroImage 169:10): a voxel's temporal difference has SD ``sigma_i * sqrt(2 (1 - rho_i))`` with
  ``sigma_i`` its robust SD (IQR / 1.349) and ``rho_i`` its lag-1 autocorrelation; the expected DVARS
  is taken as the mean of these SDs over the mask (the convention of fMRIPrep's confounds, so values
  are comparable), and ``std_dvars = dvars / that mean`` (about 1 for clean frames).
- ``global_signal``: mean over the mask of the data as given (not scaled).
Derivatives (FD, DVARS, std_dvars) have no value for the first volume: NaN, written ``n/a``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .transforms import PARAM_NAMES

DVARS_SCALE = 1000.0

# Head motion a person in a head coil cannot make between two volumes or over a run: larger estimates mean
# the registration failed (featureless or synthetic data, a wrong reference, a corrupt volume), not motion.
# A head of ~100 mm radius in a coil of ~300 mm moves a few mm; FD above one head-sphere radius per TR is
# impossible (Power et al. 2012 flag volumes at FD 0.2-0.5 mm).
IMPLAUSIBLE_FD_MM = 50.0
IMPLAUSIBLE_TRANSLATION_MM = 50.0
IMPLAUSIBLE_ROTATION_RAD = np.deg2rad(45.0)


def framewise_displacement(params: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Power 2012 FD of (T, 6) parameters (mm, rad) -> (T,), first value NaN."""
    params = np.asarray(params, dtype=np.float64)
    diff = np.abs(np.diff(params, axis=0))
    fd = diff[:, :3].sum(1) + radius * diff[:, 3:].sum(1)
    return np.concatenate([[np.nan], fd])


def _masked_timeseries(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    arr = np.asarray(data)
    mask = np.asarray(mask, dtype=bool)
    if arr.shape[:3] != mask.shape:
        raise ValueError(f"data {arr.shape[:3]} and mask {mask.shape} are not on the same grid")
    return np.nan_to_num(arr[mask].astype(np.float64))  # (V, T)


def compute_dvars(data: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DVARS and standardised DVARS of (X, Y, Z, T) data within a mask.

    Returns
    -------
    dvars, std_dvars : (T,) each, first value NaN.
    """
    ts = _masked_timeseries(data, mask)
    n_vols = ts.shape[1]
    if ts.shape[0] == 0 or n_vols < 2:
        return np.full(n_vols, np.nan), np.full(n_vols, np.nan)
    median = np.median(ts)
    ts = ts * (DVARS_SCALE / median) if median != 0 else ts
    dvars = np.sqrt((np.diff(ts, axis=1) ** 2).mean(axis=0))
    q75, q25 = np.percentile(ts, [75, 25], axis=1)
    robust_sd = (q75 - q25) / 1.349
    centred = ts - ts.mean(axis=1, keepdims=True)
    denom = (centred ** 2).sum(axis=1)
    rho = np.divide((centred[:, 1:] * centred[:, :-1]).sum(axis=1), denom, out=np.zeros_like(denom),
                    where=denom > 0)
    expected = (robust_sd * np.sqrt(2.0 * np.clip(1.0 - rho, 0.0, None))).mean()
    std_dvars = dvars / expected if expected > 0 else np.full_like(dvars, np.nan)
    nan = np.array([np.nan])
    return np.concatenate([nan, dvars]), np.concatenate([nan, std_dvars])


def global_signal(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean in-mask intensity of every volume -> (T,)."""
    ts = _masked_timeseries(data, mask)
    return ts.mean(axis=0) if ts.shape[0] else np.full(np.asarray(data).shape[3], np.nan)


def confounds_sidecar(fd_radius: float = 50.0) -> dict:
    """BIDS sidecar (column -> Description/Units) for :func:`compute_confounds`' table."""
    side = {}
    axes = {"x": "R (left to right)", "y": "A (posterior to anterior)", "z": "S (inferior to superior)"}
    for name in PARAM_NAMES:
        kind, axis = name.split("_")
        if kind == "trans":
            side[name] = {"Description": f"Head translation along {axes[axis]} of each volume relative to the "
                                         "participant reference (the first run's reference volume, onto whose grid "
                                         "every run is resampled; pull transform reference -> volume, RAS world): "
                                         "the run's own motion composed with its registration to that reference",
                          "Units": "mm"}
        else:
            side[name] = {"Description": f"Head rotation about the {axis.upper()} axis through the participant grid's "
                                         "centre (R = Rz Ry Rx, right-handed) relative to the participant reference "
                                         "(as the translations)",
                          "Units": "rad"}
    side["framewise_displacement"] = {
        "Description": "Framewise displacement (Power et al. 2012): sum of absolute backward differences of "
                       f"translations and of rotations as arc length on a {fd_radius:g} mm sphere; first volume n/a",
        "Units": "mm", "Radius": fd_radius}
    side["dvars"] = {
        "Description": "DVARS: RMS over brain-mask voxels of the backward temporal difference, after scaling the "
                       "median in-mask intensity to 1000; first volume n/a",
        "Units": "arbitrary (median in-mask intensity = 1000)"}
    side["std_dvars"] = {
        "Description": "Standardised DVARS (Nichols 2013, arXiv:1704.01469): DVARS divided by its expected value "
                       "from each voxel's robust SD and lag-1 autocorrelation; first volume n/a",
        "Units": "unitless"}
    side["global_signal"] = {"Description": "Mean intensity within the brain mask", "Units": "arbitrary"}
    return side


def implausible_motion(table: pd.DataFrame) -> str | None:
    """A sentence saying why the motion estimates of a confounds table are physically impossible, or None.

    Checks the largest FD, the largest absolute translation and rotation against
    :data:`IMPLAUSIBLE_FD_MM`, :data:`IMPLAUSIBLE_TRANSLATION_MM` and :data:`IMPLAUSIBLE_ROTATION_RAD`.
    """
    problems = []
    fd = pd.to_numeric(table.get("framewise_displacement"), errors="coerce") if "framewise_displacement" in table \
        else pd.Series(dtype=float)
    if fd.notna().any() and fd.max() > IMPLAUSIBLE_FD_MM:
        problems.append(f"framewise displacement up to {fd.max():.0f} mm (limit {IMPLAUSIBLE_FD_MM:g} mm)")
    translations = [c for c in ("trans_x", "trans_y", "trans_z") if c in table]
    if translations:
        largest = np.nanmax(np.abs(table[translations].to_numpy(dtype=float)))
        if largest > IMPLAUSIBLE_TRANSLATION_MM:
            problems.append(f"translation up to {largest:.0f} mm (limit {IMPLAUSIBLE_TRANSLATION_MM:g} mm)")
    rotations = [c for c in ("rot_x", "rot_y", "rot_z") if c in table]
    if rotations:
        largest = np.nanmax(np.abs(table[rotations].to_numpy(dtype=float)))
        if largest > IMPLAUSIBLE_ROTATION_RAD:
            problems.append(f"rotation up to {np.rad2deg(largest):.0f} degrees "
                            f"(limit {np.rad2deg(IMPLAUSIBLE_ROTATION_RAD):.0f})")
    if not problems:
        return None
    return ("physically impossible head-motion estimates (" + "; ".join(problems) + "): the registration "
            "probably failed (featureless or synthetic images, a wrong reference or a corrupt volume); check the "
            "motion and carpet figures before trusting this run's betas")


def compute_confounds(params: np.ndarray, data_on_grid: np.ndarray, mask: np.ndarray, *,
                      fd_radius: float = 50.0) -> tuple[pd.DataFrame, dict]:
    """Confounds table of one run.

    Parameters
    ----------
    params : (T, 6) motion parameters (trans mm, rot rad) in :data:`PARAM_NAMES` order.
    data_on_grid : (X, Y, Z, T) realigned data (on the participant grid).
    mask : (X, Y, Z) bool brain mask on the same grid.
    fd_radius : sphere radius (mm) for FD.

    Returns
    -------
    table : DataFrame with columns trans_x trans_y trans_z rot_x rot_y rot_z framewise_displacement dvars
        std_dvars global_signal (NaN where undefined -> ``n/a`` with ``utils.atomic.write_tsv``).
    sidecar : dict for the ``.json`` next to the TSV; ``MotionImplausible`` is added when the motion
        estimates are physically impossible (:func:`implausible_motion`).
    """
    params = np.asarray(params, dtype=np.float64)
    n_vols = np.asarray(data_on_grid).shape[3]
    if params.shape != (n_vols, 6):
        raise ValueError(f"params shape {params.shape} does not match {n_vols} volumes")
    dvars, std_dvars = compute_dvars(data_on_grid, mask)
    table = pd.DataFrame(params, columns=list(PARAM_NAMES))
    table["framewise_displacement"] = framewise_displacement(params, fd_radius)
    table["dvars"] = dvars
    table["std_dvars"] = std_dvars
    table["global_signal"] = global_signal(data_on_grid, mask)
    sidecar = confounds_sidecar(fd_radius)
    problem = implausible_motion(table)
    if problem:
        sidecar["MotionImplausible"] = {"Description": problem, "Value": True}
    return table, sidecar
