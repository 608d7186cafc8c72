"""BrainDecoder end to end on synthetic betas with a known linear code."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_m2i.decoding.decoder import BrainDecoder, rescale_to_training
from bids_m2i.decoding.mlp import MLPConfig
from bids_m2i.decoding.splits import average_repeats, split_trials


def _simulate(seed=0, n_train=120, n_test=15, n_vox=150, d=12, noise=1.0):
    """Stimulus features -> voxels through a random linear map; train stimuli x2, test stimuli x3."""
    rng = np.random.default_rng(seed)
    n_stim = n_train + n_test
    feats = rng.standard_normal((n_stim, d)).astype(np.float32) * 2 + 5
    mapping = rng.standard_normal((d, n_vox)).astype(np.float32)
    stim = np.r_[np.repeat(np.arange(n_train), 2), np.repeat(np.arange(n_train, n_stim), 3)]
    betas = feats[stim] @ mapping + noise * rng.standard_normal((len(stim), n_vox)).astype(np.float32) * 4
    trials = pd.DataFrame({"condition": "perception", "stimulus": [f"s{s:03d}" for s in stim]})
    return trials, betas, feats, stim


def _identification(pred, truth):
    p = pred - pred.mean(1, keepdims=True)
    t = truth - truth.mean(1, keepdims=True)
    corr = (p / np.linalg.norm(p, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    return float(np.mean((np.diag(corr)[:, None] > corr).sum(1) / (len(p) - 1)))


def test_ridge_decoder_identifies_held_out_stimuli(tmp_path):
    trials, betas, feats, stim = _simulate()
    split = split_trials(trials, seed=0)
    assert len(split.test) == 45  # the 15 stimuli shown 3 times
    decoder = BrainDecoder("ridge", device="cpu").fit(betas[split.train], feats[stim[split.train]],
                                                    labels=trials.stimulus[split.train])
    assert decoder.info["cv"] == "group"  # leave-one-stimulus-out, repeats held out together
    averaged, names, groups = average_repeats(betas[split.test], trials.stimulus.to_numpy()[split.test])
    pred = decoder.predict(averaged)
    truth = feats[[stim[split.test][g[0]] for g in groups]]
    r = np.mean([np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in range(truth.shape[1])])
    assert r > 0.8
    assert _identification(pred, truth) > 0.9
    # save / load round trip
    path = decoder.save(tmp_path / "sub-01_desc-pixelsridge_model.safetensors")
    loaded = BrainDecoder.load(path, device="cpu")
    np.testing.assert_array_equal(loaded.predict(averaged), pred)
    assert path.with_suffix(".json").is_file()


def test_rescale_to_training_statistics():
    rng = np.random.default_rng(0)
    pred = rng.normal(1.0, 0.1, size=(30, 4)).astype(np.float32)
    out = rescale_to_training(pred, np.array([0, 1, 2, 3], np.float32), np.array([1, 2, 3, 4], np.float32))
    np.testing.assert_allclose(out.mean(0), [0, 1, 2, 3], atol=1e-5)
    np.testing.assert_allclose(out.std(0), [1, 2, 3, 4], rtol=1e-4)
    np.testing.assert_array_equal(rescale_to_training(pred[:1], 0, 1), pred[:1])


def test_rescale_centred_on_training_mean_keeps_the_items_offset():
    # held-out items of the training condition: deviations are taken from the training mean, so an offset
    # common to the items (here +0.5 on dimension 0) survives, scaled, instead of being removed
    rng = np.random.default_rng(1)
    pred = rng.normal(0.0, 0.1, size=(40, 3)).astype(np.float32)
    pred[:, 0] += 0.5
    train_mean, train_sd = np.zeros(3, np.float32), np.full(3, 2.0, np.float32)
    items = rescale_to_training(pred, train_mean, train_sd)
    training = rescale_to_training(pred, train_mean, train_sd, centre="training")
    assert abs(items[:, 0].mean()) < 1e-5
    assert training[:, 0].mean() > 1.9  # 0.5 / rms(~0.51) * 2
    np.testing.assert_allclose(np.sqrt((training ** 2).mean(0)), train_sd, rtol=1e-4)
    # item ranks within a dimension are unchanged by either centre
    assert (np.argsort(items[:, 1]) == np.argsort(training[:, 1])).all()
    with pytest.raises(ValueError):
        rescale_to_training(pred, train_mean, train_sd, centre="test")


def test_rescale_by_one_factor_keeps_the_balance_between_dimensions():
    """per_dimension=False (held-out perception items): one factor restores the training features' total variance
    and keeps each item's deviation pattern, so a poorly predicted dimension is not blown up to the training sd."""
    rng = np.random.default_rng(2)
    train_mean = np.array([1.0, -1.0, 0.5, 0.0], np.float32)
    train_sd = np.array([3.0, 2.0, 1.0, 1.0], np.float32)
    # the decoder's shrinkage: strong dimensions kept at 0.5, the last one (noise, almost nothing predicted) at 0.01
    pred = train_mean + rng.normal(size=(50, 4)).astype(np.float32) * np.array([1.5, 1.0, 0.5, 0.01], np.float32)
    common = rescale_to_training(pred, train_mean, train_sd, centre="training", per_dimension=False)
    deviation = common - train_mean
    np.testing.assert_allclose((deviation ** 2).mean(0).sum(), (train_sd ** 2).sum(), rtol=1e-4)
    # one factor: every item's deviation is the prediction's, times the same number
    factor = deviation / (pred - train_mean)
    np.testing.assert_allclose(factor, factor[0, 0], rtol=1e-4)
    assert abs(deviation[:, 3]).max() < 0.1           # per dimension it would have sd 1, like the others
    per_dimension = rescale_to_training(pred, train_mean, train_sd, centre="training")
    assert per_dimension[:, 3].std() > 0.9
    # nothing to scale: constant predictions are left at the training mean, not divided by zero
    flat = rescale_to_training(np.tile(train_mean, (5, 1)), train_mean, train_sd, centre="training",
                               per_dimension=False)
    np.testing.assert_array_equal(flat, np.tile(train_mean, (5, 1)))


