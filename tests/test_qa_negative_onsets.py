"""Events before the first stored volume: negative onsets, which BIDS allows (QA pass 30).

The BIDS specification: "Negative onsets are allowed, to account for events that occur prior to the first stored
data point" (an instruction screen during discarded dummy scans; a dataset whose first volumes were removed
after acquisition and its onsets shifted, so that the first trial starts at -2 s). The BIDS validator accepts
them; m2i stopped with 65 "column 'onset' has missing, negative or non-numeric values ... onsets and durations
must be numbers of seconds >= 0". Now a negative onset is a time like any other: the design (which starts 24 s
before the first frame, as nilearn's) models the part of the response inside the run; trials that start before
the first volume are kept and reported (log, GLM sidecar's ``events_warnings``), and events too early for the
design (more than 24 s less one TR before the first volume) are dropped with a warning. Negative durations stay
65.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bids_m2i.bids.events import check_events_within_run, events_to_trials
from bids_m2i.cli.run import run_cli
from bids_m2i.glm.design import convolve_events
from helpers import make_minimal_bids

EVENTS = ("onset\tduration\ttrial_type\tstimulus\tstim_file\tcue\tcue_text\tcategory\n"
          "-30\t5\tcue\timg-0000\tn/a\ttext\ta cat\tn/a\n"
          "-8\t4\tcue\timg-0000\tn/a\ttext\ta cat\tn/a\n"
          "-2\t3\tstimulus\timg-0000\timg-0000.png\tnone\tn/a\tn/a\n"
          "10\t3\tstimulus\timg-0001\timg-0001.png\tnone\tn/a\tn/a\n"
          "20\t3\tstimulus\timg-0002\timg-0002.png\tnone\tn/a\tn/a\n")


def test_negative_onsets_are_read_and_the_too_early_dropped(tmp_path, caplog):
    path = tmp_path / "sub-01_task-perception_run-01_events.tsv"
    path.write_text(EVENTS)
    trials = events_to_trials(path, task="perception")  # was 65 "... has missing, negative or non-numeric values"
    assert trials["onset"].tolist() == [-30.0, -8.0, -2.0, 10.0, 20.0]
    assert trials["role"].tolist() == ["nuisance", "nuisance", "trial", "trial", "trial"]
    notes: list[str] = []
    kept = check_events_within_run(trials, n_volumes=40, tr=2.0, path=path, notes=notes)
    assert kept["onset"].tolist() == [-8.0, -2.0, 10.0, 20.0]  # -30 s is before the design's 22 s window
    assert any("1 event(s) start more than 22 s before the first volume and are dropped: 1 nuisance" in n
               for n in notes)
    assert any("1 trial(s) start before the first volume (from -2 s)" in n for n in notes)


def test_a_response_partly_before_the_run_is_modelled():
    frame_times = np.arange(40) * 2.0
    kernel = np.exp(-0.5 * ((np.arange(0, 32, 2.0 / 50) - 5.0) / 1.5) ** 2)[:, None]  # a bump peaking at 5 s
    early, inside = convolve_events(np.array([-2.0, 10.0]), np.array([3.0, 3.0]), frame_times, kernel).T
    assert early[:6].max() > 0.5 * inside.max()  # the -2 s trial's response peaks in the run's first volumes
    assert early[10:].max() < 1e-6


def test_a_run_with_negative_onsets_starts_and_negative_durations_stay_65(tmp_path, capsys, started):
    bids = make_minimal_bids(tmp_path / "bids")
    events = bids / "sub-01" / "func" / "sub-01_task-perception_run-01_events.tsv"
    lines = events.read_text().splitlines()
    lines[1] = "\t".join(["-2", *lines[1].split("\t")[1:]])
    events.write_text("\n".join(lines) + "\n")
    args = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"), "--stop-after", "glm"]
    code = run_cli(args)
    err = capsys.readouterr().err
    assert code == 0, err  # was 65 (the BIDS validator, run here, accepts the file)
    assert started and "1 trial(s) start before the first volume (from -2 s)" in err
    lines[1] = "\t".join(["4", "-3", *lines[1].split("\t")[2:]])
    events.write_text("\n".join(lines) + "\n")
    assert run_cli([*args, "--skip-bids-validation"]) == 65  # (the validator says 16 first)
    err = capsys.readouterr().err
    assert "column 'duration' has missing, negative or non-numeric values" in err and "line 2: '-3'" in err
    assert pd.read_csv(events, sep="\t").shape[0] == 6  # the input is read, never rewritten
