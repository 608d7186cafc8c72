"""Voxels at the edge of the field of view keep their signal in volumes whose motion pushes them out of it
(QA pass 26).

A head that fills the field of view along an axis (a slab over the visual cortex, a large head) has brain in the
first and last slices. Every volume is resampled with its own motion transform: a sub-millimetre shift put those
voxels outside the raw field of view in some volumes, where they were 0. The brain mask, built from the runs'
references, kept them: on ds000117's layout with a synthetic head cut by the FOV (2 runs, lsa), 149 of 6193 mask
voxels had betas of thousands of % (per-voxel slope against the truth down to -107), and the spatial correlation
of run 1's betas with the true patterns was 0.01 (0.70 after; run 2, whose FOV holds the whole head, 0.71).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from bids_m2i.interfaces.preproc import ResampleRun


def test_edge_slices_keep_their_values_when_a_volume_moves(tmp_path):
    rng = np.random.default_rng(0)
    shape, n = (8, 8, 6), 12
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    data = (1000 + 100 * rng.random(shape)[..., None] + rng.normal(0, 2, shape + (n,))).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "bold.nii.gz")
    transforms = np.repeat(np.eye(4)[None], n, axis=0)
    transforms[:, 2, 3] = np.where(np.arange(n) % 2, 0.3, -0.3)  # +-0.3 mm along z: 0.1 voxel, FD ~0.6 mm
    np.save(tmp_path / "transforms.npy", transforms)
    np.save(tmp_path / "run_to_reference.npy", np.eye(4))
    nib.save(nib.Nifti1Image(data.mean(3), affine), tmp_path / "reference.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(shape, dtype=np.uint8), affine), tmp_path / "mask.nii.gz")
    (tmp_path / "info.json").write_text(json.dumps({"nonsteady_volumes": []}))
    node = ResampleRun(in_file=str(tmp_path / "bold.nii.gz"), transforms=str(tmp_path / "transforms.npy"),
                       run_to_reference=[str(tmp_path / "run_to_reference.npy")], run_index=0,
                       reference=str(tmp_path / "reference.nii.gz"), mask=str(tmp_path / "mask.nii.gz"),
                       info=str(tmp_path / "info.json"), tr=2.0)
    (tmp_path / "node").mkdir()
    (tmp_path / "wide").mkdir()
    result = node.run(cwd=str(tmp_path / "node"))
    out = np.asarray(nib.load(result.outputs.out_file).dataobj, dtype=np.float32)
    # every voxel of the first and last slices in every volume: the raw values, within interpolation error
    for k in (0, shape[2] - 1):
        assert out[:, :, k].min() > 900, (k, out[:, :, k].min())  # was 0 in the volumes shifted outwards
        assert np.abs(out[:, :, k] - data[:, :, k]).max() < 50
    # grid voxels the run does not cover at all stay 0: a participant grid larger than the run's field of view
    bigger = np.diag([3.0, 3.0, 3.0, 1.0])
    bigger[:3, 3] = -6.0
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 10), dtype=np.float32), bigger), tmp_path / "grid.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((12, 12, 10), dtype=np.uint8), bigger), tmp_path / "gridmask.nii.gz")
    node.inputs.reference, node.inputs.mask = str(tmp_path / "grid.nii.gz"), str(tmp_path / "gridmask.nii.gz")
    wide = np.asarray(nib.load(node.run(cwd=str(tmp_path / "wide")).outputs.out_file).dataobj, dtype=np.float32)
    assert np.all(wide[:1] == 0) and np.all(wide[..., :1, :] == 0) and wide[4:8, 4:8, 4:8].min() > 900
