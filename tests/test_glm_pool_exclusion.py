"""``pool_exclusion="repeat-reliable"``: stimulus-driven voxels leave the GLMdenoise noise pool (issue 14, fourth
pass; docs/decoding.md "A noise pool without stimulus-driven voxels"). In imagery sessions the responses are weak
and stimulus-specific: the ON-OFF R² that picks the pool does not see them, and the pool's PCs carry the signal."""

import numpy as np
import pytest
import torch

from bids_m2i.errors import UsageError
from bids_m2i.glm import estimate
from bids_m2i.glm.denoise import reliable_in_pool, repeat_f
from bids_m2i.glm.design import build_run_designs
from bids_m2i.glm.model import SessionModel
from bids_m2i.glm.reliability import RepeatStructure
from bids_m2i.glm.simulation import simulate_session
from helpers import import_benchmark

torch.set_num_threads(1)


def _betas(rng, n_stimuli=20, n_repeats=2, n_noise=400, n_signal=100, n_common=100, signal_sd=1.0):
    """Trials' betas (voxels, trials): pure noise, a stimulus-specific response, or one response common to all."""
    stim = np.repeat(np.arange(n_stimuli), n_repeats)
    noise = rng.standard_normal((n_noise + n_signal + n_common, stim.size))
    effect = rng.standard_normal((n_signal, n_stimuli)) * signal_sd
    noise[n_noise:n_noise + n_signal] += effect[:, stim]
    noise[n_noise + n_signal:] += 3.0
    return torch.as_tensor(noise), RepeatStructure.from_labels([f"s{s}" for s in stim])


def test_repeat_f_ignores_a_common_response():
    rng = np.random.default_rng(0)
    betas, repeats = _betas(rng, n_noise=50, n_signal=50, n_common=0, signal_sd=1.5)
    f = repeat_f(betas, repeats)
    assert torch.allclose(repeat_f(betas + 5.0, repeats), f)  # the ON response cancels
    # no signal: about 1 (the F ratio's mean); signal variance 2.25 x 2 repeats over noise 1: about 5.5
    assert 0.8 < f[:50].median() < 1.2 and f[50:].median() > 3.0, (f[:50].median(), f[50:].median())


def test_reliable_in_pool_separates_stimulus_driven_voxels():
    rng = np.random.default_rng(1)
    betas, repeats = _betas(rng, signal_sd=1.5)
    # chunked like the engine: the threshold is pooled over chunks
    reliable, info = reliable_in_pool([betas[:250], betas[250:]], repeats, alpha=0.05, seed=3)
    noise, signal, common = reliable[:400], reliable[400:500], reliable[500:]
    assert signal.mean() > 0.9, signal.mean()           # measured 0.98
    assert noise.mean() < 0.1 and common.mean() < 0.1, (noise.mean(), common.mean())  # 0.05 expected
    assert info["n_excluded"] == reliable.sum() and info["alpha"] == 0.05


def _imagery_like_session(seed=5):
    """A session of our generator (30 % responsive voxels) where 150 silent voxels get a stimulus-specific response
    of zero mean over stimuli (canonical HRF), as the simulator's visual voxels in imagery: no ON response."""
    sim = simulate_session(n_voxels=600, n_runs=3, n_volumes=200, n_stimuli=40, n_repeats=3,
                           responsive_fraction=0.3, seed=seed)
    rng = np.random.default_rng(seed + 100)
    silent = np.flatnonzero(~sim.responsive)[:150]
    trials = sim.trials[sim.trials["role"] == "trial"]
    designs, rows = build_run_designs(sim.runs, trials, "polynomial", 0.01, None)
    model = SessionModel(designs, with_library=False, dtype=torch.float64)
    stim = rows["stimulus"].str[4:].astype(int).to_numpy()
    effect = rng.standard_normal((40, silent.size))
    effect -= effect.mean(0)
    for run, design in enumerate(designs):
        regressors = model.trial_regressors[run][model.canonical_index]   # (volumes, run's trials)
        percent = regressors @ (1.5 * effect[stim[design.trial_slice]])    # (volumes, silent voxels)
        data = sim.runs[run].data
        data[silent] += (data[silent].mean(1, keepdims=True) * percent.T / 100.0).astype(data.dtype)
    return sim, silent


@pytest.fixture(scope="module")
def pools():
    bench = import_benchmark("glm_pool_exclusion")
    sim, silent = _imagery_like_session()
    out = {}
    for rule in ("none", "repeat-reliable"):
        result, before, after = bench.fit_with_pool_spy(sim.runs, sim.trials, rule)
        out[rule] = (before, after, result.metadata)
    return sim, silent, out


@pytest.mark.slow
def test_stimulus_driven_voxels_leave_the_pool(pools):
    sim, silent, out = pools
    before, after, meta = out["repeat-reliable"]
    # the ON-OFF R² (Otsu's threshold) leaves half of them in the pool (measured 0.53: their overlapping responses
    # do not quite average out over a run); the rule takes most out (measured 0.14)
    assert before[silent].mean() > 0.4, before[silent].mean()
    assert after[silent].mean() < 0.5 * before[silent].mean(), (before[silent].mean(), after[silent].mean())
    quiet = np.setdiff1d(np.flatnonzero(~sim.responsive), silent)
    kept = after[quiet].sum() / max(before[quiet].sum(), 1)
    assert kept > 0.85, kept                                     # pure-noise voxels stay (alpha 0.05)
    assert meta["noise_pool"]["exclusion"]["n_excluded"] == int(before.sum() - after.sum())
    assert meta["noise_pool"]["n_voxels"] == int(after.sum())
    assert "exclusion" not in out["none"][2]["noise_pool"]      # the default leaves the pool as it was
    assert np.array_equal(out["none"][0], before)


def test_bad_pool_options_are_usage_errors():
    sim = simulate_session(n_voxels=20, n_runs=2, n_volumes=80, n_stimuli=8, n_repeats=2, seed=0)
    with pytest.raises(UsageError, match="pool_exclusion"):
        estimate.estimate_single_trial_betas(sim.runs, sim.trials, pool_exclusion="reliable")
    with pytest.raises(UsageError, match="pool_alpha"):
        estimate.estimate_single_trial_betas(sim.runs, sim.trials, pool_exclusion="repeat-reliable",
                                             pool_alpha=1.5)
