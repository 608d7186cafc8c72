"""hrf_library="session": an HRF library derived from the session's own response shapes (issue 13, ninth pass)."""

import numpy as np
import pytest
import torch

from bids_m2i.glm import estimate_single_trial_betas
from bids_m2i.glm.design import build_run_designs
from bids_m2i.glm.session_library import (FINE_TIMES, MAX_SPLIT_HALF_P, MIN_SPLIT_HALF, N_MEMBERS, BasisFit,
                                          SampledFamily, basis_values, derive_library, valid_kernels)
from bids_m2i.glm.simulation import simulate_session, voxel_hrfs
from bids_m2i.glm.solvers import percent_signal

CPU = torch.device("cpu")


def derive(session):
    """The engine's derivation on a simulated session, all voxels counted as brain: (family or None, info)."""
    designs, _ = build_run_designs(session.runs, session.trials, "polynomial", 0.01, None)
    fit = BasisFit(designs, "glover", 50, -24.0, torch.float64, CPU)
    data_runs = [percent_signal(r.data, torch.float64, CPU)[0] for r in session.runs]
    cross, left = fit.project(data_runs)
    return derive_library(fit, cross, left, np.ones(session.runs[0].data.shape[0], dtype=bool))


@pytest.fixture(scope="module")
def planted():
    # the simulator's HRFs are a latency-ordered family (time to peak 4-7.5 s, width growing with latency)
    session = simulate_session(n_voxels=600, responsive_fraction=0.5, noise_sd=0.7, global_sd=0.5, seed=3)
    return session, derive(session)


def test_basis_starts_at_zero():
    values = basis_values(np.array([0.0, 1.0, 10.0, 30.0]))
    np.testing.assert_allclose(values[:, 0], 0.0, atol=1e-12)    # a response cannot start before its trial
    np.testing.assert_allclose(values[:, 3], 0.0, atol=1e-12)    # nor last beyond 28 s
    assert np.abs(values[:, 1:3]).sum() > 0


def test_derived_library_recovers_the_planted_family(planted):
    session, (family, info) = planted
    assert family is not None and info["fallback"] is None, info
    assert len(family) == N_MEMBERS
    truth = session.time_to_peak[session.responsive]
    ttp = np.array([m["time_to_peak_s"] for m in info["members"]])
    # the members span the voxels' times to peak (5th-95th percentiles of the truth, within 0.6 s) ...
    assert abs(ttp[0] - np.percentile(truth, 5)) < 0.6 and abs(ttp[-1] - np.percentile(truth, 95)) < 0.6, ttp
    assert abs(np.median(ttp) - np.median(truth)) < 0.4
    # ... and every true HRF has a member of nearly its shape (correlation over 0-24 s)
    hrfs, _ = voxel_hrfs(session.responsive.size, np.random.default_rng(0))
    t = np.arange(0, 32, 0.1)
    window = t <= 24
    members = np.stack([np.interp(t, FINE_TIMES, v) for v in family.values])[:, window]
    true = hrfs[:, window]
    a = (members - members.mean(1, keepdims=True)) / members.std(1, keepdims=True)
    b = (true - true.mean(1, keepdims=True)) / true.std(1, keepdims=True)
    best = (b @ a.T / window.sum()).max(1)
    assert np.median(best) > 0.97 and np.percentile(best, 5) > 0.9, np.percentile(best, [5, 50])


def test_kernels_are_valid_ordered_and_deterministic(planted):
    session, (family, _) = planted
    for t_r in (1.0, 1.6, 2.0):
        kernels = family.kernels(t_r)
        assert valid_kernels(kernels)
        np.testing.assert_allclose(kernels.sum(1), 1.0, rtol=1e-10)
        assert np.all(np.diff(np.argmax(kernels, 1)) >= 0)       # latency-ordered
    again, _ = derive(session)
    np.testing.assert_array_equal(again.values, family.values)


def test_invalid_kernels_are_rejected():
    good = SampledFamily(np.exp(-0.5 * ((FINE_TIMES - 5) / 1.5) ** 2)[None]).kernels(1.6)
    assert valid_kernels(good)
    assert not valid_kernels(-good)
    assert not valid_kernels(np.where(np.arange(good.size) == 3, np.nan, good))


def test_cross_half_check_separates_a_common_response_from_noise(planted):
    """The odd/even mean shapes agree beyond every sign flip when voxels share a response; on pure noise (with
    the simulator's global fluctuations, which make both means share a shape) the check never passes."""
    _, (_, info) = planted
    assert info["split_half_r"] > 0.9 and info["split_half_p"] < MAX_SPLIT_HALF_P
    for seed in (5, 6, 7, 8):
        _, noise = derive(simulate_session(n_voxels=300, responsive_fraction=0.0, seed=seed))
        assert noise["split_half_r"] < MIN_SPLIT_HALF or noise["split_half_p"] >= MAX_SPLIT_HALF_P, (seed, noise)


def test_pure_noise_falls_back_to_the_broad_library():
    session = simulate_session(n_voxels=300, responsive_fraction=0.0, seed=5)
    family, info = derive(session)
    assert family is None and info["fallback"] == "broad" and "used the broad library" in info["reason"], info
    assert info["split_half_r"] < 0.5          # independent halves' mean shapes do not agree on noise
    result = estimate_single_trial_betas(session.runs, session.trials, method="fithrf", hrf_library="session")
    meta = result.metadata
    assert meta["hrf_library_name"] == "broad" and meta["hrf_library_requested"] == "session"
    assert meta["hrf_library_choice"]["fallback"] == "broad"
    assert len(meta["hrf_library"]) == 20 and "delay" in meta["hrf_library"][0]   # broad's own description


def test_engine_uses_the_derived_library(planted):
    session, (family, _) = planted
    result = estimate_single_trial_betas(session.runs, session.trials, method="fithrf", hrf_library="session")
    meta = result.metadata
    assert meta["hrf_library_name"] == "session" and meta["hrf_library_choice"]["fallback"] is None
    # the engine's shape model also holds the noise PCs (the helper's does not): nearly the same family
    assert meta["hrf_library_choice"]["noise_pcs_in_shape_model"] > 0
    engine_ttp = np.array([m["time_to_peak_s"] for m in meta["hrf_library"]])
    assert engine_ttp.size == N_MEMBERS
    np.testing.assert_allclose(engine_ttp, [m["time_to_peak_s"] for m in family.describe()], atol=0.3)
    assert result.hrf_index.min() >= 0 and result.hrf_index.max() < N_MEMBERS
    # voxels with later true responses choose later members (the simulator inverts the ~5 % of HRFs whose
    # undershoot outweighs the peak; their recorded time to peak, 9-14 s, is the undershoot's)
    upright = session.responsive & (session.time_to_peak < 8)
    r = np.corrcoef(session.time_to_peak[upright], result.hrf_index[upright])[0, 1]
    assert r > 0.5


def test_one_run_falls_back_to_the_broad_library():
    """No independent halves to check the shapes against each other: the broad library, and the sidecar says so."""
    session = simulate_session(n_voxels=200, n_runs=1, n_stimuli=40, n_repeats=3, seed=1)
    meta = estimate_single_trial_betas(session.runs, session.trials, method="fithrf", hrf_library="session").metadata
    assert meta["hrf_library_name"] == "broad" and "one run only" in meta["hrf_library_choice"]["reason"]
