"""Events files as spreadsheet programs save them are read like their UTF-8 original.

Excel's "Unicode Text (*.txt)" export is tab separated UTF-16 with a byte-order mark and CRLF line ends. It
was read as Latin-1: column names full of NUL characters, a message listing 'ÿþo n s e t' as a column and
exit 65. Now UTF-16 (with or without a BOM) is decoded, with a warning.
"""

from __future__ import annotations

import logging

import pytest

from bids_m2i.bids.events import read_events

TEXT = ("onset\tduration\ttrial_type\tstimulus\n"
        "10.0\t3.0\tstimulus\tcafé-01\n"
        "14.0\t3.0\tstimulus\timg-0029\n")


@pytest.mark.parametrize("name, data", [
    ("utf16_excel", "\ufeff".encode("utf-16-le") + TEXT.replace("\n", "\r\n").encode("utf-16-le")),
    ("utf16_be_bom", TEXT.encode("utf-16")),  # Python writes its native order with a BOM
    ("utf16_le_no_bom", TEXT.encode("utf-16-le")),
    ("utf16_be_no_bom", TEXT.encode("utf-16-be")),
    ("utf8_bom", TEXT.encode("utf-8-sig")),
])
def test_events_encodings(tmp_path, caplog, name, data):
    reference = tmp_path / "utf8.tsv"
    reference.write_bytes(TEXT.encode("utf-8"))
    path = tmp_path / f"{name}.tsv"
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        frame = read_events(path)
    assert list(frame.columns) == ["onset", "duration", "trial_type", "stimulus"]
    assert frame.equals(read_events(reference))
    assert frame.loc[0, "stimulus"] == "café-01"
    if name.startswith("utf16"):
        assert "UTF-16" in caplog.text


def test_decimal_comma_says_so(tmp_path):
    """Spreadsheets in German/French locales write 10,5: the message named the value only."""
    from bids_m2i.bids.events import build_trials_table
    from bids_m2i.errors import BadDataError

    path = tmp_path / "sub-01_task-a_run-01_events.tsv"
    path.write_text("onset\tduration\ttrial_type\tstimulus\n10,5\t3,0\tstimulus\timg-01\n")
    with pytest.raises(BadDataError) as info:
        build_trials_table([(path, {"subject": "01", "task": "a", "run": "01"})])
    assert "decimal comma" in info.value.hint and "'10,5'" in str(info.value)
