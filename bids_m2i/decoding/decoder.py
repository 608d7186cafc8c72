"""A small estimator tying voxel selection, z-scoring and the betas -> features regression together.

    decoder = BrainDecoder(method="ridge").fit(betas[split.train], Y[split.train], labels=stim[split.train])
    pred = decoder.predict(betas_test)                       # (n, d) in feature units
    pred = rescale_to_training(pred, decoder.feature_mean, decoder.feature_sd)   # before generation

Ridge alphas are chosen by leave-one-*stimulus*-out cross-validation when training stimuli repeat (the
other repeats of a held-out image would otherwise leak into its own validation fit), else leave-one-out.
By default (``top_k="auto"``) the number of voxels is chosen by the same cross-validation: voxels ranked by
ncsnr, nested halves of the mask tried from the whole mask down (see :func:`choose_voxel_count`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import BadDataError, InputMissingError, UsageError
from ..utils.atomic import atomic_path, write_json
from .mlp import MLPConfig, MLPRegressor
from .ridge import DEFAULT_ALPHAS, fit_ridge_cv, ridge_predict
from .voxels import VoxelScaler, candidate_voxel_counts

LOG = logging.getLogger("m2i.decoding")

#: ``top_k`` value that chooses the number of voxels by cross-validation (the default)
AUTO = "auto"
#: how the ridge penalties are chosen: ``joint`` (default: held-out perception items decoded with the
#: squared-error penalties times one scale chosen by cross-validated two-way identification and PixCorr
#: together, every other item with the squared-error penalties), ``identification`` (every item decoded with
#: the scale of the 1-SE rule on two-way) or ``error`` (the squared-error penalties as they are)
PENALTY_RULES = ("joint", "identification", "error")
#: the auto search stops once this many successive halvings failed to lower the best CV error
AUTO_PATIENCE = 2


def rescale_to_training(predictions: np.ndarray, train_mean: np.ndarray, train_sd: np.ndarray, *,
                        centre: str = "items", per_dimension: bool = True) -> np.ndarray:
    """Map predictions to the training features' scale (Ozcelik & VanRullen 2023).

    Ridge shrinks predictions toward the mean; generators expect inputs at the scale of real features.
    Deviations from a centre are divided by their root mean square over the predicted items, then given the
    training sd and added to the training mean.

    centre : ``items`` (Brain-Diffuser) centres each dimension on the mean over the predicted items: right
        when the items' responses share an offset the training trials did not have (imagery: the task itself
        shifts every response). ``training`` centres on ``train_mean``: right for held-out trials of the
        training condition, whose expected offset is zero; estimating it from a few test items only adds
        noise (on the simulator's demo, 3 seeds, 20 items: 2-way +0.014 on average).
    per_dimension : True (Brain-Diffuser) gives every dimension the training sd. False multiplies all
        deviations by one factor, so that their total variance is the training features' total: it undoes the
        overall shrinkage and keeps the decoder's balance between dimensions. Per dimension, a dimension the
        decoder predicts poorly (a pixel it barely decodes, a fine-detail component, a rare word) is blown up to
        the training sd, noise mostly; one factor keeps it small. The participant level uses one factor for
        every group (:func:`rescale_items`; docs/decoding.md, "Rescaling").

    A dimension with no deviation from its centre is put at the training mean. One item is
    returned as predicted, except with one factor around the training mean: the squared distance of a single
    held-out item from that mean estimates the training features' total variance as the items' mean does, so a
    condition with one test stimulus is scaled by the rule of one with many. Centred on the items, or per
    dimension, one item has no spread of its own to divide by.
    """
    if centre not in ("items", "training"):
        raise ValueError(f"centre must be 'items' or 'training', not {centre!r}")
    pred = np.asarray(predictions, dtype=np.float32)
    if pred.shape[0] == 0 or (pred.shape[0] < 2 and (centre == "items" or per_dimension)):
        return pred.copy()
    mean = pred.mean(0) if centre == "items" else np.asarray(train_mean, dtype=np.float32)
    deviation = pred - mean
    if not per_dimension:
        spread = float(np.mean(deviation.astype(np.float64) ** 2, axis=0).sum())
        target = float(np.sum(np.asarray(train_sd, dtype=np.float64) ** 2))
        factor = np.sqrt(target / spread) if spread > 0 else 0.0
        return (deviation * np.float32(factor) + train_mean).astype(np.float32)
    rms = np.sqrt(np.mean(deviation * deviation, axis=0))
    z = np.where(rms > 0, deviation / np.where(rms > 0, rms, 1.0), 0.0)
    return (z * train_sd + train_mean).astype(np.float32)


def rescale_items(predictions: np.ndarray, train_mean: np.ndarray, train_sd: np.ndarray, *,
                  perception: bool) -> np.ndarray:
    """:func:`rescale_to_training` as the participant level applies it to one (condition, cue) group of items:
    scaled by one factor, held-out perception items around the training mean, imagery items around their own
    mean (the task shifts every imagery response alike).

    Imagery was scaled per dimension until issue 14's eleventh pass; one factor raised, over 16 unseen demo
    seeds, the text channel's cue retrieval (pure imagination top-1 0.906 -> 0.956, memory captions 0.822 ->
    0.878) and imagery PixCorr (+0.004 / +0.005), two-way level (docs/decoding.md, "Imagery scaled by one
    factor")."""
    return rescale_to_training(predictions, train_mean, train_sd, centre="training" if perception else "items",
                               per_dimension=False)


class VoxelCountSearch:
    """Result of :func:`choose_voxel_count`: the chosen scaler, its ridge fit, the CV error of every count."""

    def __init__(self, scaler: VoxelScaler, result, errors: dict[int, float]):
        self.scaler, self.result, self.errors = scaler, result, errors

    def summary(self) -> dict:
        return {"rule": "auto: ncsnr ranking, count chosen by grouped-CV ridge error (1 - R2, mean over targets)",
                "chosen": int(len(self.scaler.columns)),
                "cv_error": {str(k): round(float(v), 6) for k, v in self.errors.items()}}


def choose_voxel_count(betas: np.ndarray, features: np.ndarray, labels, alphas=DEFAULT_ALPHAS, *,
                       min_voxels: int | None = None, patience: int = AUTO_PATIENCE, device="auto",
                       n_threads: int | None = None, seed: int = 0, fit=None) -> VoxelCountSearch:
    """Choose how many of the most reliable voxels to decode from, by cross-validation on training trials.

    Why: a whole-brain mask holds mostly voxels that carry no stimulus information; ridge shrinks their
    weights but cannot zero them, so their noise enters every prediction. NSD decoders keep the voxels of
    highest ncsnr (Allen et al. 2022) or a visual ROI, with a count fixed by hand. Here the count is a
    hyperparameter chosen like the ridge penalty: voxels are ranked by ncsnr of the training trials, the
    nested sets ``all, all/2, all/4, ...`` (:func:`~bids_m2i.decoding.voxels.candidate_voxel_counts`) are
    each fitted with the per-target alphas of leave-one-stimulus-out CV, and the set with the lowest CV
    error wins. The error is ``1 - R2`` of the CV predictions averaged over targets (so that targets of
    large variance do not dominate). The search walks from the whole mask down and stops once ``patience``
    successive halvings failed to improve on the best (the error is near unimodal in the count).

    Parameters
    ----------
    betas : (n_train, v)  features : (n_train, d)  labels : (n_train,) stimulus identity, with repeats
    fit : optional callable ``fit(X, features, labels) -> (result, error)`` replacing the per-target ridge,
        for a decoder with another estimator (the shared decoder's map: one penalty for all targets); its
        ``error`` must be a cross-validated error comparable across voxel counts. ``result`` is kept for
        the chosen count.
    """
    labels = np.asarray(labels).astype(str)
    variance = np.maximum(features.var(0, dtype=np.float64), 1e-12)
    full = VoxelScaler.fit(betas, labels, None)
    counts = candidate_voxel_counts(len(full.columns), min_voxels)
    errors: dict[int, float] = {}
    best = None
    since_best = 0
    for count in counts:
        scaler = VoxelScaler.fit(betas, labels, count) if count < len(full.columns) else full
        if fit is not None:
            result, error = fit(scaler.transform(betas), features, labels)
        else:
            result = fit_ridge_cv(scaler.transform(betas), features, alphas, groups=labels, device=device,
                                  n_threads=n_threads, seed=seed, overwrite_X=True, search="bracket")
            # cv_mse: (n_alphas, d), inf for alphas the bracket search skipped
            error = float(np.mean(np.min(np.asarray(result.cv_mse, dtype=np.float64), axis=0) / variance))
        errors[len(scaler.columns)] = error
        LOG.info("voxel count %d: CV error (1 - R2) %.4f", len(scaler.columns), error)
        if best is None or error < best[0]:
            best, since_best = (error, scaler, result), 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    return VoxelCountSearch(best[1], best[2], errors)


class BrainDecoder:
    """Betas -> stimulus features.

    Parameters
    ----------
    method : ``ridge`` | ``mlp``
    alphas : sequence of float
        Ridge penalty grid (one alpha chosen per feature dimension).
    top_k : int, ``"auto"`` or None
        ``int``: keep the ``top_k`` voxels of highest ncsnr among training trials. ``"auto"`` (default): choose
        the count among nested halves of the mask (all, 1/2, 1/4, ... voxels ranked by ncsnr) by the grouped
        cross-validated ridge error (:func:`choose_voxel_count`); all voxels when no training stimulus repeats.
        None: all voxels.
    device, n_threads, seed
    mlp_config : MLPConfig, optional
    penalty : ``joint`` | ``identification`` | ``error``
        Ridge only. ``error``: per-target penalties of the squared-error CV. ``identification``: the same
        penalties times one common scale chosen by grouped-CV two-way identification of the training stimuli
        (1-SE rule; :mod:`bids_m2i.decoding.identification`), for every prediction; it lowered
        imagery-from-memory PixCorr on every demo seed (docs/decoding.md). ``joint`` (default): ``predict`` keeps
        the squared-error penalties, and ``predict(..., perception=True)`` (held-out perception items) uses a
        second set of coefficients with the penalties times one scale chosen by grouped CV for two-way and
        PixCorr together (maximin of the two, each relative to its best; ``identification.py``). The scale is
        measured on held-out perception repeats; imagery (another signal-to-noise, docs/decoding.md) is not
        decoded with it. Both need stimulus labels with repeats (else the squared-error fit is kept).
    """

    def __init__(self, method: str = "ridge", *, alphas=DEFAULT_ALPHAS, top_k: int | str | None = AUTO,
                 device="auto", n_threads: int | None = None, seed: int = 0, mlp_config: MLPConfig | None = None,
                 penalty: str = "joint"):
        if method not in ("ridge", "mlp"):
            raise UsageError(f"unknown decoder {method!r}", hint="use --decoder ridge or mlp")
        if penalty not in PENALTY_RULES:
            raise UsageError(f"unknown penalty rule {penalty!r}", hint=f"use one of {', '.join(PENALTY_RULES)}")
        self.penalty = penalty
        self.method = method
        self.alphas = tuple(float(a) for a in alphas)
        if top_k is not None and top_k != AUTO and (isinstance(top_k, str) or int(top_k) < 1):
            raise UsageError(f"top_k must be a positive voxel count, 'auto' or None, not {top_k!r}")
        self.top_k = top_k
        self.device = device
        self.n_threads = n_threads
        self.seed = int(seed)
        self.mlp_config = mlp_config or MLPConfig()
        self.scaler: VoxelScaler | None = None
        self.coef = self.intercept = self.alpha = None
        # penalty="joint": the coefficients (and penalties) for held-out perception items; None: use ``coef``
        self.perception_coef = self.perception_intercept = self.perception_alpha = None
        self.mlp: MLPRegressor | None = None
        self.feature_mean = self.feature_sd = None
        self.info: dict = {}

    # ------------------------------------------------------------------------------------------------------
    def fit(self, betas: np.ndarray, features: np.ndarray, labels=None) -> "BrainDecoder":
        """Fit on training trials only.

        Parameters
        ----------
        betas : ndarray (n_train, v)      in-mask betas of training trials
        features : ndarray (n_train, d)   target feature of each trial's stimulus
        labels : array (n_train,), optional   stimulus identity (repeats -> grouped CV, ncsnr)
        """
        betas = np.asarray(betas, dtype=np.float32)
        features = np.asarray(features, dtype=np.float32)
        if betas.shape[0] != features.shape[0]:
            raise BadDataError(f"{betas.shape[0]} training betas but {features.shape[0]} feature rows")
        self.feature_mean = features.mean(0)
        self.feature_sd = features.std(0)
        groups = None
        if labels is not None:
            labels = np.asarray(labels).astype(str)
            if len(np.unique(labels)) < len(labels):
                groups = labels
        search = None
        if self.top_k == AUTO and groups is not None:
            search = choose_voxel_count(betas, features, labels, self.alphas, device=self.device,
                                        n_threads=self.n_threads, seed=self.seed)
            self.scaler = search.scaler
        else:
            self.scaler = VoxelScaler.fit(betas, labels, None if self.top_k == AUTO else self.top_k)
        X = None if (search is not None and self.method == "ridge") else self.scaler.transform(betas)
        if self.method == "ridge":
            # bracket search: on large CPU problems only the alphas around each feature's optimum are
            # factorised (same choice as the full grid when CV curves are unimodal, as they are in practice)
            result = search.result if search is not None else fit_ridge_cv(
                X, features, self.alphas, groups=groups, device=self.device, n_threads=self.n_threads,
                seed=self.seed, overwrite_X=True, search="bracket")
            self.coef, self.intercept, self.alpha = result.coef, result.intercept, result.alpha
            self.info = {"solver": result.solver, "cv": result.cv, "search": result.info["search"],
                         "alpha_median": float(np.median(result.alpha)),
                         "alpha_counts": {f"{a:g}": int(np.sum(result.alpha == a)) for a in np.unique(result.alpha)}}
            if self.penalty in ("identification", "joint") and labels is not None:
                self._scale_penalties(betas, features, labels)
        else:
            self.mlp = MLPRegressor(self.mlp_config, seed=self.seed, device=self.device,
                                    n_threads=self.n_threads).fit(X, features)
            self.info = {"mlp": vars(self.mlp_config)}
        self.info.update({"n_train": int(len(betas)), "n_voxels": int(len(self.scaler.columns)),
                          "n_features": int(features.shape[1])})
        if search is not None:
            self.info["voxel_selection"] = search.summary()
        elif self.top_k == AUTO:  # the fallback is recorded, so that the sidecar says why every voxel was kept
            self.info["voxel_selection"] = {"rule": "auto: no training stimulus repeats, so ncsnr cannot rank the "
                                            "voxels and no grouped CV can choose a count: every voxel kept",
                                            "chosen": int(len(self.scaler.columns))}
            LOG.info("voxel count: no repeated training stimulus; keeping all %d voxels", len(self.scaler.columns))
        return self

    def _scale_penalties(self, betas, features, labels) -> None:
        """Rescale every penalty by the factor that identification prefers (see ``identification.py``)."""
        from .identification import choose_penalty_scale, refit_scaled

        X = self.scaler.transform(betas)  # afresh: the ridge fit may have centred its copy in place
        rule = "joint" if self.penalty == "joint" else "1se"
        search = choose_penalty_scale(X, features, self.alpha, labels, seed=self.seed, device=self.device,
                                      n_threads=self.n_threads, rule=rule)
        if search is None:
            self.info["penalty_scale"] = {"rule": "too few distinct training stimuli for identification: the "
                                          "squared-error penalties are kept", "chosen": 1.0}
            return
        self.info["penalty_scale"] = search.summary()
        if search.scale == 1.0:
            return
        alpha = (self.alpha * search.scale).astype(self.alpha.dtype)
        coef, intercept = refit_scaled(X, features, alpha, 1.0, device=self.device, n_threads=self.n_threads)
        if self.penalty == "joint":  # a second map for held-out perception items only
            self.perception_coef, self.perception_intercept, self.perception_alpha = coef, intercept, alpha
        else:
            self.alpha, self.coef, self.intercept = alpha, coef, intercept

    def _check_fitted(self):
        if self.scaler is None:
            raise UsageError("the decoder is not fitted yet")

    def predict(self, betas: np.ndarray, *, perception: bool = False) -> np.ndarray:
        """Betas (n, v) -> predicted features (n, d) (not rescaled; see :func:`rescale_to_training`).

        perception : True for held-out trials of the training condition (perception); with ``penalty="joint"``
            they are decoded with the penalties chosen for them (class docstring). Imagery: False."""
        self._check_fitted()
        X = self.scaler.transform(betas)
        if self.method == "ridge":
            if perception and self.perception_coef is not None:
                return ridge_predict(X, self.perception_coef, self.perception_intercept)
            return ridge_predict(X, self.coef, self.intercept)
        return self.mlp.predict(X).astype(np.float32)

    # ------------------------------------------------------------------------------------------------------
    def fine_tune(self, betas: np.ndarray, features: np.ndarray, folds: np.ndarray, *,
                  alphas=None, epochs: int = 20) -> np.ndarray:
        """Continue training on imagery trials (Mind-to-Image recipe) with their own cross-validation.

        Ridge: the fine-tuned weights solve ``min ||Y - X W||² + a ||W - W_perception||²`` (training that
        continues from the perception solution, pulled back toward it), i.e. a ridge on the residuals of
        the perception decoder; ``a`` (per feature) is chosen by the imagery folds. MLP: a copy of the
        network keeps training for ``epochs`` epochs.

        Returns the out-of-fold predictions for these trials (n, d): each trial predicted by a model
        that never saw its fold (its imagined item). The decoder itself is then updated with all trials.
        """
        self._check_fitted()
        folds = np.asarray(folds)
        betas = np.asarray(betas, np.float32)
        features = np.asarray(features, np.float32)
        X = self.scaler.transform(betas)
        out = np.zeros_like(features)
        if self.method == "ridge":
            base = ridge_predict(X, self.coef, self.intercept)
            residual = features - base
            grid = self.alphas if alphas is None else alphas
            for f in np.unique(folds):
                held = folds == f
                # nested: alphas chosen by the other folds only, so fold f is never seen, not even by
                # the penalty choice
                inner = folds[~held]
                part = fit_ridge_cv(X[~held], residual[~held], grid, groups=inner if len(np.unique(inner)) > 1
                                    else None, device=self.device, n_threads=self.n_threads)
                out[held] = base[held] + part.predict(X[held])
            result = fit_ridge_cv(X, residual, grid, groups=folds, device=self.device, n_threads=self.n_threads)
            coef, intercept = result.coef, result.intercept
            self.coef = self.coef + coef
            self.intercept = self.intercept + intercept
            self.info["fine_tune"] = {"n_trials": int(len(X)), "alpha_median": float(np.median(result.alpha)),
                                      "folds": int(len(np.unique(folds)))}
        else:
            for f in np.unique(folds):
                held = folds == f
                tuned = self.mlp.copy().continue_training(X[~held], features[~held], epochs=epochs)
                out[held] = tuned.predict(X[held])
            self.mlp.continue_training(X, features, epochs=epochs)
            self.info["fine_tune"] = {"n_trials": int(len(X)), "epochs": epochs,
                                      "folds": int(len(np.unique(folds)))}
        return out

    # ------------------------------------------------------------------------------------------------------
    def save(self, path, extra_arrays: dict | None = None) -> Path:
        """Write ``path`` (.safetensors: arrays, plus ``extra_arrays`` such as a pixel PCA basis) and ``path``
        with .json (settings, CV summary)."""
        from safetensors.numpy import save_file

        self._check_fitted()
        path = Path(path)
        arrays = dict(self.scaler.to_arrays())
        arrays.update(feature_mean=self.feature_mean, feature_sd=self.feature_sd)
        if self.method == "ridge":
            arrays.update(coef=self.coef, intercept=self.intercept, alpha=np.asarray(self.alpha, np.float64))
            if self.perception_coef is not None:
                arrays.update(perception_coef=self.perception_coef, perception_intercept=self.perception_intercept,
                              perception_alpha=np.asarray(self.perception_alpha, np.float64))
        else:
            arrays.update(self.mlp.state_arrays())
        arrays.update(extra_arrays or {})
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp))
        meta = {"method": self.method, "alphas": list(self.alphas), "top_k": self.top_k, "seed": self.seed,
                "mlp_config": vars(self.mlp_config), "penalty": self.penalty, "info": self.info}
        write_json(path.with_suffix(".json"), meta)
        return path

    @classmethod
    def load(cls, path, device="auto") -> "BrainDecoder":
        from safetensors.numpy import load_file

        path = Path(path)
        if not path.is_file() or not path.with_suffix(".json").is_file():
            raise InputMissingError(f"decoder model not found: {path} (+ .json)", path=path)
        meta = json.loads(path.with_suffix(".json").read_text())
        arrays = load_file(str(path))
        decoder = cls(meta["method"], alphas=meta["alphas"], top_k=meta["top_k"], seed=meta["seed"],
                      device=device, mlp_config=MLPConfig(**meta["mlp_config"]),
                      penalty=meta.get("penalty", "error"))  # models written before the rule: error
        decoder.scaler = VoxelScaler.from_arrays(arrays)
        decoder.feature_mean, decoder.feature_sd = arrays["feature_mean"], arrays["feature_sd"]
        decoder.info = meta["info"]
        if decoder.method == "ridge":
            decoder.coef, decoder.intercept, decoder.alpha = arrays["coef"], arrays["intercept"], arrays["alpha"]
            if "perception_coef" in arrays:
                decoder.perception_coef = arrays["perception_coef"]
                decoder.perception_intercept = arrays["perception_intercept"]
                decoder.perception_alpha = arrays["perception_alpha"]
        else:
            decoder.mlp = MLPRegressor(decoder.mlp_config, seed=decoder.seed, device=device).load_state_arrays(
                arrays, len(decoder.scaler.columns), len(decoder.feature_mean))
        return decoder
