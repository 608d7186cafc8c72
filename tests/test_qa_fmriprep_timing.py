"""Betas from fMRIPrep inputs line up with the events: slice-timing reference and dummy scans (QA pass 26).

Built on the real ds000117 layout (its events, a rapid design: a face every ~3.3 s, TR 2 s, 33-slice
``SliceTiming``): a synthetic fMRIPrep tree (fMRIPrep 24 names, int16 BOLD with a scale factor on an oblique
2.5 x 2.5 x 3 mm T1w grid, a confounds table of many columns with n/a in the first row of the derivatives)
whose responses are known per trial and voxel. Betas are scored by their correlation with the truth, per voxel
across trials.

* fMRIPrep corrects slice timing to ``StartTime`` (its sidecar; 0.951 s here, the middle of the slice times),
  but m2i put the frames at the start of each volume: the ``SliceTiming`` of the raw run (33 slices) was
  dropped against the T1w grid's 12 slices ("SliceTiming has 33 entries for 12 slices; ignored"). LSA betas
  correlated 0.85 with the truth instead of 0.997, LSS 0.73 instead of 0.80.
* ``--dummy-scans N`` was ignored with ``--derivatives``: the first volumes, not flagged by fMRIPrep, went into
  the model (r 0.02, betas 3x too large with 4 such volumes).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_m2i.cli.run import run_cli
from fixture_datasets import make_fixture_copy

TR = 2.0
SHAPE = (8, 8, 12)  # a T1w-space grid: its slices are not the acquisition's 33
TRIAL_TYPES = ("FAMOUS", "UNFAMILIAR", "SCRAMBLED")


def oblique_affine(zooms, shape, degrees=12.0):
    angle = np.deg2rad(degrees)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(zooms)
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return affine


def build_fmriprep_dataset(tmp: Path, *, start_time: float | None, flagged_dummies: int, dummies: int,
                           sidecar: bool = True, seed: int = 0):
    """ds000117 with a synthetic fMRIPrep run-1 whose frame n was acquired (or slice-time corrected) at
    ``start_time + n TR``; returns (bids, fmriprep, truth (trials x voxels, % signal), brain mask, events)."""
    from nilearn.glm.first_level import compute_regressor

    bids = make_fixture_copy("ds000117", tmp / "bids")
    raw = sorted(bids.rglob("*_run-01_bold.nii.gz"))[0]
    n_volumes = nib.load(raw).shape[3]
    events = pd.read_csv(str(raw).replace("_bold.nii.gz", "_events.tsv"), sep="\t")
    events = events[events["stim_type"].isin(TRIAL_TYPES)].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    brain = sum(g ** 2 for g in grids) <= 0.8
    truth = 1.0 + 0.5 * rng.standard_normal((len(events), int(brain.sum())))
    frame_times = (start_time or 0.0) + TR * np.arange(n_volumes)
    regressors = np.column_stack([compute_regressor([[onset], [duration], [1.0]], "glover", frame_times)[0][:, 0]
                                  for onset, duration in zip(events["onset"], events["duration"])])
    series = 1000.0 * (1 + regressors @ truth / 100) + rng.normal(0, 0.05, (n_volumes, truth.shape[1]))
    series[:dummies] *= 1.6  # not yet at steady state
    data = np.full(SHAPE + (n_volumes,), 30.0, dtype=np.float32)
    data[brain] = series.T
    data[~brain] += rng.normal(0, 1, (int((~brain).sum()), n_volumes)).astype(np.float32)

    fmriprep = tmp / "fmriprep"
    func = fmriprep / raw.parent.relative_to(bids)
    func.mkdir(parents=True)
    (fmriprep / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "24.1.1"}]}))
    stem = raw.name.replace("_bold.nii.gz", "").replace("_run-01", "_run-1")  # fMRIPrep's run-1
    affine = oblique_affine((2.5, 2.5, 3.0), SHAPE)
    img = nib.Nifti1Image(data, affine)
    img.set_data_dtype(np.int16)  # stored with scl_slope/scl_inter
    img.header.set_zooms((2.5, 2.5, 3.0, TR))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, 1)
    img.header.set_sform(affine, 4)
    nib.save(img, func / f"{stem}_space-T1w_desc-preproc_bold.nii.gz")
    if sidecar:
        meta = {"RepetitionTime": TR, "SkullStripped": False, "TaskName": "facerecognition",
                "SliceTimingCorrected": start_time is not None}
        if start_time is not None:
            meta["StartTime"] = start_time
        (func / f"{stem}_space-T1w_desc-preproc_bold.json").write_text(json.dumps(meta))
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), func / f"{stem}_space-T1w_desc-brain_mask.nii.gz")
    columns = {name: rng.normal(0, 0.05, n_volumes) for name in (
        "global_signal", "csf", "white_matter", "trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")}
    for name in ("global_signal_derivative1", "trans_x_derivative1", "rot_z_derivative1", "dvars", "std_dvars",
                 "framewise_displacement"):
        columns[name] = np.r_[np.nan, np.abs(rng.normal(0, 0.05, n_volumes - 1))]
    for k in range(6):
        columns[f"cosine{k:02d}"] = np.cos(np.pi * (k + 1) * np.arange(n_volumes) / n_volumes)
    for k in range(12):
        columns[f"a_comp_cor_{k:02d}"] = rng.normal(0, 0.05, n_volumes)
    for k in range(flagged_dummies):
        columns[f"non_steady_state_outlier{k:02d}"] = np.eye(n_volumes)[k]
    pd.DataFrame(columns).to_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False,
                                 na_rep="n/a")
    return bids, fmriprep, truth, brain, events


def run_glm(tmp: Path, bids: Path, fmriprep: Path, method: str, *extra: str) -> Path:
    filters = tmp / "filters.json"
    filters.write_text(json.dumps({"bold": {"run": [1]}}))
    out = tmp / "out"
    code = run_cli([str(bids), str(out), "participant", "--skip-bids-validation", "--derivatives", str(fmriprep),
                    "--space", "T1w", "--stop-after", "glm", "--glm", method, "-w", str(tmp / "work"),
                    "--bids-filter-file", str(filters), "--nprocs", "1", *extra])
    assert code == 0
    return out


def correlation_with_truth(out: Path, truth: np.ndarray, brain: np.ndarray, events: pd.DataFrame) -> float:
    """Mean over voxels of the correlation across trials between betas and true amplitudes."""
    statseries = next(out.rglob("*_stat-effect_desc-*_statseries.nii.gz"))
    rows = pd.read_csv(str(statseries).replace("_stat-effect", "").replace("_statseries.nii.gz", "_events.tsv"),
                       sep="\t")
    order = [int(np.argmin(np.abs(events["onset"].to_numpy() - onset))) for onset in rows["onset"]]
    assert sorted(order) == list(range(len(events)))
    betas = np.asarray(nib.load(statseries).dataobj)[brain].T
    expected = truth[order]
    return float(np.mean([np.corrcoef(betas[:, v], expected[:, v])[0, 1] for v in range(expected.shape[1])]))


# LSS's own limit on this rapid design, frames aligned, is 0.80 (one regressor for all other trials cannot follow
# their amplitudes); misaligned by fMRIPrep's StartTime it was 0.73
@pytest.mark.parametrize("method, least_r", [("lsa", 0.98), ("lss", 0.77)])
def test_betas_follow_fmriprep_slice_timing_reference(tmp_path, method, least_r):
    bids, fmriprep, truth, brain, events = build_fmriprep_dataset(tmp_path, start_time=0.951, flagged_dummies=2,
                                                                  dummies=2)
    out = run_glm(tmp_path, bids, fmriprep, method)
    r = correlation_with_truth(out, truth, brain, events)
    assert r > least_r, r  # 0.85 (lsa) / 0.73 (lss) with the frames put at the start of each volume


def test_dummy_scans_option_applies_to_fmriprep_inputs(tmp_path):
    bids, fmriprep, truth, brain, events = build_fmriprep_dataset(tmp_path, start_time=0.951, flagged_dummies=0,
                                                                  dummies=4)
    out = run_glm(tmp_path, bids, fmriprep, "lsa", "--dummy-scans", "4")
    r = correlation_with_truth(out, truth, brain, events)
    assert r > 0.98, r  # 0.02 when the option was ignored


def _preproc(tmp_path, meta):
    bold = tmp_path / "sub-01_task-x_run-1_space-T1w_desc-preproc_bold.nii.gz"
    bold.write_bytes(b"")
    if meta is not None:
        bold.with_name(bold.name.replace(".nii.gz", ".json")).write_text(json.dumps(meta))
    return bold


@pytest.mark.parametrize("meta, slice_timing, expected", [
    ({"SliceTimingCorrected": True, "StartTime": 0.951}, [0.0, 1.0, 1.902], 0.951),   # fMRIPrep >= 20.2
    ({"SliceTimingCorrected": False}, [0.0, 1.0, 1.9, 0.2], 0.6),                        # --ignore slicetiming
    ({"SliceTimingCorrected": False}, None, 0.0),
    ({"RepetitionTime": 2.0}, [0.0, 0.5, 1.5, 1.9], 0.95),   # no timing keys: fMRIPrep's default (middle)
    (None, [0.0, 0.5, 1.5, 1.9], 0.95),
    (None, None, 0.0),
    ({"SliceTimingCorrected": True, "StartTime": "n/a"}, [0.0, 1.9], 0.95),  # unusable StartTime: the default
])
def test_frame_start_of_fmriprep_outputs(tmp_path, meta, slice_timing, expected):
    from bids_m2i.bids.fmriprep import fmriprep_frame_start

    assert fmriprep_frame_start(_preproc(tmp_path, meta), slice_timing, TR) == pytest.approx(expected)


@pytest.mark.parametrize("change, needle", [
    ("trimmed", "has 4 volumes fewer than fMRIPrep's"),   # raw re-exported without its first 4 volumes
    ("tr", "fMRIPrep's sub-01_ses-mri_task-facerecognition_run-1_space-T1w_desc-preproc_bold.nii.gz has a TR of 2.5 s"),
])
def test_fmriprep_outputs_of_other_raw_data_are_65(tmp_path, capsys, change, needle):
    """fMRIPrep keeps every volume and the TR: outputs whose length or TR differ from the raw run's come from other
    raw data (a dataset version trimmed of its dummy volumes after fMRIPrep ran, another acquisition). The events
    count from the raw run's first volume: every onset was shifted by the missing volumes, exit 0."""
    from fixture_datasets import write_bold

    bids, fmriprep, *_ = build_fmriprep_dataset(tmp_path, start_time=0.951, flagged_dummies=0, dummies=0)
    raw = sorted(bids.rglob("*_run-01_bold.nii.gz"))[0]
    n_volumes = nib.load(raw).shape[3]
    if change == "trimmed":
        write_bold(raw, np.asarray(nib.load(raw).dataobj)[..., 4:], TR)
    else:
        preproc = next(fmriprep.rglob("*_desc-preproc_bold.nii.gz"))
        img = nib.load(preproc)
        img.header.set_zooms(img.header.get_zooms()[:3] + (2.5,))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), preproc)
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"run": [1]}}))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation", "--derivatives",
                    str(fmriprep), "--space", "T1w", "--stop-after", "glm", "--glm", "lsa", "-w",
                    str(tmp_path / "work"), "--bids-filter-file", str(filters), "--nprocs", "1"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert needle in err, err
    assert not list((tmp_path / "out").rglob("*_statseries.nii.gz"))
    assert n_volumes > 4
