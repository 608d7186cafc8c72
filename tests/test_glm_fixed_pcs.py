"""``n_pcs``: a fixed number of GLMdenoise PCs instead of the cross-validated count (GLMsingle's ``pcstop = -B``;
issue 14, ninth pass). The count's curve is still reported, the betas are those of the asked count, and a count
that cannot be used is an error or is said, never silently replaced."""

import logging

import numpy as np
import pytest
import torch

from bids_m2i.errors import UsageError
from bids_m2i.glm.estimate import estimate_single_trial_betas
from bids_m2i.glm.simulation import simulate_session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def session():
    return simulate_session(n_voxels=400, n_runs=2, n_volumes=160, n_stimuli=20, n_repeats=2,
                            responsive_fraction=0.3, seed=11)


@pytest.fixture(scope="module")
def fits(session):
    chosen = estimate_single_trial_betas(session.runs, session.trials, max_pcs=3)
    k = chosen.metadata["n_pcs"]
    other = 0 if k else 3
    return {"chosen": chosen, "k": k, "same": estimate_single_trial_betas(session.runs, session.trials, max_pcs=3,
                                                                       n_pcs=k),
            "other_k": other,
            "other": estimate_single_trial_betas(session.runs, session.trials, max_pcs=3, n_pcs=other)}


def test_the_rule_s_own_count_gives_the_same_betas(fits):
    assert np.array_equal(fits["same"].betas, fits["chosen"].betas)
    assert fits["same"].metadata["pc_selection"]["fixed"] == {"n_pcs": fits["k"], "chosen_by_the_rule": fits["k"]}
    assert "fixed" not in fits["chosen"].metadata["pc_selection"]


def test_another_count_is_used_and_the_curve_kept(fits):
    other = fits["other"]
    assert other.metadata["n_pcs"] == fits["other_k"] and (other.n_pcs == fits["other_k"]).all()
    assert not np.allclose(other.betas, fits["chosen"].betas)
    selection = other.metadata["pc_selection"]
    assert selection["fixed"] == {"n_pcs": fits["other_k"], "chosen_by_the_rule": fits["k"]}
    assert selection["median_cv_score"] == fits["chosen"].metadata["pc_selection"]["median_cv_score"]


@pytest.mark.parametrize("bad", [-1, 4, 1.5, True, "2"])
def test_a_count_outside_the_search_is_a_usage_error(session, bad):
    with pytest.raises(UsageError, match="n_pcs must be a whole number from 0 to max_pcs"):
        estimate_single_trial_betas(session.runs, session.trials, max_pcs=3, n_pcs=bad)


def test_pcs_that_cannot_be_taken_are_said(session, caplog):
    # every voxel above the pool's R² threshold: no noise pool, so no PCs can be taken
    with caplog.at_level(logging.WARNING, logger="m2i.glm"):
        result = estimate_single_trial_betas(session.runs, session.trials, max_pcs=3, n_pcs=2, noise_pool_r2=0.0)
    assert result.metadata["n_pcs"] == 0
    assert result.metadata["pc_selection"]["fixed"] == {"n_pcs": 2, "used": 0}
    assert "n_pcs=2 asked for, but no noise PCs could be taken" in caplog.text
