"""hrf_library="auto": one HRF library per session, chosen by leave-one-run-out agreement (issue 13)."""

import numpy as np
import pytest
from helpers import independent_glm_session

from bids_m2i.glm import estimate_single_trial_betas
from bids_m2i.glm.library_choice import prediction_matrix
from bids_m2i.glm.simulation import r_trial, simulate_session


def test_prediction_matrix_uses_other_runs_only():
    stimulus = np.array(["a", "b", "a", "c", "a", "n/a", "n/a"])
    run = np.array(["1", "1", "1", "2", "2", "2", "1"])
    m = prediction_matrix(stimulus, run)
    # trial 0 ("a", run 1) is predicted by trial 4 only (trial 2 is in its own run)
    np.testing.assert_allclose(m[0], [0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_allclose(m[4], [0.5, 0, 0.5, 0, 0, 0, 0])
    assert not m[1].any() and not m[3].any()      # shown once
    assert not m[5].any() and not m[6].any()      # unlabelled stimuli are not repeats
    np.testing.assert_array_equal(prediction_matrix(stimulus, run, slice(3, 5)), m[3:5])  # one run's rows


@pytest.fixture(scope="module")
def independent_session():
    s, runs, trials = independent_glm_session(400, seed=4)
    return s, runs, trials


def test_auto_picks_the_narrow_library_on_the_independent_generator(independent_session):
    """The benchmark's independent generator (dense trials, weak responses): the narrow library's betas are the
    better ones there (tests/test_glm_hrf_library.py), and the session-level choice finds it."""
    s, runs, trials = independent_session
    auto = estimate_single_trial_betas(runs, trials, method="fithrf", hrf_library="auto")
    choice = auto.metadata["hrf_library_choice"]
    assert choice["chosen"] == auto.metadata["hrf_library_name"] == "narrow", choice
    assert auto.metadata["hrf_library_requested"] == "auto"
    assert set(choice["median_score"]) == {"broad", "medium", "narrow"}
    assert choice["median_score"]["narrow"] > choice["median_score"]["broad"]
    assert 50 <= choice["n_voxels"] <= 2000
    broad = estimate_single_trial_betas(runs, trials, method="fithrf", hrf_library="broad")
    score = {name: float(np.median(r_trial(r.betas, s.true_betas, s.responsive)))
             for name, r in (("auto", auto), ("broad", broad))}
    assert score["auto"] > score["broad"] + 0.04, score
    # the same betas as asking for the chosen library directly
    narrow = estimate_single_trial_betas(runs, trials, method="fithrf", hrf_library="narrow")
    np.testing.assert_array_equal(auto.betas, narrow.betas)


def test_auto_without_repeats_in_other_runs_keeps_broad():
    sim = simulate_session(n_voxels=120, n_runs=2, n_volumes=120, n_stimuli=30, n_repeats=1, seed=5)
    result = estimate_single_trial_betas(sim.runs, sim.trials, method="fithrf", hrf_library="auto")
    assert result.metadata["hrf_library_name"] == "broad"
    assert "no stimulus" in result.metadata["hrf_library_choice"]["reason"]
    # assumed-HRF methods ignore the library
    lsa = estimate_single_trial_betas(sim.runs, sim.trials, method="lsa", hrf_library="auto")
    assert lsa.metadata["hrf_library_choice"] is None and lsa.metadata["hrf_library_name"] is None
