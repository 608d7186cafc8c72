"""A design that leaves one perception stimulus for training (qa35).

Two perception stimuli (one held out) gave the decoder a single training target: shown once, the voxel scaling
stopped with "all voxels are constant over the training trials" (pointing at the betas, not the design); shown
several times, the run went on and every score sat at chance. Both now stop with a message about the design.
"""

import pandas as pd
import pytest

from bids_m2i.decoding.splits import split_trials
from bids_m2i.errors import BadDataError


@pytest.mark.parametrize("repeats", [1, 3])
def test_one_training_stimulus_is_refused_clearly(repeats):
    trials = pd.DataFrame([dict(condition="perception", stimulus=f"s{i}", stim_file=f"s{i}.png")
                           for _ in range(repeats) for i in range(2)]
                          + [dict(condition="imagery", stimulus="s0", stim_file="s0.png")])
    with pytest.raises(BadDataError, match="at least 2 distinct training stimuli"):
        split_trials(trials)


def test_two_training_stimuli_are_enough():
    trials = pd.DataFrame([dict(condition="perception", stimulus=f"s{i}", stim_file=f"s{i}.png") for i in range(3)])
    split = split_trials(trials)
    assert len(split.train) == 2 and len(split.test) == 1
