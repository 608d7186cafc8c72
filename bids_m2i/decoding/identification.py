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

Two rules pick the scale from that cross-validation (``rule``): ``1se`` above (``BrainDecoder(penalty=
"identification")``: every prediction uses it), and ``joint`` (the default decoder's, for held-out perception items
only): the scale that loses the least share of either two-way or pattern correlation (PixCorr) relative to their
best over the scales (maximin), since reconstructions are judged by both and PixCorr is best near ``s = 1``.

Only training trials are used. Cost: one Gram matrix of the training trials (trials x trials, float64; each
fold's centring is applied to it algebraically), one eigendecomposition per fold and one for the refit, then
matrix products for every scale. Memory: a few trials x trials and trials x features float64 arrays; the betas
are never copied to float64.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from ..utils.torch_runtime import resolve_device, torch_threads
from .ridge import make_cv_groups

LOG = logging.getLogger("m2i.decoding")

#: penalty scales tried: 1, 1/sqrt(2), 1/2, ... 1/16 (s = 1 is the squared-error choice)
SCALES = tuple(float(2.0 ** (-e / 2)) for e in range(0, 9))
#: folds of the grouped cross-validation
N_FOLDS = 5
#: at most this many training trials (whole stimuli, seeded) enter the scale's cross-validation: one scale is
#: estimated well from a few thousand trials, and the trials x trials Gram matrix of NSD's ~24,000 training
#: trials would cost 4.6 GB and an eigendecomposition per fold. The penalties are scaled by the share of trials
#: kept (a ridge penalty acts against ``Xᵀ X``, which grows with the number of trials)
MAX_CV_TRIALS = 4000
#: fewer distinct training stimuli than this: no search (a two-way within folds of 2-3 items is noise)
MIN_STIMULI = 20


#: how a scale is chosen from the cross-validation: ``1se`` (the largest scale whose two-way is within one
#: standard error of the best; every condition decoded with it) or ``joint`` (two-way and PixCorr each relative
#: to their best over the scales, the scale whose worse ratio is highest; see :func:`choose_penalty_scale`)
SCALE_RULES = ("1se", "joint")
RULE_TEXT = {
    "1se": "one common scale of the per-target penalties, the largest whose grouped-CV two-way identification is "
           "within one standard error of the best (1-SE rule)",
    "joint": "one common scale (at most 1) of the per-target penalties, the one whose worse ratio to the best "
             "scale's grouped-CV two-way identification or pattern correlation (PixCorr) is highest (joint "
             "maximin rule); held-out perception items only",
}


@dataclass
class PenaltyScaleSearch:
    """The chosen scale and the cross-validated two-way and pattern correlation (mean, standard error over the
    held-out items) of every scale tried."""

    scale: float
    twoway: dict[float, float]
    stderr: dict[float, float]
    n_trials: int = 0  # training trials in the cross-validation
    pixcorr: dict[float, float] = field(default_factory=dict)
    pixcorr_se: dict[float, float] = field(default_factory=dict)
    rule: str = "1se"

    def summary(self) -> dict:
        out = {"rule": RULE_TEXT[self.rule], "chosen": round(self.scale, 6), "cv_trials": int(self.n_trials),
               "cv_twoway": {f"{s:.4g}": round(v, 6) for s, v in self.twoway.items()},
               "cv_twoway_se": {f"{s:.4g}": round(v, 6) for s, v in self.stderr.items()}}
        if self.pixcorr:
            out["cv_pixcorr"] = {f"{s:.4g}": round(v, 6) for s, v in self.pixcorr.items()}
            out["cv_pixcorr_se"] = {f"{s:.4g}": round(v, 6) for s, v in self.pixcorr_se.items()}
        return out


def pattern_twoway_per_item(predicted: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per item: the fraction of the other items' targets that correlate less with its prediction than its
    own target does (Pearson correlation over features; chance 0.5). Shape ``(n,)``."""
    p = predicted - predicted.mean(1, keepdims=True)
    t = targets - targets.mean(1, keepdims=True)
    p = p / (np.linalg.norm(p, axis=1, keepdims=True) + 1e-12)
    t = t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-12)
    corr = p @ t.T
    return (np.diag(corr)[:, None] > corr).sum(1) / max(len(corr) - 1, 1)


def pattern_correlation_per_item(predicted: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per item: Pearson correlation of its prediction with its own target over features (PixCorr for pixels)."""
    p = predicted - predicted.mean(1, keepdims=True)
    t = targets - targets.mean(1, keepdims=True)
    return (p * t).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1) + 1e-12)


