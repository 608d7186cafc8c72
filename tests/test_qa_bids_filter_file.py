"""``--bids-filter-file`` as fMRIPrep users write it.

- ``"session": "*"`` (fMRIPrep: any value, Query.ANY) was passed to pybids as the literal label ``*``: the
  filter file that worked for fMRIPrep selected nothing here (18). Now ``"*"`` means any value and ``null``
  means "entity absent", as fMRIPrep reads them.
- A misspelt entity (``"sbuject"``) gave pybids' own advice "set invalid_filters='allow'", which no m2i user
  can set; now 64 names the key, suggests the entity and says where the valid names are.
- A filter that selects nothing because of ``extension``/``datatype``/``suffix`` (``".nii"`` for ``.nii.gz``
  data) gave 18 without naming that filter; now the message repeats every filter of the file.
"""

from __future__ import annotations

import json

import pytest

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids


def _run(tmp_path, filters):
    bids = tmp_path / "bids"
    if not bids.exists():
        make_minimal_bids(bids, subjects=("01", "02"), n_volumes=12)
    path = tmp_path / "filters.json"
    path.write_text(json.dumps(filters))
    return run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "preproc", "--bids-filter-file", str(path)])


@pytest.mark.parametrize("filters", [{"bold": {"task": "*"}}, {"bold": {"task": "*", "session": None}},
                                     {"bold": [{"subject": "01", "acquisition": None}, {"subject": "*"}]}])
def test_fmriprep_any_and_none_values(tmp_path, started, filters):
    assert _run(tmp_path, filters) == 0 and started == [True]


def test_a_value_null_for_an_entity_every_run_has_selects_nothing(tmp_path, capsys, started):
    assert _run(tmp_path, {"bold": {"task": None}}) == 18
    assert "task=null" in capsys.readouterr().err


def test_misspelt_entity_is_64_naming_it(tmp_path, capsys, started):
    assert _run(tmp_path, {"bold": {"sbuject": "01"}}) == 64
    err = capsys.readouterr().err
    assert "'sbuject'" in err and "subject" in err and "invalid_filters" not in err


@pytest.mark.parametrize("filters, shown", [({"bold": {"extension": ".nii"}}, "extension=.nii"),
                                            ({"bold": {"subject": "01", "datatype": "anat"}}, "datatype=anat")])
def test_nothing_selected_names_every_filter(tmp_path, capsys, started, filters, shown):
    assert _run(tmp_path, filters) == 18
    assert shown in capsys.readouterr().err and started == []
