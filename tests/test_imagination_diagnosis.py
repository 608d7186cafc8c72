"""The item-level helpers of ``benchmarks/imagination_diagnosis.py`` (issue 14's pure-imagination diagnosis)."""

from __future__ import annotations

import numpy as np

from bids_m2i.simulate.oracle import twoway_identification
from helpers import import_benchmark

diag = import_benchmark("imagination_diagnosis")


def test_per_item_twoway_averages_to_the_scored_twoway_and_finds_the_failing_item():
    rng = np.random.default_rng(3)
    targets = rng.normal(size=(8, 50))
    predicted = targets + 0.3 * rng.normal(size=targets.shape)
    predicted[5] = targets[2]  # item 5 decodes as item 2: it must lose against that target
    per_item = diag.per_item_twoway(predicted, targets)
    assert per_item.shape == (8,)
    assert np.isclose(per_item.mean(), twoway_identification(predicted, targets))
    assert per_item[5] < 1.0 and np.all(np.delete(per_item, 5) == 1.0)


def test_paired_difference_is_the_mean_gap_with_its_standard_error():
    mean, se = diag.paired_difference([1.0, 0.5, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    assert np.isclose(mean, -0.125)
    assert np.isclose(se, np.std([0, -0.5, 0, 0], ddof=1) / 2)


def test_visual_columns_follow_the_order_of_the_mask_voxels():
    mask = np.zeros((3, 4, 2), dtype=bool)
    mask[0, 1, 0] = mask[1, 0, 0] = mask[2, 3, 1] = True
    ijk = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]])  # the last voxel is outside the mask
    for order in ("C", "F"):
        columns = diag.visual_columns(mask, ijk, order)
        flat = np.flatnonzero(mask.ravel(order=order))
        assert columns[2] == -1
        for (i, j, k), column in zip(ijk[:2], columns[:2]):
            assert flat[column] == np.ravel_multi_index((i, j, k), mask.shape, order=order)
    # the two orders differ on this mask, so a mix-up could not pass
    assert not np.array_equal(diag.visual_columns(mask, ijk, "C"), diag.visual_columns(mask, ijk, "F"))


def test_perception_responsive_rules(tmp_path):
    """The masks the pool-perception variants pass as ``pool_exclude`` (issue 14, eighth pass)."""
    import nibabel as nib
    import pytest

    rng = np.random.default_rng(0)
    mask = np.zeros((6, 6, 4), dtype=bool)
    mask[1:5, 1:5, :] = True
    n = int(mask.sum())
    responsive = np.zeros(n, bool)
    responsive[rng.choice(n, 20, replace=False)] = True
    # perception-onoff: the complement of perception's pool within its brain voxels
    brain = np.ones(n, bool)
    brain[:3] = False
    pool = brain & ~responsive
    got = diag.perception_responsive("perception-onoff", tmp_path, "01", {"_pool": pool, "_brain": brain}, mask)
    assert np.array_equal(got, brain & responsive)
    # perception-r2-map: the written R² statmap, Otsu's threshold on log10 R² (two well-separated groups)
    r2 = np.where(responsive, 10 ** rng.uniform(-1, -0.5, n), 10 ** rng.uniform(-4, -3, n))
    grid = np.zeros(mask.shape, np.float32)
    grid[mask] = r2
    func = tmp_path / "sub-01" / "func"
    func.mkdir(parents=True)
    nib.save(nib.Nifti1Image(grid, np.eye(4)), func / "sub-01_task-perception_stat-r2_desc-x_statmap.nii.gz")
    got = diag.perception_responsive("perception-r2-map", tmp_path, "01", {}, mask)
    assert np.array_equal(got, responsive)
    with pytest.raises(ValueError, match="unknown"):
        diag.perception_responsive("anything", tmp_path, "01", {}, mask)
