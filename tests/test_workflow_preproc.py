"""`m2i ... participant --stop-after preproc` on the simulator's tiny preset."""

from __future__ import annotations

import hashlib
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

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
    """The estimated FD follows the simulator's true FD (motion is relative to a reference, FD is not)."""
    from bids_m2i.preproc.confounds import framewise_displacement

    out, bids = tiny_preproc_run["out"], tiny_preproc_run["bids"]
    truth_dir = bids / "derivatives" / "simulation" / "sub-01" / "func"
    for truth in sorted(truth_dir.glob("*_desc-truemotion_timeseries.tsv")):
        stem = truth.name.replace("_desc-truemotion_timeseries.tsv", "")
        est = pd.read_csv(out / "sub-01" / "func" / f"{stem}_desc-confounds_timeseries.tsv", sep="\t")
        true = pd.read_csv(truth, sep="\t")
        true_fd = framewise_displacement(true[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]]
                                         .to_numpy())
        est_fd = est["framewise_displacement"].to_numpy()
        ok = np.isfinite(true_fd) & np.isfinite(est_fd)
        assert np.corrcoef(true_fd[ok], est_fd[ok])[0, 1] > 0.8
        assert np.median(np.abs(true_fd[ok] - est_fd[ok])) < 0.15


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
