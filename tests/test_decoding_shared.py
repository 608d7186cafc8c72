"""The shared-subject decoding engine (bids_m2i/decoding/shared.py) on planted data.

A planted world: every stimulus has a few latent properties; its features are a fixed linear function of them
plus feature detail that no brain encodes; each participant's voxels (a different number per participant)
respond to the latent properties through their own random tuning, plus noise, plus voxels that respond to
nothing. Participants see *different* stimuli, so nothing here relies on shared stimuli.
"""

from __future__ import annotations

import numpy as np
import pytest

from bids_m2i.decoding.decoder import BrainDecoder
from bids_m2i.decoding.ridge import make_cv_groups, ridge_predict
from bids_m2i.decoding.shared import (ParticipantData, SharedModel, ensemble_patterns, fit_new_participant,
                                      kfold_ridge, ridge_fixed, train_shared_model)
from bids_m2i.errors import UsageError

N_LATENT, N_FEATURES = 6, 60


class World:
    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.mixing = self.rng.normal(size=(N_LATENT, N_FEATURES))

    def stimuli(self, n):
        latent = self.rng.normal(size=(n, N_LATENT))
        detail = 2.0 * self.rng.normal(size=(n, N_FEATURES))  # not encoded by any brain
        return latent, (latent @ self.mixing + detail).astype(np.float32)

    def participant(self, n_voxels, n_silent=100):
        return {"tuning": self.rng.normal(size=(N_LATENT, n_voxels)), "n_silent": n_silent}

    def betas(self, brain, latent, noise=1.5):
        signal = latent @ brain["tuning"]
        responsive = signal + noise * signal.std() * self.rng.normal(size=signal.shape)
        silent = signal.std() * self.rng.normal(size=(len(latent), brain["n_silent"]))
        return np.concatenate([responsive, silent], axis=1).astype(np.float32)


def _corr_per_item(pred, truth):
    p = pred - pred.mean(1, keepdims=True)
    t = truth - truth.mean(1, keepdims=True)
    return float(np.mean((p * t).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1))))


@pytest.fixture(scope="module")
def planted():
    world = World(0)
    group = []
    for i, n_voxels in enumerate([150, 260, 210, 330]):  # differing voxel counts, no template
        brain = world.participant(n_voxels, n_silent=80 + 20 * i)
        latent, features = world.stimuli(300)  # each participant its own stimuli
        stimuli = np.array([f"p{i}-s{k}" for k in range(300)])
        group.append(ParticipantData(f"{i + 1:02d}", world.betas(brain, latent), features, stimuli))
    new_brain = world.participant(240, n_silent=120)
    train_latent, train_features = world.stimuli(20)  # few trials
    test_latent, test_features = world.stimuli(200)
    new = {"train_betas": world.betas(new_brain, train_latent), "train_features": train_features,
           "test_betas": world.betas(new_brain, test_latent), "test_features": test_features}
    model = train_shared_model(group, "pixels", n_components=12, feature_info={"pixel_size": 32}, n_threads=1)
    return {"group": group, "new": new, "model": model}


def test_shared_model_beats_own_data_ridge_with_few_trials(planted):
    new = planted["new"]
    shared = fit_new_participant(planted["model"], new["train_betas"], new["train_features"], n_threads=1)
    own = BrainDecoder("ridge", device="cpu", n_threads=1).fit(new["train_betas"], new["train_features"])
    score_shared = _corr_per_item(shared.predict(new["test_betas"], perception=True), new["test_features"])
    score_own = _corr_per_item(own.predict(new["test_betas"]), new["test_features"])
    assert score_shared > score_own + 0.05, (score_shared, score_own)
    # the map of a participant the model never saw has its own voxel count
    assert shared.map.coef.shape == (new["train_betas"].shape[1], planted["model"].n_components)
    assert "new" not in planted["model"].maps and shared.info["shared_participants"] == ["01", "02", "03", "04"]


def test_shared_space_recovers_the_planted_feature_subspace(planted):
    """The leading shared directions span the features that brains encode (the row space of the mixing)."""
    model = planted["model"]
    mixing = World(0).mixing / model.feature_scale  # same seed: the planted mixing, in standardised units
    q, _ = np.linalg.qr(mixing.T)  # (d, N_LATENT) orthonormal basis of the encoded subspace
    leading = model.basis[:N_LATENT].astype(np.float64)  # (N_LATENT, d)
    captured = np.linalg.norm(leading @ q, axis=1) ** 2  # share of each direction inside the subspace
    assert captured.min() > 0.9, captured


