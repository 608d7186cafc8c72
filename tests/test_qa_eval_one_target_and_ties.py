"""Evaluation of groups unlike the simulator's (qa35): a single distinct target, and ties between candidates.

* A group whose items all share one target (a single test image, imagery of one item) had pixcorr, ssim and
  brain_corr rows whose "chance" (the mean under shuffled pairings) was the observed value itself, with
  p = 1: there is no other target to pair with, so every "shuffled" pairing was the true one, and the row read
  "no better than chance". Chance and p are now n/a and the note says why; the value stays.
* The predictions table's top1/top5 came from a stable sort of the candidates: with one distinct target every
  item was ``true``, and with tied similarities (constant predictions, every stimulus the same gray image)
  the first-listed target won, while the metrics table (ties count against) scored a miss.
"""

import numpy as np
import pytest

from bids_m2i.evaluation.table import evaluate_reconstructions


def test_one_distinct_target_has_no_chance_or_p_value():
    rng = np.random.default_rng(0)
    target = rng.random((32, 32, 3))
    recon = [0.5 * target + 0.5 * rng.random((32, 32, 3)) for _ in range(3)]
    measured = rng.normal(size=(3, 20))
    frame = evaluate_reconstructions(recon, [target] * 3, None, None, ["a"] * 3, "perception", "image", n_perm=50,
                                     brain_betas={"pixels": (measured + 0.1, measured)})
    rows = frame.set_index("metric")
    for metric in ("pixcorr", "ssim", "brain_corr"):
        row = rows.loc[metric]
        assert np.isfinite(row.value), metric
        assert np.isnan(row.chance) and np.isnan(row.p_value), (metric, row.chance, row.p_value)
        assert "one distinct target" in row.note and "shuffled pairings" not in row.note


def test_two_distinct_targets_keep_their_null():
    rng = np.random.default_rng(1)
    images = [rng.random((32, 32, 3)) for _ in range(2)]
    frame = evaluate_reconstructions(images, images, None, None, ["a", "b"], "perception", "image", n_perm=50)
    assert frame.chance.notna().all() and frame.p_value.notna().all()


def _table_hits(predictions, targets, ids):
    from bids_m2i.decoding.reconstruct import _retrieval

    hits, ranking = _retrieval(np.asarray(predictions, float), np.asarray(targets, float), ids)
    return list(hits[1]), list(hits[5]), ranking


def test_predictions_table_top1_is_na_with_one_candidate():
    rng = np.random.default_rng(0)
    top1, top5, ranking = _table_hits(rng.normal(size=(3, 4)), np.tile(rng.normal(size=4), (3, 1)), ["a"] * 3)
    assert top1 == ["n/a"] * 3 and top5 == ["n/a"] * 3
    assert ranking == [["a"]] * 3


@pytest.mark.parametrize("case", ["zero predictions", "identical targets"])
def test_predictions_table_ties_count_against_as_in_the_metrics_table(case):
    rng = np.random.default_rng(0)
    targets, predictions = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    if case == "zero predictions":  # equally similar (0) to every candidate
        predictions[:] = 0.0
    else:  # every stimulus the same image under another name
        targets[:] = targets[0]
    ids = list("abcd")
    top1, top5, _ = _table_hits(predictions, targets, ids)
    frame = evaluate_reconstructions(None, None, {"clip": predictions}, {"clip": targets}, ids, "imagery", "image",
                                     n_perm=10)
    image_top1 = frame.set_index("metric").loc["image_top1"].value
    assert image_top1 == 0.0
    assert top1 == ["false"] * 4


def test_predictions_table_identical_targets_under_two_names_tie():
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(4, 6))
    targets[1] = targets[0]  # one image listed under two stimulus names
    top1, _, _ = _table_hits(targets, targets, list("abcd"))
    assert top1 == ["false", "false", "true", "true"]


@pytest.mark.parametrize("n_voxels", [1, 2])
def test_brain_corr_needs_three_voxels(n_voxels):
    # qa35: a participant whose decoder keeps 1 or 2 voxels got brain_corr 0.0 (r over one voxel, undefined)
    # or 1.0 (r over two voxels is always +-1), both shown as numbers with a chance and a p-value
    rng = np.random.default_rng(0)
    measured = rng.normal(size=(6, n_voxels))
    ids = [f"s{i}" for i in range(6)]
    frame = evaluate_reconstructions(None, None, None, None, ids, "perception", "none", n_perm=20,
                                     brain_betas={"pixels": (measured + 0.01 * rng.normal(size=measured.shape),
                                                             measured)})
    row = frame.set_index("metric").loc["brain_corr"]
    assert np.isnan(row.value) and np.isnan(row.chance) and np.isnan(row.p_value), row.value
    assert "at least 3 voxels" in row.note


def test_brain_corr_with_three_voxels_is_scored():
    rng = np.random.default_rng(0)
    measured = rng.normal(size=(6, 3))
    frame = evaluate_reconstructions(None, None, None, None, [f"s{i}" for i in range(6)], "perception", "none",
                                     n_perm=20, brain_betas={"pixels": (measured, measured)})
    assert frame.set_index("metric").loc["brain_corr"].value == pytest.approx(1.0)
