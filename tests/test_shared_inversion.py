"""Encoding-model inversion as a participant's map into the shared space (bids_m2i/decoding/shared_inversion.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bids_m2i.decoding.shared import ParticipantData, SharedModel, fit_new_participant, train_shared_model
from bids_m2i.decoding.shared_inversion import _Inverter, fit_encoding, inversion_map
from bids_m2i.errors import UsageError


def _correlated_world(seed=0, n=150, v=120, k=4, n_silent=200):
    """Voxels = latents @ tuning + a strong noise factor shared by every voxel + white noise; plus silent
    voxels that carry only the shared noise factor and white noise."""
    rng = np.random.default_rng(seed)
    tuning = rng.normal(size=(k, v))
    loading = rng.normal(size=v + n_silent) * 3.0

    def draw(m):
        z = rng.normal(size=(m, k))
        common = rng.normal(size=(m, 1)) @ loading[None, :]
        X = np.concatenate([z @ tuning, np.zeros((m, n_silent))], 1) + common + rng.normal(size=(m, v + n_silent)) * 2
        return z, X

    return draw


def test_encoding_ridge_silences_voxels_without_signal():
    draw = _correlated_world(1)
    z, X = draw(150)
    E, *_ , alpha = fit_encoding(z, X)
    responsive, silent = np.abs(E[:, :120]).mean(), np.abs(E[:, 120:]).mean()
    assert silent < 0.3 * responsive  # their own LOO error picks large penalties
    assert np.median(alpha[120:]) > np.median(alpha[:120])


def test_woodbury_weights_equal_the_direct_inverse():
    rng = np.random.default_rng(2)
    E, R = rng.normal(size=(3, 30)), rng.normal(size=(12, 30))
    inv = _Inverter(E, R, np.eye(3))
    for lam in (0.1, 0.5, 1.0):
        sigma = lam * np.diag((R ** 2).mean(0)) + (1 - lam) * R.T @ R / len(R)
        np.testing.assert_allclose(inv.weighted(lam), np.linalg.solve(sigma, E.T), rtol=1e-6, atol=1e-8)


def test_shrunk_noise_covariance_beats_the_diagonal_under_correlated_noise():
    """A noise factor shared by all voxels: the diagonal model adds it up coherently; the CV picks shrinkage
    below 1 and decodes held-out latents better."""
    draw = _correlated_world(3)
    z, X = draw(150)
    z_test, X_test = draw(400)
    errors = {}
    for name, shrink in (("cv", (0.05, 0.2, 0.5, 1.0)), ("diagonal", (1.0,))):
        coef, intercept, summary, oof = inversion_map(X, z, None, None, shrinkage=shrink)
        errors[name] = ((X_test @ coef + intercept - z_test) ** 2).mean()
        if name == "cv":
            assert summary["shrinkage"] < 1.0
            assert oof.shape == z.shape
    assert errors["cv"] < 0.7 * errors["diagonal"]
    assert errors["cv"] < 0.6 * z_test.var(0).sum() / z_test.shape[1]  # and it decodes: well below the prior


def _group(seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(5, 40))
    stimuli = [f"s{i}" for i in range(200)]
    latent = rng.normal(size=(200, 5))
    features = (latent @ mixing + rng.normal(size=(200, 40))).astype(np.float32)

    def participant(label, n_voxels, rows):
        tuning = rng.normal(size=(5, n_voxels))
        betas = latent[rows] @ tuning + 1.5 * rng.normal(size=(len(rows), n_voxels))
        return ParticipantData(label, betas.astype(np.float32), features[rows], np.array(stimuli)[rows])

    group = [participant(f"0{i}", 80 + 20 * i, np.arange(200)) for i in range(1, 4)]
    return group, participant("09", 90, np.arange(60)), features


def test_a_model_can_ask_for_inverted_maps_and_old_files_keep_ridge(tmp_path):
    group, new, _ = _group()
    model = train_shared_model(group, "pixels", n_components=5, n_threads=1, participant_map="inversion")
    assert model.latent_cov.shape == (5, 5)
    path = model.save(tmp_path / "desc-sharedpixels_model.safetensors")
    loaded = SharedModel.load(path)
    np.testing.assert_allclose(loaded.latent_cov, model.latent_cov)
    decoder = fit_new_participant(loaded, new.betas, new.features, new.stimuli, n_threads=1)
    assert decoder.info["participant_map"] == "inversion"
    assert decoder.info["inversion"]["prior"] == "group"
    fitted = decoder.predict(new.betas)
    assert np.corrcoef(fitted.ravel(), new.features.ravel())[0, 1] > 0.5

    # a file of before (no latent_cov, no participant_map): ridge maps, as it was trained for
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta["Settings"]["participant_map"]
    path.with_suffix(".json").write_text(json.dumps(meta))
    old = SharedModel.load(path)
    assert fit_new_participant(old, new.betas, new.features, new.stimuli).info["participant_map"] == "ridge"

    meta["Settings"]["participant_map"] = "deep-net"
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="participant map"):
        fit_new_participant(SharedModel.load(path), new.betas, new.features, new.stimuli)
    with pytest.raises(UsageError, match="participant map"):
        train_shared_model(group, "pixels", n_components=5, participant_map="deep-net")
