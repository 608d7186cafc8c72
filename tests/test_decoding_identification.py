"""The ridge penalty scale chosen for identification (bids_m2i/decoding/identification.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bids_m2i.decoding.decoder import BrainDecoder
from bids_m2i.decoding.identification import (PenaltyScaleSearch, choose_penalty_scale, pattern_twoway_per_item,
                                              refit_scaled)
from bids_m2i.decoding.ridge import fit_ridge
from bids_m2i.errors import UsageError


def _trials(n_stimuli=60, repeats=2, n_voxels=80, n_features=40, noise=2.0, seed=0):
    """Betas = stimulus features through a random voxel map + trial noise; features with much fine detail."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_stimuli, n_features))
    mixing = rng.normal(size=(n_features, n_voxels)) / np.sqrt(n_features)
    labels = np.repeat([f"s{i:03d}" for i in range(n_stimuli)], repeats)
    index = np.repeat(np.arange(n_stimuli), repeats)
    betas = features[index] @ mixing + noise * rng.normal(size=(len(index), n_voxels))
    return betas.astype(np.float32), features[index].astype(np.float32), labels


def test_twoway_per_item_is_one_for_perfect_and_half_for_shuffled_predictions():
    rng = np.random.default_rng(1)
    targets = rng.normal(size=(200, 30))
    assert np.all(pattern_twoway_per_item(targets, targets) == 1.0)
    shuffled = pattern_twoway_per_item(rng.normal(size=(200, 30)), targets)
    assert abs(shuffled.mean() - 0.5) < 0.03


