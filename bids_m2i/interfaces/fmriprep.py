"""nipype glue for fMRIPrep inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nipype.interfaces.base import BaseInterfaceInputSpec, File, InputMultiObject, TraitedSpec

from ..errors import BadDataError
from .base import M2IInterface
from .images import save_like


class _MaskInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="fMRIPrep brain masks, one per run")
    bold_files = InputMultiObject(File(exists=True), mandatory=True, desc="the matching preprocessed BOLD")


class _MaskOutputSpec(TraitedSpec):
    out_file = File(desc="participant mask: intersection of the run masks")
    out_reference = File(desc="mean of the first run (participant reference image)")


class ParticipantMaskFromRuns(M2IInterface):
    input_spec = _MaskInputSpec
    output_spec = _MaskOutputSpec

    def _run(self, runtime):
        import nibabel as nib

        first = nib.load(self.inputs.in_files[0])
        mask = np.asarray(first.dataobj) > 0
        for path in self.inputs.in_files[1:]:
            img = nib.load(path)
            if img.shape[:3] != first.shape[:3] or not np.allclose(img.affine, first.affine, atol=1e-3):
                raise BadDataError(
                    f"fMRIPrep runs are not on one grid: {Path(path).name} differs from "
                    f"{Path(self.inputs.in_files[0]).name}", path=path,
                    hint="use a common output space (--space T1w) for every run",
                )
            mask &= np.asarray(img.dataobj) > 0
        for bold in self.inputs.bold_files:
            img = nib.load(bold)
            if img.shape[:3] != first.shape[:3]:
                raise BadDataError(f"{Path(bold).name} is not on its mask's grid", path=bold)
        cwd = Path(runtime.cwd)
        self._results["out_file"] = str(save_like(mask.astype(np.uint8), first.affine, cwd / "brain_mask.nii.gz",
                                                  dtype=np.uint8))
        bold = nib.load(self.inputs.bold_files[0])
        mean = np.asarray(bold.dataobj, dtype=np.float32).mean(axis=3)
        self._results["out_reference"] = str(save_like(mean, bold.affine, cwd / "reference.nii.gz"))
