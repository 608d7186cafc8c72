"""A new participant's voxels ranked by how well the group's response to the same stimuli predicts them.

Which voxels of a new participant carry stimulus information is usually read from repeated stimuli (ncsnr,
:mod:`bids_m2i.decoding.voxels`). A participant with a short session often has no repeated *training*
stimulus (on the demo, 2 of 6 runs: its repeated images are the held-out test items), so every voxel of the
mask is kept, most of them noise. When its training stimuli are among the group's (participants who saw the
same images, like NSD's shared 1,000), the group supplies what the repeats would: its mean latent response to
each stimulus (the group participants' maps applied to their own betas, averaged), an estimate of the
stimulus-driven signal whose noise is independent of the new participant's. A voxel that this group response
predicts (leave-one-out R² of a ridge from the group latents to the voxel) responds to the stimuli. This is
response-based functional alignment in the sense of hyperalignment (Haxby et al. 2011), used here only to
choose voxels.

How many: the nested sets ``all, all/2, all/4, ...`` of the ranking compete on the grouped-CV error of the
participant's map (one penalty for all latent targets, as the map itself), with the ranking recomputed inside
every fold from the fold's training trials only (a ranking on the very trials the error is measured on would
favour small sets whose noise happens to follow the targets). All voxels stay a candidate, so the CV can keep
today's choice.
"""

from __future__ import annotations

import numpy as np

from .ridge import make_cv_groups
from .voxels import VoxelScaler, candidate_voxel_counts

#: at least this many of the participant's training trials must show a stimulus the group has a response for
MIN_SHARED_TRIALS = 20
#: penalty of the ranking's ridge (group latents -> one voxel), per trial: a strong one, the group latents
#: being noisy estimates
RANK_PENALTY_PER_TRIAL = 10.0


def group_stimulus_latents(maps: dict, participants) -> tuple[list[str], np.ndarray]:
    """The group's mean latent response to each training stimulus: per participant the mean of its map's
    latents over the stimulus' trials, then the mean over the participants that saw it. Returns the stimulus
    names (sorted) and an (m, k) array. Participants without stimulus labels contribute nothing."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for p in participants:
        if p.stimuli is None:
            continue
        latent = maps[p.label].latent(p.betas).astype(np.float64)
        unique, which = np.unique(np.asarray(p.stimuli).astype(str), return_inverse=True)
        means = np.zeros((len(unique), latent.shape[1]))
        np.add.at(means, which, latent)  # one pass over the trials (NSD: 30,000 trials, 10,000 stimuli)
        means /= np.bincount(which, minlength=len(unique))[:, None]
        for name, mean in zip(unique.tolist(), means):
            sums[name] = sums.get(name, 0.0) + mean
            counts[name] = counts.get(name, 0) + 1
    order = sorted(sums)
    if not order:
        return [], np.zeros((0, 0), np.float32)
    return order, np.stack([sums[n] / counts[n] for n in order]).astype(np.float32)


def voxel_scores(Z: np.ndarray, responses: np.ndarray) -> np.ndarray:
    """Leave-one-out R² of a ridge from the group responses (n, k) to every voxel of ``Z`` (n, v), in one
    pass (hat matrix): the voxels' ranking score."""
    R = np.asarray(responses, np.float64)
    R = R - R.mean(0)
    X = np.asarray(Z, np.float64)
    X = X - X.mean(0)
    hat = R @ np.linalg.solve(R.T @ R + RANK_PENALTY_PER_TRIAL * len(R) * np.eye(R.shape[1]), R.T)
    leverage = np.clip(1.0 - np.diag(hat), 1e-6, None)
    residual = (X - hat @ X) / leverage[:, None]
    return 1.0 - (residual ** 2).sum(0) / np.maximum((X ** 2).sum(0), 1e-30)


def _errors_by_alpha(X_train, Y_train, X_test, Y_test, alphas):
    """Summed squared test error of a ridge (dual form, one eigendecomposition) at every alpha."""
    x_mean, y_mean = X_train.mean(0), Y_train.mean(0)
    Xc = X_train - x_mean
    s, U = np.linalg.eigh(Xc @ Xc.T)
    s = np.clip(s, 0, None)
    Q = U.T @ (Y_train - y_mean)
    KU = (X_test - x_mean) @ Xc.T @ U
    return np.array([((y_mean + KU @ (Q / (s[:, None] + a)) - Y_test) ** 2).sum() for a in alphas])


def rank_by_group(betas: np.ndarray, targets: np.ndarray, stimuli, names: list[str], latents: np.ndarray,
                  alphas, folds: int = 5, seed: int = 0) -> tuple[VoxelScaler, dict] | None:
    """The voxels of a participant's map ranked by the group's response to its training stimuli, the count
    chosen by nested grouped CV (module docstring). None when fewer than :data:`MIN_SHARED_TRIALS` training
    trials show a stimulus the group has a response for (the caller then keeps its own rule)."""
    labels = np.asarray(stimuli).astype(str)
    index = {n: i for i, n in enumerate(names)}
    shared = np.array([n in index for n in labels])
    if shared.sum() < MIN_SHARED_TRIALS:
        return None
    responses = np.zeros((len(labels), latents.shape[1]))
    responses[shared] = latents[[index[n] for n in labels[shared]]]
    full = VoxelScaler.fit(betas, labels, None)
    Z = full.transform(betas).astype(np.float64)
    Y = np.asarray(targets, np.float64)
    counts = candidate_voxel_counts(Z.shape[1])
    fold_of, _ = make_cv_groups(len(Z), int(min(folds, len(np.unique(labels)))), labels, seed)
    errors = np.zeros((len(counts), len(alphas)))
    for fold in np.unique(fold_of):
        train, test = fold_of != fold, fold_of == fold
        rows = train & shared
        order = np.argsort(-voxel_scores(Z[rows], responses[rows]), kind="stable")
        for i, count in enumerate(counts):
            cols = order[:count]
            errors[i] += _errors_by_alpha(Z[train][:, cols], Y[train], Z[test][:, cols], Y[test], alphas)
    total = ((Y - Y.mean(0)) ** 2).sum()
    share = errors.min(1) / max(total, 1e-30)
    best = int(np.argmin(share))
    order = np.argsort(-voxel_scores(Z[shared], responses[shared]), kind="stable")
    keep = np.sort(order[:counts[best]])
    scaler = VoxelScaler(full.columns[keep], full.mean[keep], full.scale[keep])
    summary = {"rule": "shared stimuli: voxels ranked by the group's response to the participant's training "
                       "stimuli (leave-one-out R² of a ridge from the group latents), count by nested grouped CV "
                       "of the map",
               "shared_trials": int(shared.sum()), "n_train": int(len(labels)),
               "cv_error": {str(c): round(float(e), 5) for c, e in zip(counts, share)},
               "chosen": int(counts[best])}
    return scaler, summary
