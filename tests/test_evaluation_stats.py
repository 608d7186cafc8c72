"""Chance levels and permutation p-values."""

import numpy as np

from bids_m2i.evaluation.metrics import twoway_from_similarity
from bids_m2i.evaluation.retrieval import similarity_matrix
from bids_m2i.evaluation.stats import (
    CHANCE_TWOWAY,
    chance_topk,
    null_from_pair_function,
    permutation_pvalue,
    target_permutations,
)


def test_chance_levels():
    assert CHANCE_TWOWAY == 0.5
    assert chance_topk(1, 300) == 1 / 300
    assert chance_topk(5, 300) == 5 / 300
    assert chance_topk(5, 4) == 1.0
    assert np.isnan(chance_topk(1, 0))


def test_pvalue_formula_and_direction():
    null = np.array([0.1, 0.2, 0.3, 0.4])
    assert permutation_pvalue(0.35, null) == (1 + 1) / 5
    assert permutation_pvalue(0.9, null) == 1 / 5
    assert permutation_pvalue(0.0, null) == 1.0
    # lower is better (distances): small observed -> small p
    assert permutation_pvalue(0.05, null, higher_is_better=False) == 1 / 5
    assert permutation_pvalue(0.25, null, higher_is_better=False) == 3 / 5
    assert np.isnan(permutation_pvalue(0.5, np.array([])))


def test_permutations_are_seeded_permutations():
    a, b = target_permutations(10, 5, seed=1), target_permutations(10, 5, seed=1)
    assert np.array_equal(a, b) and a.shape == (5, 10)
    assert all(np.array_equal(np.sort(row), np.arange(10)) for row in a)
    assert not np.array_equal(a, target_permutations(10, 5, seed=2))


def _twoway_p(predictions, targets, true_index, n_perm, seed):
    matrix = twoway_from_similarity(similarity_matrix(predictions, targets))
    perms = target_permutations(targets.shape[0], n_perm, seed)
    observed, null = null_from_pair_function(lambda i, t: matrix[i, t], true_index, perms)
    return observed, permutation_pvalue(observed, null)


def test_real_effect_gives_small_p():
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(30, 40))
    predictions = targets + 2.0 * rng.normal(size=targets.shape)
    observed, p = _twoway_p(predictions, targets, np.arange(30), 999, 0)
    assert observed > 0.7
    assert p == 1 / 1000


def test_null_pvalues_are_uniform():
    rng = np.random.default_rng(1)
    pvalues = []
    for rep in range(300):
        targets = rng.normal(size=(12, 8))
        predictions = rng.normal(size=(12, 8))
        pvalues.append(_twoway_p(predictions, targets, np.arange(12), 99, rep)[1])
    pvalues = np.array(pvalues)
    # uniform on (0, 1]: about 5 % below 0.05, 50 % below 0.5 (binomial sd ~1.3 % and ~2.9 %)
    assert 0.015 <= np.mean(pvalues <= 0.05) <= 0.09
    assert 0.40 <= np.mean(pvalues <= 0.5) <= 0.60
    from scipy.stats import kstest

    assert kstest(pvalues, "uniform").pvalue > 0.001


def test_pair_budget_limits_permutations_and_keeps_observed():
    matrix = np.arange(20.0).reshape(4, 5)
    perms = target_permutations(5, 50, seed=0)
    calls = []

    def pair_function(i, t):
        calls.append(len(i))
        return matrix[i, t]

    observed, null = null_from_pair_function(pair_function, np.array([0, 1, 2, 3]), perms, max_pairs=8)
    assert observed == np.mean([0, 6, 12, 18])
    assert 0 < null.size < 50 and sum(calls) <= 8
    observed_all, null_all = null_from_pair_function(pair_function, np.array([0, 1, 2, 3]), perms)
    assert observed_all == observed and null_all.size == 50
    assert np.array_equal(null_all[: null.size], null)
