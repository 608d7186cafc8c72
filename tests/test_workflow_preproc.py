"""`m2i ... participant --stop-after preproc` on the simulator's tiny preset."""

from __future__ import annotations

import hashlib
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd

from bids_m2i.bids.validation import run_validator
from bids_m2i.cli.run import run_cli


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_preproc_outputs(tiny_preproc_run):
    assert tiny_preproc_run["code"] == 0
    out = tiny_preproc_run["out"]
    sub = out / "sub-01" / "func"
    mask = nib.load(sub / "sub-01_desc-brain_mask.nii.gz")
    preproc = sorted(sub.glob("*_desc-preproc_bold.nii.gz"))
    bolds = sorted(tiny_preproc_run["bids"].glob("sub-01/**/func/*_bold.nii.gz"))
    assert len(preproc) == len(bolds) >= 2
    for path in preproc:
        img = nib.load(path)
        assert img.shape[:3] == mask.shape  # one participant grid
        assert np.allclose(img.affine, mask.affine)
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert {"RepetitionTime", "TaskName", "SkullStripped", "Sources"} <= set(sidecar)
        stem = path.name.replace("_desc-preproc_bold.nii.gz", "")
        confounds = pd.read_csv(sub / f"{stem}_desc-confounds_timeseries.tsv", sep="\t")
        assert list(confounds.columns[:10]) == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                                                "framewise_displacement", "dvars", "std_dvars", "global_signal"]
        assert len(confounds) == img.shape[3]
        assert np.isnan(confounds["framewise_displacement"].iloc[0])
        assert (sub / f"{stem}_desc-hmc_boldref.nii.gz").exists()
        assert (sub / f"{stem}_desc-confounds_timeseries.json").exists()
    figures = sorted((out / "sub-01" / "figures").glob("*.svg"))
    for kind in ("motion", "fd", "carpet", "beforeafter"):
        assert any(f"desc-{kind}_" in f.name for f in figures), kind
    assert (out / "sub-01.html").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_preproc_outputs_validate(tiny_preproc_run):
    report = run_validator(tiny_preproc_run["out"])
    assert report.n_errors == 0, report.summary()


def test_preproc_recovers_true_motion(tiny_preproc_run):
    """The estimated motion follows the simulator's true motion (both demeaned: they differ by the run's
    registration to the participant reference). The tiny preset's head is a 16 x 16 x 10 blob at 4 mm, almost
    round in the axial plane, so rotation about z is poorly determined there and is left out (see the engine's
    phantom tests for the full 6-parameter bounds)."""
    out, bids = tiny_preproc_run["out"], tiny_preproc_run["bids"]
    truth_dir = bids / "derivatives" / "simulation" / "sub-01" / "func"
    truths = sorted(truth_dir.glob("*_desc-truemotion_timeseries.tsv"))
    assert truths
    for truth in truths:
        stem = truth.name.replace("_desc-truemotion_timeseries.tsv", "")
        est = pd.read_csv(out / "sub-01" / "func" / f"{stem}_desc-confounds_timeseries.tsv", sep="\t")
        true = pd.read_csv(truth, sep="\t")
        for columns, bound in ((["trans_x", "trans_y", "trans_z"], 0.25), (["rot_x", "rot_y"], np.radians(0.5))):
            error = (est[columns] - est[columns].mean()) - (true[columns] - true[columns].mean())
            rms = np.sqrt((error**2).mean())
            assert (rms < bound).all(), (stem, rms.to_dict())


def test_motion_parameters_say_what_they_are_relative_to(tiny_preproc_run):
    """The parameters are the composed transform participant reference -> volume (ResampleRun), so a run other
    than the first starts at its offset from the first run; the sidecar and the report's figure said "the run's
    reference" (fMRIPrep's convention), which a user comparing with fMRIPrep would have misread."""
    import json

    func = tiny_preproc_run["out"] / "sub-01" / "func"
    sidecars = sorted(func.glob("*_desc-confounds_timeseries.json"))
    assert sidecars
    for sidecar in sidecars:
        meta = json.loads(sidecar.read_text())
        for column in ("trans_x", "rot_z"):
            assert "relative to the participant reference" in meta[column]["Description"], sidecar.name
            assert "relative to the run's reference" not in meta[column]["Description"]
    figures = sorted((tiny_preproc_run["out"] / "sub-01" / "figures").glob("*motion*.svg"))
    assert figures and all("relative to the participant reference" in f.read_text() for f in figures)


def test_rerun_reuses_work_and_is_identical(tiny_preproc_run, tmp_path):
    out = tiny_preproc_run["out"]
    before = {p.relative_to(out): _digest(p) for p in out.rglob("*.nii.gz")}
    before.update({p.relative_to(out): _digest(p) for p in out.rglob("*.tsv")})
    code = run_cli([str(tiny_preproc_run["bids"]), str(out), "participant", "-w", str(tiny_preproc_run["work"]),
                    "--stop-after", "preproc", "--nprocs", "2", "--omp-nthreads", "1"])
    assert code == 0
    after = {p: _digest(out / p) for p in before}
    assert after == before
    newest_log = sorted((out / "logs").glob("m2i-participant-*.log"))[-1].read_text()
    assert "Cached (m2i_wf.sub_01_wf.bold_preproc_wf.hmc_" in newest_log  # finished nodes are reused
    # a fresh work dir gives the same bytes too (same inputs, seed and threads)
    out2 = tmp_path / "out2"
    code = run_cli([str(tiny_preproc_run["bids"]), str(out2), "participant", "-w", str(tmp_path / "work2"),
                    "--stop-after", "preproc", "--nprocs", "2", "--omp-nthreads", "1"])
    assert code == 0
    assert {p: _digest(out2 / p) for p in before} == before


def test_input_dataset_untouched(tiny_dataset, tmp_path):
    """A participant run changes no input file (checksums before and after)."""
    bids = tmp_path / "bids"
    shutil.copytree(tiny_dataset, bids)
    before = {p: _digest(p) for p in bids.rglob("*") if p.is_file()}
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--stop-after", "preproc", "--nprocs", "1"])
    assert code == 0
    after = {p: _digest(p) for p in bids.rglob("*") if p.is_file()}
    assert after == before
