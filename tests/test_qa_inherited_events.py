"""Events shared by every participant, written once at the top of the dataset (``task-x_events.tsv``, BIDS
inheritance), were not found: the run stopped with 66 "No events file for sub-01_task-x_run-01_bold.nii.gz"
(the pybids query by the run's own subject and run matched no top-level file). Now the nearest events file
whose entities are all the run's is used; a participant's own file wins over the top-level one."""

from __future__ import annotations

import shutil

from helpers import make_minimal_bids

from bids_m2i.bids.layout import inherited_events_file
from bids_m2i.cli.run import run_cli


def test_top_level_events_serve_every_participant(tmp_path, monkeypatch):
    import bids_m2i.workflows.base as base

    bids = make_minimal_bids(tmp_path / "bids", subjects=("01", "02"))
    for subject in ("01", "02"):
        events = bids / f"sub-{subject}" / "func" / f"sub-{subject}_task-perception_run-01_events.tsv"
        if subject == "01":
            shutil.copy(events, bids / "task-perception_events.tsv")
        events.unlink()
    seen = {}
    monkeypatch.setattr(base, "run_participant_workflows", lambda config, inputs, work: seen.update(inputs))
    assert run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"]) == 0
    for subject in ("01", "02"):
        assert seen[subject].runs[0].bold.events == bids / "task-perception_events.tsv"
        assert len(seen[subject].trials) == 6


def test_the_nearest_and_most_specific_events_file_wins(tmp_path):
    func = tmp_path / "sub-01" / "ses-1" / "func"
    func.mkdir(parents=True)
    bold = func / "sub-01_ses-1_task-x_run-1_echo-2_bold.nii.gz"
    for name in ("task-x_events.tsv", "sub-01/sub-01_task-x_events.tsv", "sub-01/ses-1/func/sub-01_ses-1_task-x_"
                 "run-2_events.tsv", "sub-01/ses-1/func/sub-01_ses-1_task-y_run-1_events.tsv"):
        (tmp_path / name).write_text("onset\tduration\n")
    assert inherited_events_file(tmp_path, bold) == tmp_path / "sub-01" / "sub-01_task-x_events.tsv"
    own = func / "sub-01_ses-1_task-x_run-1_events.tsv"  # the run's own (without echo): nearest, most specific
    own.write_text("onset\tduration\n")
    assert inherited_events_file(tmp_path, bold) == own
