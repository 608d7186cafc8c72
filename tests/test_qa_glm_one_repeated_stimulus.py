"""QA (qa34): fithrf-denoise-rr on a design whose repeats are all of one stimulus.

A one-condition task (every trial the same stimulus) or a single image shown twice among unrepeated ones has
repeats, so the method did not fall back, but its cross-validation criterion ("consistency") compares the
pattern across stimuli between repeats: with one stimulus it carries no information. The fractions were chosen by
rounding (spread over 0.05-1) and the PC scores were all 0, while the sidecar called them cross-validated.
"""

import numpy as np

from bids_m2i.glm.estimate import estimate_single_trial_betas
from bids_m2i.glm.simulation import simulate_session

SMALL = dict(n_voxels=150, n_runs=2, n_volumes=120, n_stimuli=40, n_repeats=1, seed=3)


def _one_stimulus(trials, which):
    trials = trials.copy()
    rows = trials.index[trials["role"] == "trial"]
    trials.loc[rows[which], "stimulus"] = "img-same"
    return trials


def test_every_trial_the_same_stimulus_falls_back_to_fithrf():
    sim = simulate_session(**SMALL)
    trials = _one_stimulus(sim.trials, slice(None))
    result = estimate_single_trial_betas(sim.runs, trials, method="fithrf-denoise-rr")
    reference = estimate_single_trial_betas(sim.runs, trials, method="fithrf")
    # before: effective_method 'fithrf-denoise-rr' and ridge fractions from 0.05 to 1 picked by rounding
    assert result.metadata["effective_method"] == "fithrf"
    assert "only one stimulus" in result.metadata["fallback_reason"]
    assert (result.frac == 1).all() and (result.n_pcs == 0).all()
    np.testing.assert_array_equal(result.betas, reference.betas)
    assert result.metadata["n_repeated_stimuli"] == 1


def test_one_repeated_stimulus_among_unrepeated_falls_back():
    sim = simulate_session(**SMALL)
    first_of_each_run = [0, 20]  # one image shown once in each run, every other image once
    trials = _one_stimulus(sim.trials, first_of_each_run)
    result = estimate_single_trial_betas(sim.runs, trials, method="fithrf-denoise-rr")
    assert result.metadata["effective_method"] == "fithrf"
    assert (result.frac == 1).all()


def test_two_repeated_stimuli_still_cross_validate():
    sim = simulate_session(**{**SMALL, "n_stimuli": 20, "n_repeats": 2})
    result = estimate_single_trial_betas(sim.runs, sim.trials, method="fithrf-denoise-rr")
    assert result.metadata["effective_method"] == "fithrf-denoise-rr"
    assert result.metadata["fallback_reason"] is None
