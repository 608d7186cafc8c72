"""Least-squares-separate single-trial betas (Mumford et al. 2012, NeuroImage 59:2636), vectorised.

LSS-1 fits, for each trial, a model with the trial's regressor, one regressor summing all other trials of its
run, the nuisance events, drift and confounds. LSS-N (``split="condition"``; Mumford et al. 2014, NeuroImage
103:130) splits the "others" regressor by condition. Each trial's beta only depends on its own run's data
(runs are modelled separately).

Instead of one least-squares fit per trial, the nuisance regressors are projected out once (Frisch–Waugh–
Lovell) and every trial's small normal equations are solved with Gram quantities shared by all voxels:
with ``P = Y X̃`` (voxels × trials) and ``Q = P M`` (sums per group), the trial's beta is
``a_j P_j + Q c_j`` for weights ``a_j, c_j`` (the first row of the pseudo-inverse of the trial's Gram matrix).
The result equals the per-trial ``lstsq`` loop (minimum-norm solution) to rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from .model import SessionModel
from .solvers import orthonormal_basis


def lss_weights(reduced_trials: np.ndarray, group_of_trial: np.ndarray):
    """Per-trial combination weights.

    Parameters
    ----------
    reduced_trials : ndarray, shape (n_volumes, n_run_trials)
        Trial regressors with the nuisance projected out.
    group_of_trial : ndarray of int, shape (n_run_trials,)
        Group (0 .. n_groups-1) whose other members form each "others" regressor.

    Returns
    -------
    own : ndarray, shape (n_run_trials,)
    per_group : ndarray, shape (n_run_trials, n_groups)
    """
    n_trials = reduced_trials.shape[1]
    n_groups = int(group_of_trial.max()) + 1
    membership = np.zeros((n_trials, n_groups))
    membership[np.arange(n_trials), group_of_trial] = 1.0
    gram = reduced_trials.T @ reduced_trials                  # x_i . x_j
    trial_group = gram @ membership                           # x_i . S_c
    group_group = membership.T @ trial_group                  # S_c . S_d
    own = np.zeros(n_trials)
    per_group = np.zeros((n_trials, n_groups))
    for j in range(n_trials):
        g = group_of_trial[j]
        # columns: the trial, then "others" of each group (own group minus the trial itself)
        t_s = trial_group[j].copy()
        t_s[g] -= gram[j, j]
        s_s = group_group.copy()
        s_s[g, :] -= trial_group[j]
        s_s[:, g] -= trial_group[j]
        s_s[g, g] += gram[j, j]
        local = np.empty((n_groups + 1, n_groups + 1))
        local[0, 0] = gram[j, j]
        local[0, 1:] = local[1:, 0] = t_s
        local[1:, 1:] = s_s
        first_row = np.linalg.pinv(local, rcond=1e-10, hermitian=True)[0]
        # beta = w0 P_j + sum_c w_c (Q_c - [c == g] P_j)
        own[j] = first_row[0] - first_row[1 + g]
        per_group[j] = first_row[1:]
    return own, per_group


def lss_betas(model: SessionModel, data_runs: list[torch.Tensor], n_trials: int,
              group_of_trial: np.ndarray | None = None) -> torch.Tensor:
    """LSS single-trial betas with the assumed HRF.

    Parameters
    ----------
    data_runs : list of Tensor, shape (n_voxels, n_volumes_run)
    group_of_trial : ndarray of int, shape (n_trials,), optional
        Session-level group per trial for LSS-N; None = LSS-1.

    Returns
    -------
    betas : Tensor, shape (n_voxels, n_trials)
    """
    kernel = model.canonical_index
    n_voxels = data_runs[0].shape[0]
    betas = torch.zeros(n_voxels, n_trials, dtype=model.dtype, device=model.device)
    for run, data in enumerate(data_runs):
        key = ("lss", run, None if group_of_trial is None else tuple(group_of_trial))
        if key not in model._cache:
            trials = model.trial_regressors[run][kernel]
            basis = orthonormal_basis(model.nuisance(run, kernel))
            reduced = trials - basis @ (basis.T @ trials)
            index = model.designs[run].trial_index
            groups = np.zeros(index.size, dtype=int) if group_of_trial is None else group_of_trial[index]
            _, groups = np.unique(groups, return_inverse=True)
            own, per_group = lss_weights(reduced, groups)
            membership = np.zeros((index.size, per_group.shape[1]))
            membership[np.arange(index.size), groups] = 1.0
            to = dict(dtype=model.dtype, device=model.device)
            model._cache[key] = tuple(torch.as_tensor(a, **to) for a in (reduced, own, membership, per_group))
        reduced, own, membership, per_group = model._cache[key]
        projected = data @ reduced                      # P: (voxels, run trials); Y X~ = Y~ X~
        sums = projected @ membership                   # Q: (voxels, groups)
        betas[:, model.designs[run].trial_slice] = projected * own + sums @ per_group.T
    return betas
