"""Per-voxel HRF choice and grouped OLS: voxels that share an HRF share one factorisation.

FitHRF as in GLMsingle (Prince et al. 2022): every library HRF is tried in the full single-trial model and
each voxel keeps the one with the highest R² (variance explained in % signal change, all runs together).
"""

from __future__ import annotations

import numpy as np
import torch

from .model import SessionModel
from .solvers import centred_sum_of_squares


def total_sum_of_squares(data_runs: list[torch.Tensor]) -> torch.Tensor:
    """Sum over runs of each voxel's squared deviation from its run mean, shape (n_voxels,)."""
    return sum(centred_sum_of_squares(data) for data in data_runs)


def r2_from(fitted: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    return torch.where(total > 0, fitted / torch.clamp(total, min=1e-30), torch.zeros_like(fitted))


def drift_sum_of_squares(model: SessionModel, data_runs: list[torch.Tensor]):
    """Per voxel, over runs: the sum of squares that drift and confounds explain (``|Y B|²``, ``B`` the run's
    orthonormal fixed nuisance basis, constant included) and the sum of squares left after them
    (``|Y|² − |Y B|²``), each shape (n_voxels,). See :func:`r2_beyond_drift`."""
    explained = left = 0
    for run, data in enumerate(data_runs):
        fixed = torch.as_tensor(model.fixed_basis(run), dtype=model.dtype, device=model.device)
        part = torch.linalg.vector_norm(data @ fixed, dim=1) ** 2
        explained = explained + part
        left = left + torch.linalg.vector_norm(data, dim=1) ** 2 - part
    return explained, left


def r2_beyond_drift(fitted: torch.Tensor, drift: tuple) -> torch.Tensor:
    """Share of the variance left after drift and confounds that the rest of a model explains:
    ``(fitted − |Y B|²) / (|Y|² − |Y B|²)`` (``drift`` from :func:`drift_sum_of_squares`).

    This is the R² that GLMdenoise and GLMsingle threshold (they project the polynomials out of data and model
    first); ``selection_r2="beyond-drift"`` picks the noise pool with it. The plain R² (:func:`r2_from`) counts
    the drift as explained, so a voxel with a large drift and no response looks like signal and a responsive
    voxel with little drift like noise: on the benchmark's ``ours`` generator (seed 0, V = 2,000) the pool it
    picks holds 333 responsive voxels of 379."""
    explained, left = drift
    return torch.where(left > 0, (fitted - explained) / torch.clamp(left, min=1e-30), torch.zeros_like(fitted))


def library_fitted_ss(model: SessionModel, data_runs: list[torch.Tensor], kernels,
                      selection: str = "full") -> torch.Tensor:
    """Explained sum of squares of the single-trial model with each kernel.

    Parameters
    ----------
    data_runs : list of Tensor, shape (n_voxels, n_volumes_run)

    Returns
    -------
    fitted : Tensor, shape (n_kernels, n_voxels)
    """
    n_voxels = data_runs[0].shape[0]
    out = torch.zeros(len(kernels), n_voxels, dtype=model.dtype, device=model.device)
    for run, data in enumerate(data_runs):
        # drift/confounds are common to all kernels: project them out once
        fixed = torch.as_tensor(model.fixed_basis(run), dtype=model.dtype, device=model.device)
        common = data @ fixed
        out += (torch.linalg.vector_norm(common, dim=1) ** 2)[None]
        reduced = data - common @ fixed.T
        bases = []
        for kernel in kernels:
            ops = model.operators(run, kernel) if selection == "full" else model.onoff_operators(run, kernel)
            # the remaining basis (nuisance events of this kernel, trials) is orthogonal to ``fixed``
            extra = ops.nuisance_basis[:, fixed.shape[1]:]
            bases.append(torch.cat([ops.left, extra], dim=1) if extra.shape[1] else ops.left)
        # several kernels per product (one large GEMM runs faster than many thin ones); a product holds at
        # most ``4 * n_run_trials`` values per voxel, within estimate_memory's per-voxel working set
        budget = 4 * max(model.designs[run].trial_slice.stop - model.designs[run].trial_slice.start, 1)
        start = 0
        while start < len(bases):
            stop, width = start + 1, bases[start].shape[1]
            while stop < len(bases) and width + bases[stop].shape[1] <= budget:
                width += bases[stop].shape[1]
                stop += 1
            product = (reduced @ torch.cat(bases[start:stop], dim=1)).square_()
            for row, part in enumerate(torch.split(product, [b.shape[1] for b in bases[start:stop]], dim=1)):
                out[start + row] += part.sum(1)
            start = stop
    return out


def grouped_trial_betas(model: SessionModel, data_runs: list[torch.Tensor], kernel_of_voxel: np.ndarray,
                        n_trials: int, n_pcs: int = 0):
    """OLS single-trial betas with a per-voxel kernel; each kernel group is solved with one factorisation.

    Returns
    -------
    betas : Tensor, shape (n_voxels, n_trials)
    fitted : Tensor, shape (n_voxels,)
        Explained sum of squares of the full model.
    """
    n_voxels = data_runs[0].shape[0]
    betas = torch.zeros(n_voxels, n_trials, dtype=model.dtype, device=model.device)
    fitted = torch.zeros(n_voxels, dtype=model.dtype, device=model.device)
    kernels = np.unique(kernel_of_voxel)
    for kernel in kernels:
        whole = kernels.size == 1  # one HRF for all voxels (lsa, lss): no gather/scatter copies
        voxels = None if whole else torch.as_tensor(np.flatnonzero(kernel_of_voxel == kernel), device=model.device)
        block = betas if whole else torch.zeros(voxels.numel(), n_trials, dtype=model.dtype, device=model.device)
        explained = fitted if whole else torch.zeros(voxels.numel(), dtype=model.dtype, device=model.device)
        for run, data in enumerate(data_runs):
            ops = model.operators(run, int(kernel), n_pcs)
            part = data if whole else data.index_select(0, voxels)
            z = ops.project(part)
            block[:, model.designs[run].trial_slice] = ops.ols_from_projection(z)
            explained += ops.fitted_sum_of_squares(part, z)
        if not whole:
            betas[voxels] = block
            fitted[voxels] = explained
    return betas, fitted


# ------------------------------------------------------------------------------------------------------------
# HRF choice corrected for the noise each kernel explains (issue 13)
#
# The full model's explained sum of squares also counts the part of the voxel's *noise* that the kernel's
# column space captures, E[|P_k ε|²] = tr(P_k Σ_v). With autocorrelated noise that part is largest for broad,
# smooth kernels (their trial regressors span the low frequencies where the noise has its power), so the plain
# R² choice drifts towards broad kernels as the noise grows, and their nearly collinear trial regressors make
# the betas noisy. The correction subtracts an estimate of tr(P_k Σ_v) from each kernel's explained sum of
# squares before the choice; the R² map stays the plain one.

NOISE_LAGS = 12                 # noise autocovariance estimated at lags 0..12 volumes (≈ 19 s at TR 1.6 s)
HRF_NOISE_CORRECTION = 0.5      # weight of the subtracted term (0 = the plain R² choice; docs/glm.md ablation)


def _lag_sums(matrix: np.ndarray, lags: int) -> np.ndarray:
    """``tr(matrix · T_m)`` for m = 0..lags, ``T_m`` the symmetric Toeplitz matrix with ones on diagonals ±m
    (the sums of the m-th diagonals on both sides)."""
    return np.array([np.trace(matrix) if m == 0 else np.trace(matrix, m) + np.trace(matrix, -m)
                     for m in range(lags + 1)])


def _model_basis(ops) -> torch.Tensor:
    """Orthonormal basis of a run's whole model (reduced trial regressors and nuisance), (n_volumes, rank)."""
    return torch.cat([ops.left, ops.nuisance_basis], dim=1)


class NoiseExplainedByKernel:
    """Expected explained sum of squares of each voxel's noise under each kernel's full model.

    The noise of a voxel is modelled as stationary with autocovariance ``γ(m)`` at lags ``m = 0..lags`` (0
    beyond), the same in every run: ``Σ = Σ_m γ(m) T_m``. Then ``E|P_k ε|² = Σ_m γ(m) tr(P_k T_m)`` (summed
    over runs). ``γ`` is estimated per voxel from the residuals ``e = R y`` of the assumed-HRF single-trial model,
    corrected for the fit's bias through ``R``: ``E[e' T_l e] = Σ_m γ(m) tr(R T_l R T_m)`` is a linear system (the
    same for all voxels, summed over runs), solved for the observed lag sums (Worsley et al. 2002 do the same for
    AR coefficients). With one regressor per trial the residual pins the level ``γ(0)`` poorly, but its term
    ``γ(0) tr(P_k)`` (the model's rank) is the same for every kernel and does not move the choice; the
    differences between kernels are well determined (tests/test_glm_hrf_noise_choice.py). The design terms are
    computed once per session; :meth:`expected` is per chunk of voxels.
    """

    def __init__(self, model: SessionModel, kernels, lags: int = NOISE_LAGS):
        self.lags = lags
        self.model = model
        system = np.zeros((lags + 1, lags + 1))
        per_kernel = np.zeros((len(kernels), lags + 1))
        self._bases = []
        for run in range(model.n_runs):
            basis_t = _model_basis(model.operators(run, model.canonical_index))
            self._bases.append(basis_t)
            basis = basis_t.double().cpu().numpy()
            n = basis.shape[0]
            residual = np.eye(n) - basis @ basis.T
            for lag in range(lags + 1):
                shifted = residual.copy() if lag == 0 else np.zeros_like(residual)
                if lag:                                  # T_l R: row i is R[i + l] + R[i − l]
                    shifted[:-lag] += residual[lag:]
                    shifted[lag:] += residual[:-lag]
                system[lag] += _lag_sums(residual @ shifted, lags)
            for row, kernel in enumerate(kernels):
                full = _model_basis(model.operators(run, int(kernel))).double().cpu().numpy()
                per_kernel[row] += _lag_sums(full @ full.T, lags)
        self._solve = np.linalg.pinv(system)
        self._per_kernel = per_kernel

    def autocovariance(self, data_runs: list[torch.Tensor]) -> np.ndarray:
        """Per voxel noise autocovariance ``γ(0..lags)``, shape (lags + 1, n_voxels) (float64)."""
        observed = 0
        for basis, data in zip(self._bases, data_runs):
            residual = data - (data @ basis) @ basis.T
            sums = [(residual * residual).sum(1)]
            sums += [2 * (residual[:, lag:] * residual[:, :-lag]).sum(1) for lag in range(1, self.lags + 1)]
            observed = observed + torch.stack(sums).double().cpu().numpy()
        return self._solve @ observed

    def expected(self, data_runs: list[torch.Tensor]) -> torch.Tensor:
        """Expected explained sum of squares of the noise, shape (n_kernels, n_voxels), model dtype/device."""
        values = self._per_kernel @ self.autocovariance(data_runs)
        return torch.as_tensor(values, dtype=self.model.dtype, device=self.model.device)
