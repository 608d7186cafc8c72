"""RepetitionTime in milliseconds (``"RepetitionTime": 2000``), a common sidecar mistake.

With a NIfTI header that carries no TR (pixdim[4] = 0, as some converters and resampling tools leave it), the
sidecar's value was used as is: a 2000 s TR, every event in the first volume, and a run that went on to a
meaningless GLM. Now a TR above 60 s stops the run with 65 and says it looks like milliseconds.
"""

from __future__ import annotations

import json

import nibabel as nib

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids


def test_tr_in_milliseconds_is_65(tmp_path, capsys):
    bids = make_minimal_bids(tmp_path / "bids")
    (bids / "task-perception_bold.json").write_text(json.dumps({"RepetitionTime": 2000, "TaskName": "perception"}))
    bold = bids / "sub-01" / "func" / "sub-01_task-perception_run-01_bold.nii.gz"
    img = nib.load(bold)
    img.header["pixdim"][4] = 0  # no TR in the header
    nib.save(nib.Nifti1Image(img.get_fdata(), img.affine, img.header), bold)
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert "is not a TR in seconds" in err and "2000 ms is 2 s" in err


def _header_tr(bold, value, unit):
    img = nib.load(bold)
    header = img.header.copy()
    header["pixdim"][4] = value
    header.set_xyzt_units("mm", unit)
    nib.save(nib.Nifti1Image(img.get_fdata(), img.affine, header), bold)


def test_header_tr_in_milliseconds_without_unit_uses_the_sidecar(tmp_path, capsys):
    """pixdim[4] = 2000 with the time unit unset (or set to seconds) beside a sidecar's 2.0 s: the header is in
    milliseconds. It stopped the run with "TR mismatch ... the NIfTI header 2000 s" (65); the sidecar is BIDS'
    source of the TR, so the run goes on with a warning that names the header's value. A header in ms against a
    sidecar that disagrees with it stays a mismatch."""
    bids = make_minimal_bids(tmp_path / "bids")
    tr = json.loads((bids / "task-perception_bold.json").read_text())["RepetitionTime"]
    bold = bids / "sub-01" / "func" / "sub-01_task-perception_run-01_bold.nii.gz"
    _header_tr(bold, tr * 1000, "unknown")
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "preproc"])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert f"header's TR {tr * 1000:g} looks like milliseconds" in err

    (bids / "task-perception_bold.json").write_text(json.dumps({"RepetitionTime": tr * 1.5, "TaskName": "perception"}))
    code = run_cli([str(bids), str(tmp_path / "out2"), "participant", "-w", str(tmp_path / "work2"),
                    "--skip-bids-validation", "--stop-after", "preproc"])
    err = capsys.readouterr().err
    assert code == 65 and "TR mismatch" in err, err[-3000:]
