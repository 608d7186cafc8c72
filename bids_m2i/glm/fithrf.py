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
