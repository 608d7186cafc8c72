"""Damaged or inconsistent fMRIPrep outputs (``--derivatives``) stop the run early with exit 65 and a message
that names the file, never a traceback.

Users saw: an empty confounds table ended in the GLM step, after the other steps, with exit 1 and pandas'
traceback printed on the terminal; a confounds table of another length also only in the GLM step; a brain
mask not on its own BOLD's grid reported as "fMRIPrep runs are not on one grid: use --space T1w".
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import bids_m2i.workflows.base as base
from bids_m2i.cli.run import run_cli
from test_fmriprep_inputs import make_fmriprep_tree


@pytest.fixture
def tree(tiny_dataset, tmp_path):
    return make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))


def _confounds(tree: Path) -> Path:
    return sorted(tree.rglob("*task-perception_run-1_desc-confounds_timeseries.tsv"))[0]


@pytest.mark.parametrize("damage, needle", [
    ("empty", "cannot be read"),
    ("short", "has 19 rows for the"),
    ("not_tsv", "cannot be read"),
])
def test_damaged_confounds_are_65_before_any_step(tiny_dataset, tree, tmp_path, capsys, monkeypatch, damage,
                                                  needle):
    started = []
    monkeypatch.setattr(base, "run_participant_workflows", lambda *a, **k: started.append(True))
    path = _confounds(tree)
    if damage == "empty":
        path.write_text("")
    elif damage == "short":
        path.write_text("\n".join(path.read_text().splitlines()[:20]) + "\n")
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--derivatives", str(tree), "--skip-bids-validation", "--stop-after", "glm"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert needle in err and path.name in err and "Traceback" not in err
    assert started == []


def test_mask_off_its_bold_grid_says_so(tree, tmp_path):
    from bids_m2i.errors import BadDataError
    from bids_m2i.interfaces.fmriprep import ParticipantMaskFromRuns

    bolds = sorted(tree.rglob("*_space-T1w_desc-preproc_bold.nii.gz"))
    masks = [Path(str(b).replace("desc-preproc_bold", "desc-brain_mask")) for b in bolds]
    img = nib.load(masks[1])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine), masks[1])
    node = ParticipantMaskFromRuns(in_files=[str(m) for m in masks], bold_files=[str(b) for b in bolds])
    with pytest.raises(BadDataError, match="is not on the grid of its BOLD series") as info:
        node._run(type("Runtime", (), {"cwd": str(tmp_path)})())
    assert masks[1].name in str(info.value) and "--space" not in str(info.value)


def test_generic_step_failure_shows_the_error_line_not_the_traceback():
    from bids_m2i.workflows.base import _last_error_line

    crash = ("Node: estimate_betas\nTraceback:\n\tTraceback (most recent call last):\n\t  File \"x.py\", line 1, in f"
             "\n\t    g()\n\t    ^^^\n\tpandas.errors.EmptyDataError: No columns to parse from file\n")
    assert _last_error_line(crash) == "pandas.errors.EmptyDataError: No columns to parse from file"


def test_mask_of_the_same_shape_on_another_grid_says_how_it_differs(tree, tmp_path):
    """Same shape, another voxel size: the message read '(16, 16, 10) is not on the grid of ... ((16, 16, 10))'."""
    from bids_m2i.errors import BadDataError
    from bids_m2i.interfaces.fmriprep import ParticipantMaskFromRuns

    bolds = sorted(tree.rglob("*_space-T1w_desc-preproc_bold.nii.gz"))
    masks = [Path(str(b).replace("desc-preproc_bold", "desc-brain_mask")) for b in bolds]
    img = nib.load(masks[1])
    affine = img.affine.copy()
    affine[:3, :3] *= 0.5
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), masks[1])
    node = ParticipantMaskFromRuns(in_files=[str(m) for m in masks], bold_files=[str(b) for b in bolds])
    with pytest.raises(BadDataError) as info:
        node._run(type("Runtime", (), {"cwd": str(tmp_path)})())
    message = str(info.value)
    assert "voxels of 2x2x2 mm" in message and "voxels of 4x4x4 mm" in message, message


@pytest.mark.parametrize("zoom, needle", [(1.25, "different voxel sizes"), (1.0, "different anatomical references")])
def test_runs_on_different_t1w_grids_do_not_advise_space_t1w(tree, tmp_path, zoom, needle):
    """fMRIPrep's T1w outputs keep each run's voxel size (and sessions processed apart have their own T1w): runs
    already in space T1w were told to 'use a common output space (--space T1w)'."""
    from bids_m2i.errors import BadDataError
    from bids_m2i.interfaces.fmriprep import ParticipantMaskFromRuns

    bolds = sorted(tree.rglob("*_space-T1w_desc-preproc_bold.nii.gz"))
    masks = [Path(str(b).replace("desc-preproc_bold", "desc-brain_mask")) for b in bolds]
    for path in (bolds[1], masks[1]):
        img = nib.load(path)
        affine = img.affine.copy()
        affine[:3, :3] /= zoom
        affine[:3, 3] += 5.0
        out = nib.Nifti1Image(np.asarray(img.dataobj), affine)
        out.header.set_zooms(tuple(np.asarray(img.header.get_zooms()[:3]) / zoom) + tuple(img.header.get_zooms()[3:]))
        nib.save(out, path)
    node = ParticipantMaskFromRuns(in_files=[str(m) for m in masks], bold_files=[str(b) for b in bolds])
    with pytest.raises(BadDataError, match="not on one grid") as info:
        node._run(type("Runtime", (), {"cwd": str(tmp_path)})())
    assert "--space T1w" not in str(info.value) and needle in str(info.value) and "--space func" in str(info.value)


def test_masks_stored_as_one_volume_4d_images_are_used(tree, tmp_path):
    """x*y*z*1 masks: the participant mask was 4-D and the GLM said the BOLD was not on the mask's grid."""
    from bids_m2i.interfaces.fmriprep import ParticipantMaskFromRuns

    bolds = sorted(tree.rglob("*_space-T1w_desc-preproc_bold.nii.gz"))
    masks = [Path(str(b).replace("desc-preproc_bold", "desc-brain_mask")) for b in bolds]
    expected = np.asarray(nib.load(masks[0]).dataobj) > 0
    for path in masks:
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine), path)
    node = ParticipantMaskFromRuns(in_files=[str(m) for m in masks], bold_files=[str(b) for b in bolds])
    node._run(type("Runtime", (), {"cwd": str(tmp_path)})())
    out = np.asarray(nib.load(node._results["out_file"]).dataobj)
    assert out.shape == expected.shape and out.any()
