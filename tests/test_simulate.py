"""The simulator writes valid, deterministic BIDS data whose ground truth fits the data."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_m2i.simulate import brain as brain_mod
from bids_m2i.simulate import load_truth, oracle_scores, simulate_dataset, undo_motion
from bids_m2i.simulate.protocol import EVENT_COLUMNS

REPO = Path(__file__).resolve().parents[1]
VALIDATOR = REPO / ".venv" / "bin" / "bids-validator-deno"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return simulate_dataset(tmp_path_factory.mktemp("sim") / "tiny", preset="tiny", seed=0)


def _bold_files(root: Path) -> list[Path]:
    return sorted(root.glob("sub-*/func/*_bold.nii.gz"))


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ layout
def test_tiny_layout_events_and_headers(tiny):
    bolds = _bold_files(tiny)
    names = [p.name for p in bolds]
    assert names == ["sub-01_task-imagery_run-01_bold.nii.gz", "sub-01_task-perception_run-01_bold.nii.gz",
                     "sub-01_task-perception_run-02_bold.nii.gz"]
    for path in bolds:
        image = nib.load(path)
        assert image.get_data_dtype() == np.int16
        assert image.shape[:3] == (16, 16, 10) and 45 <= image.shape[3] <= 100
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert image.header.get_zooms()[3] == pytest.approx(sidecar["RepetitionTime"])
        assert len(sidecar["SliceTiming"]) == 10 and max(sidecar["SliceTiming"]) < sidecar["RepetitionTime"]
        data = np.asarray(image.dataobj, dtype=float)
        assert 800 < np.percentile(data, 95) < 3000  # realistic magnitude baseline

        events = pd.read_csv(str(path).replace("_bold.nii.gz", "_events.tsv"), sep="\t", dtype=str,
                             keep_default_na=False)
        assert list(events.columns) == EVENT_COLUMNS
        for stim_file in events["stim_file"]:
            assert stim_file == "n/a" or (tiny / "stimuli" / stim_file).is_file()
        if "imagery" in path.name:
            cues, imagery = events[events.trial_type == "cue"], events[events.trial_type == "imagery"]
            assert len(cues) == len(imagery) == 8
            # each imagery row follows its cue row and repeats its identity
            for (_, cue), (_, trial) in zip(cues.iterrows(), imagery.iterrows()):
                assert float(cue.onset) < float(trial.onset) and cue.stimulus == trial.stimulus
                assert cue.stim_file == trial.stim_file and cue.cue_text == trial.cue_text
            text = events[events.cue == "text"]
            assert len(text) and (text.stim_file == "n/a").all() and (text.cue_text != "n/a").all()
            assert text.stimulus.str.startswith("nov-").all()
            memory = events[events.cue == "image"]
            assert len(memory) and (memory.cue_text == "n/a").all()
        else:
            assert set(events.trial_type) == {"stimulus"} and (events.cue == "none").all()
    stimuli = pd.read_csv(tiny / "stimuli" / "stimuli.tsv", sep="\t")
    assert {"stimulus", "category", "description", "obj1_shape"} <= set(stimuli.columns)
    assert len(stimuli) == 42 and stimuli["category"].nunique() >= 4
    assert all((tiny / "stimuli" / f"{s}.png").is_file() for s in stimuli.stimulus)


def test_perception_repeats_held_out_images_across_runs(tiny):
    truth = load_truth(tiny)
    perception = truth["design"][truth["design"].task == "perception"]
    test = perception[perception.split == "test"]
    assert test.stimulus.nunique() == 6
    assert (test.groupby("stimulus").run.nunique() == 2).all()  # each repeat in a different run
    assert (perception[perception.split == "train"].groupby("stimulus").size() == 1).all()


@pytest.mark.skipif(not VALIDATOR.exists(), reason="bids-validator-deno not installed")
def test_validator_reports_zero_errors(tiny):
    for folder in (tiny, tiny / "derivatives" / "simulation"):
        run = subprocess.run([str(VALIDATOR), str(folder), "--json"], capture_output=True, text=True,
                             timeout=300)
        issues = json.loads(run.stdout)["issues"]["issues"]
        errors = [i for i in issues if i["severity"] == "error"]
        assert errors == [], errors[:3]


def test_same_seed_is_byte_identical_and_seed_matters(tiny, tmp_path):
    again = simulate_dataset(tmp_path / "again", preset="tiny", seed=0)
    assert _tree_digest(again) == _tree_digest(tiny)
    other = simulate_dataset(tmp_path / "other", preset="tiny", seed=1)
    first = _bold_files(tiny)[1]
    assert first.read_bytes() != (other / first.relative_to(tiny)).read_bytes()


# -------------------------------------------------------------------------------------- ground truth
def _true_design_betas(root: Path, truth: dict, bold_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Regress the true per-voxel design (true HRF, slice times, onsets) on the BOLD of one run."""
    ijk = truth["voxel_ijk"]
    sidecar = json.loads(bold_path.with_name(bold_path.name.replace(".nii.gz", ".json")).read_text())
    tr = sidecar["RepetitionTime"]
    slice_times = np.asarray(sidecar.get("SliceTiming", np.zeros(100)))
    data = np.asarray(nib.load(bold_path).dataobj, dtype=float)[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    entities = dict(p.split("-", 1) for p in bold_path.name.split("_")[:-1])
    design = truth["design"]
    rows = ((design.task == entities["task"]) & (design.run == entities["run"])).to_numpy()
    events = design[rows]
    hrf = {c.removeprefix("hrf_"): truth["voxels"][c].to_numpy() for c in truth["voxels"] if c.startswith("hrf_")}
    kernels = brain_mod.hrf_kernels(hrf)
    n_volumes = data.shape[1]
    n_fine = int(n_volumes * tr / brain_mod.FINE_DT) + 400
    times = np.arange(n_volumes) * tr
    drifts = np.stack([np.cos(np.pi * k * (times + tr / 2) / (n_volumes * tr)) for k in range(4)], axis=1)
    estimates = np.zeros((len(events), len(ijk)))
    for v in range(len(ijk)):
        # unit-amplitude response of each event (peak 1), sampled at this voxel's slice times
        unit = np.eye(len(events))
        response = brain_mod.bold_timecourses(np.repeat(kernels[v:v + 1], len(events), 0), unit, events, n_fine)
        peaks = brain_mod.true_amplitudes(kernels[v:v + 1], np.ones((len(events), 1)),
                                          events["duration"].to_numpy())[:, 0]
        index = np.round((times + slice_times[ijk[v, 2]]) / brain_mod.FINE_DT).astype(int)
        regressors = (response[:, index] / peaks[:, None]).T
        y = 100 * (data[v] / data[v].mean() - 1)
        x = np.concatenate([regressors, drifts], axis=1)
        estimates[:, v] = np.linalg.lstsq(x, y, rcond=None)[0][: len(events)]
    return estimates, truth["betas"][rows]


def test_true_design_recovers_true_amplitudes(tmp_path):
    clean = simulate_dataset(tmp_path / "clean", preset="tiny", seed=3, motion=False, noise=False)
    noisy = simulate_dataset(tmp_path / "noisy", preset="tiny", seed=3, motion=False)
    for root, minimum in ((clean, 0.99), (noisy, 0.3)):
        truth = load_truth(root)
        bold = _bold_files(root)[1]
        estimate, true = _true_design_betas(root, truth, bold)
        r = np.corrcoef(estimate.ravel(), true.ravel())[0, 1]
        assert r > minimum, (root.name, r)
        if root is noisy:
            # a wrong design (events shuffled across voxels' trials) explains far less
            shuffled = np.corrcoef(estimate.ravel(), np.random.default_rng(0).permutation(true).ravel())[0, 1]
            assert shuffled < r - 0.2


def test_undoing_true_motion_restores_motion_free_volumes(tmp_path):
    kwargs = dict(preset="tiny", seed=5, noise=False, slice_timing=False, jerk_mm=2.5, jerk_deg=2.0,
                  jerks_per_minute=3.0)
    moved_root = simulate_dataset(tmp_path / "moved", **kwargs)
    still_root = simulate_dataset(tmp_path / "still", motion=False, **kwargs)
    truth = load_truth(moved_root)
    path = _bold_files(moved_root)[1]
    moved = np.asarray(nib.load(path).dataobj, dtype=float)
    still = np.asarray(nib.load(still_root / path.relative_to(moved_root)).dataobj, dtype=float)
    pose = truth["motion"][("perception", None, "01")].to_numpy()
    assert len(pose) == moved.shape[3]
    assert np.abs(pose[:, :3]).max() > 0.5 and np.abs(pose[:, :3]).max() < 8  # mm: visible but plausible
    assert np.abs(pose[:, 3:]).max() < np.deg2rad(8)
    interior = truth["brain_mask"]
    before, after = [], []
    for n in range(moved.shape[3]):
        restored = undo_motion(moved[..., n], truth["affine"], pose[n])
        before.append(np.sqrt(np.mean((moved[..., n] - still[..., n])[interior] ** 2)))
        after.append(np.sqrt(np.mean((restored - still[..., n])[interior] ** 2)))
    before, after = np.asarray(before), np.asarray(after)
    worst = np.argsort(before)[-10:]
    assert np.mean(after[worst]) < 0.35 * np.mean(before[worst]), (after[worst], before[worst])


def test_hrfs_are_continuous_and_not_canonical(tiny):
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf

    truth = load_truth(tiny)
    hrf = truth["hrf"]
    assert hrf["hrf_peak"].between(4.5, 7.0).all() and hrf["hrf_peak"].std() > 0.3
    assert hrf["hrf_peak"].nunique() == len(hrf)  # a continuous family, no library
    kernels = brain_mod.hrf_kernels({c.removeprefix("hrf_"): hrf[c].to_numpy() for c in hrf})
    glover = glover_hrf(brain_mod.FINE_DT, oversampling=1, time_length=brain_mod.HRF_LENGTH)[: kernels.shape[1]]
    r = np.array([np.corrcoef(k, glover)[0, 1] for k in kernels])
    assert np.mean(r < 0.99) > 0.8


def test_imagery_weaker_than_perception_relatively_more_in_higher_voxels(tiny):
    truth = load_truth(tiny)
    design, betas = truth["design"], truth["betas"]
    roles = truth["voxels"]["role"].to_numpy()
    perception = ((design.role == "trial") & (design.condition == "perception")).to_numpy()
    imagery = ((design.role == "trial") & (design.condition == "imagery")).to_numpy()
    ratio = {}
    for role in ("early", "higher"):
        ratio[role] = np.abs(betas[imagery][:, roles == role]).mean() / np.abs(betas[perception][:, roles == role]).mean()
        assert ratio[role] < 0.8
    assert ratio["higher"] > ratio["early"]
    cues = (design.trial_type == "cue").to_numpy()
    assert np.abs(betas[cues]).mean() > 0.1  # the cue flash evokes its own response


def test_load_truth_matches_files(tiny):
    truth = load_truth(tiny)
    design = truth["design"]
    assert truth["betas"].shape == (len(design), len(truth["voxels"]))
    assert set(truth["voxels"]["role"]) == {"early", "higher"}
    assert truth["roi"][tuple(truth["voxel_ijk"].T)].min() >= 1
    assert truth["brain_mask"][tuple(truth["voxel_ijk"].T)].all()
    for key, motion in truth["motion"].items():
        assert list(motion.columns) == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    sidecar = json.loads(next(tiny.rglob("*_desc-truemotion_timeseries.json")).read_text())
    assert sidecar["trans_x"]["Units"] == "mm" and sidecar["rot_z"]["Units"] == "rad"
    for name, path in truth["target_files"].items():
        assert path.is_file(), name
    novel = [n for n in truth["target_files"] if n.startswith("nov-")]
    assert novel and all("derivatives" in str(truth["target_files"][n]) for n in novel)
    events = pd.read_csv(tiny / "sub-01" / "func" / "sub-01_task-imagery_run-01_events.tsv", sep="\t")
    imagery = design[design.task == "imagery"]
    assert np.allclose(imagery["onset"].to_numpy(), events["onset"].to_numpy())


def test_oracle_beats_chance_more_for_perception(tmp_path):
    root = simulate_dataset(tmp_path / "oracle", preset="tiny", seed=2, motion=False, noise=False, n_train=160,
                            n_test=12, memory_trials=12, text_trials=4, n_early=150, n_higher=100)
    scores = oracle_scores(root, "01")
    assert scores["perception"]["n_items"] == 12 and scores["imagery_memory"]["n_items"] == 12
    assert scores["perception"]["twoway"] > 0.8
    assert scores["perception"]["pixcorr"] > 0.3
    assert scores["perception"]["twoway"] > scores["imagery_memory"]["twoway"]
    assert scores["perception"]["pixcorr"] > scores["imagery_memory"]["pixcorr"]


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_writes_dataset_and_maps_errors(tmp_path, capsys):
    from bids_m2i.simulate.cli import main

    out = tmp_path / "out"
    assert main([str(out), "--preset", "tiny", "--seed", "4", "--runs", "1", "--no-slice-timing"]) == 0
    assert len(_bold_files(out)) == 2  # 1 perception + 1 imagery run
    assert "SliceTiming" not in json.loads(next(out.rglob("*_bold.json")).read_text())
    capsys.readouterr()
    assert main([str(out), "--preset", "tiny"]) == 64
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(out), "--preset", "tiny", "--runs", "1", "--overwrite"]) == 0
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("not a simulation")
    assert main([str(tmp_path / "foreign"), "--preset", "tiny", "--overwrite"]) == 64
    assert (tmp_path / "foreign" / "keep.txt").exists()
    # a real process: usage errors exit 64 with a message and no traceback
    bad = subprocess.run([sys.executable, "-m", "bids_m2i.simulate.cli", str(tmp_path / "x"), "--preset", "huge"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert bad.returncode == 64 and "huge" in bad.stderr and "Traceback" not in bad.stderr


# ----------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_demo_ncsnr_is_nsd_like_and_valid(tmp_path):
    """Calibration: LSA (Glover HRF) betas of the motion-free demo have median ncsnr 0.2-0.5."""
    from bids_m2i.simulate.oracle import lsa_betas_canonical, ncsnr

    root = simulate_dataset(tmp_path / "demo", preset="demo", motion=False)
    truth = load_truth(root)
    ijk = truth["voxel_ijk"]
    betas, labels = [], []
    for path in _bold_files(root):
        if "perception" not in path.name:
            continue
        data = np.asarray(nib.load(path).dataobj, dtype=float)[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        events = pd.read_csv(str(path).replace("_bold.nii.gz", "_events.tsv"), sep="\t")
        betas.append(lsa_betas_canonical(data, events, 2.0))
        labels += list(events["stimulus"])
    value = float(np.median(ncsnr(np.concatenate(betas), np.asarray(labels))))
    assert 0.2 <= value <= 0.5, value


@pytest.mark.slow
@pytest.mark.skipif(not VALIDATOR.exists(), reason="bids-validator-deno not installed")
# nsd-like simulates 2 sessions on an 80 x 80 x 56 grid: 15 minutes were not enough on a loaded 2-core machine
@pytest.mark.parametrize("preset", ["demo", pytest.param("nsd-like", marks=pytest.mark.timeout(3600))])
def test_presets_validate(tmp_path, preset):
    root = simulate_dataset(tmp_path / preset, preset=preset)
    for folder in (root, root / "derivatives" / "simulation"):
        run = subprocess.run([str(VALIDATOR), str(folder), "--json"], capture_output=True, text=True, timeout=900)
        errors = [i for i in json.loads(run.stdout)["issues"]["issues"] if i["severity"] == "error"]
        assert errors == [], errors[:3]
    shutil.rmtree(root)


def test_perception_only_dataset_has_no_imagery_sidecars(tmp_path):
    """imagery_runs=0 (a perception-only dataset for tests) writes no task-imagery_*.json: top-level sidecars
    without any imagery run fail the validator (SIDECAR_WITHOUT_DATAFILE)."""
    root = simulate_dataset(tmp_path / "sim", preset="tiny", seed=0, imagery_runs=0)
    assert not list(root.glob("task-imagery_*")) and list(root.glob("task-perception_bold.json"))
    assert not list(root.rglob("*task-imagery*_bold.nii.gz"))
    from bids_m2i.bids.validation import run_validator, validator_command

    if validator_command() is not None:
        assert run_validator(root).n_errors == 0