def test_group_participants_are_decoded_and_fine_tuned_head_runs(planted):
    model, group, new = planted["model"], planted["group"], planted["new"]
    own_fit = model.predict("02", group[1].betas)
    assert own_fit.shape == group[1].features.shape
    assert _corr_per_item(own_fit, group[1].features) > 0.5
    tuned = fit_new_participant(model, new["train_betas"], new["train_features"], fine_tune_head=True, n_threads=1)
    assert not np.allclose(tuned.head_coef, model.head_coef)
    assert _corr_per_item(tuned.predict(new["test_betas"]), new["test_features"]) > 0.3


def test_save_load_round_trip(planted, tmp_path):
    model = planted["model"]
    path = model.save(tmp_path / "desc-sharedpixels_model.safetensors")
    loaded = SharedModel.load(path)
    assert loaded.feature_space == "pixels" and loaded.feature_dim == N_FEATURES
    assert sorted(loaded.maps) == ["01", "02", "03", "04"]
    np.testing.assert_allclose(loaded.predict("03", planted["group"][2].betas),
                               model.predict("03", planted["group"][2].betas), rtol=1e-5, atol=1e-5)
    import json

    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["FeatureDim"] == N_FEATURES and meta["FeatureInfo"] == {"pixel_size": 32}
    assert [p["n_voxels"] for p in meta["Participants"]] == [230, 360, 330, 470]
    decoder = fit_new_participant(loaded, planted["new"]["train_betas"], planted["new"]["train_features"])
    decoder.save(tmp_path / "sub-new_desc-pixelsshared_model.safetensors")
    assert (tmp_path / "sub-new_desc-pixelsshared_model.json").exists()


def test_mismatched_features_are_usage_errors(planted):
    model = planted["model"]
    with pytest.raises(UsageError) as info:
        fit_new_participant(model, planted["new"]["train_betas"], planted["new"]["train_features"][:, :30])
    assert info.value.exit_code == 64 and "60 feature dimensions" in str(info.value)
    with pytest.raises(UsageError, match="decodes 'pixels' features, not 'clip'"):
        model.check_features("clip", N_FEATURES)
    with pytest.raises(UsageError, match="pixel_size 32 in the model vs 16"):
        model.check_features("pixels", N_FEATURES, {"pixel_size": 16})
    with pytest.raises(UsageError, match="at least 2 participants"):
        train_shared_model(planted["group"][:1], "pixels")


def test_ridge_helpers_match_direct_solutions():
    rng = np.random.default_rng(1)
    for n, p in ((30, 80), (80, 30)):  # dual and primal forms
        X, Y = rng.normal(size=(n, p)), rng.normal(size=(n, 4))
        alpha = np.array([0.5, 5.0, 50.0, 500.0])
        coef, intercept = ridge_fixed(X, Y, alpha)
        Xc, Yc = X - X.mean(0), Y - Y.mean(0)
        for t, a in enumerate(alpha):
            direct = np.linalg.solve(Xc.T @ Xc + a * np.eye(p), Xc.T @ Yc[:, t])
            np.testing.assert_allclose(coef[:, t], direct, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(intercept, Y.mean(0) - X.mean(0) @ coef, rtol=1e-4, atol=1e-5)
    # k-fold ridge: out-of-fold predictions are refits without the fold (grouped by stimulus) at the chosen
    # alpha, and the final coefficients are the fit on every row at that alpha
    X, Y = rng.normal(size=(40, 60)), rng.normal(size=(40, 3))
    Y[:, 0] += X[:, :5].sum(1) * 3  # one predictable target: a smaller alpha
    stimuli = np.repeat(np.arange(20), 2)
    alphas = [0.1, 1.0, 10.0, 100.0, 1000.0]
    fit = kfold_ridge(X, Y, alphas, stimuli, folds=4, seed=0)
    assert fit.alpha[0] < fit.alpha[1]
    labels, _ = make_cv_groups(40, 4, stimuli.astype(str), 0)
    for fold in np.unique(labels):
        held = labels == fold
        assert len(set(stimuli[held]) & set(stimuli[~held])) == 0
        coef, intercept = ridge_fixed(X[~held], Y[~held], fit.alpha)
        np.testing.assert_allclose(fit.out_of_fold[held], ridge_predict(X[held], coef, intercept), rtol=1e-3,
                                   atol=1e-3)
    coef, intercept = ridge_fixed(X, Y, fit.alpha)
    np.testing.assert_allclose(fit.coef, coef, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fit.intercept, intercept, rtol=1e-3, atol=1e-4)


def test_single_penalty_is_the_alpha_of_least_summed_cv_error():
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(40, 60)), rng.normal(size=(40, 3))
    Y[:, 0] += X[:, :5].sum(1) * 3  # per target, this one would get a smaller alpha than the others
    stimuli = np.repeat(np.arange(20), 2)
    alphas = [0.1, 1.0, 10.0, 100.0, 1000.0]
    fit = kfold_ridge(X, Y, alphas, stimuli, folds=4, seed=0, single_penalty=True)
    assert len(set(fit.alpha)) == 1
    errors = [((kfold_ridge(X, Y, [a], stimuli, folds=4, seed=0).out_of_fold - Y) ** 2).sum() for a in alphas]
    assert fit.alpha[0] == alphas[int(np.argmin(errors))]


