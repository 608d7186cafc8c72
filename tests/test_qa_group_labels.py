"""The group level with ``--participant-label`` naming someone not in BIDS_DIR (a typo: ``09`` for ``03``).

It gave 66 "No participant has finished" (or 0, the label silently counted as "unfinished" when others had
finished); the participant level says 18 "Participant(s) 09 not found in the dataset": the group level now
says the same, with the same code. Labels present but not yet decoded are still "not finished" (exit 0).
"""

from __future__ import annotations

import pytest
from test_qa_group_inputs import _group, _participants, group_dirs  # noqa: F401 (fixture)


@pytest.mark.parametrize("labels", [["09"], ["01", "09"], ["sub-09"]])
def test_a_label_not_in_the_dataset_is_18(group_dirs, capsys, labels):
    bids, out = group_dirs
    assert _group(bids, out, "--participant-label", *labels) == 18
    err = capsys.readouterr().err
    assert "Participant(s) 09 not found in the dataset" in err and "01, 02, 03" in err


def test_labels_present_but_unfinished_are_still_listed(group_dirs):
    bids, out = group_dirs
    assert _group(bids, out, "--participant-label", "sub-01", "03") == 0  # sub-03 has not run decoding
    assert _participants(out) == {"sub-01"}


def test_a_label_with_derivatives_but_no_raw_data_counts(group_dirs):
    # the group level reads OUTPUT_DIR only: derivatives of a participant whose raw data left BIDS_DIR still count
    import shutil

    bids, out = group_dirs
    shutil.copytree(out / "sub-01", out / "sub-07")
    for path in sorted((out / "sub-07").rglob("*sub-01*"), key=lambda p: -len(p.parts)):
        path.rename(path.with_name(path.name.replace("sub-01", "sub-07")))
    try:
        assert _group(bids, out, "--participant-label", "01", "07") == 0
        assert _participants(out) == {"sub-01", "sub-07"}
    finally:
        shutil.rmtree(out / "sub-07")
