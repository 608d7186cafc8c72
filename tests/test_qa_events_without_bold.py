"""A dataset whose BOLD images are absent (only events and sidecars copied, or the raw BOLD deleted after
fMRIPrep ran) stopped with 18 "The filters select no BOLD runs (filter file: run=[1, 2])" and the hint to check
the filters, which were right. Now the message says the BOLD images are missing beside the events."""

from __future__ import annotations

import json

from helpers import make_minimal_bids

from bids_m2i.cli.run import run_cli


def test_events_without_bold_says_the_images_are_missing(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids", runs=("01", "02"))
    for bold in bids.rglob("*_bold.nii.gz"):
        bold.unlink()
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"run": [1, 2]}}))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--bids-filter-file", str(filters)])
    err = capsys.readouterr().err
    assert code == 18
    assert "events files but no BOLD images" in err and "sub-01_task-perception_run-01_events.tsv" in err
    assert "Traceback" not in err


def test_filters_selecting_nothing_keep_their_message(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids")
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"run": [7]}}))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--bids-filter-file", str(filters)])
    err = capsys.readouterr().err
    assert code == 18 and "The filters select no BOLD runs (filter file: run=[7])" in err
