"""AR(1) prewhitening of the single-trial model (``noise_model="ar1"``, bids_m2i.glm.whitening; issue 13)."""

import numpy as np
import pytest
import torch

from helpers import ar1_noise, regular_trials

from bids_m2i.errors import UsageError
from bids_m2i.glm.design import RunData
from bids_m2i.glm.estimate import estimate_single_trial_betas
from bids_m2i.glm.model import SessionModel
from bids_m2i.glm.simulation import simulate_session
from bids_m2i.glm.solvers import RunOperators
from bids_m2i.glm.whitening import estimate_ar1, whiten_columns, whitened_trial_betas

torch.set_num_threads(1)


def _dense_session(n_voxels, rho, seed, n_runs=2, n_volumes=200, tr=1.6):
    """Canonical-HRF single trials every 4.8 s, AR(1) noise with coefficient ``rho``, data in % (known betas)."""
    rng = np.random.default_rng(seed)
    trials, designs, rows = regular_trials(n_runs, n_volumes, tr, every=4.8, n_stimuli=20)
    model = SessionModel(designs, "glover", dtype=torch.float64)
    truth = rng.normal(1.0, 1.0, (len(rows), n_voxels))
    runs = []
    for r, design in enumerate(designs):
        noise = ar1_noise(rng, n_voxels, n_volumes, rho)
        signal = (model.trial_regressors[r][model.canonical_index] @ truth[design.trial_slice]).T
        runs.append(RunData(signal + 0.5 * noise, tr, str(r + 1)))
    return runs, trials, truth, model


def _ar1_precision(n, rho):
    precision = np.diag(np.r_[1.0, np.full(n - 2, 1 + rho ** 2), 1.0]) - rho * (np.eye(n, k=1) + np.eye(n, k=-1))
    return precision


def test_whitened_betas_equal_a_direct_gls_solve():
    runs, _, _, model = _dense_session(6, 0.5, seed=1)
    data = [torch.as_tensor(r.data) for r in runs]
    kernel = np.full(6, model.canonical_index)
    betas, fitted, rho = whitened_trial_betas(model, data, kernel, sum(d.trial_onsets.size for d in model.designs))
    for r, design in enumerate(model.designs):
        x = np.concatenate([model.trial_regressors[r][model.canonical_index], model.nuisance(r, model.canonical_index)],
                           axis=1)
        n_run = design.trial_onsets.size
        for v in range(6):
            precision = _ar1_precision(x.shape[0], rho[v])   # V⁻¹ of AR(1), built independently of the whitening
            direct = np.linalg.solve(x.T @ precision @ x, x.T @ precision @ runs[r].data[v])[:n_run]
            np.testing.assert_allclose(betas[v, design.trial_slice].numpy(), direct, rtol=1e-6, atol=1e-8)
    # the R² figure stays the OLS one
    ols_ops = [model.operators(r, model.canonical_index) for r in range(len(runs))]
    torch.testing.assert_close(fitted, sum(o.fitted_sum_of_squares(d) for o, d in zip(ols_ops, data)))


def test_prais_winsten_whitening_is_the_ar1_cholesky_factor():
    n, rho = 30, 0.6
    w = whiten_columns(np.eye(n), rho)
    np.testing.assert_allclose(w.T @ w, _ar1_precision(n, rho), atol=1e-12)


def test_ar1_estimate_is_bias_corrected():
    """With one regressor per trial the raw residual autocorrelation is biased low; the correction recovers ρ."""
    runs, _, _, model = _dense_session(400, 0.4, seed=2, n_runs=3)
    data = [torch.as_tensor(r.data) for r in runs]
    ops = [model.operators(r, model.canonical_index) for r in range(len(runs))]
    rho, _ = estimate_ar1(ops, data)
    raw = []
    for o, d in zip(ops, data):
        basis = torch.cat([o.left, o.nuisance_basis], 1)
        e = d - (d @ basis) @ basis.T
        raw.append(((e[:, 1:] * e[:, :-1]).sum(1) / (e * e).sum(1)).numpy())
    assert np.median(np.mean(raw, 0)) < 0.0            # uncorrected: far below the truth (about -0.2)
    assert abs(np.median(rho) - 0.4) < 0.05


def test_whitening_lowers_the_betas_error_under_ar1_noise():
    runs, trials, truth, _ = _dense_session(300, 0.6, seed=3)
    errors = {}
    for noise_model in ("ols", "ar1"):
        result = estimate_single_trial_betas(runs, trials, method="lsa", data_units="percent",
                                             drift_model="polynomial", noise_model=noise_model)
        errors[noise_model] = float(np.mean((result.betas - truth) ** 2))
        assert result.metadata["noise_model"] == noise_model
    assert errors["ar1"] < 0.85 * errors["ols"]
    assert abs(result.metadata["ar1"]["median"] - 0.6) < 0.1


@pytest.fixture(scope="module")
def sim():
    return simulate_session(n_voxels=300, n_runs=3, n_stimuli=20, seed=4)


def test_ar1_full_pipeline_is_recorded_and_rerun_identically(sim):
    first = estimate_single_trial_betas(sim.runs, sim.trials, noise_model="ar1", max_pcs=2)
    again = estimate_single_trial_betas(sim.runs, sim.trials, noise_model="ar1", max_pcs=2)
    np.testing.assert_array_equal(first.betas, again.betas)
    assert np.isfinite(first.betas).all()
    assert first.metadata["noise_model"] == "ar1" and first.metadata["ar1"]["n_bins"] >= 1
    ols = estimate_single_trial_betas(sim.runs, sim.trials, max_pcs=2, noise_model="ols")
    assert ols.metadata["noise_model"] == "ols" and ols.metadata["ar1"] is None
    # the default ("auto") whitens the fitted-HRF methods only
    default = estimate_single_trial_betas(sim.runs, sim.trials, max_pcs=2)
    assert default.metadata["noise_model"] == "ar1"
    np.testing.assert_array_equal(default.betas, first.betas)
    assert estimate_single_trial_betas(sim.runs, sim.trials, method="lsa").metadata["noise_model"] == "ols"
    # HRF choice and PCs are the OLS ones; only the final fit changes
    np.testing.assert_array_equal(first.hrf_index, ols.hrf_index)
    assert first.metadata["n_pcs"] == ols.metadata["n_pcs"]
    assert not np.array_equal(first.betas, ols.betas)


def test_ar1_with_lss_or_unknown_model_is_a_usage_error(sim):
    with pytest.raises(UsageError, match="lss"):
        estimate_single_trial_betas(sim.runs, sim.trials, method="lss", noise_model="ar1")
    with pytest.raises(UsageError, match="noise_model"):
        estimate_single_trial_betas(sim.runs, sim.trials, noise_model="arma")


def test_whitening_raises_r_trial_on_the_independent_generator():
    """The benchmark's independent generator (AR + global + physiological noise, double-gamma HRFs), small:
    the default (AR(1) prewhitening) beats OLS on r_trial, as on every benchmark generator (docs/glm.md)."""
    from helpers import independent_glm_session

    from bids_m2i.glm.simulation import r_trial

    s, runs, trials = independent_glm_session(500, seed=3)
    scores = {}
    for noise_model in ("ols", "auto"):
        result = estimate_single_trial_betas(runs, trials, noise_model=noise_model, max_pcs=4)
        scores[noise_model] = float(np.median(r_trial(result.betas, s.true_betas, s.responsive)))
    assert scores["auto"] > scores["ols"] + 0.005, scores
