"""Most datasets hold a resting-state run (``task-rest``, no events by definition). Running the GLM on such a
dataset stopped the whole participant with 66 "No events file for sub-01_task-rest_bold.nii.gz" until the
user filtered the run out. Now it is left out with a warning when trials are modelled, and preprocessed as any
run with ``--stop-after preproc``."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import make_minimal_bids, write_bold

from bids_m2i.cli.run import run_cli


def _with_rest_run(root: Path) -> Path:
    bids = make_minimal_bids(root)
    (bids / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0, "TaskName": "rest"}))
    write_bold(bids / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz", n_volumes=40)
    return bids


def _captured_inputs(monkeypatch):
    import bids_m2i.workflows.base as base

    seen = {}
    monkeypatch.setattr(base, "run_participant_workflows", lambda config, inputs, work: seen.update(inputs))
    return seen


def test_rest_run_without_events_is_left_out_of_the_glm(tmp_path, monkeypatch, capsys):
    bids = _with_rest_run(tmp_path / "bids")
    seen = _captured_inputs(monkeypatch)
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"])
    assert code == 0, capsys.readouterr().err
    assert [run.bold.path.name for run in seen["01"].runs] == ["sub-01_task-perception_run-01_bold.nii.gz"]
    assert "resting-state run(s) without events left out (sub-01_task-rest_bold.nii.gz)" in capsys.readouterr().err


def test_rest_run_is_preprocessed_without_the_glm(tmp_path, monkeypatch):
    bids = _with_rest_run(tmp_path / "bids")
    seen = _captured_inputs(monkeypatch)
    assert run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "preproc"]) == 0
    assert len(seen["01"].runs) == 2


def test_another_task_without_events_is_still_66(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids", tasks=("perception", "localizer"))
    (bids / "sub-01" / "func" / "sub-01_task-localizer_run-01_events.tsv").unlink()
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"])
    assert code == 66 and "No events file for sub-01_task-localizer_run-01_bold.nii.gz" in capsys.readouterr().err
