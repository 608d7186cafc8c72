"""The group summary of hand-edited or damaged metrics tables (QA pass 33).

- A participant's table holding one metric twice (two runs' tables pasted together, a row copied by hand)
  counted as two participants: ``n`` said 3 for 2 participants and ``mean``/``sd`` weighted that participant
  twice, without a word. That participant is now left out as damaged, with a warning naming the file and the
  repeated metric, as other damaged tables are.
- A value of ``inf`` made the group mean ``inf`` (written to the TSV and the side-by-side table) and put
  numpy's "invalid value encountered in subtract" RuntimeWarning in the log; a non-finite value is now not
  a number to average, as ``n/a`` and ``NaN`` already were.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import make_minimal_bids

from bids_m2i.cli.run import run_cli

HEADER = "condition\tcue\tmetric\tfeature_space\tvalue\tchance\tp_value\tn_items\tn_candidates\tnote\n"
ROW = "perception\tnone\tpixcorr\tpixels\t{v}\t0\t0.01\t10\t10\tn/a\n"


@pytest.fixture
def three(tmp_path):
    bids = make_minimal_bids(tmp_path / "bids", subjects=("01", "02", "03"), n_volumes=8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps({"Name": "m2i", "BIDSVersion": "1.10.0",
                                                              "DatasetType": "derivative"}))
    for subject, value in (("01", "0.3"), ("02", "0.5"), ("03", "0.7")):
        folder = out / f"sub-{subject}" / "decoding"
        folder.mkdir(parents=True)
        (folder / f"sub-{subject}_desc-metrics_table.tsv").write_text(HEADER + ROW.format(v=value))
    return bids, out


def _summary(bids, out):
    assert run_cli([str(bids), str(out), "group", "-w", str(out.parent / "work")]) == 0
    table = pd.read_csv(out / "group" / "desc-metrics_table.tsv", sep="\t", dtype=str, keep_default_na=False)
    return table[table["participant_id"] == "group"].iloc[0], set(table["participant_id"]) - {"group"}


def test_a_metric_given_twice_is_not_a_second_participant(three, caplog):
    bids, out = three
    damaged = out / "sub-03" / "decoding" / "sub-03_desc-metrics_table.tsv"
    damaged.write_text(HEADER + ROW.format(v="0.7") + ROW.format(v="0.9"))
    row, participants = _summary(bids, out)
    assert row["n"] == "2"  # was 4: sub-03 counted twice
    assert float(row["mean"]) == pytest.approx(0.4)
    assert participants == {"sub-01", "sub-02"}
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert damaged.name in warning and "pixcorr" in warning and "rerun the participant level for sub-03" in warning


@pytest.mark.parametrize("value", ["inf", "-inf", "Infinity"])
def test_a_non_finite_value_is_not_averaged(three, caplog, value):
    bids, out = three
    table = out / "sub-03" / "decoding" / "sub-03_desc-metrics_table.tsv"
    table.write_text(HEADER + ROW.format(v=value))
    row, participants = _summary(bids, out)
    assert row["mean"] != "inf" and float(row["mean"]) == pytest.approx(0.4)  # was inf
    assert row["n"] == "2"
    assert participants == {"sub-01", "sub-02", "sub-03"}  # its other metrics still count
    assert "RuntimeWarning" not in caplog.text
    wide = pd.read_csv(out / "group" / "desc-conditions_table.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert float(wide["perception"].iloc[0]) == pytest.approx(0.4)


TINY = "tiny random-weight models: numbers are meaningless"


def test_results_of_tiny_random_models_say_so_in_the_group_summary(three, caplog):
    """sub-02 decoded with ``m2i-models make-tiny`` weights: its rows' notes say its numbers are meaningless,
    but the group summary averaged them with the others under the note "mean over participants", and neither
    the log nor group.html said a word (DESIGN: every output made with tiny models says so)."""
    bids, out = three
    table = out / "sub-02" / "decoding" / "sub-02_desc-metrics_table.tsv"
    table.write_text(HEADER + ROW.format(v="0.5").replace("\tn/a\n", f"\t{TINY}\n"))
    row, _ = _summary(bids, out)
    assert TINY in row["note"]
    assert "tiny random weights" in caplog.text and "sub-02" in caplog.text
    html = (out / "group" / "group.html").read_text()
    assert "tiny random weights" in html and "sub-02" in html[:html.index('id="group-conditions"')]
