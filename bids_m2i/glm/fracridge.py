"""Fractional ridge regression of single-trial betas (Rokem & Kay 2020, GigaScience 9:giaa133), per voxel.

The ridge penalty is parametrised by the fraction ``f = |β_ridge| / |β_OLS|`` (norm over all trials of the
session) instead of α. With the nuisance projected out and the reduced trial design of each run factorised as
``U S Wᵀ`` (:class:`~bids_m2i.glm.solvers.RunOperators`) and ``z = Y U``, ``β(α) = (z S / (S² + α)) Wᵀ`` and
``|β(α)|² = Σ z² S² / (S² + α)²``; that curve is evaluated on a log-spaced α grid and inverted per voxel by
interpolation (in log α) to get the α of each requested fraction.

As in GLMsingle (Prince et al. 2022), the fraction is chosen per voxel by cross-validation over repeated
stimuli (fractions 0.05–1), and the chosen ridge betas are mapped back by a per-voxel scale and offset (least
squares onto the unregularised betas), which undoes the overall shrinkage while keeping the ridge pattern.

Cross-validation criterion (``criterion``):

* ``"consistency"`` (default, ours): leave-one-repeat-out inconsistency of the candidate's own (centred) betas,
  divided by their variance. Because the final betas are a per-voxel affine map of the ridge betas, only
  their pattern matters, and this picks the pattern whose repeats agree best. On the benchmark simulation it
  gives clearly better betas (docs/benchmarks.md).
* ``"ols-target"``: squared error of predicting each repeat's unregularised (OLS) beta by the mean of the other
  repeats' ridge betas — the identity-weighted analogue of GLMsingle's held-out-run time-series R².
"""

from __future__ import annotations

import numpy as np
import torch

from .reliability import RepeatStructure, leave_one_out_error
from .solvers import RunOperators

DEFAULT_FRACTIONS = tuple(np.round(np.arange(0.05, 1.0 + 1e-9, 0.05), 2).tolist())
N_ALPHAS = 120


def _ridge_betas(operators, projections, alpha):
    """Ridge betas for a per-voxel α, shape (n_voxels, n_trials); α = 0 gives OLS (pseudo-inverse)."""
    blocks = []
    for ops, z in zip(operators, projections):
        s = ops.singular[None, :]
        # s ≥ 0 and α ≥ 0: s² + α = 0 only where s = 0, where s / clamp(s² + α) is 0 too (no torch.where)
        coef = (s * s + alpha[:, None]).clamp_(min=1e-30)
        blocks.append(torch.div(s, coef, out=coef).mul_(z) @ ops.right.T)
    # runs are consecutive blocks of the session's trial order
    return torch.cat(blocks, dim=1)


def _criterion(ols, candidate, repeats, criterion):
    """Cross-validation loss of candidate betas (lower is better)."""
    if criterion == "ols-target":
        return leave_one_out_error(ols, candidate, repeats)
    # scale-free: inconsistency of the candidate with itself across repeats, relative to its variance
    centred = candidate - candidate.mean(1, keepdim=True)
    return leave_one_out_error(centred, centred, repeats) / torch.clamp((centred * centred).sum(1), min=1e-30)


def alpha_grid(operators: list[RunOperators]) -> torch.Tensor:
    """0 followed by log-spaced α from 1e-3 × the smallest to 1e3 × the largest squared singular value."""
    singular = torch.cat([ops.singular for ops in operators])
    positive = singular[singular > 0]
    low = float(positive.min() ** 2) * 1e-3
    high = float(positive.max() ** 2) * 1e3
    grid = np.concatenate([[0.0], np.logspace(np.log10(low), np.log10(high), N_ALPHAS)])
    return torch.as_tensor(grid, dtype=operators[0].singular.dtype, device=operators[0].singular.device)


