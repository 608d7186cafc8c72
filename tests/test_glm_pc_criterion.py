"""The number of noise PCs chosen by the ridge stage's loss (``pc_criterion="ridge"``, an option; issue 13)."""

import numpy as np
import pytest
import torch

from bids_m2i.errors import UsageError
from bids_m2i.glm.estimate import estimate_single_trial_betas
from bids_m2i.glm.fracridge import _criterion, _ridge_betas, _ridge_path, ridge_cv_loss
from bids_m2i.glm.reliability import RepeatStructure
from bids_m2i.glm.simulation import simulate_session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sim():
    return simulate_session(n_voxels=300, seed=5)


def test_ridge_cv_loss_is_the_best_fraction_loss():
    rng = np.random.default_rng(0)
    from bids_m2i.glm.solvers import RunOperators

    n_vol, n_trials = 60, 12
    operators, data = [], []
    for _ in range(2):
        trials = rng.standard_normal((n_vol, n_trials))
        nuisance = np.ones((n_vol, 1))
        operators.append(RunOperators.build(trials, nuisance, torch.float64, "cpu"))
        data.append(torch.as_tensor(rng.standard_normal((7, n_vol))))
    repeats = RepeatStructure.from_labels(np.tile(np.arange(12), 2))
    fractions = (0.2, 0.5, 1.0)
    loss = ridge_cv_loss(operators, data, repeats, fractions)
    projections, ols, _, curve, grid = _ridge_path(operators, data)
    from bids_m2i.glm.fracridge import alphas_for_fraction

    per_fraction = [_criterion(ols, ols, repeats, "consistency")]
    for f in (0.2, 0.5):
        per_fraction.append(_criterion(ols, _ridge_betas(operators, projections, alphas_for_fraction(curve, grid, f)),
                                       repeats, "consistency"))
    torch.testing.assert_close(loss, torch.stack(per_fraction).min(0).values)
    # fraction 1 alone: the loss of the unregularised betas
    torch.testing.assert_close(ridge_cv_loss(operators, data, repeats, (1.0,)), per_fraction[0])


def test_ridge_pc_criterion_runs_and_is_recorded(sim):
    result = estimate_single_trial_betas(sim.runs, sim.trials, pc_criterion="ridge", max_pcs=3)
    selection = result.metadata["pc_selection"]
    assert selection["criterion"] == "ridge"
    scores = selection["median_cv_score"]
    assert len(scores) == 4 and scores[0] == 0.0        # the loss decrease from K = 0
    assert result.metadata["n_pcs"] in range(4)
    assert np.isfinite(result.betas).all()
    again = estimate_single_trial_betas(sim.runs, sim.trials, pc_criterion="ridge", max_pcs=3)
    np.testing.assert_array_equal(result.betas, again.betas)          # identical reruns


def test_unknown_pc_criterion_is_a_usage_error(sim):
    with pytest.raises(UsageError, match="pc_criterion"):
        estimate_single_trial_betas(sim.runs, sim.trials, pc_criterion="best")


def test_ridge_loss_count_is_the_default_and_says_what_it_scores(sim):
    # issue 13, seventh pass: the count by the ridge stage's loss, with the pool by the R² beyond drift and the
    # PCs of its drift-free data (docs/glm.md "The number of PCs by the ridge stage's loss")
    default = estimate_single_trial_betas(sim.runs, sim.trials, max_pcs=3)
    explicit = estimate_single_trial_betas(sim.runs, sim.trials, max_pcs=3, pc_criterion="ridge",
                                           selection_r2="beyond-drift", pc_source="drift-residuals")
    np.testing.assert_array_equal(default.betas, explicit.betas)
    selection = default.metadata["pc_selection"]
    assert selection["criterion"] == "ridge" and "ridge stage" in selection["score"]
    assert default.metadata["selection_r2"] == "beyond-drift" and default.metadata["pc_source"] == "drift-residuals"
    old = estimate_single_trial_betas(sim.runs, sim.trials, max_pcs=3, pc_criterion="ols-target")
    assert "OLS betas" in old.metadata["pc_selection"]["score"]
