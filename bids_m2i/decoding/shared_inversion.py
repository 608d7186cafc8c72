"""A participant's map into the shared space by inverting an encoding model instead of fitting a decoder.

With few trials (2 runs: 133) a decoding ridge from thousands of voxels to ``k`` latents must learn the whole
voxel -> latent map from those trials. The encoding direction is better posed per voxel: each voxel's response
is a linear function of the ``k`` latents of the stimulus (``k`` weights, a ridge per voxel whose penalty is
chosen by its own leave-one-out error, so voxels without stimulus information get weights near zero). A trial
is then decoded by the posterior mean of the latents given its voxels (Naselaris et al. 2011, "Encoding and
decoding in fMRI"; Kay et al. 2008; the linear-Gaussian case as in Schoenmakers et al. 2013):

    y = mu_y + (z - mu_z) E + e,   e ~ N(0, Sigma),   z ~ N(mu_z, C)
    E[z | y] = mu_z + (y - mu_y) Sigma⁻¹ Eᵀ (E Sigma⁻¹ Eᵀ + C⁻¹)⁻¹

The result is linear in ``y``: a (v x k) matrix and an intercept, i.e. an ordinary map of the shared model
(``ParticipantMap``), so files, imagery fine-tuning and prediction are unchanged.

* ``C``: the prior covariance of the latents, from the group (every group participant's training stimuli
  projected on the basis; stored in the model), or from the participant's own training stimuli for model
  files written before.
* ``Sigma``: the residual covariance, estimated from the *leave-one-out* residuals of the encoding ridges
  (in-sample residuals of a 64-regressor fit on 133 trials understate the noise), shrunk toward its diagonal:
  ``Sigma = lam diag(S) + (1 - lam) S``. A diagonal ``Sigma`` (``lam = 1``) ignores the noise correlations
  between voxels, which add up coherently over thousands of voxels (measured: far below the ridge map); the
  full sample covariance has rank <= n. ``lam`` and a scale on the prior precision are chosen by k-fold CV
  grouped by stimulus on the latent error (the map's own criterion); everything with ``Sigma`` goes through
  the Woodbury identity (n x n solves, never v x v).
"""

from __future__ import annotations

import numpy as np

from .ridge import make_cv_groups

#: per-voxel penalties of the encoding ridges (latent targets of sd ~1-10, 100-1,000 trials)
ENCODING_ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(0.0, 6.01, 0.5))
#: shrinkage of the residual covariance toward its diagonal (1 = diagonal)
SHRINKAGE = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0)
#: scale on the prior precision C⁻¹ (1 = the Bayes posterior mean)
PRIOR_SCALES = (0.25, 1.0, 4.0, 16.0)


def fit_encoding(T: np.ndarray, X: np.ndarray, alphas=ENCODING_ALPHAS):
    """Ridge of every voxel of ``X`` (n, v) on the latents ``T`` (n, k), each voxel with the penalty of least
    leave-one-out error. Returns (E (k, v), x_mean, t_mean, loo residuals (n, v), per-voxel alpha)."""
    T = np.asarray(T, np.float64)
    X = np.asarray(X, np.float64)
    t_mean, x_mean = T.mean(0), X.mean(0)
    Tc, Xc = T - t_mean, X - x_mean
    U, s, Vt = np.linalg.svd(Tc, full_matrices=False)
    UtX = U.T @ Xc
    n = len(T)
    best_err = np.full(X.shape[1], np.inf)
    best_alpha = np.zeros(X.shape[1])
    residual = np.zeros_like(Xc)
    for a in alphas:
        shrink = s ** 2 / (s ** 2 + a)
        leverage = np.clip((U ** 2) @ shrink + 1.0 / n, None, 1 - 1e-6)  # + the mean's leverage
        loo = (Xc - U @ (shrink[:, None] * UtX)) / (1.0 - leverage)[:, None]
        err = (loo ** 2).sum(0)
        better = err < best_err
        best_err[better], best_alpha[better] = err[better], a
        residual[:, better] = loo[:, better]
    E = Vt.T @ ((s[:, None] / (s[:, None] ** 2 + best_alpha[None, :])) * UtX)
    return E, x_mean, t_mean, residual, best_alpha


