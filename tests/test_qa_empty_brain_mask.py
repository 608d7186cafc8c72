"""A participant whose brain mask has no voxel (BOLD without brain/background contrast: a phantom, data already
masked to a constant, or fMRIPrep run masks that do not overlap).

The GLM step crashed with exit 1 and "ValueError: range() arg 3 must not be zero" in a crash file. Now the
run stops with 65 naming the mask, its likely causes and what to do.
"""

from __future__ import annotations

from helpers import make_minimal_bids

from bids_m2i.cli.run import run_cli


def test_empty_participant_mask_is_65_with_the_cause(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids")  # noise around a constant: no brain, so no mask voxel
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm", "--glm", "lsa", "--nprocs", "1"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert "brain mask has no voxel" in err and "range() arg 3" not in err
