"""A node's error record is written whole or not at all: the run's main process reads the records folder
while other nodes (or jobs) may be writing into it. Before, the JSON was written in place, and a record read
half-written was skipped (its exit code and message lost)."""

from __future__ import annotations

import json

from bids_m2i.errors import BadDataError
from bids_m2i.interfaces import base


def test_a_record_is_renamed_into_place_and_partial_files_are_not_read(tmp_path, monkeypatch):
    monkeypatch.setenv(base.ERROR_DIR_ENV, str(tmp_path))
    seen_while_writing = []
    real_write = base.Path.write_text

    def write_and_look(self, text, *args, **kwargs):
        result = real_write(self, text, *args, **kwargs)
        seen_while_writing.append(sorted(p.name for p in tmp_path.iterdir()))
        return result

    monkeypatch.setattr(base.Path, "write_text", write_and_look)
    base.record_error(BadDataError("the events are odd", hint="fix them"), "estimate_betas")
    assert seen_while_writing and all(name.startswith(".") for name in seen_while_writing[0])
    (tmp_path / ".0-1.json.tmp").write_text('{"exit_code": 7')       # another writer, mid-write
    (tmp_path / ".0-2.json").write_text(json.dumps({"exit_code": 1}))  # hidden: never a record
    records = base.read_error_records(tmp_path)
    assert [r["message"] for r in records] == ["the events are odd"]
    assert records[0]["exit_code"] == BadDataError("x").exit_code and records[0]["where"] == "estimate_betas"
