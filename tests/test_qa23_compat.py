"""Loose ends of the 23rd QA pass: Python 3.10 and a quoted RepetitionTime.

* ``requires-python`` says 3.10, but two modules imported :mod:`tomllib` (3.11+), so ``m2i --config`` and
  ``--events-map`` failed with ModuleNotFoundError on 3.10. Both now read TOML through
  :mod:`bids_m2i.utils.tomlread`, which falls back to ``tomli`` (a 3.10-only dependency in pyproject.toml).
* ``"RepetitionTime": "2.0"`` (a string) was accepted silently; the BIDS validator calls it an error, so the
  run now goes on with 2 s and a warning that names the file and the fix.
"""

from __future__ import annotations

import ast
import logging
import sys
import tomllib
from pathlib import Path

import pytest

import bids_m2i
from bids_m2i.bids.inputs import check_tr
from bids_m2i.bids.layout import BoldRun
from bids_m2i.errors import BadDataError

PACKAGE = Path(bids_m2i.__file__).parent


def test_no_module_imports_tomllib_directly():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "tomlread.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if "tomllib" in names:
                offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []


def test_tomlread_falls_back_to_tomli_without_tomllib(monkeypatch):
    """Stand in for 3.10: no tomllib, a ``tomli`` module present; tomlread must take tomli's functions.

    The module's file is executed under another name, so the package's own ``tomlread`` (which config.py and
    events.py hold) is never replaced."""
    import importlib.util
    import types

    fake_tomli = types.ModuleType("tomli")
    fake_tomli.load = lambda fh: {"from": "tomli"}
    fake_tomli.loads = lambda text: {"from": "tomli"}
    fake_tomli.TOMLDecodeError = type("TOMLDecodeError", (ValueError,), {})
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "tomli", fake_tomli)
    spec = importlib.util.spec_from_file_location("tomlread_on_310", PACKAGE / "utils" / "tomlread.py")
    reader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reader)
    assert reader.loads("") == {"from": "tomli"}
    assert reader.TOMLDecodeError is fake_tomli.TOMLDecodeError
    monkeypatch.undo()
    from bids_m2i.utils import tomlread

    assert tomlread.TOMLDecodeError is tomllib.TOMLDecodeError and tomlread.load is tomllib.load


def test_pyproject_asks_for_tomli_only_before_311():
    text = (PACKAGE.parent / "pyproject.toml").read_text()
    deps = tomllib.loads(text)["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("tomli>=") and "python_version<'3.11'" in d.replace(" ", "")
               for d in deps), deps


def _run(tmp_path, value):
    return BoldRun(path=tmp_path / "sub-01_task-x_run-01_bold.nii.gz", entities={"subject": "01"}, events=None,
                   metadata={"RepetitionTime": value})


def test_quoted_repetition_time_is_used_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        assert check_tr(_run(tmp_path, "2.0"), 2.0) == 2.0
    text = caplog.text
    assert "sub-01_task-x_run-01_bold.nii.gz" in text and "BIDS requires a number" in text


def test_numeric_repetition_time_gives_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="m2i.bids"):
        assert check_tr(_run(tmp_path, 2.0), 2.0) == 2.0
    assert "BIDS requires a number" not in caplog.text


@pytest.mark.parametrize("value", ["2 s", "NaN", "-2"])
def test_quoted_values_that_are_not_a_tr_still_stop_the_run(tmp_path, value):
    with pytest.raises(BadDataError):
        check_tr(_run(tmp_path, value), 2.0)
