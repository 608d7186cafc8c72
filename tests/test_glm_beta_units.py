"""The betas' units (issue 14, docs/glm.md "Units of the betas"): peak % signal change of one trial's response,
GLMsingle's scaling, by a per-voxel rescale of the unit-sum ("plateau") betas (bids_m2i/glm/units.py)."""

import numpy as np
import pandas as pd
import pytest

from bids_m2i.errors import UsageError
from bids_m2i.glm.design import RunData
from bids_m2i.glm.estimate import estimate_single_trial_betas
from bids_m2i.glm.hrf_library import library_kernels
from bids_m2i.glm.units import kernel_peak_responses, reference_duration

from helpers import independent_glm_session


def _slopes(estimated, truth):
    """Per voxel, the regression slope over trials of the estimated on the true betas."""
    est, tru = estimated - estimated.mean(0), truth - truth.mean(0)
    return (est * tru).sum(0) / (tru ** 2).sum(0)


def test_kernel_peak_response_of_known_kernels():
    # a unit-sum 2 s boxcar kernel on a 0.1 s grid: a 1 s trial reaches half its plateau, a 3 s trial all of it
    kernel = np.ones((1, 20)) / 20
    np.testing.assert_allclose(kernel_peak_responses(kernel, 1.0, 0.1), [0.5])
    np.testing.assert_allclose(kernel_peak_responses(kernel, 3.0, 0.1), [1.0])
    # a zero duration is one grid sample, as the model's regressors treat it
    np.testing.assert_allclose(kernel_peak_responses(kernel, 0.0, 0.1), [0.05])
    # an undershoot lowers the area (the plateau), not the early peak: the factor exceeds 1
    assert kernel_peak_responses(np.concatenate([np.ones(20), -0.5 * np.ones(20)])[None] / 10, 2.0, 0.1)[0] > 1.5
    assert reference_duration([3.0, 3.0, 4.0, np.nan]) == 3.0 and reference_duration([np.nan]) == 0.0


@pytest.mark.parametrize("duration", [1.0, 3.0])
def test_betas_are_on_the_true_peak_scale(duration):
    # truth in peak units (glm_generators: each trial's response peaks at its beta), HRFs not from our library.
    # Before (plateau units, seed 5, V = 300): median slopes 2.63 (lsa) and 4.04 (fithrf-denoise-rr) with 1 s
    # trials, 0.96 and 1.47 with 3 s trials (lsa's Glover kernel peaks at 0.95 for 3 s: already near 1 there)
    s, runs, trials = independent_glm_session(300, 5, trial_duration=duration, n_runs=3, n_stimuli=60,
                                              noise="low")
    for method in ("lsa", "fithrf-denoise-rr"):
        result = estimate_single_trial_betas(runs, trials, method=method)
        assert result.metadata["beta_units"] == "peak"
        assert result.metadata["peak_scaling"]["reference_duration_s"] == duration
        slope = float(np.median(_slopes(result.betas[:, s.responsive], s.true_betas[:, s.responsive])))
        plateau = result.betas / result.beta_scale[None]
        before = float(np.median(_slopes(plateau[:, s.responsive], s.true_betas[:, s.responsive])))
        assert 0.8 <= slope <= 1.15, (method, duration, slope, before)
        if method == "fithrf-denoise-rr" or duration == 1.0:
            assert before > 1.3, (method, duration, before)


def _two_shape_session(seed=0, n_per_shape=12, noise_sd=0.05):
    """Voxels with the same true peak amplitudes but two HRFs of the broad library: an early one with a deep
    undershoot (index 10, its 3 s response reaches 1.25 × the plateau) and a late broad one (index 9, 0.39 ×). The responses
    are computed here on a fine grid (the kernel convolved with the trial's boxcar, scaled to peak 1, sampled at
    the volume times), not by the model's regressors."""
    rng = np.random.default_rng(seed)
    tr, n_volumes, duration, dt = 1.6, 160, 3.0, 0.016
    kernels = library_kernels(tr, 100, name="broad")[[10, 9]]   # sampled every tr / 100 = 0.016 s
    responses = [np.convolve(k, np.ones(int(round(duration / dt)))) for k in kernels]
    responses = [r / r.max() for r in responses]
    n_stimuli = 30
    runs, rows = [], []
    amplitudes = rng.normal(1.0, 0.6, (n_stimuli * 3,))
    frame_times = tr * np.arange(n_volumes)
    for run in range(3):
        onsets = 8.0 + 6.4 * np.arange(n_stimuli) + rng.uniform(0, 1.6, n_stimuli)
        order = rng.permutation(n_stimuli)
        data = np.zeros((2 * n_per_shape, n_volumes))
        for j, (onset, stim) in enumerate(zip(onsets, order)):
            beta = amplitudes[run * n_stimuli + j]
            rows.append({"onset": onset, "duration": duration, "run": str(run + 1), "role": "trial",
                         "event_type": "stimulus", "condition": "perception", "stimulus": f"img-{stim:03d}",
                         "beta": beta})
            for shape, response in enumerate(responses):
                times = onset + dt * np.arange(response.size)
                data[shape * n_per_shape:(shape + 1) * n_per_shape] += beta * np.interp(
                    frame_times, times, response, left=0.0, right=0.0)
        data += noise_sd * rng.standard_normal(data.shape)
        runs.append(RunData(data=data, tr=tr, run=str(run + 1)))
    return runs, pd.DataFrame(rows), n_per_shape


