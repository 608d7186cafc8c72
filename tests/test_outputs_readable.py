"""Outputs a lab can read and trust (issue 17): file modes follow the umask, one figures/ folder per
participant, the report and methods text use this run's GLM method and say what is undefined, impossible
motion is flagged, and messages name runs rather than work files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_m2i.bids.derivatives import BIDSIGNORE, derivative_path
from bids_m2i.config import build_config
from bids_m2i.utils import atomic


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_every_writer_follows_the_umask(tmp_path, umask, mask, expected):
    from PIL import Image

    from bids_m2i.interfaces.derivatives import DerivativesDataSink

    umask(mask)
    assert atomic.current_umask() == mask
    written = [
        atomic.write_json(tmp_path / "a.json", {"x": 1}),
        atomic.write_text(tmp_path / "a.html", "<p>report</p>"),
        atomic.write_tsv(tmp_path / "a.tsv", pd.DataFrame({"x": [1]})),
        atomic.save_nifti(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp_path / "a.nii.gz"),
        atomic.save_npy(tmp_path / "a.npy", np.zeros(3)),
        atomic.save_png(tmp_path / "a.png", Image.new("RGB", (4, 4))),
    ]
    sink = DerivativesDataSink(base_directory=str(tmp_path / "out"), in_file=str(written[0]),
                               entities={"subject": "01", "task": "t", "desc": "x"}, suffix="bold",
                               extension=".json", datatype="func")
    written.append(Path(sink.run().outputs.out_file))
    # a decoder model: safetensors replaces the temporary file rather than truncating it (it left 0600)
    from bids_m2i.decoding.decoder import BrainDecoder

    rng = np.random.default_rng(0)
    decoder = BrainDecoder("ridge", top_k=None, alphas=(1.0,)).fit(rng.standard_normal((12, 5)),
                                                                   rng.standard_normal((12, 2)))
    written.append(decoder.save(tmp_path / "a_model.safetensors"))
    assert {p.name: oct(_mode(p)) for p in written} == {p.name: oct(expected) for p in written}
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]  # still written under a temporary name


def test_replacing_a_file_keeps_atomicity_and_takes_the_umask(tmp_path, umask):
    umask(0o077)
    path = atomic.write_text(tmp_path / "a.tsv", "old\n")
    umask(0o022)
    atomic.write_text(path, "new\n")
    assert path.read_text() == "new\n" and _mode(path) == 0o644


def test_figures_go_to_one_folder_per_participant_with_the_session_in_the_name(tmp_path):
    fig = derivative_path(tmp_path, subject="01", session="perception01", task="t", run="1", desc="fd",
                          suffix="bold", extension=".svg", datatype="figures")
    assert fig.relative_to(tmp_path).as_posix() == \
        "sub-01/figures/sub-01_ses-perception01_task-t_run-1_desc-fd_bold.svg"
    design = derivative_path(tmp_path, subject="01", session="A", task="t", desc="designlsa", suffix="design",
                             extension=".svg", datatype="figures")
    assert design.parent == tmp_path / "sub-01" / "figures"
    # the data files keep their session folder
    bold = derivative_path(tmp_path, subject="01", session="A", task="t", run="1", desc="preproc", suffix="bold",
                           extension=".nii.gz", datatype="func")
    assert bold.parent == tmp_path / "sub-01" / "ses-A" / "func"
    assert "sub-*/figures" in BIDSIGNORE.splitlines()


# --------------------------------------------------------------------------------------------------------
# report and methods text


def _fake_glm_outputs(out: Path, method: str, *, repeats: int, nuisance: list[str], session="A") -> None:
    """What the GLM stage writes for one task and session (the report reads the derivatives on disk)."""
    func = out / "sub-01" / f"ses-{session}" / "func"
    func.mkdir(parents=True, exist_ok=True)
    stem = f"sub-01_ses-{session}_task-t"
    meta = {"Sources": ["/home/someone/data/sub-01/func/sub-01_task-t_run-1_bold.nii.gz"], "method": method,
            "effective_method": method, "hrf_model": "glover", "n_trials": 6, "n_repeated_stimuli": repeats,
            "nuisance_event_types": nuisance, "units": "percent signal change", "fallback_reason": None}
    (func / f"{stem}_stat-effect_desc-{method}_statseries.json").write_text(json.dumps(meta))
    pd.DataFrame({"trial_index": range(6)}).to_csv(func / f"{stem}_desc-{method}_events.tsv", sep="\t", index=False)
    ncsnr = np.zeros((4, 4, 3), np.float32)
    if repeats:
        ncsnr[1:3, 1:3] = 0.4
    nib.save(nib.Nifti1Image(ncsnr, np.eye(4)), func / f"{stem}_stat-ncsnr_desc-{method}_statmap.nii.gz")
    figures = out / "sub-01" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    (figures / f"{stem}_desc-design{method}_design.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (figures / f"{stem}_desc-ncsnr{method}_statmap.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (figures / f"{stem}_run-1_desc-fd_bold.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")


def _report(tmp_path: Path, out: Path, glm: str) -> str:
    from bids_m2i.reports.participant import build_participant_report

    (out / "logs").mkdir(parents=True, exist_ok=True)
    config = build_config(tmp_path / "bids", out, "participant", {"glm": glm}, {"glm"})
    build_participant_report(output_dir=out, bids_dir=tmp_path / "bids", subject="01", config=config,
                             run_summaries=[], trials=None, work_dir=tmp_path / "work",
                             stages=["preprocessing", "single-trial betas"])
    return (out / "sub-01.html").read_text()


def test_report_says_ncsnr_is_undefined_without_repeats(tmp_path):
    out = tmp_path / "out"
    _fake_glm_outputs(out, "lsa", repeats=0, nuisance=[])
    html = _report(tmp_path, out, "lsa")
    assert "no repeated stimuli: ncsnr undefined" in html
    assert 'alt="ncsnr map"' not in html and "ncsnr histogram" not in html  # no saturated "0 to 1.00" disc
    assert 'alt="design matrix"' in html  # found under sub-01/figures/ although the data have a session
    assert "No preprocessing figures were found" not in html


def test_report_with_repeats_shows_the_ncsnr_map(tmp_path):
    out = tmp_path / "out"
    _fake_glm_outputs(out, "lsa", repeats=3, nuisance=["oneback"])
    html = _report(tmp_path, out, "lsa")
    assert 'alt="ncsnr map"' in html and "ncsnr undefined" not in html


def test_report_uses_this_runs_method_and_names_stale_outputs(tmp_path):
    out = tmp_path / "out"
    _fake_glm_outputs(out, "lsa", repeats=0, nuisance=[])
    _fake_glm_outputs(out, "fithrfdenoiserr", repeats=3, nuisance=["cue"])
    html = _report(tmp_path, out, "lsa")
    assert html.count('alt="design matrix"') == 1
    assert "Method: lsa" in html and "Method: fithrfdenoiserr" not in html
    assert "another GLM method from an earlier run (fithrfdenoiserr)" in html


def test_methods_text_has_no_raw_json_no_paths_and_only_the_nuisance_events_present(tmp_path):
    out = tmp_path / "out"
    _fake_glm_outputs(out, "lsa", repeats=0, nuisance=[])
    _report(tmp_path, out, "lsa")
    methods = (out / "logs" / "CITATION.md").read_text()
    assert "{" not in methods and "/home/someone" not in methods and "Sources" not in methods
    assert "no nuisance events were modelled" in methods
    assert "one-back" not in methods.lower() and "Cue, evaluation" not in methods
    assert "ncsnr" in methods and "undefined" in methods

    out2 = tmp_path / "out2"
    _fake_glm_outputs(out2, "lsa", repeats=2, nuisance=["cue", "evaluation"])
    _report(tmp_path, out2, "lsa")
    methods = (out2 / "logs" / "CITATION.md").read_text()
    assert "Other events (cue, evaluation) were modelled with one regressor per event type" in methods


# --------------------------------------------------------------------------------------------------------
# impossible motion


def test_impossible_motion_is_flagged_in_the_confounds_sidecar():
    from bids_m2i.preproc.confounds import compute_confounds

    rng = np.random.default_rng(0)
    data = 1000 + rng.normal(0, 5, (6, 6, 4, 20))
    mask = np.ones((6, 6, 4), bool)
    still = np.zeros((20, 6))
    still[:, 0] = rng.normal(0, 0.05, 20)
    _, sidecar = compute_confounds(still, data, mask)
    assert "MotionImplausible" not in sidecar
    jumps = still.copy()
    jumps[10:, 1] = 400.0  # a 400 mm jump: FD ~400 mm, as registration failures on featureless data give
    table, sidecar = compute_confounds(jumps, data, mask)
    assert table["framewise_displacement"].max() > 300
    assert sidecar["MotionImplausible"]["Value"] is True
    assert "physically impossible" in sidecar["MotionImplausible"]["Description"]
    spin = still.copy()
    spin[5:, 3] = np.deg2rad(90)
    assert "rotation up to 90 degrees" in compute_confounds(spin, data, mask)[1]["MotionImplausible"]["Description"]


def test_messages_name_the_run_not_the_work_file():
    from bids_m2i.interfaces.glm import run_name

    trials = pd.DataFrame({"run": ["01", "01", "02"], "session": ["A", "A", "A"], "task": ["t", "t", "t"]})
    assert run_name(trials, "02") == "ses-A_task-t_run-02"
    assert run_name(trials.assign(session="n/a"), "01") == "task-t_run-01"
