"""The group level on participant folders we did not make ourselves: damaged tables, labels not in the dataset.

- A participant's ``desc-metrics_table.tsv`` left empty (a copy or sync cut short, a full disk on another
  machine) or from another tool (no ``metric`` column) stopped the whole group level with exit 1 and pandas'
  ``EmptyDataError`` traceback. Now that participant is listed as not finished, with a warning naming the file
  and what to do; the others are summarised.
- ``--participant-label`` naming someone not in BIDS_DIR: tests/test_qa_group_labels.py.
- Deleted group outputs come back on a rerun (the group level recomputes them: no cache to trust).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import make_minimal_bids

from bids_m2i.cli.run import run_cli

METRICS = ("condition\tcue\tmetric\tfeature_space\tvalue\tchance\tp_value\tn_items\tn_candidates\tnote\n"
           "perception\timage\tpixcorr\tpixels\t{v}\t0\t0.01\t10\t10\tn/a\n")


@pytest.fixture
def group_dirs(tmp_path):
    bids = make_minimal_bids(tmp_path / "bids", subjects=("01", "02", "03"), n_volumes=8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps({"Name": "m2i", "BIDSVersion": "1.10.0",
                                                              "DatasetType": "derivative"}))
    for subject, value in (("01", "0.3"), ("02", "0.5")):
        folder = out / f"sub-{subject}" / "decoding"
        folder.mkdir(parents=True)
        (folder / f"sub-{subject}_desc-metrics_table.tsv").write_text(METRICS.format(v=value))
    return bids, out


def _group(bids, out, *extra):
    return run_cli([str(bids), str(out), "group", "-w", str(out.parent / "work"), *extra])


def _participants(out: Path) -> set[str]:
    table = pd.read_csv(out / "group" / "desc-metrics_table.tsv", sep="\t", dtype=str, keep_default_na=False)
    return set(table["participant_id"]) - {"group"}


@pytest.mark.parametrize("content", ["", "\x00\x00\x00garbage", "a\tb\n1\t2\n"])
def test_a_damaged_metrics_table_is_skipped_with_a_warning(group_dirs, caplog, content):
    bids, out = group_dirs
    damaged = out / "sub-02" / "decoding" / "sub-02_desc-metrics_table.tsv"
    damaged.write_text(content)
    assert _group(bids, out) == 0
    assert _participants(out) == {"sub-01"}
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert damaged.name in warning and "rerun the participant level for sub-02" in warning
    assert "sub-02" in (out / "group" / "group.html").read_text()  # listed as not finished


def test_deleted_group_outputs_come_back_on_rerun(group_dirs):
    bids, out = group_dirs
    assert _group(bids, out) == 0
    first = (out / "group" / "desc-metrics_table.tsv").read_text()
    for path in (out / "group").iterdir():
        path.unlink()
    assert _group(bids, out) == 0
    assert (out / "group" / "desc-metrics_table.tsv").read_text() == first
    assert (out / "group" / "group.html").exists() and (out / "group" / "desc-conditions_table.tsv").exists()
