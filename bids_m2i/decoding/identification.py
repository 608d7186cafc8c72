"""How strongly the ridge decoder is penalised, chosen for *identification* as well as for error.

The per-target penalties of :func:`~bids_m2i.decoding.ridge.fit_ridge_cv` minimise each feature's own
cross-validated squared error. That is the right choice for the value of one pixel, but reconstructions are
also judged by *identification* (two-way: does a reconstruction correlate more with its own image than with
another one?). Identification rewards what distinguishes one image from the others, and a penalty chosen for
squared error shrinks those details more than identification would want: on the simulator's demo, lowering
every penalty by the same factor raised the grouped-CV two-way of the training stimuli on every seed while the
squared error rose (docs/decoding.md, "Penalty for identification").

So the decoder keeps the *shape* of the per-target penalties (their ratios, from the squared-error CV) and
chooses one common *scale* ``s`` (penalty of target j = ``s * alpha_j``, ``s <= 1``) by the cross-validated
two-way identification of the training stimuli, with the one-standard-error rule (Hastie, Tibshirani &
Friedman, *The Elements of Statistical Learning*, 2nd ed., §7.10): the *largest* scale (the most penalised
model, closest to the squared-error optimum ``s = 1``) whose two-way is within one standard error of the best
scale's. Two-way is estimated as the evaluation computes it: out-of-fold predictions (folds grouped by
stimulus, so repeats never leak), averaged over each stimulus' repeats, mapped back to the training features'
scale (:func:`~bids_m2i.decoding.decoder.rescale_to_training`, centred on the training mean as held-out
perception items are), Pearson correlation of feature patterns, each stimulus against the others of its fold.

Only training trials are used. Cost: one eigendecomposition of a fold's Gram matrix (trials x trials) per fold
and one for the refit, then matrix products for every scale.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ..utils.torch_runtime import resolve_device, torch_threads
from .ridge import make_cv_groups

LOG = logging.getLogger("m2i.decoding")

#: penalty scales tried: 1, 1/sqrt(2), 1/2, ... 1/16 (s = 1 is the squared-error choice)
SCALES = tuple(float(2.0 ** (-e / 2)) for e in range(0, 9))
#: folds of the grouped cross-validation
N_FOLDS = 5
#: fewer distinct training stimuli than this: no search (a two-way within folds of 2-3 items is noise)
MIN_STIMULI = 20


@dataclass
class PenaltyScaleSearch:
    """The chosen scale and the cross-validated two-way (mean, standard error) of every scale tried."""

    scale: float
    twoway: dict[float, float]
    stderr: dict[float, float]

    def summary(self) -> dict:
        return {"rule": "one common scale of the per-target penalties, the largest whose grouped-CV two-way "
                "identification is within one standard error of the best (1-SE rule)",
                "chosen": round(self.scale, 6),
                "cv_twoway": {f"{s:.4g}": round(v, 6) for s, v in self.twoway.items()},
                "cv_twoway_se": {f"{s:.4g}": round(v, 6) for s, v in self.stderr.items()}}


def pattern_twoway_per_item(predicted: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per item: the fraction of the other items' targets that correlate less with its prediction than its
    own target does (Pearson correlation over features; chance 0.5). Shape ``(n,)``."""
    p = predicted - predicted.mean(1, keepdims=True)
    t = targets - targets.mean(1, keepdims=True)
    p = p / (np.linalg.norm(p, axis=1, keepdims=True) + 1e-12)
    t = t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-12)
    corr = p @ t.T
    return (np.diag(corr)[:, None] > corr).sum(1) / max(len(corr) - 1, 1)


def _dual_path(Xtr: torch.Tensor, Ytr: torch.Tensor, Xte: torch.Tensor | None, alpha: torch.Tensor, scales):
    """Ridge in its dual form for every scale: yields (scale, coef or held-out predictions).

    ``Xtr``, ``Ytr`` centred; with ``Xte`` (centred with the training mean) the held-out predictions are
    yielded, else the coefficients (p, t).
    """
    gram = Xtr @ Xtr.T
    evals, evecs = torch.linalg.eigh(gram)
    evals = evals.clamp_min(0)
    uty = evecs.T @ Ytr  # (n, t)
    left = (Xte @ Xtr.T) @ evecs if Xte is not None else Xtr.T @ evecs  # (m, n) or (p, n)
    for s in scales:
        yield s, left @ (uty / (evals[:, None] + s * alpha[None, :]))


