"""Test stimuli without a caption (qa35).

``--target text`` needs captions for the training stimuli (exit 66 otherwise), but a held-out stimulus
without one made the group's text rows vanish from the metrics table without a word. A warning now names them.
"""

import logging

import numpy as np
import pandas as pd
from PIL import Image


def test_missing_test_captions_are_warned_about(tmp_path, caplog):
    from bids_m2i.decoding.reconstruct import DecodingOptions, reconstruct_participant
    from bids_m2i.decoding.splits import split_trials

    rng = np.random.default_rng(0)
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    for i in range(8):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(stimuli / f"s{i}.png")
    trials = pd.DataFrame([dict(condition="perception", cue="none", stimulus=f"s{i}", stim_file=f"s{i}.png")
                           for _ in range(2) for i in range(8)])
    test_stimulus = trials.stimulus[split_trials(trials).test[0]]
    words = "cat dog tree house car boat bird fish".split()
    captions = pd.DataFrame(dict(stimulus=[f"s{i}" for i in range(8)], caption=[f"a {w}" for w in words]))
    captions = captions[captions.stimulus != test_stimulus]
    captions.to_csv(stimuli / "stimuli.tsv", sep="\t", index=False)
    betas = rng.normal(size=(len(trials), 40)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="m2i.decoding"):
        result = reconstruct_participant(betas, trials, stimuli, DecodingOptions(targets=("pixels", "text"), n_perm=10,
                                                                                 work_dir=tmp_path / "w"))
    assert "text" not in set(result.metrics.feature_space)
    assert any("no caption" in r.getMessage() and test_stimulus in r.getMessage() for r in caplog.records)