@pytest.mark.parametrize("n_stimuli,n_voxels,max_alpha,scale", [
    (30, 120, 1000, 0.25),   # more voxels than trials: the dual form
    (60, 30, 100, 0.5),      # 120 trials > 30 voxels: the primal form
])
def test_refit_scaled_is_the_ridge_with_scaled_penalties(n_stimuli, n_voxels, max_alpha, scale):
    betas, features, _ = _trials(n_stimuli=n_stimuli, n_voxels=n_voxels)
    alpha = np.geomspace(1, max_alpha, features.shape[1])
    coef, intercept = refit_scaled(betas, features, alpha, scale, device="cpu")
    ref_coef, ref_intercept = fit_ridge(betas, features, scale * alpha, device="cpu")
    np.testing.assert_allclose(coef, ref_coef, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(intercept, ref_intercept, rtol=1e-3, atol=1e-5)


def test_scale_follows_the_one_standard_error_rule():
    betas, features, labels = _trials()
    alpha = np.full(features.shape[1], 3000.0)  # far too strong for this SNR: identification wants less
    search = choose_penalty_scale(betas, features, alpha, labels, device="cpu")
    assert isinstance(search, PenaltyScaleSearch)
    best = max(search.twoway, key=search.twoway.get)
    within = [s for s in search.twoway if search.twoway[s] >= search.twoway[best] - search.stderr[best]]
    assert search.scale == max(within)
    assert search.scale < 1.0  # the over-penalised decoder is relaxed
    assert search.twoway[search.scale] > search.twoway[1.0]
    summary = search.summary()
    assert summary["chosen"] == pytest.approx(search.scale, abs=1e-6) and "1-SE" in summary["rule"]


def test_too_few_stimuli_keep_the_error_penalties():
    betas, features, labels = _trials(n_stimuli=8)
    assert choose_penalty_scale(betas, features, np.ones(features.shape[1]), labels, device="cpu") is None


def test_decoder_records_the_scale_and_error_rule_keeps_the_squared_error_fit(tmp_path):
    betas, features, labels = _trials()
    grid = (3000.0,)  # one over-strong penalty, so that identification asks for less
    plain = BrainDecoder("ridge", alphas=grid, top_k=None, device="cpu", penalty="error").fit(betas, features,
                                                                                              labels=labels)
    scaled = BrainDecoder("ridge", alphas=grid, top_k=None, device="cpu", penalty="identification").fit(
        betas, features, labels=labels)
    default = BrainDecoder("ridge", alphas=grid, top_k=None, device="cpu")
    assert default.penalty == "joint"  # the default (docs/decoding.md)
    assert "penalty_scale" not in plain.info
    chosen = scaled.info["penalty_scale"]["chosen"]
    assert chosen < 1.0
    np.testing.assert_allclose(scaled.alpha, plain.alpha * chosen, rtol=1e-5)  # chosen: 6 digits
    # the coefficients are the refit with the scaled penalties
    ref_coef, _ = fit_ridge(scaled.scaler.transform(betas), features, scaled.alpha, device="cpu")
    np.testing.assert_allclose(scaled.coef, ref_coef, rtol=1e-3, atol=1e-5)
    scaled.save(tmp_path / "m.safetensors")
    loaded = BrainDecoder.load(tmp_path / "m.safetensors", device="cpu")
    assert loaded.penalty == "identification" and loaded.info["penalty_scale"]["chosen"] == chosen
    np.testing.assert_allclose(loaded.predict(betas[:5]), scaled.predict(betas[:5]), rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError):
        BrainDecoder("ridge", penalty="mse")


def test_large_training_sets_are_subsampled_by_whole_stimuli():
    betas, features, labels = _trials(n_stimuli=100, repeats=3)
    alpha = np.full(features.shape[1], 3000.0)
    search = choose_penalty_scale(betas, features, alpha, labels, device="cpu", max_trials=150)
    assert search.n_trials == 150 and search.summary()["cv_trials"] == 150  # 50 whole stimuli of 3 repeats
    # the same as the CV on those stimuli alone, with the penalties scaled by the share of trials kept (1/2)
    kept = np.random.default_rng(0).permutation(100)[:50]
    rows = np.flatnonzero(np.isin(np.unique(labels, return_inverse=True)[1], kept))
    direct = choose_penalty_scale(betas[rows], features[rows], alpha / 2, labels[rows], device="cpu")
    assert direct.twoway == pytest.approx(search.twoway) and direct.scale == search.scale


def test_joint_rule_takes_the_scale_of_best_worse_ratio_of_twoway_and_pixcorr():
    betas, features, labels = _trials()
    alpha = np.full(features.shape[1], 3000.0)
    search = choose_penalty_scale(betas, features, alpha, labels, device="cpu", rule="joint")
    assert search.rule == "joint" and set(search.pixcorr) == set(search.twoway)
    candidates = [s for s in search.pixcorr if s <= 1.0]
    best_t, best_p = max(search.twoway[s] for s in candidates), max(search.pixcorr[s] for s in candidates)
    worse = {s: min(search.twoway[s] / best_t, search.pixcorr[s] / best_p) for s in candidates}
    assert worse[search.scale] == max(worse.values())
    summary = search.summary()
    assert "maximin" in summary["rule"] and set(summary["cv_pixcorr"]) == set(summary["cv_twoway"])
    # the same CV as the 1-SE rule: only the choice differs
    other = choose_penalty_scale(betas, features, alpha, labels, device="cpu")
    assert other.twoway == pytest.approx(search.twoway)
    with pytest.raises(ValueError):
        choose_penalty_scale(betas, features, alpha, labels, device="cpu", rule="best")


def test_joint_rule_keeps_the_pixcorr_best_scale_when_two_way_cannot_gain():
    # clean data: two-way is 1 at every scale, so PixCorr alone decides (ties: the larger scale)
    betas, features, labels = _trials(noise=0.05)
    search = choose_penalty_scale(betas, features, np.full(features.shape[1], 1.0), labels, device="cpu",
                                  rule="joint")
    assert all(v == 1.0 for v in search.twoway.values())
    best = max(search.pixcorr.values())
    assert search.scale == max(s for s, v in search.pixcorr.items() if v == best)


def test_joint_rule_trades_two_way_against_pixcorr():
    # an over-penalised decoder: the joint scale lies between the squared-error scale (1) and the scale of best
    # two-way, and keeps more PixCorr than the two-way optimum does
    betas, features, labels = _trials()
    search = choose_penalty_scale(betas, features, np.full(features.shape[1], 3000.0), labels, device="cpu",
                                  rule="joint")
    best_twoway = max(search.twoway, key=search.twoway.get)
    assert search.twoway[search.scale] > search.twoway[1.0]
    assert search.pixcorr[search.scale] >= search.pixcorr[best_twoway]


def test_joint_decoder_decodes_perception_items_with_the_scaled_map_and_imagery_with_the_error_map(tmp_path):
    betas, features, labels = _trials()
    grid = (3000.0,)
    plain = BrainDecoder("ridge", alphas=grid, top_k=None, device="cpu", penalty="error").fit(betas, features,
                                                                                              labels=labels)
    joint = BrainDecoder("ridge", alphas=grid, top_k=None, device="cpu", penalty="joint").fit(betas, features,
                                                                                              labels=labels)
    chosen = joint.info["penalty_scale"]["chosen"]
    assert chosen < 1.0
    # imagery (the default) keeps the squared-error penalties and coefficients
    np.testing.assert_allclose(joint.alpha, plain.alpha)
    np.testing.assert_allclose(joint.predict(betas[:5]), plain.predict(betas[:5]), rtol=1e-5, atol=1e-6)
    # perception items: the refit with the scaled penalties
    np.testing.assert_allclose(joint.perception_alpha, plain.alpha * chosen, rtol=1e-5)
    ref_coef, ref_intercept = fit_ridge(joint.scaler.transform(betas), features, joint.perception_alpha, device="cpu")
    X = joint.scaler.transform(betas[:5])
    np.testing.assert_allclose(joint.predict(betas[:5], perception=True), X @ ref_coef + ref_intercept,
                               rtol=1e-3, atol=1e-4)
    assert not np.allclose(joint.predict(betas[:5], perception=True), joint.predict(betas[:5]))
    joint.save(tmp_path / "m.safetensors")
    loaded = BrainDecoder.load(tmp_path / "m.safetensors", device="cpu")
    assert loaded.penalty == "joint"
    for perception in (False, True):
        np.testing.assert_allclose(loaded.predict(betas[:5], perception=perception),
                                   joint.predict(betas[:5], perception=perception), rtol=1e-5, atol=1e-6)
