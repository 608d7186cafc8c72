"""QA (qa34): the number of noise PCs on short runs of many trials.

PCs are regressors: with 25-volume runs of 20 trials (+ constant), 4 PCs already leave no residual degrees of
freedom. The search tried 0-10 anyway, the saturated models (r² = 1) scored best and 10 PCs were chosen. Now only
counts that leave every run a degree of freedom are tried, and the sidecar says the limit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bids_m2i.glm.design import RunData, polynomial_degree
from bids_m2i.glm.estimate import estimate_single_trial_betas
from bids_m2i.glm.simulation import TRIAL_COLUMNS, voxel_hrfs, FINE_DT


def _short_runs(n_voxels=300, n_runs=4, n_volumes=25, n_trials=20, tr=2.0, seed=5):
    rng = np.random.default_rng(seed)
    hrf, _ = voxel_hrfs(n_voxels, rng)
    amp = np.where(np.arange(n_voxels) < n_voxels // 2, rng.uniform(0.5, 2, n_voxels), 0.0)  # half respond
    runs, rows = [], []
    soa = (n_volumes * tr - 20) / n_trials
    n_fine = int(np.ceil((n_volumes * tr + 40) / FINE_DT))
    for run in range(n_runs):
        neural = np.zeros((n_voxels, n_fine))
        for i in range(n_trials):
            onset = 2 + soa * i
            start = int(round(onset / FINE_DT))
            neural[:, start:start + 10] += (amp * (1 + 0.3 * rng.standard_normal(n_voxels)))[:, None]
            rows.append([onset, 1.0, "t", "01", str(run + 1), "trial", "stimulus", "perception", "none",
                         f"s{i % 10}", "n/a", "n/a", "n/a"])
        bold = np.array([np.convolve(neural[v], hrf[v])[:n_fine] for v in range(n_voxels)])
        sampled = bold[:, np.rint(tr * np.arange(n_volumes) / FINE_DT).astype(int)]
        percent = sampled + 0.5 * rng.standard_normal((n_voxels, n_volumes))
        runs.append(RunData(data=(1000 * (1 + percent / 100)).astype(np.float32), tr=tr, run=str(run + 1)))
    return runs, pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def test_pc_counts_that_saturate_a_run_are_not_tried():
    runs, trials = _short_runs()
    result = estimate_single_trial_betas(runs, trials, method="fithrf-denoise-rr")
    meta = result.metadata
    drift = polynomial_degree(runs[0].model_frame_times()) + 1  # polynomials and the constant
    room = 25 - 1 - (20 + drift)  # volumes - 1 - (trials + drift): 2 PCs at most here
    assert "median_cv_score" in meta["pc_selection"], meta["pc_selection"]  # the search ran
    # before: candidates 0..10, 10 PCs chosen and r2 == 1 (a saturated model)
    assert meta["pc_selection"]["candidates"] == list(range(room + 1))
    assert meta["n_pcs"] <= room and meta["max_pcs_limited"]["used"] == room
    assert result.r2.max() < 0.9999


def test_a_fixed_count_above_the_limit_is_lowered():
    runs, trials = _short_runs()
    result = estimate_single_trial_betas(runs, trials, method="fithrf-denoise-rr", n_pcs=8)
    used = result.metadata["max_pcs_limited"]["used"]
    assert 0 < used < 8 and result.metadata["n_pcs"] == used
    assert result.metadata["pc_selection"]["fixed"]["n_pcs"] == used
