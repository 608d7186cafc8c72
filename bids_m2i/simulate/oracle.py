"""The oracle decoder: ridge regression from *true* single-trial amplitudes to stimulus pixels.

It shows how much image information the simulated brain carries before any estimation error (motion,
HRF mismatch, noise in the BOLD): an upper reference for decoders run on estimated betas. Also the
NSD noise-ceiling SNR (``ncsnr``) used to calibrate the simulator's noise, and a plain least-squares-all
(LSA) estimate with a canonical HRF used only to measure that calibration.

Protocol of :func:`oracle_scores`: train on every perception trial of training images (single trials),
predict the average amplitudes over repeats of each held-out test image (perception), of each imagery-from-
memory target and of each pure-imagination target; features are standardised with the training mean/sd,
the ridge penalty is chosen by 5-fold cross-validation grouped by image. Scores: PixCorr (Pearson
correlation of predicted and true pixels, averaged over items) and 2-way identification (fraction of
(item, other distinct item) pairs where the prediction correlates more with its own target; chance 0.5).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .truth import load_image, load_truth

ALPHAS = np.logspace(-1, 5, 13)


def ridge_fit(x: np.ndarray, y: np.ndarray, alphas=ALPHAS, groups: np.ndarray | None = None,
              n_folds: int = 5) -> tuple[np.ndarray, float]:
    """Ridge weights (n_features + 1, n_targets) with the alpha of best grouped-CV correlation.

    x : (n_samples, n_features) already standardised; y : (n_samples, n_targets). Last row = intercept.
    """
    groups = np.arange(len(x)) if groups is None else np.asarray(groups)
    unique = np.unique(groups)
    fold_of = {g: k % n_folds for k, g in enumerate(np.random.default_rng(0).permutation(unique))}
    folds = np.array([fold_of[g] for g in groups])
    scores = np.zeros(len(alphas))
    for fold in range(n_folds):
        train, test = folds != fold, folds == fold
        if not test.any() or not train.any():
            continue
        predictions = _ridge_path(x[train], y[train], x[test], alphas)
        for a, pred in enumerate(predictions):
            scores[a] += np.mean(pattern_correlations(pred, y[test]))
    best = float(alphas[int(np.argmax(scores))])
    return _ridge_solve(x, y, best), best


def _ridge_solve(x, y, alpha):
    x_mean, y_mean = x.mean(0), y.mean(0)
    u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
    weights = vt.T @ ((s / (s ** 2 + alpha))[:, None] * (u.T @ (y - y_mean)))
    intercept = y_mean - x_mean @ weights
    return np.vstack([weights, intercept])


def _ridge_path(x_train, y_train, x_test, alphas):
    x_mean, y_mean = x_train.mean(0), y_train.mean(0)
    u, s, vt = np.linalg.svd(x_train - x_mean, full_matrices=False)
    uty = u.T @ (y_train - y_mean)
    projected = (x_test - x_mean) @ vt.T
    return [projected @ ((s / (s ** 2 + a))[:, None] * uty) + y_mean for a in alphas]


def ridge_predict(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ weights[:-1] + weights[-1]


def pattern_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of two (n, d) arrays, shape ``(n,)``."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def twoway_identification(predicted: np.ndarray, targets: np.ndarray) -> float:
    """Mean over items of the fraction of other items whose target correlates less with the prediction."""
    n = len(predicted)
    if n < 2:
        return float("nan")
    p = predicted - predicted.mean(1, keepdims=True)
    t = targets - targets.mean(1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True) + 1e-12
    t /= np.linalg.norm(t, axis=1, keepdims=True) + 1e-12
    corr = p @ t.T  # (prediction i, target j)
    own = np.diag(corr)[:, None]
    wins = (own > corr).sum(1)  # the diagonal never counts (own > own is false)
    return float(np.mean(wins / (n - 1)))


def _average_by(betas: np.ndarray, labels: pd.Series) -> tuple[list[str], np.ndarray]:
    names = list(pd.unique(labels))
    return names, np.stack([betas[(labels == n).to_numpy()].mean(0) for n in names])


def oracle_predictions(dataset_dir, subject: str = "01", image_size: int = 32) -> dict:
    """The ridge oracle's predicted pixels of every scored item of one participant (the protocol above).

    Returns a dict: ``alpha``, ``n_train_trials``, ``image_size``, and per condition ``perception``,
    ``imagery_memory``, ``imagery_text`` (those present): {``names`` (distinct stimuli, first-seen order),
    ``predicted`` (n_items, n_pixels), ``targets`` (n_items, n_pixels)}.
    """
    truth = load_truth(dataset_dir, subject)
    design, betas = truth["design"], truth["betas"]
    trials = (design["role"] == "trial").to_numpy()
    perception = trials & (design["condition"] == "perception").to_numpy()
    train = perception & (design["split"] == "train").to_numpy()
    test = perception & (design["split"] == "test").to_numpy()
    pixels = {}

    def target_pixels(names):
        for name in names:
            if name not in pixels:
                pixels[name] = load_image(truth["target_files"][name], image_size).ravel()
        return np.stack([pixels[n] for n in names])

    x_mean, x_sd = betas[train].mean(0), betas[train].std(0) + 1e-9
    standard = (betas - x_mean) / x_sd
    train_names = design.loc[train, "stimulus"]
    weights, alpha = ridge_fit(standard[train], target_pixels(list(train_names)),
                               groups=train_names.to_numpy())
    result = {"alpha": alpha, "n_train_trials": int(train.sum()), "image_size": image_size}
    selections = {
        "perception": test,
        "imagery_memory": trials & (design["condition"] == "imagery").to_numpy() & (design["cue"] == "image").to_numpy(),
        "imagery_text": trials & (design["condition"] == "imagery").to_numpy() & (design["cue"] == "text").to_numpy(),
    }
    for label, selection in selections.items():
        if not selection.any():
            continue
        names, averaged = _average_by(standard[selection], design.loc[selection, "stimulus"])
        result[label] = {"names": names, "predicted": ridge_predict(weights, averaged),
                         "targets": target_pixels(names)}
    return result


def oracle_scores(dataset_dir, subject: str = "01", image_size: int = 32) -> dict:
    """Scores of the ridge oracle (true amplitudes -> pixels) on one participant.

    Returns a dict: ``alpha``, ``n_train_trials``, and per condition ``perception``, ``imagery_memory``,
    ``imagery_text``: {``pixcorr``, ``twoway``, ``n_items``} (``twoway`` chance = 0.5).
    """
    result = oracle_predictions(dataset_dir, subject, image_size)
    for label, items in result.items():
        if isinstance(items, dict):
            predicted, targets = items["predicted"], items["targets"]
            result[label] = {"pixcorr": float(np.mean(pattern_correlations(predicted, targets))),
                             "twoway": twoway_identification(predicted, targets), "n_items": len(predicted)}
    return result


def ncsnr(betas: np.ndarray, labels) -> np.ndarray:
    """NSD's noise-ceiling SNR per voxel (Allen et al. 2022), shape ``(n_vox,)``.

    betas : (n_trials, n_vox); labels : (n_trials,) stimulus of each trial. Noise variance = mean over
    stimuli with 2+ repeats of the within-stimulus variance (ddof 1); signal variance = total variance
    of those trials minus noise variance (floored at 0); ncsnr = signal sd / noise sd.
    """
    labels = np.asarray(labels)
    names, counts = np.unique(labels, return_counts=True)
    repeated = names[counts >= 2]
    keep = np.isin(labels, repeated)
    noise_var = np.mean([betas[labels == n].var(0, ddof=1) for n in repeated], axis=0)
    total_var = betas[keep].var(0, ddof=1)
    return np.sqrt(np.maximum(total_var - noise_var, 0)) / np.sqrt(noise_var + 1e-12)


def lsa_betas_canonical(bold: np.ndarray, events: pd.DataFrame, tr: float) -> np.ndarray:
    """Least-squares-all betas with nilearn's Glover HRF and cosine drifts, in % signal change.

    bold : (n_voxels, n_volumes) raw intensities; events : rows to model (onset, duration, one column each).
    Returns (n_events, n_voxels). For calibration only: the project's GLM lives in ``bids_m2i.glm``.
    """
    from nilearn.glm.first_level import make_first_level_design_matrix

    frame = pd.DataFrame({"onset": events["onset"].to_numpy(float), "duration": events["duration"].to_numpy(float),
                          "trial_type": [f"e{k:04d}" for k in range(len(events))]})
    times = np.arange(bold.shape[1]) * tr
    design = make_first_level_design_matrix(times, frame, hrf_model="glover", drift_model="cosine",
                                            high_pass=1 / 128.0)
    columns = [f"e{k:04d}" for k in range(len(events))]
    x = design[columns + [c for c in design.columns if c not in columns]].to_numpy()
    mean = bold.mean(1, keepdims=True)
    y = 100 * (bold / (mean + 1e-9) - 1)
    coef, *_ = np.linalg.lstsq(x, y.T, rcond=None)
    # scale to peak % signal change of a 3-s event (Glover regressor of 3 s has this peak)
    return coef[: len(events)]
