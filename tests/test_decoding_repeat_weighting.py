"""The trial-quality weighting of repeats measured by ``benchmarks/repeat_weighting.py`` (issue 14), on arrays.

The weighting was measured and not adopted by the pipeline (docs/decoding.md); these tests keep the measuring
tool honest: the weights do what the documentation says they do.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import import_benchmark

rw = import_benchmark("repeat_weighting")


def test_equal_weights_give_the_plain_mean_and_weights_are_normalised():
    rng = np.random.default_rng(0)
    predictions = rng.normal(size=(3, 5))
    assert np.allclose(rw.weighted_repeat_mean(predictions, np.ones(3)), predictions.mean(0))
    assert np.allclose(rw.weighted_repeat_mean(predictions, [2.0, 2.0, 2.0]), predictions.mean(0))
    assert np.allclose(rw.weighted_repeat_mean(predictions, [0.0, 1.0, 0.0]), predictions[1])


@pytest.mark.parametrize("weights", [[0.0, 0.0], [np.nan, 1.0], [-1.0, 2.0]])
def test_unusable_weights_fall_back_to_the_plain_mean(weights):
    predictions = np.array([[0.0, 2.0], [4.0, 6.0]])
    assert np.allclose(rw.weighted_repeat_mean(predictions, weights), [2.0, 4.0])


def test_weight_count_must_match_repeats():
    with pytest.raises(ValueError, match="2 weights for 3 repeats"):
        rw.weighted_repeat_mean(np.zeros((3, 4)), [1.0, 1.0])


def test_a_repeat_with_bad_motion_gets_less_weight():
    rows = pd.DataFrame({"fd_mean": [0.08, 0.42, 0.02]})
    weights = rw.SCHEMES["1 / FD"](rows)
    assert weights[1] < weights[0]
    assert weights[2] == weights[0] * 0.08 / 0.05  # below 0.05 mm FD is floored (realignment noise)


def test_a_noisy_trial_has_a_larger_noise_variance_and_gets_less_weight():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 400))
    z[2] *= 3.0  # an artefact inflates every voxel of trial 2
    variance = rw.noise_variance(z, np.arange(200, 400))
    assert variance[2] > 4 * max(variance[0], variance[1])
    weights = rw.SCHEMES["1 / noise variance"](pd.DataFrame({"noise_variance": variance}))
    assert np.argmin(weights) == 2


def test_a_repeat_that_disagrees_with_the_others_gets_the_lowest_agreement():
    rng = np.random.default_rng(2)
    pattern = rng.normal(size=300)
    repeats = np.stack([pattern + 0.5 * rng.normal(size=300) for _ in range(3)] + [rng.normal(size=300)])
    agreement = rw.repeat_agreement(repeats)
    assert np.argmin(agreement) == 3 and agreement[3] < 0.2 < agreement[:3].min()
    assert np.isnan(rw.repeat_agreement(repeats[:1])).all()  # a single trial has nothing to agree with


def test_scored_schemes_reward_the_weighting_that_drops_a_corrupted_repeat():
    """Items of 2 repeats, one of them pure noise for half of the items: weighting by truth-free agreement
    cannot tell which (2 repeats are symmetric), but a weighting that knows the noisy repeat raises two-way."""
    rng = np.random.default_rng(3)
    n_items, d = 12, 64
    targets = rng.uniform(size=(n_items, d))
    rows, predictions, pixels = [], [], []
    for item in range(n_items):
        for repeat in range(2):
            corrupted = item % 2 == 0 and repeat == 1
            predictions.append(rng.normal(0.5, 0.3, d) if corrupted else targets[item] + 0.4 * rng.normal(size=d))
            pixels.append(targets[item])
            rows.append({"stimulus": f"s{item}", "condition": "imagery", "cue": "text", "corrupted": corrupted})
    indices = pd.DataFrame(rows)
    predictions, pixels = np.array(predictions), np.array(pixels)
    schemes = {"equal": lambda r: np.ones(len(r)),
               "knows": lambda r: np.where(r["corrupted"].to_numpy(), 0.0, 1.0)}
    scores = rw.score_schemes(indices, predictions, pixels, targets.mean(0), targets.std(0), schemes)
    assert scores["knows"]["imagery/text"]["pixcorr"] > scores["equal"]["imagery/text"]["pixcorr"]
    assert scores["equal"]["imagery/text"]["n_items"] == n_items


def test_training_trimming_drops_the_trials_that_disagree_with_their_repeats():
    rng = np.random.default_rng(4)
    n_stimuli, n_voxels = 20, 120
    patterns = rng.normal(size=(n_stimuli, n_voxels))
    labels = np.repeat([f"s{k}" for k in range(n_stimuli)], 2)
    betas = patterns[np.repeat(np.arange(n_stimuli), 2)] + 0.5 * rng.normal(size=(2 * n_stimuli, n_voxels))
    betas[[6, 7]] = rng.normal(size=(2, n_voxels)) * 1.2  # both repeats of s3 lost (e.g. a motion burst)
    keep = rw.training_keep_mask(betas, labels, 0.05, n_voxels=60)
    assert not keep[6] and not keep[7] and keep.sum() == 38
    assert rw.training_keep_mask(betas, labels, 0.0).all()
    assert rw.training_keep_mask(betas, np.array([f"u{k}" for k in range(40)]), 0.5).all()  # nothing repeats