def alphas_for_fraction(curve: torch.Tensor, grid: torch.Tensor, fraction) -> torch.Tensor:
    """Per-voxel α reaching ``fraction`` on a decreasing fraction curve (n_alpha, n_voxels).

    ``fraction`` is a number (result shape (n_voxels,)) or a tensor of shape (n_fractions, 1) (result shape
    (n_fractions, n_voxels), every fraction at once with the same arithmetic).
    """
    n_alpha = grid.numel()
    if torch.is_tensor(fraction):                                  # (F, 1): compare along a new leading axis
        above = (curve[None] > fraction[:, :, None]).sum(1).clamp(1, n_alpha - 1)
    else:
        above = (curve > fraction).sum(0).clamp(1, n_alpha - 1)    # first grid index at or below the fraction
    low, high = above - 1, above
    f_low = curve.gather(0, low if low.dim() == 2 else low[None]).reshape(low.shape)
    f_high = curve.gather(0, high if high.dim() == 2 else high[None]).reshape(high.shape)
    t = torch.clamp((f_low - fraction) / torch.clamp(f_low - f_high, min=1e-30), 0.0, 1.0)
    a_low, a_high = grid[low], grid[high]
    log_interp = torch.exp(torch.log(torch.clamp(a_low, min=1e-300)) * (1 - t)
                           + torch.log(a_high) * t)
    alpha = torch.where(low == 0, a_high * t, log_interp)
    # below the whole curve (a voxel with tiny OLS norm): strongest penalty of the grid
    return torch.where(curve[-1] > fraction, grid[-1].expand_as(alpha), alpha)


def _ridge_path(operators, data_runs, with_fitted: bool = True):
    """Projections, OLS betas, explained sum of squares (None without ``with_fitted``: it costs a product with
    the nuisance basis per run), and the fraction curve on the α grid."""
    projections = [ops.project(data) for ops, data in zip(operators, data_runs)]
    fitted = (sum(ops.fitted_sum_of_squares(data, z) for ops, data, z in zip(operators, data_runs, projections))
              if with_fitted else None)
    n_voxels = data_runs[0].shape[0]
    zeros = torch.zeros(n_voxels, dtype=data_runs[0].dtype, device=data_runs[0].device)
    ols = _ridge_betas(operators, projections, zeros)
    curve, grid = _fraction_curve(operators, projections)
    return projections, ols, fitted, curve, grid


def _fraction_curve(operators, projections):
    """The fraction curve ``|β(α)| / |β(0)|`` on the α grid, shape (n_alpha, n_voxels), and the grid."""
    grid = alpha_grid(operators)
    norm2 = 0
    for ops, z in zip(operators, projections):
        s = ops.singular[None, :]
        denom = s * s + grid[:, None]
        coef = torch.where(denom > 0, s / torch.clamp(denom, min=1e-30), torch.zeros_like(denom))
        norm2 = norm2 + (coef * coef) @ (z * z).T                      # (n_alpha, n_voxels)
    curve = torch.sqrt(norm2 / torch.clamp(norm2[:1], min=1e-30))
    return curve, grid


# Fractions are scored in batches: one torch call per step for many fractions instead of one per fraction
# (the groups of voxels sharing an HRF and an AR(1) bin are small, so per-call overhead dominated). The batch
# holds at most this many (fraction, voxel) rows of candidate betas (a few MB), whatever the group size, so the
# engine's memory bound is unchanged; the results do not depend on it.
FRACTION_BATCH_ROWS = 2048