def test_projection_head_and_settings(planted):
    model, group = planted["model"], planted["group"]
    assert model.settings["head"] == "projection" and model.settings["single_penalty"] is True
    np.testing.assert_allclose(model.head_coef, model.basis)  # decoded features = z B, in standardised units
    latent = model.maps["02"].latent(group[1].betas)
    np.testing.assert_allclose(model.predict("02", group[1].betas),
                               (latent @ model.basis) * model.feature_scale + model.feature_mean, rtol=1e-4, atol=1e-4)
    assert len(set(model.maps["02"].alpha)) == 1  # one penalty for every latent target
    with pytest.raises(UsageError, match="unknown shared head"):
        train_shared_model(group, "pixels", head="mlp")



def test_auto_voxel_count_of_a_new_participants_map_drops_silent_voxels(planted):
    """Without --top-k-voxels the map keeps the count chosen by the map's own grouped-CV error among ncsnr-ranked
    nested halves of the mask (as the own-data decoder): with 60 responsive voxels among 960, it keeps at most a
    quarter of the mask, the responsive voxels among them, and decodes held-out stimuli at least as well as the map on every voxel."""
    world = World(7)
    brain = world.participant(60, n_silent=900)
    latent, features = world.stimuli(40)
    repeats = 3  # repeats of each training stimulus: ncsnr needs them
    train_betas = world.betas(brain, np.repeat(latent, repeats, axis=0), noise=1.0)
    train_features = np.repeat(features, repeats, axis=0)
    stimuli = np.repeat([f"s{k}" for k in range(40)], repeats)
    test_latent, test_features = world.stimuli(100)
    test_betas = world.betas(brain, test_latent, noise=1.0)

    auto = fit_new_participant(planted["model"], train_betas, train_features, stimuli, n_threads=1)
    every = fit_new_participant(planted["model"], train_betas, train_features, stimuli, n_threads=1, top_k=None)
    kept = auto.map.scaler.columns
    assert len(every.map.scaler.columns) == 960
    assert len(kept) <= 960 / 4, len(kept)
    assert np.isin(np.arange(60), kept).mean() >= 0.9  # the responsive voxels (the first 60 columns) stay
    selection = auto.info["voxel_selection"]
    assert selection["chosen"] == len(kept) and str(960) in selection["cv_error"]
    assert selection["cv_error"][str(len(kept))] < selection["cv_error"]["960"]
    score_auto = _corr_per_item(auto.predict(test_betas), test_features)
    score_every = _corr_per_item(every.predict(test_betas), test_features)
    assert score_auto >= score_every - 0.01, (score_auto, score_every)
    # a fixed count is kept as asked
    assert len(fit_new_participant(planted["model"], train_betas, train_features, stimuli, n_threads=1,
                                   top_k=100).map.scaler.columns) == 100


def test_group_training_chooses_each_participants_voxels_and_the_file_keeps_them(tmp_path):
    """Group training (default top_k="auto") chooses every participant's voxel count by the CV error of its
    step-1 ridge; the maps keep those voxels through save/load, and the sidecar records the choice."""
    world = World(3)
    group = []
    for i, n_silent in enumerate([500, 700]):
        brain = world.participant(50, n_silent=n_silent)
        latent, features = world.stimuli(40)
        group.append(ParticipantData(f"0{i + 1}", world.betas(brain, np.repeat(latent, 3, axis=0), noise=1.0),
                                     np.repeat(features, 3, axis=0), np.repeat([f"s{k}" for k in range(40)], 3)))
    model = train_shared_model(group, "pixels", n_components=6, n_threads=1)
    assert model.settings["top_k"] == "auto"
    for p in group:
        kept = model.maps[p.label].scaler.columns
        assert len(kept) < p.betas.shape[1] / 2 and np.isin(np.arange(50), kept).mean() >= 0.9
        assert model.info["voxel_selection"][p.label]["chosen"] == len(kept)
    loaded = SharedModel.load(model.save(tmp_path / "m.safetensors"))
    assert np.array_equal(loaded.maps["02"].scaler.columns, model.maps["02"].scaler.columns)
    np.testing.assert_allclose(loaded.predict("02", group[1].betas), model.predict("02", group[1].betas), atol=1e-5)


