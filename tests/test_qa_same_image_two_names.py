"""One image file listed under two stimulus names (qa35).

Labs reuse a picture under another name (a catch trial, the same photograph in two stimulus sets). The split
identified trials by the stimulus name only, so one name could be held out for testing while the decoder
trained on the very same picture under the other (a leak the leak check could not see), and the evaluation
counted the two names as two candidates with identical features, which tie: a perfect decoder retrieved
neither. Names sharing a ``stim_file`` are now one stimulus for the split and one candidate for the scores.
"""

import numpy as np
import pandas as pd
from PIL import Image

from bids_m2i.decoding.splits import split_trials, stimulus_identity


def _aliased_trials(n=10, aliased=10):
    rows = [dict(condition="perception", stimulus=f"s{i}", stim_file=f"s{i}.png") for _ in range(2) for i in range(n)]
    rows += [dict(condition="perception", stimulus=f"alias{i}", stim_file=f"stimuli/./s{i}.png")
             for i in range(aliased)]
    return pd.DataFrame(rows)


def test_split_never_trains_on_a_held_out_image_under_another_name():
    trials = _aliased_trials()
    for seed in range(3):
        split = split_trials(trials, seed=seed)
        train_files = set(trials.stim_file.iloc[split.train].str.replace("stimuli/./", ""))
        test_files = set(trials.stim_file.iloc[split.test].str.replace("stimuli/./", ""))
        assert test_files and not train_files & test_files, (seed, sorted(train_files & test_files))


def test_identity_is_unchanged_without_shared_files():
    trials = pd.DataFrame(dict(stimulus=["a", "b", "a", "n/a"], stim_file=["a.png", "b.png", "a.png", "c.png"]))
    assert stimulus_identity(trials).tolist() == ["a", "b", "a", "c.png"]
    # one label for several files (a category shown as exemplars) is not merged with anything
    trials = pd.DataFrame(dict(stimulus=["dog", "dog", "cat"], stim_file=["d1.png", "d2.png", "c1.png"]))
    assert stimulus_identity(trials).tolist() == ["dog", "dog", "cat"]


def test_two_names_of_one_test_image_are_one_candidate(tmp_path):
    from bids_m2i.decoding.reconstruct import DecodingOptions, reconstruct_participant

    rng = np.random.default_rng(0)
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    for i in range(12):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((32, 32)).save(stimuli / f"s{i}.png")
    rows = [dict(condition="perception", cue="none", stimulus=f"s{i}", stim_file=f"s{i}.png")
            for _ in range(2) for i in range(12)]
    # s0 and s1 are also shown twice under other names: 4 showings each, the most repeated (the test items)
    rows += [dict(condition="perception", cue="none", stimulus=f"alias{i}", stim_file=f"s{i}.png")
             for _ in range(2) for i in range(2)]
    trials = pd.DataFrame(rows)
    images = np.stack([np.asarray(Image.open(stimuli / f).convert("RGB"), float).ravel() / 255
                       for f in trials.stim_file])
    betas = (images @ rng.normal(size=(images.shape[1], 150)) / 30
             + 0.1 * rng.normal(size=(len(trials), 150))).astype(np.float32)
    result = reconstruct_participant(betas, trials, stimuli, DecodingOptions(n_perm=20, work_dir=tmp_path / "w"))
    assert set(result.predictions.stimulus) == {"s0", "s1", "alias0", "alias1"}
    top1 = result.metrics.set_index("metric").loc["image_top1"]
    assert top1.n_candidates == 2, top1.note


def test_imagery_labels_are_not_merged_through_the_screen_shown_while_imagining():
    """Only what was seen links two labels: imagery trials may all list one image (a blank or cue frame shown while
    imagining); merged through it, every imagined item became one target (one candidate, nothing to score)."""
    rows = [dict(condition="perception", stimulus=f"s{i}", stim_file=f"s{i}.png") for i in range(4)]
    rows += [dict(condition="perception", stimulus="alias0", stim_file="s0.png")]
    rows += [dict(condition="imagery", stimulus=name, stim_file="blank.png") for name in ("dog", "cat", "car")]
    identity = stimulus_identity(pd.DataFrame(rows)).tolist()
    assert identity[-3:] == ["dog", "cat", "car"]
    assert identity[0] == identity[4]  # the perception alias is still one stimulus
