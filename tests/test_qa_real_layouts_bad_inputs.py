"""Bad inputs on the real layouts (real events and sidecars of public datasets, synthesized BOLD).

Checked here on ds000117 (one session of face perception) and one session of ds001246 (Horikawa & Kamitani:
perception and imagery): events re-saved by a spreadsheet (UTF-16 with CRLF, or UTF-8 with a BOM and CRLF)
give the same trials as the originals; a BOLD file of a DataLad clone whose content was not fetched gives 66
with the `datalad get` command, and a truncated one gives 65, both before anything is computed.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

import bids_m2i.workflows.base as base
from bids_m2i.cli.run import run_cli
from fixture_datasets import fixtures_root, make_fixture_copy

LAYOUTS = {"ds000117": None, "ds001246": ("perceptionTest01",)}


@pytest.fixture(params=sorted(LAYOUTS))
def layout(request, tmp_path):
    if not (fixtures_root() / request.param).is_dir():
        pytest.skip(f"fixture {request.param} not available")
    bids = make_fixture_copy(request.param, tmp_path / "bids", n_volumes=None, shape=(4, 4, 3),
                             sessions=LAYOUTS[request.param])
    return bids


def _cli(bids: Path, tmp_path: Path, *extra) -> int:
    return run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--participant-label", "01", *extra])


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_spreadsheet_saved_events_give_the_same_trials(layout, tmp_path, capsys, encoding):
    assert _cli(layout, tmp_path, "--print-trials") == 0
    original = capsys.readouterr().out
    assert "trial" in original
    for events in layout.rglob("sub-01/**/*_events.tsv"):
        text = events.read_text(encoding="utf-8")
        events.write_bytes(text.replace("\n", "\r\n").encode(encoding))
    assert _cli(layout, tmp_path, "--print-trials") == 0
    assert capsys.readouterr().out == original


def test_events_with_trailing_tabs_give_the_same_trials(layout, tmp_path, capsys):
    """Lines ending in tabs (a spreadsheet's empty columns) gave 65 "duplicate column names" on all four real
    layouts (qa22)."""
    assert _cli(layout, tmp_path, "--print-trials") == 0
    original = capsys.readouterr().out
    for events in layout.rglob("sub-01/**/*_events.tsv"):
        text = events.read_text(encoding="utf-8")
        events.write_text("".join(line + "\t\t\n" for line in text.splitlines()))
    assert _cli(layout, tmp_path, "--print-trials") == 0
    assert capsys.readouterr().out == original


@pytest.mark.parametrize("damage, code, needle", [("unfetched", 66, "datalad get sub-01/"),
                                                  ("truncated", 65, "is truncated")])
def test_damaged_bold_stops_before_any_step(layout, tmp_path, capsys, monkeypatch, damage, code, needle):
    started = []
    monkeypatch.setattr(base, "run_participant_workflows", lambda *a, **k: started.append(True))
    bold = sorted(layout.rglob("sub-01/**/*_bold.nii.gz"))[-1]
    if damage == "unfetched":
        bold.unlink()
        os.symlink("../../../.git/annex/objects/pX/9w/SHA256E-s5--ab.nii.gz/SHA256E-s5--ab.nii.gz", bold)
    else:
        raw = bold.read_bytes()
        assert gzip.decompress(raw)  # complete before
        bold.write_bytes(raw[: len(raw) - 40])
    assert _cli(layout, tmp_path, "--stop-after", "glm") == code
    err = capsys.readouterr().err
    assert needle in err and bold.name in err and "Traceback" not in err
    assert started == []
