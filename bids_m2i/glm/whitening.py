"""AR(1) prewhitening of the single-trial model (``noise_model="ar1"``; generalised least squares).

OLS single-trial betas are unbiased under autocorrelated noise but not efficient: with trials every few
seconds, neighbouring trials' regressors are smooth and overlap, exactly where AR(1) noise has most power.
As SPM (Friston et al. 2002) and nilearn's ``FirstLevelModel(noise_model="ar1")`` do, each voxel's lag-1
autocorrelation is estimated from the residuals of a first OLS fit, quantised into bins, and the model is
refitted after whitening data and design with that coefficient, run by run.

* **Estimate.** The residuals ``e = R y`` of the full OLS model (its HRF, its PCs) of each run give
  ``a0 = Σ e²`` and ``a1 = Σ e_t e_(t−1)``, summed over runs. A model with one regressor per trial biases their
  ratio strongly downwards (residuals are ``R`` times the noise). As Worsley et al. (2002) do, the bias is
  removed through ``R``: under AR(1) noise ``Σ = c0 ρ^|i−j|``, ``E[a0] = c0 tr(R Σ)`` and ``E[a1] = c0
  tr(L R Σ R)`` (``L`` the lag-1 shift), both polynomials in ρ whose coefficients are diagonal sums of ``R``
  and ``R L R``; the observed ratio is mapped to the ρ whose expected ratio it equals (all lags kept, not only
  the first), within ``[RHO_MIN, RHO_MAX]``.
* **Bins.** ``ρ`` is rounded to a grid of step ``AR1_STEP``; voxels sharing an HRF *and* a bin share one
  factorisation of the whitened design (the engine's grouped design, :class:`~bids_m2i.glm.solvers.RunOperators`).
* **Whitening** of a run with ``ρ`` (the exact AR(1) Cholesky factor, Prais–Winsten): ``w_0 = sqrt(1 − ρ²)
  y_0``, ``w_t = y_t − ρ y_(t−1)``; applied to the data and to every column of the design (trials, nuisance
  events, drift, confounds, noise PCs). The whitened model's OLS betas are the GLS betas.

The ridge stage then works on the whitened operators and data, so its cross-validated fractions and the final
scale-and-offset are those of the GLS betas.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..utils.parallel import group_map
from .solvers import SINGULAR_TOLERANCE, RunOperators, stacked_operators

AR1_STEP = 0.1
RHO_MIN, RHO_MAX = -0.5, 0.9


def whiten_columns(matrix: np.ndarray, rho: float) -> np.ndarray:
    """AR(1) whitening of each column of ``matrix`` (n_volumes, k) along time (float64 numpy)."""
    return whiten_stack(matrix, [rho])[0]


def whiten_data(data: torch.Tensor, rho: float) -> torch.Tensor:
    """AR(1) whitening of each row of ``data`` (n_voxels, n_volumes) along time."""
    out = torch.empty_like(data)
    out[:, 0] = data[:, 0] * float(np.sqrt(1.0 - rho * rho))
    out[:, 1:] = data[:, 1:] - rho * data[:, :-1]
    return out


def _full_basis(ops: RunOperators) -> torch.Tensor:
    return torch.cat([ops.left, ops.nuisance_basis], dim=1)


def expected_lag_profile(ops: RunOperators):
    """Diagonal sums of ``R`` and ``R L R`` (``R`` the run's residual-forming matrix, ``L`` the lag-1 shift).

    Under AR(1) noise ``Σ_ij = c0 ρ^|i−j|``, ``E[Σ e²] = c0 Σ_k ρ^k dR_k`` and ``E[Σ e_t e_(t−1)] = c0 Σ_k ρ^k
    dP_k`` with ``dR_k``, ``dP_k`` the sums of the k-th diagonals (both sides) of ``R`` and ``R L R``.

    Returns
    -------
    d_residual, d_lagged : ndarray, shape (n_volumes,)
    """
    basis = _full_basis(ops).double().cpu().numpy()
    n = basis.shape[0]
    residual = np.eye(n) - basis @ basis.T
    shifted = np.zeros_like(residual)                   # R L: L (the lag-1 shift) moves R's columns left
    shifted[:, :-1] = residual[:, 1:]
    lagged = shifted @ residual                         # e' L e = Σ e_t e_(t−1)
    lagged = 0.5 * (lagged + lagged.T)                  # only its symmetric part meets the symmetric Σ
    return _diagonal_sums(residual), _diagonal_sums(lagged)


@functools.lru_cache(maxsize=8)
def _lower_diagonals(n: int):
    """Flat indices of the lower triangle of an n × n matrix, and each one's diagonal (i − j)."""
    rows, cols = np.tril_indices(n)
    return rows * n + cols, rows - cols


def _diagonal_sums(matrix: np.ndarray) -> np.ndarray:
    """Sum of each diagonal k = 0..n−1 of a symmetric matrix, both sides (``trace(matrix, k)``, doubled for
    k > 0), in one pass."""
    n = matrix.shape[0]
    flat, diagonal = _lower_diagonals(n)
    sums = np.bincount(diagonal, weights=matrix.ravel()[flat], minlength=n)
    sums[1:] *= 2
    return sums


@functools.lru_cache(maxsize=8)
def _rho_powers(n: int) -> np.ndarray:
    """``RHO_GRID[:, None] ** arange(n)``, shape (n_grid, n) (the same for every run of n volumes)."""
    powers = RHO_GRID[:, None] ** np.arange(n)[None, :]
    powers.flags.writeable = False
    return powers


RHO_GRID = np.round(np.arange(RHO_MIN, RHO_MAX + 1e-9, 0.005), 6)


def residual_lag_sums(ops: RunOperators, data: torch.Tensor):
    """Per voxel ``a0 = Σ e²``, ``a1 = Σ e_t e_(t−1)`` of the OLS residuals of one run, and the explained SS."""
    basis = _full_basis(ops)
    coefficients = data @ basis
    residual = data - coefficients @ basis.T
    a0 = (residual * residual).sum(1)
    a1 = (residual[:, 1:] * residual[:, :-1]).sum(1)
    return a0, a1, (coefficients * coefficients).sum(1)


def estimate_ar1(operators: list[RunOperators], data_runs: list[torch.Tensor]):
    """Bias-corrected lag-1 autocorrelation of the OLS residuals, pooled over runs.

    The observed ratio ``Σ e_t e_(t−1) / Σ e²`` (sums over runs) is mapped back to the AR(1) coefficient whose
    expected ratio, through this model's residual-forming matrices, it equals (:func:`expected_lag_profile`,
    evaluated on :data:`RHO_GRID` and inverted by interpolation).

    Parameters
    ----------
    operators : list of RunOperators, one per run (the voxels' HRF and PCs)
    data_runs : list of Tensor, shape (n_voxels, n_volumes_run)

    Returns
    -------
    rho : ndarray, shape (n_voxels,), within [RHO_MIN, RHO_MAX]
    fitted : Tensor, shape (n_voxels,)
        Explained sum of squares of the unwhitened (OLS) model, for the R² map.
    """
    expected0 = np.zeros(RHO_GRID.size)
    expected1 = np.zeros(RHO_GRID.size)
    a0 = a1 = fitted = 0
    for ops, data in zip(operators, data_runs):
        d_residual, d_lagged = expected_lag_profile(ops)
        powers = _rho_powers(d_residual.size)
        expected0 += powers @ d_residual
        expected1 += powers @ d_lagged
        s0, s1, explained = residual_lag_sums(ops, data)
        a0, a1, fitted = a0 + s0, a1 + s1, fitted + explained
    curve = np.maximum.accumulate(expected1 / expected0)       # increasing in ρ
    a0 = a0.double().cpu().numpy()
    observed = a1.double().cpu().numpy() / np.where(a0 > 0, a0, 1.0)
    # a voxel without residual (constant, or not scalable to % signal) is left unwhitened
    return np.where(a0 > 0, np.interp(observed, curve, RHO_GRID), 0.0), fitted


def quantise(rho: np.ndarray, step: float | None = None) -> np.ndarray:
    """``rho`` rounded to the grid of ``step`` (default :data:`AR1_STEP`; the bins that share one factorisation)."""
    step = AR1_STEP if step is None else step
    return np.round(np.round(np.asarray(rho) / step) * step, 6)


def whiten_stack(matrix: np.ndarray, rhos: np.ndarray) -> np.ndarray:
    """:func:`whiten_columns` of one (n_volumes, k) matrix for several ρ at once, shape (n_rho, n_volumes, k)."""
    rhos = np.asarray(rhos, dtype=float)[:, None, None]
    out = np.empty((rhos.shape[0],) + matrix.shape)
    out[:, 0] = np.sqrt(1.0 - rhos[:, 0] ** 2) * matrix[0]
    out[:, 1:] = matrix[1:] - rhos * matrix[:-1]
    return out


def whitened_operators(model, run: int, kernel: int, n_pcs: int, rhos) -> list[RunOperators]:
    """The run's full model (trials, nuisance events, drift, confounds, PCs) whitened with each ρ, factorised.

    Same factorisation as :meth:`RunOperators.build`, stacked over the ρ values (one numpy call per step
    instead of one per bin).
    """
    trials = whiten_stack(model.trial_regressors[run][kernel], rhos)               # (B, T, n)
    nuisance = whiten_stack(model.nuisance(run, kernel, n_pcs), rhos)              # (B, T, e)
    left, sing, _ = np.linalg.svd(nuisance, full_matrices=False)
    keep = sing > SINGULAR_TOLERANCE * np.maximum(sing.max(axis=1, keepdims=True), 1e-300)
    basis = left * keep[:, None, :]                                                # dropped directions -> 0
    reduced = trials - basis @ (np.swapaxes(basis, 1, 2) @ trials)
    return stacked_operators([basis[b][:, keep[b]] for b in range(len(rhos))], reduced, model.dtype, model.device)


def whitened_bins(model, data_runs: list[torch.Tensor], kernel: int, n_pcs: int, rho_bins: np.ndarray):
    """Voxels of one HRF split by their (quantised) AR(1) coefficient, each bin with its whitened model.

    Yields
    ------
    local : ndarray of int
        The bin's voxels (rows of ``data_runs``).
    operators : list of RunOperators
        Each run's model whitened with the bin's ρ.
    whitened : list of Tensor, shape (n_bin_voxels, n_volumes_run)
        The bin's data whitened with the same ρ.
    """
    values = np.unique(rho_bins)
    per_run = [whitened_operators(model, run, kernel, n_pcs, values) for run in range(model.n_runs)]
    for b, value in enumerate(values):
        local = np.flatnonzero(rho_bins == value)
        index = torch.as_tensor(local, device=model.device)
        operators = [ops[b] for ops in per_run]
        whitened = [whiten_data(d.index_select(0, index), float(value)) for d in data_runs]
        yield local, operators, whitened


def whitened_trial_betas(model, data_runs: list[torch.Tensor], kernel_of_voxel: np.ndarray, n_trials: int,
                         n_pcs: int = 0, step: float | None = None):
    """GLS (AR(1)-prewhitened) single-trial betas with a per-voxel kernel.

    Returns
    -------
    betas : Tensor, shape (n_voxels, n_trials)
    fitted : Tensor, shape (n_voxels,)
        Explained sum of squares of the unwhitened OLS model (the R² map keeps its usual meaning).
    rho : ndarray, shape (n_voxels,)
        The quantised AR(1) coefficient each voxel was whitened with.
    """
    n_voxels = data_runs[0].shape[0]
    betas = torch.zeros(n_voxels, n_trials, dtype=model.dtype, device=model.device)
    fitted = torch.zeros(n_voxels, dtype=model.dtype, device=model.device)
    rho = np.zeros(n_voxels)
    kernels = np.unique(kernel_of_voxel)
    model.build_operators(kernels, n_pcs)   # the groups below only read them

    def fit_group(kernel):
        """One HRF's voxels: their AR(1) bins, explained SS and GLS betas (returned; written below)."""
        voxels = np.flatnonzero(kernel_of_voxel == kernel)
        index = torch.as_tensor(voxels, device=model.device)
        group = [d.index_select(0, index) for d in data_runs]
        ols_ops = [model.operators(run, int(kernel), n_pcs) for run in range(model.n_runs)]
        group_rho, explained = estimate_ar1(ols_ops, group)
        bins = quantise(group_rho, step)
        block = torch.zeros(voxels.size, n_trials, dtype=model.dtype, device=model.device)
        for local, operators, whitened in whitened_bins(model, group, int(kernel), n_pcs, bins):
            rows = torch.as_tensor(local, device=model.device)
            for run, (ops, data) in enumerate(zip(operators, whitened)):
                block[rows, model.designs[run].trial_slice] = ops.ols_from_projection(ops.project(data))
        return voxels, index, bins, explained, block

    with group_map(model.device) as map_groups:   # the HRF groups side by side (utils/parallel.py)
        for voxels, index, bins, explained, block in map_groups(fit_group, kernels):
            fitted[index] = explained.to(fitted.dtype)
            rho[voxels] = bins
            betas[index] = block
    return betas, fitted, rho