def choose_penalty_scale(X: np.ndarray, Y: np.ndarray, alpha: np.ndarray, labels, *, scales=SCALES,
                         n_folds: int = N_FOLDS, seed: int = 0, device="auto",
                         n_threads: int | None = None) -> PenaltyScaleSearch | None:
    """The scale of the per-target penalties ``alpha`` chosen by grouped-CV two-way identification (1-SE rule).

    X : (n, v) decoder inputs (z-scored voxels) of training trials; Y : (n, d) their features; alpha : (d,)
    per-target penalties; labels : (n,) stimulus of each trial (repeats held out together). Returns None
    when there are too few distinct stimuli to estimate identification.
    """
    labels = np.asarray(labels).astype(str)
    names, inverse = np.unique(labels, return_inverse=True)
    if len(names) < max(MIN_STIMULI, 2 * n_folds):
        return None
    folds, _ = make_cv_groups(len(labels), cv=n_folds, groups=labels, seed=seed)
    dev = resolve_device(device)
    scales = sorted(set(float(s) for s in scales), reverse=True)
    per_item = {s: [] for s in scales}
    feature_mean, feature_sd = Y.mean(0), Y.std(0)
    from .decoder import rescale_to_training

    with torch_threads(n_threads), torch.no_grad():
        Xt = torch.as_tensor(np.asarray(X), dtype=torch.float64, device=dev)
        Yt = torch.as_tensor(np.asarray(Y), dtype=torch.float64, device=dev)
        alpha_t = torch.as_tensor(np.asarray(alpha, dtype=np.float64), device=dev)
        for fold in np.unique(folds):
            held = folds == fold
            train = torch.as_tensor(~held, device=dev)
            test = torch.as_tensor(held, device=dev)
            x_mean, y_mean = Xt[train].mean(0), Yt[train].mean(0)
            # one item per held-out stimulus: its repeats averaged, as test items are
            items = np.unique(inverse[held])
            average = np.zeros((len(items), int(held.sum())))
            for i, item in enumerate(items):
                members = inverse[held] == item
                average[i, members] = 1.0 / members.sum()
            average_t = torch.as_tensor(average, device=dev)
            targets = (average_t @ Yt[test]).cpu().numpy()
            for s, pred in _dual_path(Xt[train] - x_mean, Yt[train] - y_mean, Xt[test] - x_mean, alpha_t, scales):
                item_pred = (average_t @ (pred + y_mean)).cpu().numpy()
                item_pred = rescale_to_training(item_pred, feature_mean, feature_sd, centre="training")
                per_item[s].append(pattern_twoway_per_item(item_pred, targets))
    twoway = {s: float(np.mean(np.concatenate(v))) for s, v in per_item.items()}
    stderr = {s: float(np.std(np.concatenate(v)) / np.sqrt(len(np.concatenate(v)))) for s, v in per_item.items()}
    best = max(scales, key=lambda s: twoway[s])
    threshold = twoway[best] - stderr[best]
    chosen = max(s for s in scales if twoway[s] >= threshold)
    LOG.info("penalty scale %.3g (two-way %.4f; best %.4f at %.3g, se %.4f)", chosen, twoway[chosen],
             twoway[best], best, stderr[best])
    return PenaltyScaleSearch(chosen, twoway, stderr)


def refit_scaled(X: np.ndarray, Y: np.ndarray, alpha: np.ndarray, scale: float, *, device="auto",
                 n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ridge coefficients (v, d) and intercept (d,) with penalties ``scale * alpha`` (dual form: one
    eigendecomposition of the trials x trials Gram matrix, any number of voxels)."""
    dev = resolve_device(device)
    with torch_threads(n_threads), torch.no_grad():
        Xt = torch.as_tensor(np.asarray(X), dtype=torch.float64, device=dev)
        Yt = torch.as_tensor(np.asarray(Y), dtype=torch.float64, device=dev)
        alpha_t = torch.as_tensor(np.asarray(alpha, dtype=np.float64), device=dev)
        x_mean, y_mean = Xt.mean(0), Yt.mean(0)
        (_, coef), = _dual_path(Xt - x_mean, Yt - y_mean, None, alpha_t, [scale])
        intercept = y_mean - x_mean @ coef
        return coef.float().cpu().numpy(), intercept.float().cpu().numpy()
