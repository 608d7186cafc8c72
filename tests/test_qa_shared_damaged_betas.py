"""``group --train-shared-decoder`` with one participant's GLM outputs damaged (QA pass 33).

A participant whose ``--stop-after glm`` job died half-way (its perception betas written, their events table
not; a copy cut short) stopped the training of everyone: exit 65 "no perception trials with a stimulus"
without naming the participant, or exit 1 "unexpected failure: EOFError" for a truncated statseries. As for a
participant without betas, the training now goes on without it, with a warning naming it, the reason and what
to do; with fewer than 2 usable participants the error names that participant's problem.
"""

from __future__ import annotations

import json
import shutil

import pytest
from test_shared_decoder_cli import _copy_participant

from bids_m2i.cli.run import run_cli

PERCEPTION = "sub-03_task-perception_stat-effect_desc-fithrfdenoiserr_statseries.nii.gz"


def _damage(func, how):
    series = func / PERCEPTION
    if how == "events deleted":
        (func / PERCEPTION.replace("_stat-effect_", "_").replace("_statseries.nii.gz", "_events.tsv")).unlink()
    else:  # a copy cut short
        series.write_bytes(series.read_bytes()[:2000])


@pytest.mark.parametrize("how", ["events deleted", "statseries truncated"])
def test_a_damaged_participant_is_left_out_of_the_shared_decoder(tiny_full_run, tmp_path, caplog, capsys, how):
    out = tmp_path / "out"
    shutil.copytree(tiny_full_run["out"], out)
    _copy_participant(out, "01", "02", 2, shrink_mask=False)
    _copy_participant(out, "01", "03", 3, shrink_mask=False)
    _damage(out / "sub-03" / "func", how)
    args = [str(tiny_full_run["bids"]), str(out), "group", "-w", str(tmp_path / "work"), "--train-shared-decoder",
            "--skip-bids-validation", "--participant-label"]
    assert run_cli(args + ["01", "02", "03"]) == 0
    meta = json.loads((out / "group" / "decoding" / "desc-sharedpixels_model.json").read_text())
    assert sorted(p["label"] for p in meta["Participants"]) == ["01", "02"]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "without sub-03" in warning and "rerun the participant level for sub-03" in warning

    # with one usable participant left: the error says what is wrong with the other
    code = run_cli(args + ["02", "03"])
    assert code in (65, 66)
    err = capsys.readouterr().err
    assert "sub-03" in err and "unexpected failure" not in err
