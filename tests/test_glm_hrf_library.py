"""The HRF libraries: the default "two-width" one, the "broad" one (the default before issue 13's thirteenth pass)
and the latency-ordered options (issue 13)."""

import numpy as np
import pytest

from bids_m2i.errors import UsageError
from bids_m2i.glm import estimate_single_trial_betas
from bids_m2i.glm.hrf_library import KERNEL_SECONDS, describe_library, library_kernels
from bids_m2i.glm.simulation import simulate_session


def _fwhm(kernel: np.ndarray) -> float:
    dt = KERNEL_SECONDS / (kernel.size - 1)
    above = np.flatnonzero(kernel >= kernel.max() / 2)
    return float((above[-1] - above[0]) * dt)


def test_narrow_library_is_latency_ordered_and_narrower_than_broad():
    narrow = library_kernels(1.6, name="narrow")
    broad = library_kernels(1.6, name="broad")
    assert narrow.shape == broad.shape == (20, narrow.shape[1])
    np.testing.assert_allclose(narrow.sum(1), 1.0)
    peaks = [m["time_to_peak_s"] for m in describe_library(name="narrow")]
    assert np.all(np.diff(peaks) > 0) and 2.8 < peaks[0] < 3.3 and 6.7 < peaks[-1] < 7.3
    widths = np.array([_fwhm(k) for k in narrow])
    assert np.all((widths > 2.2) & (widths < 3.8))
    assert np.median([_fwhm(k) for k in broad]) > widths.max()
    # the medium library: the same peaks, FWHM 4-5 s
    medium = library_kernels(1.6, name="medium")
    np.testing.assert_allclose(medium.sum(1), 1.0)
    medium_widths = np.array([_fwhm(k) for k in medium])
    assert np.all((medium_widths > 3.3) & (medium_widths < 5.2)) and np.all(medium_widths > widths)
    medium_peaks = [m["time_to_peak_s"] for m in describe_library(name="medium")]
    assert np.all(np.diff(medium_peaks) > 0) and medium_peaks[0] < 3.5 and medium_peaks[-1] > 6.5


def test_two_width_library_is_the_default_and_crosses_ten_latencies_with_two_widths():
    two = library_kernels(1.6, name="two-width")
    np.testing.assert_array_equal(library_kernels(1.6), two)       # the default
    assert two.shape == (20, two.shape[1])
    np.testing.assert_allclose(two.sum(1), 1.0)
    members = describe_library(name="two-width")
    peaks = np.array([m["time_to_peak_s"] for m in members])
    widths = np.array([_fwhm(k) for k in two])
    # members 0-9 and 10-19: the same ten latencies (3-7 s), in order
    assert np.all(np.diff(peaks[:10]) > 0) and np.all(np.diff(peaks[10:]) > 0)
    np.testing.assert_allclose(peaks[:10], peaks[10:], atol=0.05)
    assert 2.8 < peaks[0] < 3.3 and 6.7 < peaks[9] < 7.3
    # the first ten have the medium library's widths, the others are wider at every latency
    medium_widths = np.array([_fwhm(k) for k in library_kernels(1.6, name="medium")])
    assert medium_widths.min() - 0.1 <= widths[:10].min() and widths[:10].max() <= medium_widths.max() + 0.1
    assert np.all(widths[10:] > widths[:10] + 0.5)
    assert widths[10:].max() < np.array([_fwhm(k) for k in library_kernels(1.6, name="broad")]).max()


def test_library_choice_reaches_the_model_and_the_sidecar():
    sim = simulate_session(n_voxels=200, n_runs=3, n_volumes=150, n_stimuli=40, n_repeats=3, seed=21)
    default = estimate_single_trial_betas(sim.runs, sim.trials, method="fithrf")
    assert default.metadata["hrf_library_name"] == "two-width"
    assert default.metadata["hrf_library"] == describe_library()
    broad = estimate_single_trial_betas(sim.runs, sim.trials, method="fithrf", hrf_library="broad")
    narrow = estimate_single_trial_betas(sim.runs, sim.trials, method="fithrf", hrf_library="narrow")
    assert broad.metadata["hrf_library_name"] == "broad"
    assert broad.metadata["hrf_library"] == describe_library(name="broad")
    assert narrow.metadata["hrf_library_name"] == "narrow"
    assert narrow.metadata["hrf_library"] == describe_library(name="narrow")
    assert not np.array_equal(broad.betas, narrow.betas)
    assert narrow.hrf_index.min() >= 0 and narrow.hrf_index.max() < 20
    # the assumed-HRF methods carry no library
    lsa = estimate_single_trial_betas(sim.runs, sim.trials, method="lsa", hrf_library="narrow")
    assert lsa.metadata["hrf_library"] is None and lsa.metadata["hrf_library_name"] is None


def test_unknown_library_is_a_usage_error():
    sim = simulate_session(n_voxels=50, n_runs=2, n_volumes=100, n_stimuli=10, n_repeats=2, seed=1)
    with pytest.raises(UsageError, match="HRF library"):
        estimate_single_trial_betas(sim.runs, sim.trials, method="fithrf", hrf_library="wide")


def test_latency_ordered_libraries_give_better_unregularised_betas_on_the_independent_generator():
    # issue 13 (docs/glm.md, "The HRF library and the HRF choice"): with a trial every 4.8 s, the broad library's
    # late members make neighbouring trials' regressors nearly collinear; the narrower families give better
    # fithrf betas (benchmark V = 2,000, seed 0: r_trial 0.37 broad, 0.48 medium, 0.57 narrow on dg-nsd)
    from helpers import independent_glm_session

    from bids_m2i.glm.simulation import r_trial

    s, runs, trials = independent_glm_session(600, seed=4)
    scores = {}
    for library in ("broad", "medium", "narrow"):
        result = estimate_single_trial_betas(runs, trials, method="fithrf", hrf_library=library)
        scores[library] = float(np.median(r_trial(result.betas, s.true_betas, s.responsive)))
    assert scores["medium"] > scores["broad"] + 0.04, scores
    assert scores["narrow"] > scores["medium"] + 0.04, scores