def test_one_held_out_item_is_scaled_by_the_one_factor_rule():
    """A condition with a single test stimulus: centred on the training mean and scaled by one factor, its
    squared deviation is brought to the training features' total variance, as many items' mean square is; the
    rules that need the items' own spread (centre="items", per dimension) leave it as predicted."""
    train_mean = np.array([1.0, -1.0, 0.5], np.float32)
    train_sd = np.array([2.0, 1.0, 1.0], np.float32)
    pred = (train_mean + np.array([0.3, -0.1, 0.05], np.float32))[None]
    one = rescale_to_training(pred, train_mean, train_sd, centre="training", per_dimension=False)
    deviation = one - train_mean
    np.testing.assert_allclose((deviation ** 2).sum(), (train_sd ** 2).sum(), rtol=1e-5)
    np.testing.assert_allclose(deviation / (pred - train_mean), deviation[0, 0] / 0.3, rtol=1e-4)
    np.testing.assert_array_equal(rescale_to_training(pred, train_mean, train_sd), pred)
    np.testing.assert_array_equal(rescale_to_training(pred, train_mean, train_sd, centre="training"), pred)
    empty = rescale_to_training(np.zeros((0, 3), np.float32), train_mean, train_sd, centre="training",
                                per_dimension=False)
    assert empty.shape == (0, 3)


def test_fine_tune_on_imagery_uses_out_of_fold_predictions():
    trials, betas, feats, stim = _simulate(seed=1)
    decoder = BrainDecoder("ridge", device="cpu").fit(betas, feats[stim], labels=trials.stimulus)
    rng = np.random.default_rng(5)
    # imagery: a weaker, distorted version of the code (another map) for 20 items x 2 repeats
    items = np.repeat(np.arange(20), 2)
    other = rng.standard_normal((feats.shape[1], betas.shape[1])).astype(np.float32)
    imag_betas = feats[items] @ other + rng.standard_normal((40, betas.shape[1])).astype(np.float32)
    folds = items % 4
    before = decoder.predict(imag_betas)
    oof = decoder.fine_tune(imag_betas, feats[items], folds)
    assert oof.shape == before.shape
    err_before = np.mean((before - feats[items]) ** 2)
    err_after = np.mean((oof - feats[items]) ** 2)
    assert err_after < err_before  # learning the imagery code helps, even out of fold
    assert decoder.info["fine_tune"]["folds"] == 4


def test_mlp_decoder_learns_and_is_seeded():
    trials, betas, feats, stim = _simulate(seed=2, n_train=100, n_vox=60, d=8)
    split = split_trials(trials, seed=0)
    config = MLPConfig(hidden=64, n_blocks=1, epochs=30, batch_size=32, dropout=0.1)
    fits = [BrainDecoder("mlp", device="cpu", seed=3, mlp_config=config, n_threads=1).fit(
        betas[split.train], feats[stim[split.train]]) for _ in range(2)]
    pred = [f.predict(betas[split.test]) for f in fits]
    np.testing.assert_allclose(pred[0], pred[1], rtol=1e-5, atol=1e-5)
    assert _identification(pred[0], feats[stim[split.test]]) > 0.75


