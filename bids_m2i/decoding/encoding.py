"""Encoding model for the brain-correlation metric: image features -> betas, fitted on training perception.

NSD-Imagery (Kneeland et al. 2025) and MIRAGE score a reconstruction by how well the brain activity it
*would* evoke matches the measured activity: an encoding model predicts betas from the reconstruction's
features, and the prediction is correlated (over voxels) with the item's measured betas. Here the encoding
model is a ridge regression (one penalty per voxel, chosen by leave-one-stimulus-out CV) from standardised
image features to the decoder's z-scored voxels, fitted on the training perception stimuli (repeats averaged
per stimulus: the encoding target is the stimulus' response, not its trial noise).
"""

from __future__ import annotations

import numpy as np

from .ridge import DEFAULT_ALPHAS, fit_ridge_cv


class EncodingModel:
    """Features (n, d) -> betas (n, v). ``fit`` on training stimuli, ``predict`` for reconstructions."""

    def __init__(self, alphas=DEFAULT_ALPHAS, device="cpu", n_threads: int | None = None, seed: int = 0):
        self.alphas, self.device, self.n_threads, self.seed = tuple(alphas), device, n_threads, seed
        self.mean = self.sd = self.coef = self.intercept = None

    def fit(self, features: np.ndarray, betas: np.ndarray, labels=None) -> "EncodingModel":
        features = np.asarray(features, dtype=np.float32)
        betas = np.asarray(betas, dtype=np.float32)
        if labels is not None:  # one row per distinct stimulus: the mean over its repeats
            labels = np.asarray(labels).astype(str)
            names, inverse = np.unique(labels, return_inverse=True)
            counts = np.bincount(inverse, minlength=len(names))[:, None]
            summed_b = np.zeros((len(names), betas.shape[1]), np.float64)
            np.add.at(summed_b, inverse, betas)
            first = np.array([np.flatnonzero(inverse == k)[0] for k in range(len(names))])
            features, betas = features[first], (summed_b / counts).astype(np.float32)
        self.mean = features.mean(0)
        self.sd = features.std(0) + 1e-6
        X = (features - self.mean) / self.sd
        result = fit_ridge_cv(X, betas, self.alphas, device=self.device, n_threads=self.n_threads, seed=self.seed)
        self.coef, self.intercept = result.coef, result.intercept
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        X = (np.asarray(features, dtype=np.float32) - self.mean) / self.sd
        return (X @ np.asarray(self.coef) + np.asarray(self.intercept)).astype(np.float32)
