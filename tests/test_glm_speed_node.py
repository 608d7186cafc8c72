"""The GLM node's process imports only what it needs, with the same outputs (issue 13, speed of the whole step).

The node's design-matrix figure was drawn from nilearn's ``make_first_level_design_matrix``, whose import (it
pulls in scikit-learn) cost about 1.7 CPU s per GLM process; it is now built from the engine's own convolution
and drift. These tests pin that the matrix is nilearn's (names, order, values) wherever the fast path is taken,
that nilearn itself builds it where nilearn would do something else, and that the node's process no longer
imports nilearn or scikit-learn. No timing is asserted. About 10 s (two child processes import torch).
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from bids_m2i.interfaces.glm import _glover_cosine_design, display_design_matrix

ROOT = Path(__file__).resolve().parents[1]


def _nilearn_design(frame_times, trials):
    from nilearn.glm.first_level import make_first_level_design_matrix

    kept = trials[trials["role"].isin(["trial", "nuisance"])].reset_index(drop=True)
    names = [f"trial_{i:03d}" if role == "trial" else f"nuis_{etype}"
             for i, (role, etype) in enumerate(zip(kept["role"], kept["event_type"]))]
    events = pd.DataFrame({"onset": kept["onset"].astype(float), "duration": kept["duration"].astype(float),
                           "trial_type": names})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_first_level_design_matrix(frame_times, events, hrf_model="glover", drift_model="cosine",
                                              high_pass=0.01), events


def _trials(rng, n_trials, last_onset, n_nuisance=0, zero_durations=False):
    onsets = np.sort(rng.uniform(0, last_onset, n_trials + n_nuisance))
    roles = np.array(["trial"] * n_trials + ["nuisance"] * n_nuisance + ["ignore"])
    onsets = np.append(onsets, last_onset / 2)
    rng.shuffle(roles[:-1])
    durations = rng.choice([0.0, 3.0] if zero_durations else [3.0, 4.0, 0.5], onsets.size)
    return pd.DataFrame({"onset": onsets, "duration": durations, "role": roles,
                         "event_type": rng.choice(["button", "fixation"], onsets.size)})


@pytest.mark.parametrize("case", ["plain", "slice_time_offset", "nonsteady_dropped", "nuisance_events",
                                  "zero_durations", "short_tr"])
def test_display_design_equals_nilearn(case):
    rng = np.random.default_rng(["plain", "slice_time_offset", "nonsteady_dropped", "nuisance_events",
                                 "zero_durations", "short_tr"].index(case))
    tr = 0.8 if case == "short_tr" else 1.6
    frame_times = tr * np.arange(200) + (0.7 if case == "slice_time_offset" else 0.0)
    if case == "nonsteady_dropped":
        frame_times = frame_times[3:]
    trials = _trials(rng, 30, 0.8 * frame_times[-1], n_nuisance=8 if case == "nuisance_events" else 0,
                     zero_durations=case == "zero_durations")
    reference, events = _nilearn_design(frame_times, trials)
    assert _glover_cosine_design(frame_times, events) is not None      # the fast path, not nilearn
    ours = display_design_matrix(SimpleNamespace(frame_times=frame_times), trials)
    assert list(ours.columns) == list(reference.columns)
    np.testing.assert_array_equal(ours.index.to_numpy(), reference.index.to_numpy())
    np.testing.assert_allclose(ours.to_numpy(), reference.to_numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["event_before_window", "singular"])
def test_display_design_falls_back_to_nilearn(case):
    # where nilearn keeps an event the engine's convolution drops, or regularises a singular design, nilearn
    # itself builds the matrix: the figure stays the one it drew
    rng = np.random.default_rng(7)
    frame_times = 1.6 * np.arange(120)
    trials = _trials(rng, 12, 150.0)
    if case == "event_before_window":
        trials.loc[0, "onset"] = -30.0
    else:
        trials.loc[1, "onset"] = 400.0                # after the run: an all-zero column
    reference, events = _nilearn_design(frame_times, trials)
    assert _glover_cosine_design(frame_times, events) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = display_design_matrix(SimpleNamespace(frame_times=frame_times), trials)
    assert list(ours.columns) == list(reference.columns)
    np.testing.assert_array_equal(ours.to_numpy(), reference.to_numpy())


NODE_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[3])
import bench_glm
payload = bench_glm.child_node("fithrf-denoise-rr", sys.argv[1], sys.argv[2], 1)
payload["modules"] = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps(payload))
"""


