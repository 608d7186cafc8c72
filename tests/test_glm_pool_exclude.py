"""``pool_exclude``: voxels known to respond (e.g. in the participant's perception task) never enter the GLMdenoise
noise pool (issue 14, eighth pass; docs/decoding.md). Without it the engine is unchanged bit for bit."""

import numpy as np
import pytest
import torch

from bids_m2i.errors import UsageError
from bids_m2i.glm import estimate
from bids_m2i.glm.simulation import simulate_session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def session():
    # small enough for the default suite; the ON-OFF pool holds a few hundred voxels (>= 50: PCs are searched)
    return simulate_session(n_voxels=400, n_runs=2, n_volumes=160, n_stimuli=20, n_repeats=2,
                            responsive_fraction=0.3, seed=11)


def _fit_with_pool(sim, **options):
    """The engine's fit, the ON-OFF pool as made and the pool the PCs were taken from (the same object, edited in
    place by the exclusion)."""
    seen = {}
    original = estimate.noise_pool

    def spy(onoff_r2, brain, threshold=None):
        pool, value = original(onoff_r2, brain, threshold)
        seen["before"], seen["final"] = pool.copy(), pool
        return pool, value

    estimate.noise_pool = spy
    try:
        # a fixed count (the `n_pcs` option): the count the CV chooses on 400 voxels moves with the BLAS
        # kernels' last bits (0 PCs on the machine of 2026-12-04, more on earlier ones); the test needs PCs
        result = estimate.estimate_single_trial_betas(sim.runs, sim.trials, max_pcs=3, n_pcs=2, **options)
    finally:
        estimate.noise_pool = original
    return result, seen["before"], seen["final"].copy()


@pytest.fixture(scope="module")
def fits(session):
    base, before, final = _fit_with_pool(session)
    none, _, _ = _fit_with_pool(session, pool_exclude=None)
    empty, _, empty_final = _fit_with_pool(session, pool_exclude=np.zeros(session.responsive.size, bool))
    # exclude half of the ON-OFF pool (every other pool voxel) and some voxels outside it
    mask = np.zeros(session.responsive.size, bool)
    mask[np.flatnonzero(before)[::2]] = True
    mask[np.flatnonzero(~before)[:10]] = True
    excluded, excluded_before, excluded_final = _fit_with_pool(session, pool_exclude=mask)
    return dict(base=base, before=before, final=final, none=none, empty=empty, empty_final=empty_final,
                mask=mask, excluded=excluded, excluded_before=excluded_before, excluded_final=excluded_final)


def test_without_a_mask_nothing_changes(fits):
    base = fits["base"]
    assert base.metadata["n_pcs"] > 0                      # the pool's PCs are in use: the test can see them
    assert np.array_equal(fits["before"], fits["final"])
    assert "excluded_by_mask" not in base.metadata["noise_pool"]
    for other in ("none", "empty"):  # None, and a mask excluding nothing: the same betas bit for bit
        result = fits[other]
        assert np.array_equal(result.betas, base.betas) and np.array_equal(result.r2, base.r2)
        assert np.array_equal(result.frac, base.frac) and result.metadata["n_pcs"] == base.metadata["n_pcs"]
    assert np.array_equal(fits["empty_final"], fits["before"])
    assert fits["empty"].metadata["noise_pool"]["excluded_by_mask"] == {"n_mask": 0, "n_removed": 0}


def test_excluded_voxels_never_enter_the_pool(fits):
    mask, before, final = fits["mask"], fits["excluded_before"], fits["excluded_final"]
    assert np.array_equal(before, fits["before"])          # the ON-OFF pool itself is the same
    assert not (final & mask).any()
    assert np.array_equal(final, before & ~mask)           # nothing else leaves it
    meta = fits["excluded"].metadata["noise_pool"]
    assert meta["excluded_by_mask"] == {"n_mask": int(mask.sum()), "n_removed": int((before & mask).sum())}
    assert meta["n_voxels"] == int(final.sum()) < int(before.sum())
    # the PCs now come from another pool: the betas change
    assert not np.array_equal(fits["excluded"].betas, fits["base"].betas)


def test_bad_masks_are_usage_errors(session):
    n = session.responsive.size
    for bad in (np.zeros(n - 1, bool), np.zeros(n, int), np.arange(5)):
        with pytest.raises(UsageError, match="pool_exclude"):
            estimate.estimate_single_trial_betas(session.runs, session.trials, pool_exclude=bad)