class _Inverter:
    """Posterior-mean maps for one encoding fit at any (shrinkage, prior scale), sharing the Woodbury parts."""

    def __init__(self, E, residual, prior_precision):
        self.E, self.R, self.P0 = E, residual, prior_precision
        self.n = len(residual)
        self.diag = np.maximum((residual ** 2).mean(0), 1e-12)
        self._by_lam = {}

    def weighted(self, lam):
        """Sigma⁻¹ Eᵀ (v, k) for shrinkage ``lam`` (Woodbury on diag + low rank)."""
        if lam not in self._by_lam:
            D = lam * self.diag
            A = self.E.T / D[:, None]
            if lam < 1.0:
                RD = self.R / D[None, :]
                inner = (self.n / (1.0 - lam)) * np.eye(self.n) + RD @ self.R.T
                A = A - RD.T @ np.linalg.solve(inner, RD @ self.E.T)
            self._by_lam[lam] = A
        return self._by_lam[lam]

    def coef(self, lam, scale):
        A = self.weighted(lam)
        precision = self.E @ A + scale * self.P0
        return np.linalg.solve(precision, A.T).T  # (v, k)


def _row_corr(a, b):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def inversion_map(X: np.ndarray, T: np.ndarray, prior_cov: np.ndarray | None = None, groups=None, *,
                  folds: int = 5, seed: int = 0, shrinkage=SHRINKAGE, prior_scales=PRIOR_SCALES,
                  alphas=ENCODING_ALPHAS, criterion: str = "error"):
    """The posterior-mean map from z-scored voxels ``X`` (n, v) to latents ``T`` (n, k) (module docstring).

    ``prior_cov``: (k, k) covariance of the latents (the group's); None: ``T``'s own. Shrinkage and prior
    scale by k-fold CV grouped by ``groups`` (stimulus). Returns (coef (v, k), intercept (k,), summary,
    out-of-fold predictions (n, k) at the chosen setting)."""
    X = np.asarray(X, np.float64)
    T = np.asarray(T, np.float64)
    n, k = T.shape
    cov = np.cov(T, rowvar=False) if prior_cov is None else np.asarray(prior_cov, np.float64)
    cov = cov + 1e-6 * np.trace(cov) / k * np.eye(k)
    precision = np.linalg.inv(cov)
    labels = None if groups is None else np.asarray(groups).astype(str)
    n_folds = int(min(folds, n if labels is None else len(np.unique(labels))))
    fold_of, _ = make_cv_groups(n, n_folds, labels, seed)
    grid = [(lam, sc) for lam in shrinkage for sc in prior_scales]
    errors = np.zeros(len(grid))
    oof = np.zeros((len(grid), n, k))
    for fold in np.unique(fold_of):
        tr, te = fold_of != fold, fold_of == fold
        E, x_mean, t_mean, R, _ = fit_encoding(T[tr], X[tr], alphas)
        inv = _Inverter(E, R, precision)
        Xte = X[te] - x_mean
        for i, (lam, sc) in enumerate(grid):
            pred = t_mean + Xte @ inv.coef(lam, sc)
            oof[i, te] = pred
            if criterion == "error":
                errors[i] += ((pred - T[te]) ** 2).sum()
            else:  # pattern mismatch: 1 - correlation of each trial's latent vector (about the training mean)
                errors[i] += (1.0 - _row_corr(pred - t_mean, T[te] - t_mean)).sum()
    best = int(np.argmin(errors))
    lam, sc = grid[best]
    E, x_mean, t_mean, R, enc_alpha = fit_encoding(T, X, alphas)
    coef = _Inverter(E, R, precision).coef(lam, sc)
    intercept = t_mean - x_mean @ coef
    total = ((T - T.mean(0)) ** 2).sum() if criterion == "error" else n
    summary = {"shrinkage": lam, "prior_scale": sc, "criterion": criterion,
               "cv_error": round(float(errors[best] / max(total, 1e-30)), 5),
               "encoding_alpha_median": float(np.median(enc_alpha)),
               "prior": "group" if prior_cov is not None else "own training stimuli"}
    return coef.astype(np.float32), intercept.astype(np.float32), summary, oof[best]
