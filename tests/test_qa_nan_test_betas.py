"""A NaN beta in a test trial (qa35).

Training betas with NaN stop the decoder (VoxelScaler.fit); a NaN in one held-out or imagery trial, in a voxel
the decoder uses, made that item's prediction NaN and the per-group rescaling then gave every item of the group
the training mean: identical reconstructions, scored as if decoded (chance = value, p = 1), without a word.
It now stops with a BadDataError (exit 65) naming the item.
"""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bids_m2i.errors import BadDataError


def test_nan_in_a_test_trial_stops_clearly(tmp_path):
    from bids_m2i.decoding.reconstruct import DecodingOptions, reconstruct_participant
    from bids_m2i.decoding.splits import split_trials

    rng = np.random.default_rng(0)
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    for i in range(8):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(stimuli / f"s{i}.png")
    trials = pd.DataFrame([dict(condition="perception", cue="none", stimulus=f"s{i}", stim_file=f"s{i}.png")
                           for _ in range(2) for i in range(8)])
    betas = rng.normal(size=(len(trials), 60)).astype(np.float32)
    test_row = int(split_trials(trials).test[0])
    betas[test_row, :] = np.nan  # every voxel: whichever the decoder keeps
    with pytest.raises(BadDataError, match="test item.*NaN") as info:
        reconstruct_participant(betas, trials, stimuli, DecodingOptions(n_perm=10, work_dir=tmp_path / "w"))
    assert trials.stimulus[test_row] in str(info.value)
