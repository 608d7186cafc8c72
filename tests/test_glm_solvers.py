"""Single-trial GLM engine: equality with nilearn and with naive loops (known answers)."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from bids_m2i.errors import BadDataError, UsageError
from bids_m2i.glm.design import RunData, convolve_events, drift_regressors
from bids_m2i.glm.estimate import estimate_single_trial_betas
from bids_m2i.glm.fracridge import alphas_for_fraction

torch.set_num_threads(1)
TR = 2.0
N_VOLUMES = 70


def _session(n_runs=2, n_voxels=24, seed=0, conditions=("perception",)):
    """Small random session: runs with 12 trials each, one nuisance type, confounds, raw-ish data."""
    rng = np.random.default_rng(seed)
    rows, runs = [], []
    for r in range(n_runs):
        onsets = 4.0 + np.cumsum(rng.uniform(7.0, 10.0, 12))
        for i, onset in enumerate(onsets):
            rows.append(dict(onset=round(onset, 2), duration=2.0, run=str(r + 1), role="trial",
                             event_type="stim", condition=conditions[i % len(conditions)],
                             stimulus=f"s{i % 6}"))
        for onset in onsets[::3] + 3.0:
            rows.append(dict(onset=round(onset, 2), duration=0.5, run=str(r + 1), role="nuisance",
                             event_type="response", condition="n/a", stimulus="n/a"))
        rows.append(dict(onset=1.0, duration=1.0, run=str(r + 1), role="ignore", event_type="rest",
                         condition="n/a", stimulus="n/a"))
        data = rng.standard_normal((n_voxels, N_VOLUMES)) + rng.uniform(-1, 1, (n_voxels, 1))
        confounds = rng.standard_normal((N_VOLUMES, 2))
        runs.append(RunData(data=data, tr=TR, run=str(r + 1), slice_time_ref=0.5, confounds=confounds))
    return runs, pd.DataFrame(rows)


def test_convolution_matches_nilearn_compute_regressor():
    from nilearn.glm.first_level import compute_regressor, glover_hrf

    frame_times = 0.8 + 1.6 * np.arange(120)
    rng = np.random.default_rng(1)
    onsets = np.sort(rng.uniform(-3, 190, 15))
    durations = rng.choice([0.0, 0.7, 3.0], 15)
    ours = convolve_events(onsets, durations, frame_times, glover_hrf(1.6, 50)[None])[0]
    ref = np.stack([compute_regressor([[o], [d], [1.0]], "glover", frame_times)[0][:, 0]
                    for o, d in zip(onsets, durations)], axis=1)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def _nilearn_lsa(runs, trials):
    """nilearn FirstLevelModel fitted per run (OLS, no scaling): effect size of every trial."""
    import nibabel as nib
    from nilearn.glm.first_level import FirstLevelModel

    n_voxels = runs[0].data.shape[0]
    mask = nib.Nifti1Image(np.ones((n_voxels, 1, 1), dtype=np.uint8), np.eye(4))
    effects = {}
    for run in runs:
        img = nib.Nifti1Image(run.data.reshape(n_voxels, 1, 1, -1), np.eye(4))
        ev = trials[(trials["run"] == run.run) & (trials["role"] != "ignore")].copy()
        ev["trial_type"] = np.where(ev["role"] == "trial", [f"t{i}" for i in ev.index], ev["event_type"])
        model = FirstLevelModel(t_r=run.tr, slice_time_ref=run.slice_time_ref, hrf_model="glover",
                                drift_model="cosine", high_pass=0.01, noise_model="ols", signal_scaling=False,
                                mask_img=mask, minimize_memory=False)
        confounds = pd.DataFrame(run.confounds, columns=[f"c{j}" for j in range(run.confounds.shape[1])])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(img, events=ev[["onset", "duration", "trial_type"]], confounds=confounds)
            for i in ev.index[ev["role"] == "trial"]:
                effect = model.compute_contrast(f"t{i}", output_type="effect_size")
                effects[(run.run, float(trials.at[i, "onset"]))] = effect.get_fdata().reshape(-1)
    return effects


@pytest.mark.parametrize("model,kwargs", [("cosine", {"high_pass": 0.01}), ("cosine", {"high_pass": 0.03}),
                                          ("polynomial", {"drift_order": 3}), ("polynomial", {"drift_order": 1}),
                                          (None, {})])
def test_drift_basis_equals_nilearn(model, kwargs):
    # our own drift sets (no nilearn import in the GLM engine) must be nilearn's, column for column
    from nilearn.glm.first_level import make_first_level_design_matrix

    frame_times = np.arange(187) * 1.6 + 0.8
    ours = drift_regressors(frame_times, model, kwargs.get("high_pass", 0.01), kwargs.get("drift_order", 1))
    theirs = make_first_level_design_matrix(frame_times, None, hrf_model=None, drift_model=model,
                                            high_pass=kwargs.get("high_pass", 0.01),
                                            drift_order=kwargs.get("drift_order", 1)).to_numpy(float)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-10)


def test_glm_engine_does_not_import_nilearn():
    # nilearn's GLM module pulls in scikit-learn: seconds of CPU per GLM process for nothing
    import subprocess
    import sys

    code = ("import sys, numpy as np, pandas as pd; from bids_m2i.glm import RunData, estimate_single_trial_betas; "
            "from bids_m2i.glm.simulation import simulate_session; s = simulate_session(n_voxels=50, n_runs=3, seed=0); "
            "estimate_single_trial_betas(s.runs, s.trials, method='fithrf-denoise-rr'); "
            "print(sorted(m for m in sys.modules if m.startswith(('nilearn', 'sklearn'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lsa_equals_nilearn_first_level_per_run():
    # nilearn's betas are in plateau units (unit-sum kernels); the default peak units are them times the assumed
    # HRF's peak response to one trial, recorded in the sidecar (glm/units.py)
    runs, trials = _session()
    result = estimate_single_trial_betas(runs, trials, method="lsa", data_units="percent", precision="double",
                                         beta_units="plateau")
    peak = estimate_single_trial_betas(runs, trials, method="lsa", data_units="percent", precision="double")
    factor = peak.metadata["peak_scaling"]["assumed_hrf_peak_response"]
    assert result.metadata["beta_units"] == "plateau" and peak.metadata["beta_units"] == "peak"
    assert 0.3 < factor < 1.0
    reference = _nilearn_lsa(runs, trials)
    assert len(result.trial_rows) == len(reference) == 24
    for row, trial in result.trial_rows.iterrows():
        expected = reference[(trial["run"], float(trial["onset"]))]
        np.testing.assert_allclose(result.betas[row], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        np.testing.assert_allclose(peak.betas[row], factor * expected, rtol=1e-4,
                                   atol=1e-4 * np.abs(expected).max())


def test_lsa_single_precision_close_to_double():
    runs, trials = _session(seed=3)
    single = estimate_single_trial_betas(runs, trials, method="lsa", data_units="percent")
    double = estimate_single_trial_betas(runs, trials, method="lsa", data_units="percent", precision="double")
    np.testing.assert_allclose(single.betas, double.betas, rtol=1e-3, atol=1e-3 * np.abs(double.betas).max())


def _naive_lss(runs, trials, split):
    from nilearn.glm.first_level import compute_regressor, make_first_level_design_matrix

    out = {}
    for run in runs:
        frame_times = run.model_frame_times()
        ev = trials[(trials["run"] == run.run)]
        trial_ev = ev[ev["role"] == "trial"]
        nuis_ev = ev[ev["role"] == "nuisance"]
        fixed = make_first_level_design_matrix(frame_times, None, hrf_model=None, drift_model="cosine",
                                               high_pass=0.01).to_numpy()
        nuisance = compute_regressor(nuis_ev[["onset", "duration"]].assign(a=1.0).to_numpy().T, "glover",
                                     frame_times)[0]
        regs = {i: compute_regressor([[o], [d], [1.0]], "glover", frame_times)[0][:, 0]
                for i, o, d in zip(trial_ev.index, trial_ev["onset"], trial_ev["duration"])}
        for i in trial_ev.index:
            if split:
                groups = sorted(trial_ev["condition"].unique())
                others = [sum(regs[j] for j in trial_ev.index[trial_ev["condition"] == g] if j != i)
                          for g in groups]
                others = [o for o in others if np.ndim(o)]
            else:
                others = [sum(regs[j] for j in trial_ev.index if j != i)]
            design = np.column_stack([regs[i], *others, nuisance, run.confounds, fixed])
            beta = np.linalg.lstsq(design, run.data.T, rcond=None)[0][0]
            out[(run.run, float(trials.at[i, "onset"]))] = beta
    return out


@pytest.mark.parametrize("split", [None, "condition"])
def test_lss_equals_naive_loop(split):
    runs, trials = _session(conditions=("perception", "imagery", "imagery"))
    result = estimate_single_trial_betas(runs, trials, method="lss", lss_split=split, data_units="percent",
                                         precision="double", beta_units="plateau")  # nilearn's unit-sum kernels
    reference = _naive_lss(runs, trials, split)
    for row, trial in result.trial_rows.iterrows():
        expected = reference[(trial["run"], float(trial["onset"]))]
        np.testing.assert_allclose(result.betas[row], expected, rtol=1e-6, atol=1e-8)
    assert result.metadata["lss_split"] == split


def test_lss_split_differs_from_lss1():
    runs, trials = _session(conditions=("perception", "imagery"))
    one = estimate_single_trial_betas(runs, trials, method="lss", data_units="percent")
    split = estimate_single_trial_betas(runs, trials, method="lss", lss_split="condition", data_units="percent")
    assert np.abs(one.betas - split.betas).max() > 1e-3


def test_trial_rows_in_run_then_onset_order_and_percent_scaling():
    runs, trials = _session()
    shuffled = trials.sample(frac=1.0, random_state=0)
    raw = [RunData(data=r.data + 1000.0, tr=r.tr, run=r.run, slice_time_ref=0.5, confounds=r.confounds)
           for r in runs]
    result = estimate_single_trial_betas(raw[::-1], shuffled, method="lsa", precision="double")
    assert list(result.trial_rows["run"]) == ["2"] * 12 + ["1"] * 12
    assert (np.diff(result.trial_rows["onset"].to_numpy()[:12]) > 0).all()
    # raw data scaled to % of the run mean: betas are those of 100 * data / mean
    pct = [RunData(data=100 * r.data / r.data.mean(1, keepdims=True), tr=r.tr, run=r.run, slice_time_ref=0.5,
                   confounds=r.confounds) for r in raw[::-1]]
    expected = estimate_single_trial_betas(pct, trials, method="lsa", data_units="percent", precision="double")
    np.testing.assert_allclose(result.betas, expected.betas, rtol=1e-4, atol=1e-6)
    assert result.metadata["units"] == "percent signal change"


def test_slice_timing_sets_frame_times():
    run = RunData(data=np.zeros((1, 5)), tr=2.0, slice_timing=[0.0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(run.model_frame_times(), 0.75 + 2.0 * np.arange(5))
    run = RunData(data=np.zeros((1, 5)), tr=2.0, slice_time_ref=0.5)
    np.testing.assert_allclose(run.model_frame_times(), 1.0 + 2.0 * np.arange(5))


def test_chunked_equals_unchunked_and_memory_error():
    runs, trials = _session(n_voxels=600)
    whole = estimate_single_trial_betas(runs, trials, method="lsa", data_units="percent")
    chunked = estimate_single_trial_betas(runs, trials, method="lsa", data_units="percent", mem_gb=0.0658)
    assert chunked.metadata["memory"]["chunk_voxels"] < 600
    np.testing.assert_allclose(chunked.betas, whole.betas, rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match="mem-gb"):
        estimate_single_trial_betas(runs, trials, method="lsa", mem_gb=0.001)


def test_bad_inputs_raise_clear_errors():
    runs, trials = _session()
    with pytest.raises(UsageError):
        estimate_single_trial_betas(runs, trials, method="nope")
    with pytest.raises(BadDataError, match="run"):
        estimate_single_trial_betas(runs[:1], trials, method="lsa")
    bad = [RunData(data=np.full((3, 20), np.nan), tr=2.0, run="1")]
    with pytest.raises(BadDataError, match="NaN"):
        estimate_single_trial_betas(bad, trials, method="lsa")


def test_zscore_option():
    runs, trials = _session()
    result = estimate_single_trial_betas(runs, trials, method="lsa", data_units="percent", zscore=True)
    np.testing.assert_allclose(result.betas.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(result.betas.std(0), 1, atol=1e-4)
    assert result.metadata["zscored"] is True


def test_alpha_for_fraction_reaches_the_fraction():
    rng = np.random.default_rng(0)
    s = torch.as_tensor(np.sort(rng.uniform(0.1, 5.0, 8))[::-1].copy())
    z = torch.as_tensor(rng.standard_normal((5, 8)))
    grid = torch.as_tensor(np.concatenate([[0.0], np.logspace(-5, 4, 400)]))
    coef = s[None] / (s[None] ** 2 + grid[:, None])
    curve = torch.sqrt(((coef ** 2) @ (z ** 2).T) / ((coef[:1] ** 2) @ (z ** 2).T))
    for fraction in (0.1, 0.5, 0.9):
        alpha = alphas_for_fraction(curve, grid, fraction)
        ridge = z * s / (s ** 2 + alpha[:, None])
        ols = z / s
        np.testing.assert_allclose(ridge.norm(dim=1) / ols.norm(dim=1), fraction, atol=2e-3)


def test_result_helpers_and_json_metadata():
    import json

    runs, trials = _session()
    result = estimate_single_trial_betas(runs, trials, method="lss")
    json.dumps(result.metadata)  # the sidecar must be plain JSON
    table = result.events_table(fd_mean=np.arange(24) / 10)
    assert list(table.columns[:3]) == ["trial_index", "onset", "duration"]
    assert table["trial_index"].tolist() == list(range(24))
    assert set(result.stat_maps()) == {"r2", "ncsnr", "hrfindex", "pcs", "fracridge"}
    assert (result.hrf_index == -1).all() and result.metadata["method_label"] == "lss"
    assert result.metadata["nuisance_event_types"] == ["response"]
    np.testing.assert_allclose(result.metadata["frame_time_offset_s"], [1.0, 1.0])


def test_run_without_trials_is_left_out():
    runs, trials = _session(n_runs=3)
    trials = trials[~((trials["run"] == "3") & (trials["role"] == "trial"))]
    result = estimate_single_trial_betas(runs, trials, method="lsa", data_units="percent")
    reference = estimate_single_trial_betas(runs[:2], trials[trials["run"] != "3"], method="lsa",
                                            data_units="percent")
    np.testing.assert_array_equal(result.betas, reference.betas)
    assert result.metadata["runs"] == ["1", "2"]


@pytest.mark.parametrize("model", ["glover", "spm"])
@pytest.mark.parametrize("t_r", [0.8, 1.6, 2.0])
def test_canonical_kernels_equal_nilearn(model, t_r):
    from nilearn.glm.first_level import glover_hrf, spm_hrf
    from scipy.stats import gamma

    from bids_m2i.glm.hrf_library import canonical_kernel, gamma_pdf

    theirs = {"glover": glover_hrf, "spm": spm_hrf}[model](t_r, 50)
    np.testing.assert_allclose(canonical_kernel(model, t_r), theirs, rtol=1e-10, atol=1e-14)
    times = np.linspace(0, 32, 1000)
    np.testing.assert_allclose(gamma_pdf(times, 6.67, 0.03, 0.9), gamma.pdf(times, 6.67, loc=0.03, scale=0.9),
                               rtol=1e-10, atol=1e-14)
