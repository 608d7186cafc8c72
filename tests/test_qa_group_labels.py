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
