"""The shared response model of the benchmark (benchmarks/bench_shared.py ``srm_decoder``; tried for issue 15 and
not kept, docs/decoding.md) on planted data: it must recover a shared response when there is one, so that its
failure on the simulator's GLM betas is a property of those data (low reliability), not of the code.

A planted world where participants see the *same* stimuli: each stimulus has a few latent properties; every
participant's voxels (a different number each, 2 repeats per stimulus) respond to them through their own random
tuning plus noise; features are a fixed linear function of the properties plus detail no brain encodes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bids_m2i.decoding.shared import ParticipantData

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_shared  # noqa: E402

N_LATENT, N_FEATURES, N_STIMULI = 5, 40, 120


def _world(noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(N_STIMULI + 20, N_LATENT))
    features = (latent @ rng.normal(size=(N_LATENT, N_FEATURES))
                + 0.5 * rng.normal(size=(len(latent), N_FEATURES))).astype(np.float32)
    names = np.array([f"img-{i:04d}" for i in range(len(latent))])

    def participant(n_voxels, rows):
        tuning = rng.normal(size=(N_LATENT, n_voxels))
        signal = latent[rows] @ tuning
        return (signal + noise * signal.std() * rng.normal(size=signal.shape)).astype(np.float32)

    train = np.repeat(np.arange(N_STIMULI), 2)  # every training stimulus twice
    group = [ParticipantData(f"{i + 1:02d}", participant(60 + 15 * i, train), features[train], names[train])
             for i in range(4)]
    new_rows = np.arange(N_STIMULI)  # the new participant: each training stimulus once ...
    test = np.arange(N_STIMULI, N_STIMULI + 20)  # ... and 20 stimuli nobody trained on
    new = participant(70, np.concatenate([new_rows, test]))
    return group, new[:N_STIMULI], new[N_STIMULI:], features, names, new_rows, test


def _twoway(pred, truth):
    return bench_shared.twoway(pred - truth.mean(0), truth - truth.mean(0))


def test_srm_recovers_a_shared_response_and_decodes_a_new_participant():
    group, new_train, new_test, features, names, rows, test = _world(noise=0.3)
    fit, isc = bench_shared.srm_decoder(group, n_voxels=50, n_reduced=10, k=N_LATENT)
    assert isc > 0.8  # the aligned responses agree between participants
    predict = fit(new_train, features[rows], names[rows])
    assert _twoway(predict(new_test), features[test]) > 0.9  # stimuli no participant trained on


def test_srm_alignment_degrades_with_noise():
    """Unreliable per-stimulus responses (as the simulator's GLM betas: ~0.2 split-half correlation per
    voxel) leave little shared response to align: the inter-subject correlation drops."""
    group, *_ = _world(noise=6.0)
    _, isc_noisy = bench_shared.srm_decoder(group, n_voxels=50, n_reduced=10, k=N_LATENT)
    group, *_ = _world(noise=0.3)
    _, isc_clean = bench_shared.srm_decoder(group, n_voxels=50, n_reduced=10, k=N_LATENT)
    assert isc_noisy < isc_clean - 0.3
