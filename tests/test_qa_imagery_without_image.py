"""Imagery trials that name their item without an image file (qa35).

An imagery task whose events name the imagined item (a trial_type or category column) but have no stim_file
and no cue text gets cue "none" and stim_file n/a. The evaluation sent every non-text group to the image
metrics, which opened the missing file: TypeError, exit 1 with a traceback. Such a group is now scored as
pure imagination is: against the categories' mean features when the items are training categories, else
brain_corr only, with a note that says so.
"""

import numpy as np
import pandas as pd
import pytest
from PIL import Image


@pytest.mark.parametrize("with_categories", [True, False])
def test_imagery_without_stim_file_is_scored_without_images(tmp_path, with_categories):
    from bids_m2i.decoding.reconstruct import DecodingOptions, reconstruct_participant

    rng = np.random.default_rng(0)
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    for i in range(8):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(stimuli / f"s{i}.png")
    category = (lambda i: "ab"[i % 2]) if with_categories else (lambda i: "n/a")
    rows = [dict(condition="perception", cue="none", stimulus=f"s{i}", stim_file=f"s{i}.png", category=category(i))
            for _ in range(2) for i in range(8)]
    rows += [dict(condition="imagery", cue="none", stimulus="ab"[i % 2], stim_file="n/a", category=category(i))
             for i in range(4)]
    trials = pd.DataFrame(rows)
    betas = rng.normal(size=(len(trials), 40)).astype(np.float32)
    result = reconstruct_participant(betas, trials, stimuli, DecodingOptions(n_perm=10, work_dir=tmp_path / "w"))
    imagery = result.metrics[result.metrics.condition == "imagery"]
    assert not {"pixcorr", "ssim"} & set(imagery.metric)
    if with_categories:
        assert "image_top1" in set(imagery.metric) and imagery.note.str.contains("categories").all()
    else:
        assert list(imagery.metric) == ["brain_corr"]
        assert "without a target image" in imagery.note.iloc[0]
