"""Pure imagination whose cue texts are missing (qa35).

With ``--target text`` and imagery trials whose ``cue_text`` is empty (n/a), the group's only row, brain_corr
(scored: it needs no target), had the note "pure imagination with pixel targets: ... nothing can be scored":
wrong twice, there was a text target and the row had a value. The note now says which items lack a cue text.
"""

import numpy as np
import pandas as pd
from PIL import Image


def test_missing_cue_texts_are_named_in_the_note(tmp_path):
    from bids_m2i.decoding.reconstruct import DecodingOptions, reconstruct_participant

    rng = np.random.default_rng(0)
    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    words = "cat dog tree house car boat bird fish".split()
    for i in range(8):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(stimuli / f"s{i}.png")
    pd.DataFrame(dict(stimulus=[f"s{i}" for i in range(8)], caption=[f"a {w}" for w in words])).to_csv(
        stimuli / "stimuli.tsv", sep="\t", index=False)
    rows = [dict(condition="perception", cue="none", stimulus=f"s{i}", stim_file=f"s{i}.png", cue_text="n/a")
            for _ in range(2) for i in range(8)]
    rows += [dict(condition="imagery", cue="text", stimulus=f"t{j}", stim_file="n/a", cue_text="") for j in range(3)]
    trials = pd.DataFrame(rows)
    betas = rng.normal(size=(len(trials), 100)).astype(np.float32)
    result = reconstruct_participant(betas, trials, stimuli, DecodingOptions(targets=("pixels", "text"), n_perm=20,
                                                                             work_dir=tmp_path / "w"))
    rows = result.metrics[result.metrics.cue == "text"]
    assert list(rows.metric) == ["brain_corr"] and np.isfinite(rows.value.iloc[0])
    note = rows.note.iloc[0]
    assert "nothing can be scored" not in note and "pixel targets" not in note, note
    assert "3 of 3 items have no cue_text" in note
