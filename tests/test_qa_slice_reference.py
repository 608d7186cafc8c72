"""Our own preprocessing: the GLM's frames at the median slice time of each raw run, whatever its slice axis
(QA pass 26).

``SliceTiming`` has one entry per slice along ``SliceEncodingDirection`` (``k`` unless said otherwise). It was
compared with the third axis of the participant grid, so a sagittal acquisition (``"i"``), or a run with another
slice count than the participant's first run, lost its reference: "SliceTiming has 33 entries for 8 slices;
ignored", frames at the start of each volume (~TR/2 early). Built on the real ds000117 layout (rapid design,
TR 2 s, 33 slices) with a synthetic int16 run (scale factors, an oblique 2.5 x 2.5 x 3 mm grid, a stale qform,
the TR in the header in milliseconds, two non-steady-state volumes) whose every slice is sampled at its own time.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_m2i.cli.run import run_cli
from fixture_datasets import inherited_sidecar, make_fixture_copy
from test_qa_fmriprep_timing import TRIAL_TYPES, correlation_with_truth, oblique_affine


def build_raw_dataset(tmp: Path, shape, slice_axis: int, direction: str | None, seed: int = 0):
    """ds000117 whose run-01 samples slice s (along ``slice_axis``) at SliceTiming[s] + n TR; returns (bids,
    truth (trials x brain voxels, % signal), brain mask, events)."""
    from nilearn.glm.first_level import compute_regressor

    bids = make_fixture_copy("ds000117", tmp / "bids")
    raw = sorted(bids.rglob("*_run-01_bold.nii.gz"))[0]
    meta = inherited_sidecar(raw, bids)
    tr, slice_times = float(meta["RepetitionTime"]), np.asarray(meta["SliceTiming"], dtype=float)
    assert shape[slice_axis] == len(slice_times)
    n_volumes = nib.load(raw).shape[3]
    events = pd.read_csv(str(raw).replace("_bold.nii.gz", "_events.tsv"), sep="\t")
    events = events[events["stim_type"].isin(TRIAL_TYPES)].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    brain = sum(g ** 2 for g in grids) <= 0.8
    truth = 1.0 + 0.5 * rng.standard_normal((len(events), int(brain.sum())))
    slice_of_voxel = np.nonzero(brain)[slice_axis]
    series = np.empty((n_volumes, truth.shape[1]))
    for s in np.unique(slice_of_voxel):
        columns = slice_of_voxel == s
        frame_times = slice_times[s] + tr * np.arange(n_volumes)
        regressors = np.column_stack([compute_regressor([[o], [d], [1.0]], "glover", frame_times)[0][:, 0]
                                      for o, d in zip(events["onset"], events["duration"])])
        series[:, columns] = 1000.0 * (1 + regressors @ truth[:, columns] / 100)
    series += rng.normal(0, 0.05, series.shape)
    series[:2] *= 1.6  # not yet at steady state
    data = np.full(tuple(shape) + (n_volumes,), 30.0)
    data[brain] = series.T
    data[~brain] += rng.normal(0, 1, (int((~brain).sum()), n_volumes))
    affine = oblique_affine((2.5, 2.5, 3.0), shape)
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.set_data_dtype(np.int16)
    img.header.set_zooms((2.5, 2.5, 3.0, tr * 1000))
    img.header.set_xyzt_units("mm", "msec")
    stale = affine.copy()
    stale[:3, 3] += 7.0  # a qform left behind by an editing tool; the sform (code 1) is what readers use
    img.header.set_qform(stale, 1)
    img.header.set_sform(affine, 1)
    nib.save(img, raw)
    if direction is not None:
        sidecar = Path(str(raw).replace(".nii.gz", ".json"))
        fields = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        sidecar.write_text(json.dumps({**fields, "SliceEncodingDirection": direction}))
    return bids, truth, brain, events


def run_glm(tmp: Path, bids: Path, method: str = "lsa") -> Path:
    filters = tmp / "filters.json"
    filters.write_text(json.dumps({"bold": {"run": [1]}}))
    out = tmp / "out"
    code = run_cli([str(bids), str(out), "participant", "--skip-bids-validation", "--stop-after", "glm", "--glm",
                    method, "-w", str(tmp / "work"), "--bids-filter-file", str(filters), "--nprocs", "1"])
    assert code == 0
    return out


def brain_in_mask(out: Path, brain: np.ndarray, truth: np.ndarray):
    mask = np.asarray(nib.load(next(out.rglob("*_desc-brain_mask.nii.gz"))).dataobj) > 0
    both = brain & mask
    assert both.sum() > 0.8 * brain.sum()
    return both, truth[:, both[brain]]


@pytest.mark.parametrize("shape, axis, direction", [((33, 10, 8), 0, "i"), ((10, 10, 33), 2, None)])
def test_frames_at_the_median_slice_time_along_the_slice_axis(tmp_path, shape, axis, direction):
    bids, truth, brain, events = build_raw_dataset(tmp_path, shape, axis, direction)
    out = run_glm(tmp_path, bids)
    both, expected = brain_in_mask(out, brain, truth)
    r = correlation_with_truth(out, expected, both, events)
    assert r > 0.9, r  # sagittal ("i"): 0.795 with the reference dropped; both 0.946 with the median slice time


@pytest.mark.parametrize("meta, shape, expected", [
    ({"SliceTiming": [0.0, 1.0, 0.5, 1.5]}, (64, 64, 4), 0.75),
    ({"SliceTiming": [0.0, 1.0, 0.5, 1.5], "SliceEncodingDirection": "j-"}, (64, 4, 30), 0.75),
    ({"SliceTiming": [0.0, 1.0, 0.5, 1.5]}, (64, 64, 30), 0.0),   # not this run's slices: ignored, with a warning
    ({}, (64, 64, 30), 0.0),
])
def test_slice_time_reference_of_the_raw_run(meta, shape, expected):
    """The raw run's own slices count, not the participant grid's (a second run of another slice count)."""
    from bids_m2i.bids.inputs import slice_time_reference
    from bids_m2i.bids.layout import BoldRun

    run = BoldRun(Path("sub-01_task-x_run-2_bold.nii.gz"), {"subject": "01", "task": "x"}, None, meta)
    assert slice_time_reference(run, shape + (100,)) == pytest.approx(expected)