#: voxels per block when forming the Gram matrix in float64 (bounds the float64 temporaries to n x block)
GRAM_BLOCK = 2048


def _gram(X: torch.Tensor) -> torch.Tensor:
    """``X Xᵀ`` in float64 from a float32 ``X`` (n, v), one block of voxels at a time (no float64 copy of X)."""
    gram = torch.zeros((X.shape[0], X.shape[0]), dtype=torch.float64, device=X.device)
    for start in range(0, X.shape[1], GRAM_BLOCK):
        block = X[:, start:start + GRAM_BLOCK].double()
        gram += block @ block.T
    return gram


def _centred(gram_rows: torch.Tensor, train_mean_rows: torch.Tensor, row_means: torch.Tensor,
             grand_mean: torch.Tensor) -> torch.Tensor:
    """Gram entries of rows centred on the training mean: ``(x_a - m)·(x_t - m)`` from uncentred ``x_a·x_t``
    (``train_mean_rows`` = mean over training t of ``x_a·x_t``; ``row_means`` = the same for each training t)."""
    return gram_rows - train_mean_rows[:, None] - row_means[None, :] + grand_mean


def _solve_path(gram_train: torch.Tensor, Y_train: torch.Tensor, alpha: torch.Tensor, scales):
    """Dual ridge weights ``U diag(1 / (lambda + s alpha_j)) Uᵀ Y`` (n_train, d) for every scale ``s``.

    ``gram_train`` (n_train, n_train) and ``Y_train`` centred on the training rows. The coefficients are
    ``Xcᵀ`` times these weights, the predictions of rows ``a`` their centred Gram rows times them."""
    evals, evecs = torch.linalg.eigh(gram_train)
    evals = evals.clamp_min(0)
    uty = evecs.T @ Y_train
    for s in scales:
        yield s, evecs @ (uty / (evals[:, None] + s * alpha[None, :]))