def _fraction_errors(operators, projections, ols, curve, grid, fractions, repeats, criterion):
    """Per-voxel α and cross-validation loss of each fraction, both shape (n_fractions, n_voxels).

    Same arithmetic as calling :func:`alphas_for_fraction`, :func:`_ridge_betas` and :func:`_criterion` once per
    fraction, on stacked (fraction, voxel) rows.
    """
    n_voxels, n_trials = ols.shape
    alphas, errors = [], []
    per_batch = max(1, FRACTION_BATCH_ROWS // max(n_voxels, 1))
    for start in range(0, len(fractions), per_batch):
        batch = fractions[start:start + per_batch]
        alpha = alphas_for_fraction(curve, grid, torch.tensor(batch, dtype=curve.dtype,
                                                              device=curve.device)[:, None])  # (F, V)
        candidate = torch.empty(len(batch) * n_voxels, n_trials, dtype=ols.dtype, device=ols.device)
        column = 0
        for ops, z in zip(operators, projections):
            s = ops.singular
            # _ridge_betas' coefficients in one buffer: s ≥ 0 and α ≥ 0, so s² + α = 0 only where s = 0, where
            # s / clamp(s² + α) is 0 as well (the torch.where there is then a no-op)
            coef = (s * s + alpha[:, :, None]).clamp_(min=1e-30)
            torch.div(s, coef, out=coef).mul_(z[None])
            width = s.numel()
            torch.mm(coef.reshape(-1, width), ops.right.T, out=candidate[:, column:column + width])
            column += width
        if criterion == "ols-target":
            error = leave_one_out_error(ols.repeat(len(batch), 1), candidate, repeats)
        else:  # _criterion's "consistency", centring in place (the candidates are ours)
            centred = candidate.sub_(candidate.mean(1, keepdim=True))
            error = leave_one_out_error(centred, centred, repeats) / torch.clamp((centred * centred).sum(1),
                                                                                min=1e-30)
        errors.append(error.reshape(len(batch), n_voxels))
        alphas.append(alpha)
    return torch.cat(alphas), torch.cat(errors)


def ridge_cv_loss(operators: list[RunOperators], data_runs: list[torch.Tensor], repeats: RepeatStructure,
                  fractions=DEFAULT_FRACTIONS, criterion: str = "consistency") -> torch.Tensor:
    """Per voxel, the cross-validation loss of the best fraction (what :func:`fractional_ridge_cv` keeps).

    Used to choose the number of noise PCs by the loss of the betas the method finally returns (after the
    ridge) rather than by the unregularised betas (:func:`bids_m2i.glm.denoise.choose_n_pcs`).

    Returns
    -------
    loss : Tensor, shape (n_voxels,)
    """
    return fraction_loss_curves(operators, data_runs, repeats, fractions, criterion).min(0).values


def fraction_loss_curves(operators: list[RunOperators], data_runs: list[torch.Tensor], repeats: RepeatStructure,
                         fractions=DEFAULT_FRACTIONS, criterion: str = "consistency") -> torch.Tensor:
    """Per voxel, the cross-validation loss of every fraction, shape (len(fraction_order(fractions)), n_voxels).

    Rows follow :func:`fraction_order` (fraction 1, the OLS betas, first); the losses are those
    :func:`fractional_ridge_cv` compares. Used for the session's median curve (``pooling``)."""
    projections, ols, _, curve, grid = _ridge_path(operators, data_runs, with_fitted=False)
    at_ols = _criterion(ols, ols, repeats, criterion)[None]
    tried = fraction_order(fractions)[1:]
    if not tried:
        return at_ols
    _, errors = _fraction_errors(operators, projections, ols, curve, grid, tried, repeats, criterion)
    return torch.cat([at_ols, errors])


def fraction_order(fractions) -> list[float]:
    """The fractions in the order :func:`fractional_ridge_cv` scores them: 1 (OLS), then the others decreasing."""
    return [1.0] + [float(f) for f in sorted(fractions, reverse=True) if f < 1.0]


def fractional_ridge_cv(operators: list[RunOperators], data_runs: list[torch.Tensor],
                        repeats: RepeatStructure, fractions=DEFAULT_FRACTIONS,
                        criterion: str = "consistency", with_fitted: bool = True,
                        pooling: torch.Tensor | None = None):
    """Cross-validated fractional ridge with scale-and-offset, for voxels sharing one HRF.

    Parameters
    ----------
    operators : list of RunOperators (one per run)
    data_runs : list of Tensor, shape (n_voxels, n_volumes_run); runs in session order (each run's trials are
        a consecutive block of the session's trials)

    Returns
    -------
    betas : Tensor, shape (n_voxels, n_trials)
        Ridge betas at the chosen fraction, scaled and offset onto the OLS betas.
    fraction : Tensor, shape (n_voxels,)
    ols : Tensor, shape (n_voxels, n_trials)
    fitted : Tensor, shape (n_voxels,)
        Explained sum of squares of the unregularised model (None with ``with_fitted=False``: the AR(1) path
        takes its R² from the unwhitened fit and does not need it).

    ``pooling`` (optional, one value per fraction in :func:`fraction_order`): added to every voxel's loss
    curve before its fraction is chosen, e.g. a weight times the session's median curve, so that a voxel
    whose own curve is flat or noisy leans toward the fraction most voxels prefer (issue 13, eleventh pass).
    """
    projections, ols, fitted, curve, grid = _ridge_path(operators, data_runs, with_fitted)
    n_voxels = data_runs[0].shape[0]

    best_error = _criterion(ols, ols, repeats, criterion)
    best_alpha = torch.zeros(n_voxels, dtype=ols.dtype, device=ols.device)   # α = 0: the OLS betas
    chosen = torch.ones(n_voxels, dtype=ols.dtype, device=ols.device)
    tried = fraction_order(fractions)[1:]
    if pooling is not None:
        if pooling.numel() != len(tried) + 1:
            raise ValueError(f"pooling has {pooling.numel()} values for {len(tried) + 1} fractions")
        best_error = best_error + pooling[0]
    if tried:
        alphas, errors = _fraction_errors(operators, projections, ols, curve, grid, tried, repeats, criterion)
        if pooling is not None:
            errors = errors + pooling[1:, None]
        # in order of decreasing fraction, a fraction replaces the best only if strictly better (ties keep the
        # larger fraction), as a sequential search would
        for row, fraction in enumerate(tried):
            better = errors[row] < best_error
            best_error = torch.where(better, errors[row], best_error)
            best_alpha = torch.where(better, alphas[row], best_alpha)
            chosen = torch.where(better, torch.full_like(chosen, fraction), chosen)
    best = _ridge_betas(operators, projections, best_alpha)

    # per-voxel scale and offset onto the unregularised betas
    centred = best - best.mean(1, keepdim=True)
    variance = (centred * centred).sum(1)
    scale = torch.where(variance > 0, (centred * (ols - ols.mean(1, keepdim=True))).sum(1)
                        / torch.clamp(variance, min=1e-30), torch.zeros_like(variance))
    offset = ols.mean(1) - scale * best.mean(1)
    return scale[:, None] * best + offset[:, None], chosen, ols, fitted


# ------------------------------------------------------------------------------------------------------------
# The PC search's loss in closed form (issue 13, speed)
#
# The search over the number of noise PCs (denoise.choose_n_pcs, criterion "ridge") needs, per voxel, only the
# smallest "consistency" loss over the fractions; never the betas. That loss is a ratio of two quadratic forms
# of the candidate betas b, so it can be computed from the rotated coefficients c_r = s/(s² + α) ⊙ z_r of each
# run (b_r = c_r W_rᵀ) without forming b:
#
# * the leave-one-repeat-out error does not change when a constant is added to b (each repeat's prediction
#   moves with it), so the centring only enters the denominator; and for a stimulus g shown n_g times, with
#   sum S_g over its showings, the error is Σ_g [n_g²/(n_g−1)² Σ_{i∈g} b_i² − n_g/(n_g−1)² S_g²];
# * |b − mean|² = |b|² − (Σ_i b_i)²/N, and |b_r|² = |c_r|² (W_r is orthogonal).
#
# S, Σ b and the weighted Σ b² are products of c_r with small fixed matrices (W_rᵀ G_r, W_rᵀ 1, W_rᵀ diag(ω) W_r,
# G_r the run's trial-to-stimulus indicator): one GEMM of all runs' coefficients side by side (plus one per run
# when the weights ω differ within it) instead of the rotation into trial space and the ten passes over the
# (fraction, voxel, trial) rows that the direct loss makes. Same quantity up to float
# rounding (the differences of sums round differently); the choice of K reads medians of it, and the final
# betas never use it (tests/test_glm_speed.py compares it with ridge_cv_loss).

def _consistency_matrices(operators, repeats: RepeatStructure, dtype, device):
    """``(M, extra)``: ``c @ M`` gives ``[S (n_stimuli), Σ b]`` for the runs' coefficients side by side ``c``
    (n_trials); ``extra`` is the common weight ω when every trial has the same one, else a list of
    ``(columns, W_rᵀ diag(ω_r) W_r)`` per run (``c_r`` times it, dotted with ``c_r``, is ``Σ_{i∈r} ω_i b_i²``)."""
    n_trials = sum(ops.singular.numel() for ops in operators)
    weight = np.zeros(n_trials)                                 # ω_i = n_g² / (n_g − 1)², 0 if not repeated
    weight[repeats.trials] = (repeats.repeats_of_trial / (repeats.repeats_of_trial - 1.0)) ** 2
    member = np.zeros((n_trials, repeats.n_stimuli + 1))
    member[repeats.trials, repeats.stimulus_of_trial] = 1.0
    member[:, -1] = 1.0                                         # the last column sums all trials
    common = bool(np.all(weight == weight[0]))
    matrix, per_run, column = np.zeros_like(member), [], 0
    for ops in operators:
        width = ops.singular.numel()
        right = ops.right.double().cpu().numpy()                # W_r, (n_r, n_r), orthogonal
        rows = slice(column, column + width)
        matrix[rows] = right.T @ member[rows]
        if not common:
            per_run.append((rows, torch.as_tensor(right.T @ (weight[rows, None] * right), dtype=dtype,
                                                  device=device)))
        column += width
    return torch.as_tensor(matrix, dtype=dtype, device=device), float(weight[0]) if common else per_run


def search_loss(operators: list[RunOperators], data_runs: list[torch.Tensor], repeats: RepeatStructure,
                fractions=DEFAULT_FRACTIONS) -> torch.Tensor:
    """:func:`ridge_cv_loss` with the ``"consistency"`` criterion, in closed form (see above): per voxel, the
    smallest loss over the unregularised betas and the fractions below 1, shape (n_voxels,)."""
    projections = [ops.project(data) for ops, data in zip(operators, data_runs)]
    curve, grid = _fraction_curve(operators, projections)
    n_voxels = projections[0].shape[0]
    n_trials = sum(ops.singular.numel() for ops in operators)
    dtype, device = projections[0].dtype, projections[0].device
    matrix, extra = _consistency_matrices(operators, repeats, dtype, device)
    # κ_g = n_g / (n_g − 1)² per stimulus
    showings = np.bincount(repeats.stimulus_of_trial, minlength=repeats.n_stimuli).astype(float)
    kappa = torch.as_tensor(showings / np.maximum(showings - 1.0, 1.0) ** 2, dtype=dtype, device=device)
    tried = torch.tensor([f for f in fractions if f < 1.0], dtype=dtype, device=device)
    per_batch = max(1, FRACTION_BATCH_ROWS // max(n_voxels, 1))
    best = None
    # rows of α: 0 (the unregularised betas) first, then the fractions below 1, a batch at a time
    for start in range(-1, tried.numel(), per_batch):
        parts = [torch.zeros(1, n_voxels, dtype=dtype, device=device)] if start < 0 else []
        batch = tried[max(start, 0):start + per_batch]
        if batch.numel():
            parts.append(alphas_for_fraction(curve, grid, batch[:, None]))
        alpha = torch.cat(parts) if len(parts) > 1 else parts[0]
        coef = torch.empty(alpha.shape[0], n_voxels, n_trials, dtype=dtype, device=device)
        column = 0
        for ops, z in zip(operators, projections):      # c_r = s / (s² + α) ⊙ z_r, as _fraction_errors
            s = ops.singular
            view = coef[:, :, column:column + s.numel()]
            torch.add(s * s, alpha[:, :, None], out=view)
            view.clamp_(min=1e-30)
            torch.div(s, view, out=view)
            view.mul_(z[None])
            column += s.numel()
        coef = coef.reshape(-1, n_trials)
        product = coef @ matrix                          # [S, Σ b] per (α, voxel) row
        squares = torch.linalg.vector_norm(coef, dim=1).square_()        # |b|² = |c|²
        if isinstance(extra, float):
            weighted = extra * squares
        else:
            weighted = sum(((coef[:, rows] @ q) * coef[:, rows]).sum(1) for rows, q in extra)
        stim_sum = product[:, :-1]
        error = weighted - (stim_sum * stim_sum) @ kappa
        variance = squares - product[:, -1] * product[:, -1] / n_trials
        loss = (error / torch.clamp(variance, min=1e-30)).reshape(alpha.shape[0], n_voxels).min(0).values
        best = loss if best is None else torch.minimum(best, loss)
    return best