def test_unknown_method_is_usage_error():
    from bids_m2i.errors import UsageError

    with pytest.raises(UsageError):
        BrainDecoder("svm")


def _informative_and_noise_voxels(seed=0, n_train=100, n_informative=40, n_noise=600, d=8):
    """A few voxels carry the features (with trial noise); many more carry only noise, as in a brain mask."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_train + 20, d)).astype(np.float32)
    mapping = rng.standard_normal((d, n_informative)).astype(np.float32)
    stim = np.r_[np.repeat(np.arange(n_train), 2), np.repeat(np.arange(n_train, n_train + 20), 3)]
    signal = feats[stim] @ mapping + 3.0 * rng.standard_normal((len(stim), n_informative)).astype(np.float32)
    noise = rng.standard_normal((len(stim), n_noise)).astype(np.float32) * 3.0
    betas = np.concatenate([noise[:, : n_noise // 2], signal, noise[:, n_noise // 2:]], axis=1)
    informative = np.arange(n_noise // 2, n_noise // 2 + n_informative)
    return betas, feats, stim, informative, n_train


def test_auto_voxel_count_keeps_informative_voxels_and_beats_the_whole_mask():
    betas, feats, stim, informative, n_train = _informative_and_noise_voxels()
    train = stim < n_train
    labels = np.array([f"s{s}" for s in stim[train]])
    auto = BrainDecoder("ridge", device="cpu").fit(betas[train], feats[stim[train]], labels=labels)
    whole = BrainDecoder("ridge", device="cpu", top_k=None).fit(betas[train], feats[stim[train]], labels=labels)
    selection = auto.info["voxel_selection"]
    assert auto.top_k == "auto" and len(whole.scaler.columns) == betas.shape[1]
    # the candidates are nested halves from the whole mask down; the CV error of the chosen one is the lowest
    counts = [int(k) for k in selection["cv_error"]]
    assert counts[0] == betas.shape[1] and all(b == round(a / 2) or abs(b - a / 2) <= 1 for a, b in zip(counts, counts[1:]))
    assert selection["cv_error"][str(selection["chosen"])] == min(selection["cv_error"].values())
    kept = set(auto.scaler.columns.tolist())
    assert len(kept) <= betas.shape[1] // 4  # 640 voxels: 160 (the smallest candidate >= 100 voxels)
    assert len(kept & set(informative.tolist())) >= 0.9 * len(informative)
    # held-out stimuli (3 repeats averaged) are decoded better than from the whole mask
    test_names = np.unique(stim[~train])
    averaged = np.stack([betas[stim == s].mean(0) for s in test_names])
    r_auto = np.mean([np.corrcoef(auto.predict(averaged)[:, j], feats[test_names, j])[0, 1] for j in range(feats.shape[1])])
    r_whole = np.mean([np.corrcoef(whole.predict(averaged)[:, j], feats[test_names, j])[0, 1] for j in range(feats.shape[1])])
    assert r_auto > r_whole + 0.05


def test_auto_voxel_count_falls_back_to_all_voxels_without_repeats_and_fixed_k_is_kept():
    betas, feats, stim, _, n_train = _informative_and_noise_voxels(n_noise=100)
    first = np.unique(stim, return_index=True)[1]  # one trial per stimulus: no ncsnr, no grouped CV
    decoder = BrainDecoder("ridge", device="cpu").fit(betas[first], feats[stim[first]], labels=stim[first])
    assert len(decoder.scaler.columns) == betas.shape[1] and "cv_error" not in decoder.info["voxel_selection"]
    assert decoder.info["voxel_selection"]["chosen"] == betas.shape[1]  # the sidecar says why all were kept
    assert "no training stimulus repeats" in decoder.info["voxel_selection"]["rule"]
    train = stim < n_train
    fixed = BrainDecoder("ridge", device="cpu", top_k=30).fit(betas[train], feats[stim[train]], labels=stim[train])
    assert len(fixed.scaler.columns) == 30 and "voxel_selection" not in fixed.info
    with pytest.raises(Exception, match="top_k"):
        BrainDecoder("ridge", top_k="some")


def test_candidate_voxel_counts():
    from bids_m2i.decoding.voxels import candidate_voxel_counts

    assert candidate_voxel_counts(5230) == [5230, 2615, 1308, 654, 327, 163]
    assert candidate_voxel_counts(80) == [80]
    assert candidate_voxel_counts(1000, min_voxels=300) == [1000, 500]