def choose_penalty_scale(X: np.ndarray, Y: np.ndarray, alpha: np.ndarray, labels, *, scales=SCALES,
                         n_folds: int = N_FOLDS, seed: int = 0, device="auto", n_threads: int | None = None,
                         max_trials: int = MAX_CV_TRIALS, rule: str = "1se") -> PenaltyScaleSearch | None:
    """The scale of the per-target penalties ``alpha`` chosen by grouped-CV two-way identification.

    rule ``1se``: the largest scale whose two-way is within one standard error of the best. ``joint``: among the
    scales ``<= 1``, each cross-validated score is divided by its best over those scales (two-way ``T(s) / max T``,
    pattern correlation ``P(s) / max P``, PixCorr for pixels) and the scale whose *worse* ratio is highest wins
    (maximin; ties: the larger scale). Why: on the demo simulator the two-way of held-out perception items rose
    as the penalties fell while PixCorr was best near the squared-error penalties (docs/decoding.md), and
    reconstructions are judged by both; the maximin scale gives up the same least share of either, with no
    weight between them to set. Rules tried and not kept (figures in docs/decoding.md): best two-way with PixCorr
    within one standard error of its best (unpaired: too loose, PixCorr fell below goal; paired: too tight, no
    change), and the sum of the two ratios.

    X : (n, v) decoder inputs (z-scored voxels) of training trials; Y : (n, d) their features; alpha : (d,)
    per-target penalties; labels : (n,) stimulus of each trial (repeats held out together). Returns None
    when there are too few distinct stimuli to estimate identification. With more than ``max_trials`` trials,
    whole stimuli drawn at random (``seed``) up to that many trials enter the CV, with ``alpha`` times the
    share of trials kept.
    """
    if rule not in SCALE_RULES:
        raise ValueError(f"rule must be one of {SCALE_RULES}, not {rule!r}")
    labels = np.asarray(labels).astype(str)
    names, inverse = np.unique(labels, return_inverse=True)
    if len(names) < max(MIN_STIMULI, 2 * n_folds):
        return None
    n_all = len(labels)
    if n_all > max_trials:
        counts = np.bincount(inverse)
        order = np.random.default_rng(seed).permutation(len(names))
        kept = order[: max(int(np.searchsorted(np.cumsum(counts[order]), max_trials, side="right")), 2 * n_folds)]
        rows = np.flatnonzero(np.isin(inverse, kept))
        X, Y, labels = np.asarray(X)[rows], np.asarray(Y)[rows], labels[rows]
        alpha = np.asarray(alpha, dtype=np.float64) * (len(rows) / n_all)
        names, inverse = np.unique(labels, return_inverse=True)
    folds, _ = make_cv_groups(len(labels), cv=n_folds, groups=labels, seed=seed)
    dev = resolve_device(device)
    scales = sorted(set(float(s) for s in scales), reverse=True)
    per_item = {s: [] for s in scales}
    per_item_corr = {s: [] for s in scales}
    feature_mean, feature_sd = Y.mean(0), Y.std(0)
    from .decoder import rescale_items

    with torch_threads(n_threads), torch.no_grad():
        # one Gram matrix serves every fold: each fold's centring is applied to it algebraically
        gram = _gram(torch.as_tensor(np.asarray(X, dtype=np.float32), device=dev))
        Yt = torch.as_tensor(np.asarray(Y), dtype=torch.float64, device=dev)
        alpha_t = torch.as_tensor(np.asarray(alpha, dtype=np.float64), device=dev)
        for fold in np.unique(folds):
            held = folds == fold
            train = torch.as_tensor(np.flatnonzero(~held), device=dev)
            test = torch.as_tensor(np.flatnonzero(held), device=dev)
            k_tt, k_et = gram[train][:, train], gram[test][:, train]
            row_means, grand = k_tt.mean(1), k_tt.mean()
            gram_train = _centred(k_tt, row_means, row_means, grand)
            gram_test = _centred(k_et, k_et.mean(1), row_means, grand)
            y_mean = Yt[train].mean(0)
            # one item per held-out stimulus: its repeats averaged, as test items are
            items = np.unique(inverse[held])
            average = np.zeros((len(items), int(held.sum())))
            for i, item in enumerate(items):
                members = inverse[held] == item
                average[i, members] = 1.0 / members.sum()
            average_t = torch.as_tensor(average, device=dev)
            targets = (average_t @ Yt[test]).cpu().numpy()
            for s, weights in _solve_path(gram_train, Yt[train] - y_mean, alpha_t, scales):
                item_pred = (average_t @ (gram_test @ weights + y_mean)).cpu().numpy()
                item_pred = rescale_items(item_pred, feature_mean, feature_sd, perception=True)
                per_item[s].append(pattern_twoway_per_item(item_pred, targets))
                per_item_corr[s].append(pattern_correlation_per_item(item_pred, targets))

    def mean_se(values):
        values = np.concatenate(values)
        return float(np.mean(values)), float(np.std(values) / np.sqrt(len(values)))

    twoway, stderr = ({s: mean_se(v)[k] for s, v in per_item.items()} for k in (0, 1))
    pixcorr, pixcorr_se = ({s: mean_se(v)[k] for s, v in per_item_corr.items()} for k in (0, 1))
    if rule == "joint":
        candidates = [s for s in scales if s <= 1.0] or scales
        best_twoway = max(twoway[s] for s in candidates)
        best_pixcorr = max(pixcorr[s] for s in candidates)

        def worse_ratio(s):
            return min(twoway[s] / best_twoway if best_twoway > 0 else 1.0,
                       pixcorr[s] / best_pixcorr if best_pixcorr > 0 else 1.0)

        chosen = max(candidates, key=lambda s: (worse_ratio(s), s))
        LOG.info("penalty scale %.3g for perception items (CV two-way %.4f of best %.4f, PixCorr %.4f of best %.4f)",
                 chosen, twoway[chosen], best_twoway, pixcorr[chosen], best_pixcorr)
    else:
        best = max(scales, key=lambda s: twoway[s])
        threshold = twoway[best] - stderr[best]
        chosen = max(s for s in scales if twoway[s] >= threshold)
        LOG.info("penalty scale %.3g (two-way %.4f; best %.4f at %.3g, se %.4f)", chosen, twoway[chosen],
                 twoway[best], best, stderr[best])
    return PenaltyScaleSearch(chosen, twoway, stderr, n_trials=len(labels), pixcorr=pixcorr,
                              pixcorr_se=pixcorr_se, rule=rule)