def test_glm_node_process_imports_no_nilearn_and_matches_the_engine(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_glm

    session = bench_glm.make_session("dg-nsd", 300, 0, None)
    bench_glm.write_node_inputs(session, tmp_path / "inputs")
    out = subprocess.run([sys.executable, "-c", NODE_CHILD, str(tmp_path / "inputs"), str(tmp_path / "node.npy"),
                          str(ROOT / "benchmarks")], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                              "NIPYPE_NO_ET": "1"})
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    # figures: reports/svg.py; output names: bids_m2i.bids.names (pybids' package is "bids"); nor the
    # decoding's or torch's optional packages (the node needs torch's tensors, nothing built on them)
    assert not {"nilearn", "sklearn", "matplotlib", "bids", "sqlalchemy", "sympy", "torchvision", "open_clip",
                "transformers", "diffusers", "PIL"} & set(payload["modules"])
    node = payload["node"]
    for name in ("statseries", "events"):
        assert Path(node[name]).exists()
    published = sorted(p.name for p in (tmp_path / "node.npy.node" / "derivatives").rglob("*") if p.is_file())
    assert any(name.endswith("_design.svg") for name in published)
    assert any(name.endswith("_statseries.nii.gz") for name in published)

    # the node's betas are the engine's on the same arrays (read back from the NIfTI files, float32)
    from bids_m2i.glm.estimate import estimate_single_trial_betas

    runs, trials = bench_glm._ours_inputs(session)
    engine = estimate_single_trial_betas(runs, trials, method="fithrf-denoise-rr", n_threads=1)
    order = np.lexsort((session["onsets"], session["trial_run"]))       # the engine's rows: run, then onset
    expected = np.empty_like(engine.betas)
    expected[order] = engine.betas
    np.testing.assert_array_equal(bench_glm.read_node_betas(node["statseries"], node["events"], session),
                                  expected.astype(np.float32))


def test_trial_fd_mean_equals_the_row_loop():
    # the events table's fd_mean, read from plain columns: the values of the former DataFrame.iterrows loop
    from bids_m2i.interfaces.glm import trial_fd_mean

    rng = np.random.default_rng(3)
    trials = pd.DataFrame({"run": rng.choice(["1", "2", "3"], 50), "onset": rng.uniform(-2, 330, 50),
                           "duration": rng.choice([0.0, 1.0, 3.0], 50), "stimulus": "img"})
    fd = {"1": rng.uniform(0, 1, 200), "2": np.r_[np.nan, rng.uniform(0, 1, 199)], "3": np.array([])}
    fd["2"][50:54] = np.nan
    trs = {"1": 1.6, "2": 1.6, "3": 2.0}
    expected = []
    for _, row in trials.iterrows():
        values = fd[row["run"]]
        if not len(values):
            expected.append(float("nan"))
            continue
        tr = trs[row["run"]]
        first = int(np.floor(row["onset"] / tr))
        last = int(np.ceil((row["onset"] + max(row["duration"], tr)) / tr))
        window = values[max(first, 0):min(max(last, first + 1), len(values))]
        window = window[np.isfinite(window)]
        expected.append(float(window.mean()) if window.size else float("nan"))
    np.testing.assert_array_equal(trial_fd_mean(trials, fd, trs), expected)


def test_glm_package_imports_torch_only_when_the_engine_is_asked_for():
    code = ("import sys; import bids_m2i.glm.design, bids_m2i.glm.hrf_library; print('torch' in sys.modules); "
            "from bids_m2i.glm import RunData, estimate_single_trial_betas, METHODS, ncsnr; "
            "import bids_m2i.glm as glm; print('torch' in sys.modules, callable(glm.estimate_single_trial_betas), "
            "'estimate_single_trial_betas' in dir(glm))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    assert out == ["False", "True", "True", "True"]
