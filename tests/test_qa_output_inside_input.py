"""OUTPUT_DIR inside BIDS_DIR but not under its ``derivatives/`` (``BIDS_DIR/m2i_out``, ``BIDS_DIR/sub-01/out``):
the run wrote its derivatives into the input dataset, and the next run indexed them as raw runs, stopping with
65 "Two BOLD files of sub-01 have the same entities (...): sub-01_..._desc-preproc_bold.nii.gz and
sub-01_..._bold.nii.gz". Now 64 before anything is written; ``BIDS_DIR/derivatives/m2i`` stays allowed
(the BIDS-Apps habit)."""

from __future__ import annotations

import pytest

from bids_m2i.cli.run import run_cli


@pytest.mark.parametrize("inside", ["m2i_out", "sub-01/out"])
def test_output_inside_the_input_is_64(minimal_bids, tmp_path, capsys, started, inside):
    before = sorted(p.relative_to(minimal_bids) for p in minimal_bids.rglob("*"))
    code = run_cli([str(minimal_bids), str(minimal_bids / inside), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 64 and "is inside BIDS_DIR" in err and "derivatives" in err and "Traceback" not in err
    assert sorted(p.relative_to(minimal_bids) for p in minimal_bids.rglob("*")) == before  # nothing written
    assert started == []


def test_output_under_the_input_derivatives_is_fine(minimal_bids, tmp_path, started):
    out = minimal_bids / "derivatives" / "m2i"
    assert run_cli([str(minimal_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"]) == 0
    assert started == [True] and (out / "dataset_description.json").is_file()
