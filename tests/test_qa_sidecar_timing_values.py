"""Sidecar timing values a lab gets wrong, refused before any step (65, naming the file), never a traceback:

* ``SliceTiming`` in milliseconds (``[0, 500, 1000, 1500]``), or inherited from a top-level sidecar written for
  another TR: the GLM moved every frame by the median slice time (here 750 s), every event fell before the
  first frame ("93 event(s) start more than 24.0 s before the first volume and are not modelled", only in the
  log) and the run ended with 0 and betas of nothing. Non-numeric values stopped the GLM step with 1.
* ``RepetitionTime`` written as text (``"2 s"``): exit 1, "unexpected failure: ValueError".
"""

from __future__ import annotations

import json

import pytest

from bids_m2i.cli.run import run_cli


def _sidecar(bids, **fields):
    sidecar = next(bids.rglob("sub-01_task-perception_run-01_bold.nii.gz")).with_suffix("").with_suffix(".json")
    sidecar.write_text(json.dumps({"RepetitionTime": 2.0, **fields}))
    return sidecar


@pytest.mark.parametrize("fields, needle", [
    ({"SliceTiming": [0, 500, 1000, 1500]}, "they look like milliseconds (1500 ms = 1.5 s)"),
    ({"SliceTiming": [0, 1.0, 2.5, 3.5]}, "reaches 3.5 s, beyond the repetition time 2 s"),
    ({"SliceTiming": [0, "0.5", 1, 1.5]}, "is not a list of numbers of seconds"),
    ({"SliceTiming": [0, -0.5, 1, 1.5]}, "has a negative value"),
    ({"RepetitionTime": "2 s"}, "RepetitionTime of sub-01_task-perception_run-01_bold.nii.gz is not a number"),
])
def test_bad_timing_values_exit_65_before_any_step(minimal_bids, tmp_path, capsys, started, fields, needle):
    _sidecar(minimal_bids, **fields)
    code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert needle in err and "sub-01_task-perception_run-01_bold" in err and "Traceback" not in err
    assert started == []


def test_slice_times_within_the_tr_are_accepted(minimal_bids, tmp_path, started):
    _sidecar(minimal_bids, SliceTiming=[0, 1.0, 0.5, 1.5])
    assert run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"]) == 0
    assert started == [True]


def test_volume_timing_is_named_not_asked_for_a_repetition_time(minimal_bids, tmp_path, capsys, started):
    """A sparse acquisition gives BIDS' VolumeTiming instead of RepetitionTime: the message said "add
    RepetitionTime", which would describe volumes that were not acquired at one interval (QA pass 30)."""
    for top in minimal_bids.glob("*_bold.json"):  # no inherited RepetitionTime either
        meta = json.loads(top.read_text())
        meta.pop("RepetitionTime", None)
        top.write_text(json.dumps(meta))
    sidecar = _sidecar(minimal_bids)
    sidecar.write_text(json.dumps({"VolumeTiming": [0.0, 5.0, 10.0, 15.0], "AcquisitionDuration": 2.0}))
    code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert "gives VolumeTiming (a sparse or clustered acquisition) instead of RepetitionTime" in err
    assert "add RepetitionTime" not in err and "Traceback" not in err
    assert started == []
