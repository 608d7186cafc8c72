"""QA (qa34): a run with at least as many regressors as volumes (short runs of rapid trials).

The methods that fit all of a run's trials at once (lsa, fithrf, fithrf-denoise-rr) then fit the data exactly:
r² = 1 and minimum-norm betas of thousands of % signal change were written as if they were responses, without a
word. Now it stops with exit 65 naming the run and the counts; lss (one trial against the others) still runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_m2i.errors import BadDataError
from bids_m2i.glm.design import RunData
from bids_m2i.glm.estimate import estimate_single_trial_betas
from bids_m2i.glm.simulation import TRIAL_COLUMNS


def _session(n_volumes: int, n_trials: int, tr: float = 2.0, n_voxels: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    runs, rows = [], []
    for run in ("1", "2"):
        runs.append(RunData(data=(1000 + 10 * rng.standard_normal((n_voxels, n_volumes))).astype(np.float32), tr=tr,
                            run=run))
        for i in range(n_trials):
            rows.append([2 + 1.5 * i, 1.0, "t", "01", run, "trial", "stimulus", "perception", "none", f"s{i % 4}",
                         "n/a", "n/a", "n/a"])
    return runs, pd.DataFrame(rows, columns=TRIAL_COLUMNS)


@pytest.mark.parametrize("method", ["lsa", "fithrf", "fithrf-denoise-rr"])
def test_more_trials_than_volumes_stops_clearly(method):
    runs, trials = _session(n_volumes=12, n_trials=14)
    with pytest.raises(BadDataError) as raised:  # before: betas up to ~1e4 % and r2 == 1, no error
        estimate_single_trial_betas(runs, trials, method=method)
    assert "no degrees of freedom" in str(raised.value) and "run 1: 14 trials" in str(raised.value)
    assert raised.value.exit_code == 65 and "--glm lss" in raised.value.hint


def test_lss_still_fits_a_saturated_run():
    runs, trials = _session(n_volumes=12, n_trials=14)
    result = estimate_single_trial_betas(runs, trials, method="lss")
    assert np.isfinite(result.betas).all() and result.betas.shape == (28, 30)


def test_a_short_run_with_room_left_is_fitted():
    runs, trials = _session(n_volumes=25, n_trials=12)  # 12 trials + constant + drift < 25 volumes
    result = estimate_single_trial_betas(runs, trials, method="lsa")
    assert np.isfinite(result.betas).all() and (result.r2 < 1).all()
