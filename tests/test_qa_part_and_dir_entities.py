"""BOLD runs that differ by an entity m2i does not name its outputs by.

* Complex-valued fMRI (``part-mag`` and ``part-phase`` of each run, as 7 T protocols write): both were taken as
  runs of the same task and run; the start-up stopped with 65 "Two BOLD files ... have the same entities"
  (they do not). Now the magnitude is the run, as fMRIPrep's default filter takes it, and the phase is left out.
* ``dir-AP`` / ``dir-PA`` runs with one run label: still 65 (outputs would collide), but the message names the
  entity that differs and the filter that selects one."""

from __future__ import annotations

import json
import shutil

from helpers import make_minimal_bids

from bids_m2i.cli.run import run_cli


def _captured_inputs(monkeypatch):
    import bids_m2i.workflows.base as base

    seen = {}
    monkeypatch.setattr(base, "run_participant_workflows", lambda config, inputs, work: seen.update(inputs))
    return seen


def _twin(bids, a: str, b: str) -> None:
    """Two BOLD files of one run, the entity at its place in BIDS order (dir before run, part after it)."""
    bold = next(bids.rglob("*_bold.nii.gz"))

    def named(entity: str) -> str:
        if entity.startswith("dir-"):
            return bold.name.replace("_run-", f"_{entity}_run-")
        return bold.name.replace("_bold", f"_{entity}_bold")

    shutil.copy(bold, bold.with_name(named(b)))
    bold.rename(bold.with_name(named(a)))


def test_magnitude_is_the_run_and_the_phase_is_left_out(tmp_path, monkeypatch):
    bids = make_minimal_bids(tmp_path / "bids")
    _twin(bids, "part-mag", "part-phase")
    seen = _captured_inputs(monkeypatch)
    assert run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"]) == 0
    runs = seen["01"].runs
    assert [r.bold.path.name for r in runs] == ["sub-01_task-perception_run-01_part-mag_bold.nii.gz"]
    assert len(seen["01"].trials) == 6  # each trial once


def test_the_phase_can_still_be_chosen(tmp_path, monkeypatch):
    bids = make_minimal_bids(tmp_path / "bids")
    _twin(bids, "part-mag", "part-phase")
    filters = tmp_path / "f.json"
    filters.write_text(json.dumps({"bold": {"part": "phase"}}))
    seen = _captured_inputs(monkeypatch)
    assert run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm", "--bids-filter-file", str(filters)]) == 0
    assert [r.bold.path.name for r in seen["01"].runs] == ["sub-01_task-perception_run-01_part-phase_bold.nii.gz"]


def test_two_phase_encoding_directions_name_the_entity_and_the_filter(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids")
    _twin(bids, "dir-AP", "dir-PA")
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"])
    err = capsys.readouterr().err
    assert code == 65
    assert "differ only in their 'direction' entity" in err and '"direction": "PA"' in err
    assert "Traceback" not in err
