"""The default HRF library, "two-width" with the pooled ridge fraction (issue 13, thirteenth pass), against the
medium library with the same pooling on HRFs broader than the medium widths: the demo simulator's family, at the
demo's spacing (a trial every 4 s, TR 2 s), in the benchmark's independent generator. There the medium library
takes a share of the previous trial into each beta (docs/glm.md, "One library of two widths": +0.029 against the
two-width library's -0.017 at V = 2,000, seed 7); the two-width library lets those voxels take a wider member.
Tiny sessions (V = 600), ~20 s."""

import numpy as np
import pytest
import torch

from bids_m2i.glm.estimate import estimate_single_trial_betas

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scores():
    from helpers import import_benchmark, independent_glm_session

    from bids_m2i.glm.simulation import r_trial

    carryover = import_benchmark("bench_glm").carryover
    s, runs, trials = independent_glm_session(600, seed=7, tr=2.0, soa_volumes=2, hrf_family="demo-simulator",
                                              noise="low")
    out = {}
    for name, kwargs in (("default", {}), ("medium", {"hrf_library": "medium"}),
                         ("broad", {"hrf_library": "broad", "fraction_pooling": 0.0})):
        result = estimate_single_trial_betas(runs, trials, n_threads=1, **kwargs)
        previous, _ = np.median(carryover(result.betas, s.true_betas, s.onsets, s.trial_run, s.responsive), axis=1)
        out[name] = (float(np.median(r_trial(result.betas, s.true_betas, s.responsive))), float(previous),
                     result.metadata["hrf_library_name"], np.bincount(result.hrf_index, minlength=20))
    return out


def test_the_default_is_the_two_width_library_with_pooling(scores):
    assert scores["default"][2] == "two-width" and scores["medium"][2] == "medium"


def test_broad_hrfs_take_the_wider_members_and_no_share_of_the_previous_trial(scores):
    default, medium = scores["default"], scores["medium"]
    assert medium[1] > default[1] + 0.03, scores                 # the medium library carries the previous trial
    assert default[3][10:].sum() > 0.5 * default[3].sum(), scores   # most voxels chose a wider member (0.96)
    assert default[0] >= medium[0] - 0.005, scores
    assert default[0] > scores["broad"][0], scores                # and it beats the previous default
