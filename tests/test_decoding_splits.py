"""Splits never leak held-out stimuli or imagery trials into training (randomised property checks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_m2i.decoding.splits import average_repeats, check_no_leak, split_trials
from bids_m2i.errors import BadDataError


def _random_design(rng: np.random.Generator) -> pd.DataFrame:
    n_stim = int(rng.integers(3, 40))
    rows = []
    sessions = ["01", "02", "03"] if rng.random() < 0.5 else ["perceptionTraining01", "perceptionTest01"]
    for s in range(n_stim):
        reps = int(rng.choice([1, 1, 2, 3, 5]))
        for _ in range(reps):
            rows.append({"condition": "perception", "stimulus": f"img-{s:03d}",
                         "session": str(rng.choice(sessions)), "run": str(rng.integers(1, 4))})
    for s in range(int(rng.integers(0, 10))):
        for _ in range(int(rng.integers(1, 4))):
            rows.append({"condition": "imagery", "stimulus": f"img-{int(rng.integers(0, n_stim)):03d}",
                         "session": "imagery01", "run": "1"})
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=int(rng.integers(1 << 30))).reset_index(drop=True)
    return frame


@pytest.mark.parametrize("seed", range(60))
def test_random_designs_never_leak(seed):
    rng = np.random.default_rng(seed)
    trials = _random_design(rng)
    perception = trials.condition == "perception"
    try:
        split = split_trials(trials, seed=seed, fine_tune_imagery=True)
    except BadDataError as error:
        # only acceptable when nothing can be trained (all perception trials are in test sessions), or when what
        # is left for training is a single stimulus (qa35: tests/test_qa_one_training_stimulus.py)
        if "at least 2 distinct training stimuli" in str(error):
            assert str(error).startswith(("only 0 distinct", "only 1 distinct"))
            return
        assert perception.sum() < 2 or trials.stimulus[perception].nunique() < 2 or \
            trials.session[perception].str.contains("Test").all() or \
            set(trials.stimulus[perception & ~trials.session.str.contains("Test")]) <= \
            set(trials.stimulus[perception & trials.session.str.contains("Test")])
        return
    train_stimuli = set(trials.stimulus[split.train])
    test_stimuli = set(trials.stimulus[split.test])
    assert not train_stimuli & test_stimuli
    assert (trials.condition[split.train] == "perception").all()
    assert (trials.condition[split.imagery] == "imagery").all()
    # every perception trial is used exactly once, and all repeats of a test stimulus are in test
    assert sorted(np.r_[split.train, split.test]) == sorted(np.flatnonzero(perception))
    for stim in test_stimuli:
        assert set(np.flatnonzero((trials.stimulus == stim) & perception)) <= set(split.test)
    if trials.session.str.contains("Test").any() and (perception & trials.session.str.contains("Test")).any():
        tested = trials[perception & trials.session.str.contains("Test")]
        assert set(tested.index) <= set(split.test)
    if split.imagery_folds is not None:
        # an imagined item sits in one fold only
        for stim, group in trials.iloc[split.imagery].groupby("stimulus"):
            folds = split.imagery_folds[np.isin(split.imagery, group.index)]
            assert len(set(folds)) == 1
    # deterministic
    again = split_trials(trials, seed=seed, fine_tune_imagery=True)
    np.testing.assert_array_equal(again.test, split.test)


def test_most_repeated_stimuli_are_test_items():
    stim = [f"s{i}" for i in range(20)] + ["t0", "t1"] * 3
    trials = pd.DataFrame({"condition": "perception", "stimulus": stim})
    split = split_trials(trials)
    assert split.test_stimuli == ["t0", "t1"]
    assert len(split.test) == 6 and len(split.train) == 20


def test_test_session_label_wins():
    trials = pd.DataFrame({
        "condition": ["perception"] * 6,
        "stimulus": ["a", "b", "c", "a", "d", "d"],
        "session": ["perceptionTraining01"] * 3 + ["perceptionTest01"] * 3,
    })
    split = split_trials(trials)
    assert set(trials.stimulus[split.test]) == {"a", "d"}
    assert 0 in split.test  # the training-session repeat of a test stimulus is held out too
    assert set(trials.stimulus[split.train]) == {"b", "c"}


def test_check_no_leak_detects_leak():
    trials = pd.DataFrame({"condition": ["perception"] * 4, "stimulus": ["a", "a", "b", "c"]})
    split = split_trials(trials, seed=1)
    split.train = np.r_[split.train, split.test[:1]]
    with pytest.raises(BadDataError):
        check_no_leak(split, trials)


def test_average_repeats():
    betas = np.arange(12, dtype=np.float32).reshape(4, 3)
    avg, labels, groups = average_repeats(betas, ["x", "y", "x", "y"])
    assert list(labels) == ["x", "y"]
    np.testing.assert_allclose(avg, [[3, 4, 5], [6, 7, 8]])
    assert [list(g) for g in groups] == [[0, 2], [1, 3]]
