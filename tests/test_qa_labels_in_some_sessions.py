"""Participants named with ``--participant-label`` whose runs the other filters all leave out (QA pass 30).

``m2i BIDS OUT participant --participant-label 01 02 --session-label 02`` where only sub-02 has a ``ses-02``
(a follow-up session not yet acquired for everyone; likewise a ``--task`` only some did): the run processed
sub-02 and ended with exit 0, saying nothing about sub-01, which had no output; the group level then listed it
as "not finished", as if its job had failed. Now a warning names the participant and the filters that left it
without runs. One participant alone still stops with 18 (nothing selected), as before.
"""

from __future__ import annotations

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids


def _two_sessions(root):
    """sub-01 has only ses-01, sub-02 only ses-02."""
    bids = make_minimal_bids(root, subjects=("01", "02"))
    for subject, session in (("01", "01"), ("02", "02")):
        func = bids / f"sub-{subject}" / "func"
        dest = bids / f"sub-{subject}" / f"ses-{session}" / "func"
        dest.mkdir(parents=True)
        for path in func.iterdir():
            path.rename(dest / path.name.replace(f"sub-{subject}_", f"sub-{subject}_ses-{session}_"))
        func.rmdir()
    return bids


def _run(bids, tmp_path, *options):
    return run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "preproc", *options])


def test_a_named_participant_without_the_session_is_warned_about(tmp_path, capsys, started):
    bids = _two_sessions(tmp_path / "bids")
    assert _run(bids, tmp_path, "--participant-label", "01", "02", "--session-label", "02") == 0
    err = capsys.readouterr().err
    assert started  # sub-02 is processed
    # was: nothing about sub-01
    assert "WARNING: Participant(s) 01: no BOLD run passes the filters (session=02)" in err


def test_unnamed_participants_and_a_single_one(tmp_path, capsys, started):
    bids = _two_sessions(tmp_path / "bids")
    # no --participant-label: "session 02 of whoever has it", nothing to warn about
    assert _run(bids, tmp_path, "--session-label", "02") == 0
    assert "no BOLD run passes" not in capsys.readouterr().err
    # the participant alone: nothing selected, 18 as before
    assert _run(bids, tmp_path, "--participant-label", "01", "--session-label", "02") == 18
    assert "The filters select no BOLD runs (subject=01; session=02)" in capsys.readouterr().err
