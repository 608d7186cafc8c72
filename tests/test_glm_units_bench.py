"""benchmarks/glm_units.py: the slope / SD / mean ratios and the peak-over-plateau factor it reports."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import glm_units  # noqa: E402


def test_scale_stats_reads_a_known_scale():
    rng = np.random.default_rng(0)
    truth = 1.0 + rng.standard_normal((400, 30))
    estimated = 2.0 * truth + 0.1 * rng.standard_normal(truth.shape)   # twice the truth, same mean ratio
    stats = glm_units.scale_stats(estimated, truth)
    assert abs(stats["slope"] - 2.0) < 0.02
    assert abs(stats["sd_ratio"] - 2.0) < 0.02
    assert abs(stats["mean_ratio"] - 2.0) < 0.05
    assert stats["slope_spread"] < 0.05        # one scale for every voxel
    # half the voxels at scale 1, half at 3: the interquartile range of the slopes is 2, the median 2 or so
    mixed = estimated * np.where(np.arange(30) < 15, 0.5, 1.5)[None]
    assert glm_units.scale_stats(mixed, truth)["slope_spread"] > 0.8
    # a pure noise estimate has no slope but keeps an SD: the two measures are not the same thing
    noise = glm_units.scale_stats(rng.standard_normal(truth.shape), truth)
    assert abs(noise["slope"]) < 0.1 and noise["sd_ratio"] > 0.8


def test_peak_over_plateau_of_a_boxcar_kernel():
    # a unit-sum 2 s boxcar kernel on a 0.1 s grid: a 1 s trial reaches half the plateau, a 3 s trial all of it
    kernel = np.ones((1, 20)) / 20
    assert np.allclose(glm_units.peak_over_plateau(kernel, 1.0, 0.1), 0.5)
    assert np.allclose(glm_units.peak_over_plateau(kernel, 3.0, 0.1), 1.0)
    # an undershoot lowers the net area (the plateau) but not the early peak: the factor exceeds 1
    with_undershoot = np.concatenate([np.ones(20), -0.5 * np.ones(20)])[None] / 10
    assert glm_units.peak_over_plateau(with_undershoot, 2.0, 0.1)[0] > 1.5
