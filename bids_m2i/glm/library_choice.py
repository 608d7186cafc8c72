"""One HRF library per session, chosen by leave-one-run-out agreement of the unregularised betas.

``hrf_library="auto"`` (docs/glm.md, "The HRF library chosen per session"). Which library gives the better
single-trial betas depends on the data: the narrow one on dense designs with weak responses (the GLM
benchmark's generators), the broad one on the demo simulator. A per-voxel choice between libraries over-fits,
so the choice is one decision per session, made on at most ``max_voxels`` signal voxels:

1. For every candidate library, every run and every kernel: the OLS single-trial betas and the explained sum
   of squares of the full model (no PCs) of each voxel.
2. For each held-out run ``r``: each voxel's kernel is chosen by its R² on the *other* runs (so the held-out
   run does not choose its own HRF), and each trial of run ``r`` whose stimulus is shown in another run is
   predicted by the mean beta of that stimulus in the other runs.
3. Per voxel, the correlation over all held-out trials between the betas and their predictions (scale-free:
   narrow kernels have higher peaks per unit beta, so the libraries' betas are on different scales); the library
   with the highest median over the voxels wins, ties to the broader one. The cross-validated R² of the held-out
   runs' time series was tried instead and dropped: it separated the libraries by < 0.01 (errors in the
   directions where neighbouring trials' regressors are collinear barely change the predicted time series, and
   those errors are what separates the libraries' betas).

The unregularised betas are scored, not the ridge ones: with the ridge the broad library won on every session tried (its
fraction stage smooths most), also where its final betas are the worse ones (docs/glm.md).
"""

from __future__ import annotations

import numpy as np
import torch

from .hrf_library import LIBRARIES
from .model import SessionModel
from .reliability import MISSING

AUTO = "auto"
CANDIDATES = ("broad", "medium", "narrow")
FALLBACK = "broad"


def prediction_matrix(stimulus: np.ndarray, run_of_trial: np.ndarray, rows=slice(None), missing=MISSING) -> np.ndarray:
    """``M[rows]`` of ``M`` (n_trials × n_trials): predicted betas = betas @ M.T, each trial the mean of its
    stimulus's trials in other runs (a zero row when there are none or the stimulus is unlabelled). Only the
    requested rows are built (one run's trials at a time: the whole matrix would grow as n_trials²)."""
    stimulus = np.asarray(stimulus).astype(str)
    run_of_trial = np.asarray(run_of_trial).astype(str)
    wanted = np.arange(stimulus.size)[rows]
    matrix = np.zeros((wanted.size, stimulus.size))
    for row, i in enumerate(wanted):
        if stimulus[i] in missing:
            continue
        others = np.flatnonzero((stimulus == stimulus[i]) & (run_of_trial != run_of_trial[i]))
        if others.size:
            matrix[row, others] = 1.0 / others.size
    return matrix


def held_out_agreement(model: SessionModel, data_runs: list[torch.Tensor], stimulus: np.ndarray,
                       run_of_trial: np.ndarray) -> torch.Tensor:
    """Per-voxel leave-one-run-out agreement of the library model's unregularised betas (module docstring).

    Parameters
    ----------
    model : SessionModel with a library (kernels ``0 .. n_kernels-2``)
    data_runs : list of Tensor, shape (n_voxels, n_volumes_run), % signal change
    stimulus, run_of_trial : ndarray, shape (n_trials,)
        Each trial's stimulus label and run label (session order); see :func:`prediction_matrix`.

    Returns
    -------
    correlation : Tensor, shape (n_voxels,)
    """
    n_kernels = model.n_kernels - 1
    n_voxels = data_runs[0].shape[0]
    to = dict(dtype=model.dtype, device=model.device)
    explained = torch.zeros(model.n_runs, n_kernels, n_voxels, **to)
    betas = torch.zeros(n_kernels, n_voxels, len(stimulus), **to)
    for run, data in enumerate(data_runs):
        columns = model.designs[run].trial_slice
        for kernel in range(n_kernels):
            ops = model.operators(run, kernel)
            z = ops.project(data)
            betas[kernel, :, columns] = ops.ols_from_projection(z)
            explained[run, kernel] = ops.fitted_sum_of_squares(data, z)
    everything = explained.sum(0)
    voxels = torch.arange(n_voxels, device=model.device)
    own_kept, predicted_kept = [], []
    for run in range(model.n_runs):
        columns = model.designs[run].trial_slice
        chosen = betas[torch.argmax(everything - explained[run], 0), voxels]  # kernel by R² on the other runs
        # this run's trials predicted from the other runs (the mean beta of the same stimulus there)
        rows = prediction_matrix(stimulus, run_of_trial, columns)          # (n_run_trials, n_trials)
        keep = torch.as_tensor(rows.sum(1) > 0, device=model.device)
        own_kept.append(chosen[:, columns][:, keep])
        predicted_kept.append((chosen @ torch.as_tensor(rows, **to).T)[:, keep])
    a = torch.cat(own_kept, 1)
    b = torch.cat(predicted_kept, 1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    norm = torch.sqrt((a * a).sum(1) * (b * b).sum(1))
    return torch.where(norm > 0, (a * b).sum(1) / torch.clamp(norm, min=1e-30), torch.zeros_like(norm))


def choose_library(designs, data_runs: list[torch.Tensor], stimulus: np.ndarray, run_of_trial: np.ndarray,
                   hrf_model: str, oversampling: int, min_onset: float, dtype, device,
                   candidates=CANDIDATES):
    """The library whose held-out agreement (:func:`held_out_agreement`) has the highest median over the given
    voxels.

    Returns
    -------
    name : str
    info : dict (sidecar): every candidate's median score, the rule, and the number of voxels
    models : dict name -> SessionModel (the chosen one can be reused for the whole session)
    """
    stimulus = np.asarray(stimulus).astype(str)
    run_of_trial = np.asarray(run_of_trial).astype(str)
    labelled = ~np.isin(stimulus, list(MISSING))
    runs_of = {}
    for label, run in zip(stimulus[labelled], run_of_trial[labelled]):
        runs_of.setdefault(label, set()).add(run)
    n_predicted = int(sum(len(runs_of[label]) > 1 for label in stimulus[labelled]))
    info = {"candidates": list(candidates), "n_voxels": int(data_runs[0].shape[0]),
            "n_trials_predicted": n_predicted, "betas": "ols", "score": "beta-correlation",
            "criterion": ("median over signal voxels of the correlation between each held-out run's betas and "
                          "their predictions (the mean beta of the same stimulus in the other runs); "
                          "unregularised betas, no PCs, each voxel's HRF chosen by R² on the other runs; "
                          "highest median wins, ties to the broader library")}
    if n_predicted == 0 or data_runs[0].shape[0] == 0:
        info.update(chosen=FALLBACK, reason="no stimulus is shown in more than one run: kept the broad library")
        return FALLBACK, info, {}
    scores, models = {}, {}
    for name in candidates:
        if name not in LIBRARIES:
            raise ValueError(name)
        model = SessionModel(designs, hrf_model, with_library=True, oversampling=oversampling,
                             min_onset=min_onset, dtype=dtype, device=device, library=name)
        scores[name] = float(torch.median(held_out_agreement(model, data_runs, stimulus, run_of_trial)).item())
        models[name] = model
    chosen = max(candidates, key=lambda n: (scores[n], -candidates.index(n)))
    info.update(median_score={k: round(v, 6) for k, v in scores.items()}, chosen=chosen)
    return chosen, info, models
