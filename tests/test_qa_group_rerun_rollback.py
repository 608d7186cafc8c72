"""A failed group rerun leaves the previous summary whole (QA pass 33).

A group run writes three files in turn (``desc-metrics_table.tsv``, ``desc-conditions_table.tsv``,
``group.html``). Rerun after a participant was added, a run that failed after the first (the disk filled up,
exit 74) kept the *new* metrics table beside the *old* side-by-side table and page: a summary of three
participants and one of two under the same folder, with nothing to tell them apart. docs/exit-codes.md
promises "what was there before stays"; the run took back only the files it had created.
"""

from __future__ import annotations

import errno
import json

import pytest
from helpers import make_minimal_bids

from bids_m2i.cli.run import run_cli

METRICS = ("condition\tcue\tmetric\tfeature_space\tvalue\tchance\tp_value\tn_items\tn_candidates\tnote\n"
           "perception\tnone\tpixcorr\tpixels\t{v}\t0\t0.01\t10\t10\tn/a\n")


def _finish(out, subject, value):
    folder = out / f"sub-{subject}" / "decoding"
    folder.mkdir(parents=True)
    (folder / f"sub-{subject}_desc-metrics_table.tsv").write_text(METRICS.format(v=value))


@pytest.fixture
def finished_two(tmp_path):
    bids = make_minimal_bids(tmp_path / "bids", subjects=("01", "02", "03"), n_volumes=8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps({"Name": "m2i", "BIDSVersion": "1.10.0",
                                                              "DatasetType": "derivative"}))
    _finish(out, "01", "0.3")
    _finish(out, "02", "0.5")
    return bids, out


def _group(bids, out):
    return run_cli([str(bids), str(out), "group", "-w", str(out.parent / "work")])


@pytest.mark.parametrize("failing", ["desc-conditions_table.tsv", "group.html"])
def test_a_failed_rerun_keeps_the_previous_summary_whole(finished_two, monkeypatch, failing):
    bids, out = finished_two
    assert _group(bids, out) == 0
    before = {path.name: path.read_bytes() for path in (out / "group").iterdir()}
    assert set(before) == {"desc-metrics_table.tsv", "desc-conditions_table.tsv", "group.html"}

    _finish(out, "03", "0.7")  # a participant job ended since
    from bids_m2i.utils import atomic

    real_write = atomic.write_bytes

    def disk_full_on(path, data):
        if str(path).endswith(failing):
            raise atomic.error_from_oserror(OSError(errno.ENOSPC, "No space left on device"), path)
        return real_write(path, data)

    monkeypatch.setattr(atomic, "write_bytes", disk_full_on)
    assert _group(bids, out) == 74
    after = {path.name: path.read_bytes() for path in (out / "group").iterdir()}
    assert after == before  # not the three-participant metrics table beside the two-participant page
    monkeypatch.undo()
    assert _group(bids, out) == 0
    assert b"sub-03" in (out / "group" / "desc-metrics_table.tsv").read_bytes()


def test_the_summaries_of_another_space_are_not_touched(finished_two, monkeypatch):
    """Only this run's own summaries are put back: a group run of another ``--space`` into the same OUTPUT_DIR
    may have rewritten its own meanwhile."""
    from bids_m2i.cli.runner import RunFootprint
    from bids_m2i.workflows.group import group_output_names

    bids, out = finished_two
    assert _group(bids, out) == 0
    other = out / "group" / "space-T1w_group.html"
    other.write_text("old")
    footprint = RunFootprint(out, out.parent / "work", group_output_names({}))
    other.write_text("rewritten by the T1w run")
    (out / "group" / "group.html").write_text("half")
    footprint.undo()
    assert other.read_text() == "rewritten by the T1w run"
    assert (out / "group" / "group.html").read_text() != "half"
