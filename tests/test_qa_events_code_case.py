"""Events whose codes are spelled in another case than the profile lists (``Famous`` for ``FAMOUS``), from a
lab's script or a spreadsheet, with extra columns: the ds000117 profile stopped applying and, with only an INFO
line, auto-detection read the file, making its 6 null events (``n/a`` stim_type on ``func/i999.bmp``) trials
(99 instead of 93). Words now match whatever their case; a value the profile really does not list is a
WARNING that names it and how to map it."""

from __future__ import annotations

import logging

import pytest

from bids_m2i.bids.events import events_to_trials
from fixture_datasets import fixtures_root

RUN = "ds000117/sub-01/ses-mri/func/sub-01_ses-mri_task-facerecognition_run-01_events.tsv"


@pytest.fixture
def events_text():
    path = fixtures_root() / RUN
    if not path.is_file():
        pytest.skip("fixture ds000117 not available")
    return path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n")


def _respelled(text: str, spell) -> str:
    lines = text.rstrip("\n").split("\n")
    out = [lines[0] + "\textra column\tnotes"]
    for i, line in enumerate(lines[1:]):
        fields = line.split("\t")
        fields[3] = spell(i, fields[3])
        out.append("\t".join(fields) + "\tx\ta note")
    return "\n".join(out) + "\n"


def test_case_of_codes_does_not_matter(events_text, tmp_path):
    original = events_to_trials(fixtures_root() / RUN, task="facerecognition")
    path = tmp_path / "sub-01_task-facerecognition_events.tsv"
    path.write_text(_respelled(events_text, lambda i, v: v.capitalize() if i % 2 else v.lower() + " "))
    table = events_to_trials(path, task="facerecognition")
    assert table.attrs["rule"].startswith("profile ds000117")
    assert len(table) == len(original) == 93
    assert list(table["stim_file"]) == list(original["stim_file"])


def test_unlisted_codes_are_a_warning(events_text, tmp_path, caplog):
    path = tmp_path / "sub-01_task-facerecognition_events.tsv"
    path.write_text(_respelled(events_text, lambda i, v: "famus" if v == "FAMOUS" else v))
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        table = events_to_trials(path, task="facerecognition")
    assert table.attrs["rule"] == "auto-detection"
    assert "not read with profile ds000117 [task.facerecognition]" in caplog.text
    assert "'famus'" in caplog.text and "--events-map" in caplog.text
