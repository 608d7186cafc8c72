"""Voxel selection and z-scoring use training rows only."""

from __future__ import annotations

import numpy as np
import pytest

from bids_m2i.decoding.voxels import VoxelScaler, compute_ncsnr, mask_indices, select_top_k
from bids_m2i.errors import BadDataError


def test_scaler_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, size=(50, 6)).astype(np.float32)
    test = rng.normal(-10.0, 9.0, size=(20, 6)).astype(np.float32)
    scaler = VoxelScaler.fit(train)
    z_train = scaler.transform(train)
    np.testing.assert_allclose(z_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z_train.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(scaler.transform(test), (test - train.mean(0)) / train.std(0), rtol=1e-5)
    # changing test rows never changes the fitted statistics
    again = VoxelScaler.fit(train)
    np.testing.assert_array_equal(again.mean, scaler.mean)


def test_constant_voxels_dropped_and_nan_rejected():
    X = np.ones((10, 3), np.float32)
    X[:, 1] = np.arange(10)
    assert list(VoxelScaler.fit(X).columns) == [1]
    X[0, 1] = np.nan
    with pytest.raises(BadDataError):
        VoxelScaler.fit(X)


def test_ncsnr_known_answer():
    """signal sd 1, noise sd 2 -> ncsnr 0.5 (large sample)."""
    rng = np.random.default_rng(1)
    n_stim, reps = 400, 4
    signal = rng.standard_normal((n_stim, 3)) * np.array([1.0, 1.0, 0.0])
    labels = np.repeat(np.arange(n_stim), reps)
    betas = signal[labels] + rng.standard_normal((n_stim * reps, 3)) * np.array([2.0, 0.5, 1.0])
    snr = compute_ncsnr(betas, labels)
    np.testing.assert_allclose(snr[:2], [0.5, 2.0], rtol=0.12)
    assert snr[2] < 0.2  # pure noise: only sampling error remains


def test_top_k_from_training_rows_only():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(60), 2)
    signal = rng.standard_normal((60, 10))
    noise_sd = np.r_[np.full(3, 0.2), np.full(7, 3.0)]
    betas = signal[labels] + rng.standard_normal((120, 10)) * noise_sd
    scaler = VoxelScaler.fit(betas, labels, top_k=3)
    assert list(scaler.columns) == [0, 1, 2]
    assert list(select_top_k(np.array([1.0, 3.0, 3.0, 0.5]), 2)) == [1, 2]


def test_mask_indices_with_roi():
    brain = np.zeros((3, 3, 2), bool)
    brain[1:, :, 0] = True
    roi = np.zeros_like(brain)
    roi[2, 2, 0] = True
    roi[0, 0, 1] = True  # outside the brain: ignored
    np.testing.assert_array_equal(mask_indices(brain, roi), [np.ravel_multi_index((2, 2, 0), brain.shape)])
    with pytest.raises(BadDataError):
        mask_indices(brain, np.zeros((2, 2, 2), bool))
