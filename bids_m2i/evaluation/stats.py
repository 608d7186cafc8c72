"""Chance levels and permutation p-values for the evaluation metrics.

Null hypothesis: the pairing of predictions with targets carries no information. A permutation relabels
the *distinct* targets (target ``t`` becomes ``perm[t]`` for every item that had ``t``), so repeats of one
stimulus stay together, as they would under a real pairing, and the candidate set is unchanged. The
p-value counts permutations scoring at least as well as the observed pairing (Phipson & Smyth 2010):

    p = (1 + #{perm: null >= observed}) / (1 + n_perm)      (``>`` better)
    p = (1 + #{perm: null <= observed}) / (1 + n_perm)      (lower better, e.g. distances)

so p is never 0 and is exact (uniform up to ties) under the null.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = [
    "CHANCE_TWOWAY",
    "chance_topk",
    "target_permutations",
    "permutation_pvalue",
    "null_from_pair_function",
]

#: Two-way identification picks one of two candidates.
CHANCE_TWOWAY = 0.5


def chance_topk(k: int, n_candidates: int) -> float:
    """Chance of the true candidate being among the top ``k`` of ``n_candidates`` (k / n, at most 1)."""
    if n_candidates <= 0:
        return float("nan")
    return min(1.0, k / n_candidates)


def target_permutations(n_distinct: int, n_perm: int, seed: int = 0) -> np.ndarray:
    """Random relabelings of the distinct targets, shape (n_perm, n_distinct), seeded."""
    rng = np.random.default_rng(seed)
    if n_perm <= 0 or n_distinct == 0:
        return np.zeros((0, n_distinct), dtype=np.int64)
    return np.stack([rng.permutation(n_distinct) for _ in range(int(n_perm))])


def permutation_pvalue(observed: float, null: np.ndarray, higher_is_better: bool = True) -> float:
    """Permutation p-value, direction-aware; NaN without a null or a finite observed value."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if null.size == 0 or not np.isfinite(observed):
        return float("nan")
    # a relative tolerance so that float noise in an identical statistic still counts as "as good"
    tol = 1e-12 * max(1.0, abs(observed))
    if higher_is_better:
        as_good = np.count_nonzero(null >= observed - tol)
    else:
        as_good = np.count_nonzero(null <= observed + tol)
    return float((1 + as_good) / (1 + null.size))


def null_from_pair_function(
    pair_function: Callable[[np.ndarray, np.ndarray], np.ndarray],
    true_index: np.ndarray,
    permutations: np.ndarray,
    max_pairs: int | None = None,
) -> tuple[float, np.ndarray]:
    """Observed mean and null means of a per-pair metric under target relabelings.

    Parameters
    ----------
    pair_function : callable(item_index, target_index) -> values (p,)
        Scores item ``item_index[q]`` against distinct target ``target_index[q]``.
    true_index : int array (n,)
        Distinct target of each item.
    permutations : int array (n_perm, m)
    max_pairs : int, optional
        Budget of distinct (item, target) pairs to evaluate. Permutations are used in order until the
        budget would be exceeded; the null then has fewer entries (the caller reports how many).

    Returns
    -------
    observed : float
        Mean over items of the metric with the true pairing.
    null : numpy.ndarray, shape (n_used,)
        The same mean for each permutation used.
    """
    true_index = np.asarray(true_index, dtype=np.int64)
    n_items = true_index.shape[0]
    n_targets = permutations.shape[1] if permutations.size else int(true_index.max(initial=-1) + 1)
    items = np.arange(n_items)
    # pair key = item * n_targets + target; the true pairing comes first so it is always evaluated
    assignments = np.vstack([true_index[None, :], permutations[:, true_index]]) if permutations.size else true_index[None, :]
    keys = (items[None, :] * n_targets + assignments).ravel()
    unique_keys, first_seen = np.unique(keys, return_index=True)
    n_used = permutations.shape[0]
    if max_pairs is not None and unique_keys.size > max_pairs:
        # distinct pairs needed by the true pairing plus the first P permutations, for every P
        first_seen_sorted = np.sort(first_seen)
        needed_by = np.searchsorted(first_seen_sorted, (np.arange(n_used + 1) + 1) * n_items)
        n_used = int(np.searchsorted(needed_by, max_pairs, side="right")) - 1
        n_used = max(n_used, 0)
        unique_keys = np.unique(keys[: (n_used + 1) * n_items])
    matrix = np.full((n_items, n_targets), np.nan)
    rows, cols = unique_keys // n_targets, unique_keys % n_targets
    matrix[rows, cols] = pair_function(rows, cols)
    observed = float(matrix[items, true_index].mean())
    null = matrix[items[None, :], assignments[1 : n_used + 1]].mean(axis=1) if n_used else np.zeros(0)
    return observed, null
