"""The long metrics table: every number with its chance level and a permutation p-value.

Columns (DESIGN.md): ``condition cue metric feature_space value chance p_value n_items n_candidates note``.
One call of :func:`evaluate_reconstructions` scores one (condition, cue) group of test items; concatenate
the frames of all groups and write them with :func:`write_metrics_table`.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .feature_spaces import extract_features
from .metrics import (
    all_pairs,
    images_to_tensor,
    pixcorr_pairs,
    ssim_pairs,
    twoway_from_similarity,
)
from .retrieval import (
    RetrievalDraws,
    as_numpy,
    distinct_targets,
    retrieval_draw_subsets,
    similarity_matrix,
)
from .stats import (
    CHANCE_TWOWAY,
    chance_topk,
    null_from_pair_function,
    permutation_pvalue,
    target_permutations,
)

__all__ = [
    "METRICS_TABLE_COLUMNS",
    "TWOWAY_SPACES",
    "DISTANCE_SPACES",
    "evaluate_reconstructions",
    "conditions_side_by_side",
    "write_metrics_table",
]

LOG = logging.getLogger("m2i.evaluation")

METRICS_TABLE_COLUMNS = [
    "condition", "cue", "metric", "feature_space", "value", "chance", "p_value", "n_items", "n_candidates", "note",
]
#: Feature spaces in which two-way identification is reported (MindEye's table + pixels).
TWOWAY_SPACES = ("pixels", "alexnet2", "alexnet5", "inception", "clip")
#: Feature space -> distance metric name (lower is better).
DISTANCE_SPACES = {"effnet": "effnet_dist", "swav": "swav_dist"}


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


class _Rows:
    """Collects table rows for one (condition, cue) group."""

    def __init__(self, condition: str, cue: str, note: str):
        self.condition, self.cue, self.note = condition, cue, note
        self.rows: list[dict] = []

    def add(self, metric, space, value, chance, p_value, n_items, n_candidates, note=""):
        self.rows.append({
            "condition": self.condition, "cue": self.cue, "metric": metric, "feature_space": space,
            "value": float(value), "chance": float(chance), "p_value": float(p_value),
            "n_items": int(n_items), "n_candidates": int(n_candidates), "note": _join(note, self.note),
        })

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=METRICS_TABLE_COLUMNS)


#: fewest voxels over which brain_corr (a Pearson r across voxels) is computed
MIN_BRAIN_CORR_VOXELS = 3

#: note of the rows whose chance and p-value do not exist because the group has one distinct target
SINGLE_TARGET_NOTE = "one distinct target: no other pairing to compare with, so no chance level or p-value"


def _null_note(n_null: int, n_perm: int) -> str:
    if n_perm and n_null < n_perm:
        return f"p from {n_null} of {n_perm} permutations (pair budget)"
    return ""


def _matrix_metric(rows: _Rows, metric, space, matrix, true_index, perms, higher_is_better, chance=None, note=""):
    """Observed mean, null and p-value of a (items x distinct targets) score matrix; adds one row."""
    observed, null = null_from_pair_function(lambda i, t: matrix[i, t], true_index, perms)
    if matrix.shape[1] < 2:
        # one distinct target: every "shuffled" pairing is the true one, so the null would be the observed value
        # itself (chance = value, p = 1, read as "no better than chance"); the value stands, the rest does not
        null = np.zeros(0)
        note = _join(note, SINGLE_TARGET_NOTE)
    p_value = permutation_pvalue(observed, null, higher_is_better)
    # without an analytic chance (pixcorr, ssim, distances) chance is the mean under shuffled pairings
    if chance is None:
        chance = float(np.mean(null)) if null.size else float("nan")
        if null.size:
            note = _join(note, "chance = mean under shuffled pairings")
    rows.add(metric, space, observed, chance, p_value, len(true_index), matrix.shape[1], note)


def _image_metrics(rows, recon_images, target_images, targets, perms, extractors, n_perm, ssim_max_pairs, device):
    """pixcorr, ssim, two-way (pixels and network spaces) and feature distances from images."""
    n_items, n_distinct = len(recon_images), targets.n_candidates
    first_of_target = [int(np.flatnonzero(targets.true_index == c)[0]) for c in range(n_distinct)]
    recon = images_to_tensor(recon_images)
    distinct_images = images_to_tensor([target_images[i] for i in first_of_target])
    true_index = targets.true_index

    pixel_corr = pixcorr_pairs(recon, distinct_images, *all_pairs(n_items, n_distinct)).reshape(n_items, n_distinct)
    _matrix_metric(rows, "pixcorr", "pixels", pixel_corr, true_index, perms, True)

    observed, null = null_from_pair_function(
        lambda i, t: ssim_pairs(recon, distinct_images, i, t, device=device), true_index,
        perms if n_distinct >= 2 else perms[:0],  # one target: no null to compute (see _matrix_metric)
        max_pairs=ssim_max_pairs,
    )
    ssim_note = (_join("chance = mean under shuffled pairings", _null_note(null.size, n_perm)) if n_distinct >= 2
                 else SINGLE_TARGET_NOTE)
    rows.add("ssim", "pixels", observed, float(np.mean(null)) if null.size else float("nan"),
             permutation_pvalue(observed, null, True), n_items, n_distinct, ssim_note)

    spaces_note = "against distinct other targets"
    if n_distinct >= 2:
        _matrix_metric(rows, "twoway", "pixels", twoway_from_similarity(pixel_corr), true_index, perms, True,
                       CHANCE_TWOWAY, spaces_note)
    if not extractors:
        return
    wanted = [s for s in extractors if s in TWOWAY_SPACES or s in DISTANCE_SPACES]
    recon_features = extract_features(extractors, recon_images, wanted)
    target_features = extract_features(extractors, [target_images[i] for i in first_of_target], wanted)
    for space in wanted:
        source = getattr(extractors[space], "source", "")
        similarity = similarity_matrix(recon_features[space], target_features[space], "pearson")
        if space in DISTANCE_SPACES:
            _matrix_metric(rows, DISTANCE_SPACES[space], space, 1.0 - similarity, true_index, perms, False,
                           note=_join("correlation distance, lower is better", source))
        elif n_distinct >= 2:
            _matrix_metric(rows, "twoway", space, twoway_from_similarity(similarity), true_index, perms, True,
                           CHANCE_TWOWAY, _join(spaces_note, source))


def _retrieval_metrics(rows, space, predictions, targets, perms, n_candidates, n_draws, seed, metric):
    """image_top1, top5 (prediction -> distinct targets) and brain_top1 (target -> mean predictions)."""
    n_distinct = targets.n_candidates
    size = min(int(n_candidates), n_distinct)
    if n_distinct < 2:
        for name in ("image_top1", "top5", "brain_top1"):
            rows.add(name, space, np.nan, np.nan, np.nan, len(predictions), n_distinct,
                     "retrieval needs at least 2 distinct targets")
        return
    subsets = retrieval_draw_subsets(n_distinct, n_candidates, n_draws, seed)
    how = (f"mean over {len(subsets)} draws of {size} of {n_distinct} distinct candidates"
           if size < n_distinct else f"among all {n_distinct} distinct candidates")
    how = _join(how, f"{metric} similarity")
    null_perms = perms if perms.size else None

    image_draws = RetrievalDraws(similarity_matrix(predictions, targets.features, metric), targets.true_index, subsets)
    observed = image_draws.scores(None, (1, 5))
    null = image_draws.scores(null_perms, (1, 5)) if null_perms is not None else {1: np.zeros(0), 5: np.zeros(0)}
    for name, k in (("image_top1", 1), ("top5", 5)):
        rows.add(name, space, observed[k][0], chance_topk(k, size), permutation_pvalue(observed[k][0], null[k], True),
                 len(predictions), size, _join(how, "prediction -> target" + (" (trivial: k >= candidates)" if k >= size else "")))

    # brain retrieval: each distinct target picks its prediction among predictions of distinct targets
    # (repeats of a target are averaged into one candidate, so repeats cannot tie with each other)
    mean_predictions = np.zeros((n_distinct, predictions.shape[1]))
    np.add.at(mean_predictions, targets.true_index, predictions)
    mean_predictions /= targets.counts[:, None]
    brain_draws = RetrievalDraws(similarity_matrix(targets.features, mean_predictions, metric), np.arange(n_distinct), subsets)
    observed_b = brain_draws.scores(None, (1,))[1][0]
    null_b = brain_draws.scores(null_perms, (1,))[1] if null_perms is not None else np.zeros(0)
    rows.add("brain_top1", space, observed_b, chance_topk(1, size), permutation_pvalue(observed_b, null_b, True),
             n_distinct, size, _join(how, "target -> mean prediction per distinct target"))


def _brain_correlation(rows, space, predicted, measured, targets, perms):
    """``brain_corr``: r(predicted betas of reconstruction i, measured betas of target c), items x distinct."""
    n_distinct = targets.n_candidates
    if measured.shape[1] < MIN_BRAIN_CORR_VOXELS:
        # a Pearson r over 1 voxel is undefined (it came out 0.0, chance 0.0) and over 2 voxels always +-1 (it
        # came out 1.0 against a chance of 0.01): neither says anything about the reconstruction
        rows.add("brain_corr", space, np.nan, np.nan, np.nan, len(targets.true_index), n_distinct,
                 f"brain_corr needs at least {MIN_BRAIN_CORR_VOXELS} voxels (a correlation over voxels); the decoder "
                 f"uses {measured.shape[1]}")
        return
    mean_measured = np.zeros((n_distinct, measured.shape[1]))
    np.add.at(mean_measured, targets.true_index, measured)
    mean_measured /= targets.counts[:, None]
    matrix = similarity_matrix(predicted, mean_measured, "pearson")
    _matrix_metric(rows, "brain_corr", space, matrix, targets.true_index, perms, True,
                   note="encoding model (ridge, training perception) from the reconstruction's features to betas; "
                   "Pearson r over the decoder's voxels with the item's measured betas")


def evaluate_reconstructions(
    recon_images: Sequence | None,
    target_images: Sequence | None,
    pred_features: Mapping[str, object] | None,
    target_features: Mapping[str, object] | None,
    target_ids: Sequence[str],
    condition: str,
    cue: str,
    feature_extractors: Mapping | None = None,
    n_perm: int = 1000,
    seed: int = 0,
    retrieval_candidates: int = 300,
    retrieval_draws: int = 30,
    retrieval_metric: str = "cosine",
    ssim_max_pairs: int | None = -1,
    device: str = "auto",
    note: str = "",
    brain_betas: Mapping[str, tuple] | None = None,
) -> pd.DataFrame:
    """Rows of the metrics table for one group of test items (one condition and cue).

    Parameters
    ----------
    recon_images : sequence of images (PIL, arrays, tensors in [0, 1]) of length n, or None
        Reconstructions, one per test item.
    target_images : sequence of length n (or None)
        The image each item targets (seen image, or the imagery cue image). None, or None entries, when a
        target has no image (imagery from a text cue): image metrics are then skipped.
    pred_features : dict space -> array (n, d), optional
        Decoded feature vectors (e.g. ``clip``, ``pixels``), for retrieval.
    target_features : dict space -> array (n, d), optional
        Each item's target features in the same spaces (rows of repeated targets are identical).
    target_ids : sequence of str, length n
        Identity of each item's target; repeats become one distinct candidate.
    condition, cue : str
        Written to the table (``perception``/``imagery``; ``image``/``text``/``none``).
    feature_extractors : dict space -> callable(images) -> (n, d), optional
        From :func:`~bids_m2i.evaluation.feature_spaces.load_feature_extractors`; spaces missing here are
        not reported (``pixels`` needs none).
    n_perm : int
        Permutations (relabelings of distinct targets) for the p-values; 0 gives NaN p-values.
    seed : int
        Seeds the permutations and the retrieval draws.
    retrieval_candidates, retrieval_draws : int
        MindEye: 300 candidates, 30 draws (one draw when there are no more distinct targets than that).
    retrieval_metric : {"cosine", "pearson"}
        MindEye scores retrieval with cosine similarity of CLIP embeddings.
    ssim_max_pairs : int or None
        Budget of (reconstruction, target) SSIM pairs for the null; beyond it fewer permutations are used
        and the note says how many. -1 (default): 10 000 on CPU (about a minute), 200 000 on CUDA;
        None: no limit.
    device : "auto", "cpu" or "cuda"
        Where SSIM runs ("auto": CUDA when available).
    note : str
        Appended to every row's note (e.g. "tiny random-weight models: numbers are meaningless").
    brain_betas : dict space -> (predicted, measured), optional
        Brain correlation (MIRAGE, NSD-Imagery): ``predicted`` (n, v) are the betas an encoding model
        (fitted on training perception) predicts from each reconstruction's features in ``space``,
        ``measured`` (n, v) the item's own betas, in the decoder's voxels. The score is the Pearson r over
        voxels of each item's predicted and measured betas, averaged over items; the null pairs a
        reconstruction with the mean measured betas of another distinct target.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`METRICS_TABLE_COLUMNS`.
    """
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if ssim_max_pairs == -1:
        ssim_max_pairs = 200_000 if str(device).startswith("cuda") else 10_000
    target_ids = [str(t) for t in target_ids]
    n_items = len(target_ids)
    rows = _Rows(condition, cue, note)
    if n_items == 0:
        return rows.frame()
    targets = distinct_targets(target_ids)
    perms = target_permutations(targets.n_candidates, n_perm, seed)

    has_target_images = target_images is not None and all(img is not None for img in target_images)
    if recon_images is not None and len(recon_images) != n_items:
        raise ValueError(f"{len(recon_images)} reconstructions for {n_items} target ids")
    if has_target_images and len(target_images) != n_items:
        raise ValueError(f"{len(target_images)} target images for {n_items} target ids")
    if recon_images is not None and has_target_images:
        _image_metrics(rows, recon_images, target_images, targets, perms, feature_extractors or {}, n_perm,
                       ssim_max_pairs, device)

    for space, (predicted, measured) in (brain_betas or {}).items():
        _brain_correlation(rows, space, as_numpy(predicted), as_numpy(measured), targets, perms)

    pred_features = dict(pred_features or {})
    target_features = dict(target_features or {})
    for space in sorted(set(pred_features) & set(target_features)):
        predictions, item_targets = as_numpy(pred_features[space]), as_numpy(target_features[space])
        if predictions.shape[0] != n_items or item_targets.shape[0] != n_items:
            raise ValueError(
                f"{space}: {predictions.shape[0]} predictions and {item_targets.shape[0]} target rows for "
                f"{n_items} items; give one row per item (repeats included), in target_ids order"
            )
        predictions = predictions.reshape(n_items, -1)
        with_features = distinct_targets(target_ids, item_targets.reshape(n_items, -1))
        _retrieval_metrics(rows, space, predictions, with_features, perms, retrieval_candidates,
                           retrieval_draws, seed, retrieval_metric)
        if not has_target_images and with_features.n_candidates >= 2:
            # no target image (text cue): identification is only possible against the cue target's features
            similarity = similarity_matrix(predictions, with_features.features, "pearson")
            _matrix_metric(rows, "twoway", space, twoway_from_similarity(similarity), with_features.true_index,
                           perms, True, CHANCE_TWOWAY,
                           "decoded features vs the cue target's features (no target image: no pixel metrics)")
    frame = rows.frame()
    if not has_target_images and frame.empty:
        LOG.info("%s/%s: no target images and no feature pairs: nothing to score", condition, cue)
    return frame


#: Column of each (condition, cue) in the side-by-side table (NSD-Imagery reports vision and imagery together).
CONDITION_COLUMNS = {("perception", "none"): "perception", ("perception", "image"): "perception",
                     ("imagery", "image"): "imagery_memory", ("imagery", "text"): "imagery_text",
                     ("imagery", "none"): "imagery"}


def conditions_side_by_side(frame: pd.DataFrame, value: str = "value") -> pd.DataFrame:
    """Vision and imagery side by side: one row per (metric, feature space), one column per condition
    (``perception``, ``imagery_memory``, ``imagery_text``, ...) with its value, plus ``<condition>_chance``.

    ``frame`` is a metrics table (or the group table with ``value`` = ``mean``); rows whose value is not a
    number are left out.
    """
    # the group table may hold several GLM methods: never let one stand for another
    columns = [c for c in ("glm_method", "decoder", "generator") if c in frame.columns] + ["metric", "feature_space"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    data = frame.copy()
    data["column"] = [CONDITION_COLUMNS.get((c, q), f"{c}_{q}") for c, q in zip(data["condition"], data["cue"])]
    data["number"] = pd.to_numeric(data[value].replace("n/a", np.nan), errors="coerce")
    data["chance_number"] = pd.to_numeric(data["chance"].replace("n/a", np.nan), errors="coerce")
    data = data.dropna(subset=["number"])
    order = [c for c in dict.fromkeys(CONDITION_COLUMNS.values()) if c in set(data["column"])]
    order += sorted(set(data["column"]) - set(order))
    values = data.pivot_table(index=columns, columns="column", values="number", aggfunc="first")
    chance = data.pivot_table(index=columns, columns="column", values="chance_number", aggfunc="first")
    chance.columns = [f"{c}_chance" for c in chance.columns]
    wide = values.reindex(columns=order).join(chance.reindex(columns=[f"{c}_chance" for c in order]))
    return wide.reset_index()


def write_metrics_table(frames: pd.DataFrame | Sequence[pd.DataFrame], path) -> None:
    """Write one or several metric frames as the BIDS TSV metrics table (atomic, ``n/a`` for NaN)."""
    from ..utils.atomic import write_tsv

    if isinstance(frames, pd.DataFrame):
        frame = frames
    else:
        frames = [f for f in frames if not f.empty]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRICS_TABLE_COLUMNS)
    write_tsv(path, frame[METRICS_TABLE_COLUMNS])
