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
