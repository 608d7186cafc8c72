"""--roi-mask that leaves no voxel: a clear message and exit 65 (at startup for an empty or unreadable file, at
the first decoding node for an ROI outside the brain mask), never a traceback; very few voxels warn."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from bids_m2i.cli.run import run_cli
from bids_m2i.errors import BadDataError
from bids_m2i.interfaces.decoding import check_roi_overlap


@pytest.mark.parametrize("kind", ["empty", "not-nifti", "4d"])
def test_bad_roi_mask_stops_at_startup(tiny_dataset, tmp_path, capsys, kind):
    path = tmp_path / "roi.nii.gz"
    if kind == "empty":
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 10), np.uint8), np.eye(4)), path)
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.ones((16, 16, 10, 3), np.uint8), np.eye(4)), path)
    else:
        path.write_text("not an image")
    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--roi-mask", str(path)])
    err = capsys.readouterr().err
    assert code == 65, err
    assert "--roi-mask" in err and "Traceback" not in err
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("*.nii.gz"))  # stopped early


def test_roi_outside_the_brain_is_a_clear_error():
    brain = np.zeros((4, 4, 4), bool)
    brain[1:3, 1:3, 1:3] = True
    roi = ~brain
    with pytest.raises(BadDataError, match="no voxel to decode from.*outside the participant's brain mask"):
        check_roi_overlap(brain, roi, "roi.nii.gz")


def test_few_roi_voxels_warn(caplog):
    brain = np.ones((4, 4, 4), bool)
    roi = np.zeros_like(brain)
    roi.flat[:5] = True
    with caplog.at_level(logging.WARNING, logger="m2i.decoding"):
        assert check_roi_overlap(brain, roi, "roi.nii.gz") == 5
    assert "only 5 voxel(s)" in caplog.text
