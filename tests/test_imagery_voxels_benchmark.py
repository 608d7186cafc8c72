"""The voxel statistics of benchmarks/imagery_voxels.py (issue 14, seventh pass): the imagery reliability reads only
which imagery trials repeat a cue (never a target), ranks voxels that repeat in imagery above those that do not,
and the rules keep the requested count."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import imagery_voxels  # noqa: E402


def _imagery(seed=0, n_cues=10, repeats=2, n_reliable=30, n_noise=70, gain=1.0):
    """Betas of cue trials: the first ``n_reliable`` voxels carry a per-cue signal, the others only noise."""
    rng = np.random.default_rng(seed)
    cues = np.repeat([f"cue-{i}" for i in range(n_cues)], repeats)
    signal = rng.standard_normal((n_cues, n_reliable))[np.repeat(np.arange(n_cues), repeats)]
    betas = rng.standard_normal((len(cues), n_reliable + n_noise))
    betas[:, :n_reliable] += gain * signal
    return betas, cues


def test_imagery_reliability_ranks_the_repeating_voxels_first():
    betas, cues = _imagery(n_cues=40, gain=2.0)
    snr = imagery_voxels.imagery_ncsnr(betas, cues)
    top = imagery_voxels.voxel_set("imag", np.zeros(len(snr)), snr, 30)
    assert np.isin(top, np.arange(30)).mean() > 0.9


def test_imagery_reliability_uses_only_the_repeat_structure():
    betas, cues = _imagery()
    snr = imagery_voxels.imagery_ncsnr(betas, cues)
    # relabelling the cues (same grouping) changes nothing; it reads no target, only which trials share a cue
    renamed = np.array([c.replace("cue", "other") for c in cues])
    assert np.array_equal(snr, imagery_voxels.imagery_ncsnr(betas, renamed))
    # breaking the grouping (pairs drawn at random) removes the signal the ranking relied on
    shuffled = np.random.default_rng(1).permutation(cues)
    assert imagery_voxels.imagery_ncsnr(betas, shuffled)[:30].mean() < snr[:30].mean()


def test_memory_consistency_ignores_stimuli_without_perception_trials():
    rng = np.random.default_rng(0)
    test_stim = np.repeat([f"s{i}" for i in range(20)], 3)
    test = rng.standard_normal((60, 8))
    memory_stim = np.array([f"s{i}" for i in range(20)] + ["novel"])
    memory = np.vstack([test.reshape(20, 3, 8).mean(1), rng.standard_normal((1, 8)) * 100])
    r = imagery_voxels.memory_consistency(memory, memory_stim, test, test_stim)
    assert np.allclose(r, 1.0)  # the outlier row of a stimulus never perceived is left out


def test_rules_keep_the_requested_count_and_perc2k_stays_in_the_perception_pool():
    rng = np.random.default_rng(0)
    perception, imagery = rng.random(500), rng.random(500)
    for rule in ("imag", "ranksum", "perc2k", "cons-perc2k", "cons-ranksum"):
        assert len(imagery_voxels.voxel_set(rule, perception, imagery, 60)) == 60
    pool = np.argsort(-perception)[:120]
    assert np.isin(imagery_voxels.voxel_set("perc2k", perception, imagery, 60), pool).all()
