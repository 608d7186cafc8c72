"""A nuisance event with ``n/a`` onset or duration (a response that never came; a button press whose duration
is unknown, which BIDS writes as ``n/a``) stopped the run with 65 "column 'onset' has missing ... values in rows
that are trials or nuisance events". Now: a missing onset leaves that nuisance event out, a missing duration
models it as an impulse (0 s), each with a warning; trials keep the 65 (tests/test_events.py)."""

from __future__ import annotations

import logging

from bids_m2i.bids.events import events_to_trials

HEADER = "onset\tduration\ttrial_type\tstimulus\tstim_file\tcue\tcue_text\tcategory\n"


def test_nuisance_rows_with_na_times(tmp_path, caplog):
    path = tmp_path / "sub-01_task-x_events.tsv"
    path.write_text(HEADER
                    + "0\t2\tstimulus\ta\ta.png\tnone\tn/a\tn/a\n"
                    + "n/a\t0.5\tresponse\tn/a\tn/a\tnone\tn/a\tn/a\n"  # no response on this trial
                    + "6\t2\tstimulus\tb\tb.png\tnone\tn/a\tn/a\n"
                    + "7.5\tn/a\tresponse\tn/a\tn/a\tnone\tn/a\tn/a\n")  # a press of unknown duration
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        table = events_to_trials(path, task="x")
    assert list(table.loc[table["role"] == "trial", "stimulus"]) == ["a", "b"]
    nuisance = table[table["role"] == "nuisance"]
    assert list(nuisance["onset"]) == [7.5] and list(nuisance["duration"]) == [0.0]
    assert "'onset' n/a (line(s) 3): left out" in caplog.text
    assert "'duration' n/a (line(s) 5): modelled with duration 0" in caplog.text
