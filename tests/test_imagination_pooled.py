"""The statistics of ``benchmarks/imagination_pooled.py`` (issue 14: ours against the oracle over many seeds)."""

from __future__ import annotations

import numpy as np

from bids_m2i.simulate.oracle import pattern_correlations, twoway_identification
from helpers import import_benchmark

pooled = import_benchmark("imagination_pooled")


def test_per_item_scores_average_to_the_scored_twoway_and_pixcorr():
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(10, 40))
    predicted = targets + rng.normal(size=targets.shape)
    scores = pooled.per_item_scores(predicted, targets)
    assert np.isclose(scores["twoway"].mean(), twoway_identification(predicted, targets))
    assert np.allclose(scores["pixcorr"], pattern_correlations(predicted, targets))


def test_sign_flips_are_enumerated_for_few_items():
    means = pooled.sign_flip_means(np.array([1.0, 2.0, 3.0]), np.random.default_rng(0))
    assert means.shape == (8,)
    assert np.isclose(means.max(), 2.0) and np.isclose(means.min(), -2.0) and np.isclose(means.mean(), 0.0)


def test_a_seed_equal_to_the_oracle_reaches_it_and_is_not_below_it():
    row = pooled.seed_row(np.full(10, 0.9), np.full(10, 0.9), np.random.default_rng(0))
    assert row["reaches"] and row["difference"] == 0.0
    assert row["equal_decoder_reaches"] == 1.0          # every flip of zero differences is a tie
    assert row["p_below"] == 1.0


def test_a_seed_below_on_every_item_is_flagged_beyond_its_item_noise():
    ours = np.full(10, 0.7)
    oracle = np.full(10, 0.9)
    row = pooled.seed_row(ours, oracle, np.random.default_rng(0))
    assert not row["reaches"]
    assert np.isclose(row["p_below"], 1 / 1024)              # only the observed pattern is as low
    # an oracle-equal decoder: each item's difference as likely +0.2 as -0.2; it reaches the oracle when at least
    # 5 of the 10 are positive (a tie counts, as "at least the oracle's" reads): 638 of the 1,024 sign patterns
    assert np.isclose(row["equal_decoder_reaches"], 638 / 1024)


def test_pooled_difference_interval_and_test_separate_a_shift_from_noise():
    rng = np.random.default_rng(1)
    shifted = pooled.pooled(list(0.05 + 0.01 * rng.normal(size=16)), rng)
    assert shifted["ci95"][0] > 0 and shifted["p_two_sided"] < 0.01
    centred = pooled.pooled(list(0.05 * rng.normal(size=16) - 0.0), rng)
    assert centred["ci95"][0] < centred["mean"] < centred["ci95"][1]
    noise = pooled.pooled([0.05, -0.05, 0.04, -0.04, 0.03, -0.03, 0.02, -0.02], rng)
    assert noise["ci95"][0] < 0 < noise["ci95"][1] and noise["p_two_sided"] > 0.5


def test_runs_are_found_by_the_seed_sweep_layout(tmp_path):
    for seed in (3, 11):
        (tmp_path / f"d{seed}").mkdir()
    (tmp_path / "out3-base" / "sub-01" / "decoding").mkdir(parents=True)
    (tmp_path / "out11-other" / "sub-01" / "decoding").mkdir(parents=True)
    runs = pooled.find_runs([f"{tmp_path}:base"])
    assert [(seed, d.name, o.name) for seed, d, o in runs] == [(3, "d3", "out3-base")]


def test_the_rescale_probe_changes_the_items_rescaling_and_not_the_betas_standardisation():
    """``benchmarks/rescale_probe.py`` patched ``reconstruct.rescale_to_training`` until issue 14's eleventh pass:
    after predict_items moved to ``decoder.rescale_items`` its rescaling variants acted on the imagery betas'
    standardisation (``standardise_like``) instead. Each variant must change only the items' rescaling."""
    from bids_m2i.decoding import decoder, reconstruct

    probe = import_benchmark("rescale_probe")
    rng = np.random.default_rng(2)
    raw, mean, sd = rng.normal(size=(10, 6)), rng.normal(size=6), rng.uniform(0.5, 2.0, size=6)
    betas, reference = rng.normal(size=(10, 5)), rng.normal(2.0, 3.0, size=(30, 5))
    shipped_betas = reconstruct.standardise_like(betas, reference)
    expected = {
        ("imagery-none", False): np.asarray(raw, np.float32),
        ("one-factor-all", False): decoder.rescale_to_training(raw, mean, sd, centre="items", per_dimension=False),
        ("imagery-per-dimension", False): decoder.rescale_to_training(raw, mean, sd, centre="items",
                                                                      per_dimension=True),
        ("imagery-perception-rule", False): decoder.rescale_to_training(raw, mean, sd, centre="training",
                                                                        per_dimension=False),
        ("none", True): np.asarray(raw, np.float32),
        ("per-dimension", True): decoder.rescale_to_training(raw, mean, sd, centre="training", per_dimension=True),
        ("shipped", True): decoder.rescale_items(raw, mean, sd, perception=True),
        ("shipped", False): decoder.rescale_items(raw, mean, sd, perception=False),
    }
    for (variant, perception), want in expected.items():
        with probe._patched(variant):
            got = reconstruct.rescale_items(raw, mean, sd, perception=perception)
            assert np.allclose(reconstruct.standardise_like(betas, reference), shipped_betas), variant
        assert np.allclose(got, want), (variant, perception)
    assert reconstruct.rescale_items is decoder.rescale_items          # restored