def test_same_peak_response_same_scale_whatever_the_hrf():
    runs, trials, n = _two_shape_session()
    result = estimate_single_trial_betas(runs, trials, method="fithrf", data_units="percent", precision="double",
                                         hrf_library="broad")
    assert (result.hrf_index[:n] == 10).all() and (result.hrf_index[n:] == 9).all()
    truth = trials.sort_values(["run", "onset"])["beta"].to_numpy()[:, None]
    slopes = _slopes(result.betas, np.repeat(truth, 2 * n, axis=1))
    ratio = np.median(slopes[:n]) / np.median(slopes[n:])
    assert 0.95 < ratio < 1.05, ratio
    assert 0.95 < np.median(slopes) < 1.05
    # in plateau units the two shapes' betas differ by their kernels' ratio (0.39 / 1.25: about 0.31)
    plateau = estimate_single_trial_betas(runs, trials, method="fithrf", data_units="percent",
                                          precision="double", beta_units="plateau", hrf_library="broad")
    plateau_slopes = _slopes(plateau.betas, np.repeat(truth, 2 * n, axis=1))
    assert np.median(plateau_slopes[:n]) / np.median(plateau_slopes[n:]) < 0.4


def _correlations(betas, other):
    a, b = betas - betas.mean(0), other - other.mean(0)
    return (a * b).sum(0) / np.sqrt((a ** 2).sum(0) * (b ** 2).sum(0))


def test_rescale_changes_no_correlation_and_is_reproducible_from_the_sidecar():
    s, runs, trials = independent_glm_session(200, 2, n_runs=3, n_stimuli=60, noise="low")
    peak = estimate_single_trial_betas(runs, trials, method="fithrf-denoise-rr")
    plateau = estimate_single_trial_betas(runs, trials, method="fithrf-denoise-rr", beta_units="plateau")
    # the same fit: HRFs, PCs, fractions, R² identical; the betas differ by one factor per voxel
    for name in ("hrf_index", "n_pcs", "frac", "r2"):
        np.testing.assert_array_equal(getattr(peak, name), getattr(plateau, name))
    info = peak.metadata["peak_scaling"]
    factors = np.array(info["kernel_peak_responses"] + [info["assumed_hrf_peak_response"]])
    from_sidecar = factors[np.where(peak.hrf_index >= 0, peak.hrf_index, len(factors) - 1)]
    np.testing.assert_allclose(peak.beta_scale, from_sidecar, rtol=1e-5)
    np.testing.assert_allclose(peak.betas, plateau.betas * from_sidecar[None], rtol=2e-5, atol=1e-7)
    assert len(np.unique(peak.hrf_index)) > 3 and plateau.beta_scale is None
    # per-voxel correlations over trials (with the truth; test-retest) and ncsnr: unchanged at float precision.
    # (Correlations across voxels, e.g. of two trials' patterns, do change: that is the rescale's purpose.)
    responsive = s.responsive
    np.testing.assert_allclose(_correlations(peak.betas[:, responsive], s.true_betas[:, responsive]),
                               _correlations(plateau.betas[:, responsive], s.true_betas[:, responsive]), atol=1e-5)
    first, second = (np.array([np.flatnonzero(s.stimulus == k)[i] for k in np.unique(s.stimulus)]) for i in (0, 1))
    np.testing.assert_allclose(_correlations(peak.betas[first], peak.betas[second]),
                               _correlations(plateau.betas[first], plateau.betas[second]), atol=1e-5)
    np.testing.assert_allclose(peak.ncsnr, plateau.ncsnr, rtol=1e-4, atol=1e-5)
    # z-scored betas carry no units: bit-identical whichever units were asked for
    z_peak = estimate_single_trial_betas(runs, trials, method="lsa", zscore=True)
    z_plateau = estimate_single_trial_betas(runs, trials, method="lsa", zscore=True, beta_units="plateau")
    np.testing.assert_array_equal(z_peak.betas, z_plateau.betas)
    assert z_peak.metadata["beta_units"] == "z-score" and z_peak.metadata["peak_scaling"] is None


def test_unknown_units_are_a_usage_error():
    _, runs, trials = independent_glm_session(20, 0, n_runs=3, n_stimuli=60)
    with pytest.raises(UsageError, match="beta_units"):
        estimate_single_trial_betas(runs, trials, method="lsa", beta_units="psc")


def test_report_says_what_a_beta_of_one_means():
    from bids_m2i.reports.participant import glm_details

    meta = {"method": "fithrf-denoise-rr", "units": "percent signal change", "beta_units": "peak",
            "peak_scaling": {"reference_duration_s": 3.0}, "zscored": False}
    assert "at the peak of a 3 s trial's response" in glm_details(meta)
    # a sidecar written before the change (no beta_units) had unit-sum kernels' plateau units
    assert "plateau" in glm_details({"method": "lsa", "units": "percent signal change"})
    assert "peak" not in glm_details({"method": "lsa", "units": "z-score per voxel within session",
                                      "beta_units": "z-score", "zscored": True})
    from bids_m2i.reports.methods import _glm_facts

    peak = {"beta_units": "peak", "peak_scaling": {"reference_duration_s": 3.0}, "n_trials": 10}
    text = _glm_facts([peak, {**peak, "peak_scaling": {"reference_duration_s": 4.0}}])
    assert "peak of one trial's response" in text and "(3 and 4 s)" in text
    assert "peak of one trial" not in _glm_facts([{"beta_units": "plateau", "n_trials": 10}])
