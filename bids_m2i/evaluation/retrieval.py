"""Retrieval and identification among *distinct* candidates.

A prediction (decoded feature vector) is compared with a set of candidate target vectors; the candidates are
distinct stimuli (or categories), never one row per trial: a stimulus shown four times is one candidate, so
repeats cannot create ties with themselves or count twice.

Tie policy (documented in ``docs/evaluation.md``): the true candidate counts as retrieved within the top *k*
only when fewer than *k* **other** candidates are at least as similar to the prediction as it is. A
prediction that is equally similar to everything (e.g. a constant vector) therefore retrieves nothing,
instead of winning by candidate order. :func:`rank_candidates` itself breaks ties by candidate index
(stable sort) because it must return a full order.

All functions accept numpy arrays or torch tensors and return numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "as_numpy",
    "similarity_matrix",
    "rank_candidates",
    "topk_hits",
    "DistinctTargets",
    "distinct_targets",
    "retrieval_draw_subsets",
    "RetrievalDraws",
    "draw_retrieval_scores",
]

METRICS = ("pearson", "cosine")


def as_numpy(array) -> np.ndarray:
    """Return ``array`` (numpy, torch tensor or nested list) as a float64 numpy array."""
    if hasattr(array, "detach"):  # torch tensor, possibly on the GPU
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float64)


def _unit_rows(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows scaled (and centred for Pearson) so that a dot product is the similarity.

    Rows of zero norm stay zero: their similarity with anything is 0 (not NaN), which the tie policy turns
    into "retrieves nothing".
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    x = x.reshape(x.shape[0], -1)
    if metric == "pearson":
        x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def similarity_matrix(predictions, candidates, metric: str = "pearson") -> np.ndarray:
    """Similarity of every prediction with every candidate.

    Parameters
    ----------
    predictions : array, shape (n, d)
    candidates : array, shape (m, d)
    metric : {"pearson", "cosine"}
        Pearson correlation (rows centred, then cosine) or cosine similarity.

    Returns
    -------
    numpy.ndarray, shape (n, m), float64
    """
    pred = as_numpy(predictions)
    cand = as_numpy(candidates)
    if pred.ndim == 1:
        pred = pred[None]
    if cand.ndim == 1:
        cand = cand[None]
    if pred.reshape(pred.shape[0], -1).shape[1] != cand.reshape(cand.shape[0], -1).shape[1]:
        raise ValueError(
            f"predictions have {pred[0].size} features but candidates have {cand[0].size}: "
            "compare vectors of the same feature space"
        )
    return _unit_rows(pred, metric) @ _unit_rows(cand, metric).T


def rank_candidates(predictions, candidates, metric: str = "pearson") -> np.ndarray:
    """Candidate indices ordered from most to least similar, for each prediction.

    Parameters
    ----------
    predictions : array, shape (n, d)
    candidates : array, shape (m, d)
    metric : {"pearson", "cosine"}

    Returns
    -------
    numpy.ndarray, shape (n, m), int64
        Row ``i`` lists candidate indices best first; equal similarities keep candidate order.
    """
    similarity = similarity_matrix(predictions, candidates, metric)
    return np.argsort(-similarity, axis=1, kind="stable")


def _n_at_least_as_similar(similarity: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """For each row, how many *other* candidates are at least as similar as the true one."""
    rows = np.arange(similarity.shape[0])
    true_similarity = similarity[rows, true_index]
    return (similarity >= true_similarity[:, None]).sum(axis=1) - 1


def topk_hits(
    predictions,
    candidates,
    true_index,
    k: int | Iterable[int] = (1, 5),
    metric: str = "pearson",
) -> dict[int, np.ndarray]:
    """Whether each prediction's true candidate is among its *k* most similar candidates.

    Parameters
    ----------
    predictions : array, shape (n, d)
    candidates : array, shape (m, d)
        Distinct candidates (see :func:`distinct_targets`).
    true_index : array of int, shape (n,)
        Row of ``candidates`` that is the target of each prediction.
    k : int or iterable of int
    metric : {"pearson", "cosine"}

    Returns
    -------
    dict
        ``{k: bool array of shape (n,)}``. Ties count against the prediction (see the module docstring).
        With fewer than ``k`` candidates every prediction is a hit (reported chance is then 1).
    """
    similarity = similarity_matrix(predictions, candidates, metric)
    true_index = np.asarray(true_index, dtype=np.int64).reshape(-1)
    if true_index.shape[0] != similarity.shape[0]:
        raise ValueError(f"true_index has {true_index.shape[0]} entries for {similarity.shape[0]} predictions")
    if true_index.size and (true_index.min() < 0 or true_index.max() >= similarity.shape[1]):
        raise ValueError("true_index points outside the candidate set")
    ks = (k,) if isinstance(k, (int, np.integer)) else tuple(k)
    n_better = _n_at_least_as_similar(similarity, true_index)
    return {int(kk): n_better < int(kk) for kk in ks}


@dataclass(frozen=True)
class DistinctTargets:
    """Distinct candidates built from per-item target ids.

    Attributes
    ----------
    ids : list of str, length m
        Distinct target ids in order of first appearance.
    true_index : numpy.ndarray of int, shape (n,)
        For each item, the row of ``ids`` (and ``features``) that is its target.
    features : numpy.ndarray, shape (m, d), or None
        One feature row per distinct target (None when no features were given).
    counts : numpy.ndarray of int, shape (m,)
        How many items have each distinct target.
    """

    ids: list
    true_index: np.ndarray
    features: np.ndarray | None
    counts: np.ndarray

    @property
    def n_candidates(self) -> int:
        return len(self.ids)


def distinct_targets(target_ids: Sequence, target_features=None, reduce: str = "first") -> DistinctTargets:
    """Collapse per-item targets into distinct candidates.

    Parameters
    ----------
    target_ids : sequence of hashable, length n
        Identity of each item's target (stimulus id or category); repeats allowed.
    target_features : array, shape (n, d), optional
        Each item's target features. Items sharing an id normally share identical rows.
    reduce : {"first", "mean"}
        Which row represents a distinct id: the first item's (exact; the default, since repeats of one
        stimulus have the same features) or the mean over its items (for targets whose rows differ, e.g.
        several exemplars of a category).

    Returns
    -------
    DistinctTargets
    """
    ids = [str(t) if not isinstance(t, str) else t for t in target_ids]
    order: dict[str, int] = {}
    true_index = np.empty(len(ids), dtype=np.int64)
    for i, target in enumerate(ids):
        true_index[i] = order.setdefault(target, len(order))
    distinct = list(order)
    counts = np.bincount(true_index, minlength=len(distinct)).astype(np.int64)
    features = None
    if target_features is not None:
        feats = as_numpy(target_features)
        if feats.shape[0] != len(ids):
            raise ValueError(f"{feats.shape[0]} target feature rows for {len(ids)} target ids")
        feats = feats.reshape(feats.shape[0], -1)
        if reduce == "first":
            first_rows = np.zeros(len(distinct), dtype=np.int64)
            seen = np.zeros(len(distinct), dtype=bool)
            for i, c in enumerate(true_index):
                if not seen[c]:
                    first_rows[c] = i
                    seen[c] = True
            features = feats[first_rows]
        elif reduce == "mean":
            features = np.zeros((len(distinct), feats.shape[1]))
            np.add.at(features, true_index, feats)
            features /= counts[:, None]
        else:
            raise ValueError(f"reduce must be 'first' or 'mean', got {reduce!r}")
    return DistinctTargets(ids=distinct, true_index=true_index, features=features, counts=counts)


def retrieval_draw_subsets(
    n_distinct: int, n_candidates: int = 300, n_draws: int = 30, seed: int = 0
) -> list[np.ndarray]:
    """Random candidate subsets for retrieval, as MindEye draws them.

    MindEye (Scotti et al. 2023) scores retrieval among 300 random test images, averaged over 30 draws.
    When there are no more distinct targets than ``n_candidates``, every draw would be the whole set, so
    a single draw is returned (the average over identical draws is that draw).

    Returns
    -------
    list of numpy.ndarray of int
        Sorted indices into the distinct targets, one array per draw.
    """
    size = min(int(n_candidates), int(n_distinct))
    if size >= n_distinct:
        return [np.arange(n_distinct)]
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_distinct, size=size, replace=False)) for _ in range(int(n_draws))]


class RetrievalDraws:
    """Top-k retrieval over random candidate subsets, fast for many pairings (observed and null).

    For each draw the similarity matrix restricted to that draw's candidates is ranked once; scoring a
    pairing (true or permuted) is then a look-up per query.

    Parameters
    ----------
    similarity : array, shape (n_queries, m)
        Similarity of each query with every distinct candidate.
    query_group : array of int, shape (n_queries,)
        Which distinct target (0..m-1) each query belongs to.
    subsets : list of int arrays
        Candidate columns of each draw (see :func:`retrieval_draw_subsets`).
    """

    def __init__(self, similarity, query_group, subsets: Sequence[np.ndarray]):
        from scipy.stats import rankdata

        similarity = as_numpy(similarity)
        self.n_candidates_total = similarity.shape[1]
        self.query_group = np.asarray(query_group, dtype=np.int64)
        self.subsets = [np.asarray(s, dtype=np.int64) for s in subsets]
        self._position = []
        self._n_better = []
        for subset in self.subsets:
            position = np.full(self.n_candidates_total, -1, dtype=np.int64)
            position[subset] = np.arange(subset.size)
            # rank 'min' (ascending) = 1 + #strictly less; #others at least as similar = size - rank
            ranks = rankdata(similarity[:, subset], axis=1, method="min")
            self._position.append(position)
            self._n_better.append((subset.size - ranks).astype(np.int32))

    def scores(self, candidate_of_group=None, ks: Sequence[int] = (1, 5)) -> dict[int, np.ndarray]:
        """Mean top-k accuracy over draws for one or several pairings.

        Parameters
        ----------
        candidate_of_group : int array (m,) or (n_pairings, m), optional
            Column that is the true candidate of each distinct target; identity (the real pairing) if None.
        ks : sequence of int

        Returns
        -------
        dict
            ``{k: array (n_pairings,)}`` (a 1-element array for a single pairing). Within a draw, queries
            whose true candidate is in the draw are scored; draws are averaged (NaN if none scored).
        """
        if candidate_of_group is None:
            candidate_of_group = np.arange(self.n_candidates_total)
        mapping = np.atleast_2d(np.asarray(candidate_of_group, dtype=np.int64))
        true_column = mapping[:, self.query_group]  # (n_pairings, n_queries)
        rows = np.arange(self.query_group.size)[None, :]
        sums = {int(k): np.zeros(mapping.shape[0]) for k in ks}
        n_draws = np.zeros(mapping.shape[0])
        for position, n_better in zip(self._position, self._n_better):
            pos = position[true_column]
            valid = pos >= 0
            counts = valid.sum(axis=1)
            better = n_better[np.broadcast_to(rows, pos.shape), np.where(valid, pos, 0)]
            scored = counts > 0
            n_draws += scored
            for k in sums:
                hits = ((better < k) & valid).sum(axis=1)
                sums[k] += np.where(scored, hits / np.maximum(counts, 1), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {k: np.where(n_draws > 0, v / n_draws, np.nan) for k, v in sums.items()}


def draw_retrieval_scores(
    similarity: np.ndarray,
    item_group: np.ndarray,
    candidate_of_group: np.ndarray,
    subsets: Sequence[np.ndarray],
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Mean top-k accuracy over candidate subsets for one pairing (see :class:`RetrievalDraws`).

    Parameters
    ----------
    similarity : array, shape (n_queries, m)
    item_group : array of int, shape (n_queries,)
        Which distinct target (0..m-1) each query belongs to.
    candidate_of_group : array of int, shape (m,)
        Column of ``similarity`` that is the true candidate of each distinct target (the identity for
        real pairings; a permutation for a null pairing).
    subsets : list of arrays of int
    ks : sequence of int

    Returns
    -------
    dict
        ``{k: accuracy}`` averaged over draws.
    """
    result = RetrievalDraws(similarity, item_group, subsets).scores(candidate_of_group, ks)
    return {k: float(v[0]) for k, v in result.items()}
