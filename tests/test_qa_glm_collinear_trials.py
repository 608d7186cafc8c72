"""QA (qa34): trials so close together that their regressors are nearly collinear (0.5-1 s apart).

lsa and fithrf fit every trial of a run at once; with trials 0.5 s apart their regressors are linear combinations
of each other's (variance inflation ~1e13) and the betas (1e5 % for lsa) had nothing to do with the responses,
written without a word. Now a warning names the runs and suggests --glm lss, and the sidecar's
``collinear_trials`` says it; ordinary designs (a trial every 4-5 s) are not flagged.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bids_m2i.glm.design import RunData
from bids_m2i.glm.estimate import estimate_single_trial_betas
from bids_m2i.glm.simulation import TRIAL_COLUMNS, simulate_session


def _rapid(soa: float, n_trials: int = 30, n_volumes: int = 100, tr: float = 1.6, seed: int = 0):
    rng = np.random.default_rng(seed)
    runs = [RunData(data=(1000 + 10 * rng.standard_normal((20, n_volumes))).astype(np.float32), tr=tr, run="1")]
    rows = [[6 + soa * i, 1.0, "t", "01", "1", "trial", "stimulus", "perception", "none", f"s{i % 10}", "n/a", "n/a",
             "n/a"] for i in range(n_trials)]
    return runs, pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def test_trials_half_a_second_apart_are_flagged(caplog):
    runs, trials = _rapid(0.5)
    with caplog.at_level(logging.WARNING, logger="m2i.glm"):
        result = estimate_single_trial_betas(runs, trials, method="lsa")
    flagged = result.metadata["collinear_trials"]  # before: KeyError (no word anywhere)
    assert flagged is not None and flagged["runs"]["1"]["n_trials"] > 0
    assert flagged["runs"]["1"]["shortest_onset_gap_s"] == 0.5
    assert "nearly collinear trial regressors" in caplog.text and "--glm lss" in caplog.text


def test_lss_and_ordinary_designs_are_not_flagged(caplog):
    runs, trials = _rapid(0.5)
    assert estimate_single_trial_betas(runs, trials, method="lss").metadata["collinear_trials"] is None
    sim = simulate_session(n_voxels=40, n_runs=2, n_volumes=150, n_stimuli=40, n_repeats=2, seed=1)
    with caplog.at_level(logging.WARNING, logger="m2i.glm"):
        for method in ("lsa", "fithrf"):
            assert estimate_single_trial_betas(sim.runs, sim.trials, method=method).metadata["collinear_trials"] is None
    assert "collinear" not in caplog.text
    runs, trials = _rapid(4.0, n_trials=20, n_volumes=120)  # a trial every 4 s
    assert estimate_single_trial_betas(runs, trials, method="lsa").metadata["collinear_trials"] is None