def test_imagery_items_are_the_ensemble_of_the_shared_map_and_the_own_data_ridge(planted, tmp_path):
    """Held-out perception items: the shared map alone. Other items (imagery): the mean of the map's and the
    own-data ridge's unit-norm patterns, and the participant's file restores both (the workflow's fit node
    writes it and the predict node reads it)."""
    from bids_m2i.decoding.stage_files import load_decoder

    import copy

    model, new = copy.copy(planted["model"]), planted["new"]
    assert model.settings["imagery"] == "ensemble"  # the default
    decoder = fit_new_participant(model, new["train_betas"], new["train_features"], n_threads=1)
    assert decoder.imagery == "ensemble" and decoder.info["imagery"] == "ensemble"
    own = BrainDecoder("ridge", device="cpu", n_threads=1).fit(new["train_betas"], new["train_features"])
    test = new["test_betas"][:7]
    shared_only = fit_new_participant(model, new["train_betas"], new["train_features"], n_threads=1, imagery="map")
    assert shared_only.own is None
    np.testing.assert_allclose(decoder.predict(test, perception=True), shared_only.predict(test), rtol=1e-5)
    mixed = decoder.predict(test)
    np.testing.assert_allclose(mixed, ensemble_patterns(shared_only.predict(test), own.predict(test),
                                                        decoder.feature_mean), rtol=1e-4, atol=1e-5)
    assert not np.allclose(mixed, shared_only.predict(test), atol=1e-3)
    # each pattern enters with unit norm about the centre: the mean direction of the two
    centre = decoder.feature_mean
    a, b = shared_only.predict(test) - centre, own.predict(test) - centre
    direction = a / np.linalg.norm(a, axis=1, keepdims=True) + b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = np.sum((mixed - centre) * direction, 1) / np.linalg.norm(mixed - centre, axis=1) / np.linalg.norm(
        direction, axis=1)
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)

    map_model = copy.copy(planted["model"])
    map_model.settings = {**map_model.settings, "imagery": "map"}  # as train_shared_model(imagery="map")
    model_path = map_model.save(tmp_path / "desc-sharedpixels_model.safetensors")
    saved = decoder.save(tmp_path / "decoder-pixels.safetensors")
    loaded = load_decoder(saved, shared_decoders=[model_path])  # the participant's file decides
    assert loaded.imagery == "ensemble" and loaded.own is not None
    np.testing.assert_allclose(loaded.predict(test), mixed, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loaded.predict(test, perception=True), decoder.predict(test, perception=True),
                               rtol=1e-4, atol=1e-5)


def test_participant_files_without_an_own_decoder_decode_imagery_with_the_map(planted, tmp_path):
    """A participant file written before the ensemble (no own-data arrays, no ``own_decoder`` in its sidecar),
    a model that asks for ``imagery="map"`` and a model written before the setting existed decode every item
    with the shared map."""
    import copy
    import json

    from bids_m2i.decoding.stage_files import load_decoder

    model, new = copy.copy(planted["model"]), planted["new"]
    model.settings = {**model.settings, "imagery": "map"}
    model_path = model.save(tmp_path / "desc-sharedpixels_model.safetensors")
    assert fit_new_participant(SharedModel.load(model_path), new["train_betas"], new["train_features"],
                               n_threads=1).own is None
    decoder = fit_new_participant(model, new["train_betas"], new["train_features"], n_threads=1,
                                  imagery="ensemble")
    decoder.own, decoder.imagery = None, "map"  # as fitted before the setting existed
    saved = decoder.save(tmp_path / "decoder-pixels.safetensors")
    meta = json.loads(saved.with_suffix(".json").read_text())
    assert meta["own_decoder"] is None
    del meta["own_decoder"], meta["imagery"]  # as written before the setting existed
    saved.with_suffix(".json").write_text(json.dumps(meta))
    loaded = load_decoder(saved, shared_decoders=[model_path])
    assert loaded.imagery == "map" and loaded.own is None
    test = new["test_betas"][:5]
    np.testing.assert_allclose(loaded.predict(test), decoder.predict(test), rtol=1e-4, atol=1e-5)
    # a model whose settings ask for the map alone (or name a rule this version does not know)
    meta = json.loads(model_path.with_suffix(".json").read_text())
    assert meta["Settings"]["imagery"] == "map"
    del meta["Settings"]["imagery"]  # a group model written before the setting existed
    model_path.with_suffix(".json").write_text(json.dumps(meta))
    assert fit_new_participant(SharedModel.load(model_path), new["train_betas"], new["train_features"],
                               n_threads=1).own is None
    meta["Settings"]["imagery"] = "oracle"
    model_path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(UsageError, match="unknown imagery rule"):
        fit_new_participant(SharedModel.load(model_path), new["train_betas"], new["train_features"])
    with pytest.raises(UsageError, match="unknown imagery rule"):
        train_shared_model(planted["group"], "pixels", imagery="oracle")
