"""Trial rows with ``n/a`` in ``duration`` (BIDS allows it: the duration is unknown) stopped the run with 65
"column 'duration' has missing ... values in rows that are trials". Now a trial with an unknown duration gets
the events map's ``missing_duration``, else the median of the known durations of its event type in the same
file, else 0 s (an impulse), with a warning in the log, in the GLM sidecar (``events_warnings``) and in the
report. Non-numeric or negative durations stay errors (tests/test_events.py)."""

from __future__ import annotations

import json
import logging

import pytest

from bids_m2i.bids.events import events_to_trials, load_events_map
from bids_m2i.cli.run import run_cli
from bids_m2i.errors import UsageError
from fixture_datasets import synthetic_bold, write_bold

HEADER = "onset\tduration\ttrial_type\tstim_file\n"


def _events(path, rows):
    path.write_text(HEADER + "".join("\t".join(map(str, row)) + "\n" for row in rows))
    return path


def test_median_of_the_same_trial_type(tmp_path, caplog):
    path = _events(tmp_path / "sub-01_task-x_events.tsv",
                   [(0, 2, "face", "a.png"), (5, 4, "face", "b.png"), (10, "n/a", "face", "c.png"),
                    (15, 1, "house", "d.png"), (20, "n/a", "house", "e.png")])
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        table = events_to_trials(path, task="x")
    assert list(table["duration"]) == [2.0, 4.0, 3.0, 1.0, 1.0]
    assert list(table["role"]) == ["trial"] * 5
    notes = table.attrs["notes"]
    assert len(notes) == 2 and "'face' trial(s) with duration n/a (line(s) 4)" in notes[0]
    assert "median" in notes[0] and "median" in caplog.text


def test_unknown_everywhere_is_an_impulse(tmp_path):
    path = _events(tmp_path / "sub-01_task-x_events.tsv", [(0, "n/a", "face", "a.png"), (5, "n/a", "face", "b.png")])
    table = events_to_trials(path, task="x")
    assert list(table["duration"]) == [0.0, 0.0]
    assert "impulse" in table.attrs["notes"][0]


def test_events_map_gives_the_duration(tmp_path):
    path = _events(tmp_path / "sub-01_task-x_events.tsv", [(0, 2, "face", "a.png"), (5, "n/a", "face", "b.png")])
    mapping = tmp_path / "map.toml"
    mapping.write_text('[task.x]\nstimulus_column = "stim_file"\nmissing_duration = 0.5\n')
    table = events_to_trials(path, task="x", events_map=load_events_map(mapping))
    assert list(table["duration"]) == [2.0, 0.5]
    assert "missing_duration" in table.attrs["notes"][0]
    mapping.write_text('[task.x]\nmissing_duration = "long"\n')
    with pytest.raises(UsageError, match="missing_duration must be a number"):
        load_events_map(mapping)


def test_recorded_in_the_glm_sidecar_and_the_report(minimal_bids, tmp_path):
    for k, bold in enumerate(sorted(minimal_bids.rglob("*_bold.nii.gz"))):  # a head, not noise: a brain mask
        write_bold(bold, synthetic_bold(40, (6, 6, 4), seed=k), tr=2.0)
    events = sorted(minimal_bids.rglob("*_events.tsv"))[0]
    lines = events.read_text().splitlines()
    fields = lines[3].split("\t")
    fields[1] = "n/a"
    lines[3] = "\t".join(fields)
    events.write_text("\n".join(lines) + "\n")
    before = events.read_bytes()
    out = tmp_path / "out"
    code = run_cli([str(minimal_bids), str(out), "participant", "-w", str(tmp_path / "work"), "--skip-bids-validation",
                    "--stop-after", "glm", "--glm", "lsa", "--nprocs", "1"])
    assert code == 0
    assert events.read_bytes() == before  # the input is never modified
    sidecar = next((out / "sub-01" / "func").glob("*_stat-effect_desc-lsa_statseries.json"))
    warnings = json.loads(sidecar.read_text())["events_warnings"]
    assert len(warnings) == 1 and "duration n/a (line(s) 4)" in warnings[0] and "3 s, the median" in warnings[0]
    # the events file named relative to BIDS_DIR: no machine path in the derivatives
    assert warnings[0].startswith(f"sub-01/func/{events.name}:") and str(tmp_path) not in warnings[0]
    table = next((out / "sub-01" / "func").glob("*_desc-lsa_events.tsv")).read_text().splitlines()
    assert table[3].split("\t")[2] == "3.0"  # onset duration: the row got the median of the others (3 s)
    assert "duration n/a (line(s) 4)" in (out / "sub-01.html").read_text()
