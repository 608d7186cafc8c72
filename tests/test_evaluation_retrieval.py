"""Retrieval among distinct candidates: known answers."""

import numpy as np
import pytest

from bids_m2i.evaluation.retrieval import (
    RetrievalDraws,
    distinct_targets,
    draw_retrieval_scores,
    rank_candidates,
    retrieval_draw_subsets,
    similarity_matrix,
    topk_hits,
)


def test_similarity_matches_numpy_corrcoef_and_cosine():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 10)), rng.normal(size=(6, 10))
    expected = np.corrcoef(a, b)[:4, 4:]
    np.testing.assert_allclose(similarity_matrix(a, b, "pearson"), expected, atol=1e-12)
    cos = (a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None]
    np.testing.assert_allclose(similarity_matrix(a, b, "cosine"), cos, atol=1e-12)


def test_torch_input_accepted():
    torch = pytest.importorskip("torch")
    a = torch.randn(3, 5)
    assert rank_candidates(a, a).shape == (3, 3)


def test_exact_features_give_perfect_retrieval():
    rng = np.random.default_rng(1)
    cand = rng.normal(size=(50, 32))
    order = rank_candidates(cand, cand, metric="cosine")
    np.testing.assert_array_equal(order[:, 0], np.arange(50))
    hits = topk_hits(cand, cand, np.arange(50), k=(1, 5))
    assert hits[1].all() and hits[5].all()


def test_rank_order_is_by_similarity():
    cand = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    pred = np.array([[1.0, 0.1]])
    np.testing.assert_array_equal(rank_candidates(pred, cand, "cosine")[0], [0, 2, 1])


def test_topk_counts_position_of_true_candidate():
    cand = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    pred = np.array([[1.0, 0.1], [1.0, 0.1]])
    hits = topk_hits(pred, cand, [2, 1], k=(1, 2, 3), metric="cosine")
    np.testing.assert_array_equal(hits[1], [False, False])
    np.testing.assert_array_equal(hits[2], [True, False])
    np.testing.assert_array_equal(hits[3], [True, True])


def test_ties_count_against_and_constant_prediction_retrieves_nothing():
    cand = np.eye(4)
    hits = topk_hits(np.ones((4, 4)), cand, np.arange(4), k=(1,), metric="pearson")
    assert not hits[1].any()


def test_distinct_targets_collapse_repeats():
    ids = ["b", "a", "b", "c", "a", "b"]
    feats = np.array([[1.0, 0], [0, 1], [1, 0], [1, 1], [0, 1], [1, 0]])
    dt = distinct_targets(ids, feats)
    assert dt.ids == ["b", "a", "c"]
    np.testing.assert_array_equal(dt.true_index, [0, 1, 0, 2, 1, 0])
    np.testing.assert_array_equal(dt.counts, [3, 2, 1])
    np.testing.assert_array_equal(dt.features, [[1, 0], [0, 1], [1, 1]])
    assert dt.n_candidates == 3


def test_repeated_targets_do_not_create_ties():
    # Six trials of three stimuli; each prediction equals its target: every trial must be a top-1 hit.
    rng = np.random.default_rng(2)
    base = rng.normal(size=(3, 16))
    ids = ["s0", "s1", "s2", "s0", "s1", "s2"]
    feats = base[[0, 1, 2, 0, 1, 2]]
    dt = distinct_targets(ids, feats)
    assert dt.features.shape == (3, 16)
    hits = topk_hits(feats, dt.features, dt.true_index, k=1)
    assert hits[1].all()
    # Against the non-distinct rows the duplicates tie with the truth and (conservatively) never win.
    naive = topk_hits(feats, feats, np.arange(6), k=1)
    assert not naive[1].any()


def test_distinct_targets_mean_reduce():
    dt = distinct_targets(["x", "x", "y"], np.array([[0.0], [2.0], [5.0]]), reduce="mean")
    np.testing.assert_allclose(dt.features, [[1.0], [5.0]])


def test_draw_subsets_and_scores():
    assert len(retrieval_draw_subsets(10, 300, 30)) == 1
    subsets = retrieval_draw_subsets(500, 300, 30, seed=3)
    assert len(subsets) == 30 and all(len(s) == 300 and len(np.unique(s)) == 300 for s in subsets)
    again = retrieval_draw_subsets(500, 300, 30, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(subsets, again))
    sim = np.eye(500) + 0.01 * np.random.default_rng(0).normal(size=(500, 500))
    scores = draw_retrieval_scores(sim, np.arange(500), np.arange(500), subsets, ks=(1, 5))
    assert scores[1] == 1.0 and scores[5] == 1.0
    # A null pairing scores near chance 1/300.
    perm = np.random.default_rng(4).permutation(500)
    null = draw_retrieval_scores(sim, np.arange(500), perm, subsets, ks=(1,))
    assert null[1] < 0.03


def test_retrieval_draws_match_brute_force_for_a_permuted_pairing():
    rng = np.random.default_rng(5)
    sim = rng.normal(size=(40, 25))
    group = rng.integers(0, 25, 40)
    subsets = retrieval_draw_subsets(25, 10, 4, seed=1)
    perm = rng.permutation(25)
    fast = RetrievalDraws(sim, group, subsets).scores(perm, ks=(1, 3))
    expected = {1: [], 3: []}
    for subset in subsets:
        accs = {1: [], 3: []}
        for q in range(40):
            true = perm[group[q]]
            if true not in subset:
                continue
            others = [c for c in subset if c != true]
            better = sum(sim[q, c] >= sim[q, true] for c in others)
            for k in accs:
                accs[k].append(better < k)
        for k in accs:
            if accs[k]:
                expected[k].append(np.mean(accs[k]))
    for k in (1, 3):
        assert fast[k][0] == pytest.approx(np.mean(expected[k]))