def refit_scaled(X: np.ndarray, Y: np.ndarray, alpha: np.ndarray, scale: float, *, device="auto",
                 n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ridge coefficients (v, d) and intercept (d,) with penalties ``scale * alpha``: one eigendecomposition of
    the smaller of the trials x trials (dual) and voxels x voxels (primal) Gram matrices, built in float64 one
    block at a time from float32 betas (no float64 copy of X)."""
    dev = resolve_device(device)
    with torch_threads(n_threads), torch.no_grad():
        Xt = torch.as_tensor(np.asarray(X, dtype=np.float32), device=dev)
        Yt = torch.as_tensor(np.asarray(Y), dtype=torch.float64, device=dev)
        alpha_t = torch.as_tensor(np.asarray(alpha, dtype=np.float64), device=dev) * scale
        n, v = Xt.shape
        y_mean = Yt.mean(0)
        x_mean = torch.cat([Xt[:, i:i + GRAM_BLOCK].double().mean(0) for i in range(0, v, GRAM_BLOCK)])
        if n <= v:  # dual: Xcᵀ W with W = U diag(1 / (lambda + a)) Uᵀ Yc, and Xcᵀ W = Xᵀ W - x_mean (1ᵀ W)
            gram = _gram(Xt)
            row_means = gram.mean(1)
            (_, weights), = _solve_path(_centred(gram, row_means, row_means, gram.mean()), Yt - y_mean, alpha_t,
                                        [1.0])
            coef = torch.cat([Xt[:, i:i + GRAM_BLOCK].double().T @ weights for i in range(0, v, GRAM_BLOCK)])
            coef -= x_mean[:, None] * weights.sum(0)[None, :]
        else:  # primal: (Xcᵀ Xc + a I)⁻¹ Xcᵀ Yc, Xcᵀ Xc = Xᵀ X - n x_mean x_meanᵀ, accumulated over row blocks
            cov = torch.zeros((v, v), dtype=torch.float64, device=dev)
            rhs = torch.zeros((v, Yt.shape[1]), dtype=torch.float64, device=dev)
            for i in range(0, n, GRAM_BLOCK):
                block = Xt[i:i + GRAM_BLOCK].double()
                cov += block.T @ block
                rhs += block.T @ Yt[i:i + GRAM_BLOCK]
            cov -= n * torch.outer(x_mean, x_mean)
            rhs -= n * torch.outer(x_mean, y_mean)
            evals, evecs = torch.linalg.eigh(cov)
            coef = evecs @ ((evecs.T @ rhs) / (evals.clamp_min(0)[:, None] + alpha_t[None, :]))
        intercept = y_mean - x_mean @ coef
        return coef.float().cpu().numpy(), intercept.float().cpu().numpy()
