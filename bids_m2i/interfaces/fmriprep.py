"""nipype glue for fMRIPrep inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nipype.interfaces.base import File, InputMultiObject, TraitedSpec

from ..errors import BadDataError
from .base import M2IInputSpec, M2IInterface
from .images import save_like


class _MaskInputSpec(M2IInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="fMRIPrep brain masks, one per run")
    bold_files = InputMultiObject(File(exists=True), mandatory=True, desc="the matching preprocessed BOLD")


class _MaskOutputSpec(TraitedSpec):
    out_file = File(desc="participant mask: intersection of the run masks")
    out_reference = File(desc="mean of the first run (participant reference image)")


def _grid(img) -> str:
    """Shape, voxel size and origin: the shapes alone read "(16, 16, 10) is not on the grid of (16, 16, 10)" for
    a mask of the same shape at another voxel size or position."""
    zooms = "x".join(f"{z:g}" for z in np.round(img.header.get_zooms()[:3], 3))
    origin = ", ".join(f"{v:g}" for v in np.round(img.affine[:3, 3], 2))
    return f"{'x'.join(map(str, img.shape[:3]))} voxels of {zooms} mm, origin ({origin}) mm"


def _mask_data(img, path) -> np.ndarray:
    """A mask's voxels as 3-D booleans. A mask stored as x*y*z*1 (some tools write one) became a 4-D participant
    mask, and the GLM then said "the preprocessed BOLD is not on the brain mask's grid" of a BOLD that is."""
    if len(img.shape) == 4 and img.shape[3] == 1:
        return np.asarray(img.dataobj)[..., 0] > 0
    if len(img.shape) != 3:
        raise BadDataError(f"fMRIPrep's brain mask {Path(path).name} is not a 3-D image (shape {img.shape})", path=path,
                           hint="rerun fMRIPrep for this participant (the file is damaged or not its brain mask)")
    return np.asarray(img.dataobj) > 0


class ParticipantMaskFromRuns(M2IInterface):
    input_spec = _MaskInputSpec
    output_spec = _MaskOutputSpec

    def _run(self, runtime):
        import nibabel as nib

        # each run's mask on its own BOLD's grid first: otherwise a mask that does not match its BOLD (outputs
        # of two fMRIPrep runs mixed, or an interrupted one) was reported as "runs not on one grid, use --space T1w"
        for mask_path, bold in zip(self.inputs.in_files, self.inputs.bold_files):
            mask_img, bold_img = nib.load(mask_path), nib.load(bold)
            if mask_img.shape[:3] != bold_img.shape[:3] or not np.allclose(mask_img.affine, bold_img.affine,
                                                                             atol=1e-3):
                raise BadDataError(
                    f"fMRIPrep's brain mask {Path(mask_path).name} ({_grid(mask_img)}) is not on the grid of "
                    f"its BOLD series {Path(bold).name} ({_grid(bold_img)})", path=mask_path,
                    hint="these outputs come from different fMRIPrep runs or an interrupted one: rerun fMRIPrep "
                    "for this participant into a clean output folder")
        first = nib.load(self.inputs.in_files[0])
        mask = _mask_data(first, self.inputs.in_files[0])
        for path in self.inputs.in_files[1:]:
            img = nib.load(path)
            if img.shape[:3] != first.shape[:3] or not np.allclose(img.affine, first.affine, atol=1e-3):
                # the hint was "use a common output space (--space T1w)", given to runs already in T1w: fMRIPrep's
                # T1w outputs keep each run's voxel size, and sessions processed apart have their own T1w
                if np.allclose(img.header.get_zooms()[:3], first.header.get_zooms()[:3], atol=1e-3):
                    cause = ("same voxel size, another position: fMRIPrep runs with different anatomical references "
                             "(sessions processed separately, or --subject-anatomical-reference sessionwise); rerun "
                             "fMRIPrep on all sessions together, or use")
                else:
                    cause = ("the runs were acquired at different voxel sizes, which fMRIPrep's T1w outputs keep; "
                             "use a template space at one resolution if fMRIPrep wrote one (--space "
                             "MNI152NLin2009cAsym:res-2), or")
                raise BadDataError(
                    f"fMRIPrep runs are not on one grid: {Path(path).name} ({_grid(img)}) differs from "
                    f"{Path(self.inputs.in_files[0]).name} ({_grid(first)})", path=path,
                    hint=f"{cause} m2i's own preprocessing (--space func), which resamples every run onto one "
                    "participant grid",
                )
            mask &= _mask_data(img, path)
        cwd = Path(runtime.cwd)
        self._results["out_file"] = str(save_like(mask.astype(np.uint8), first.affine, cwd / "brain_mask.nii.gz",
                                                  dtype=np.uint8))
        bold = nib.load(self.inputs.bold_files[0])
        mean = np.asarray(bold.dataobj, dtype=np.float32).mean(axis=3)
        self._results["out_reference"] = str(save_like(mean, bold.affine, cwd / "reference.nii.gz"))
