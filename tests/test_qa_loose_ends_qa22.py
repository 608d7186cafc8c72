"""Loose ends of the last review and a robustness pass (issue qa22): one path helper, the stale-index probe
giving its lock back, the "looked at" summary built only when asked for, a BOLD volume without a finite value
(65), fMRIPrep outputs of older versions, events with trailing tabs, sidecar JSON written by hand."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_m2i.cli.run import run_cli
from bids_m2i.errors import BadDataError
from helpers import make_minimal_bids


# ---------------------------------------------------------------------------------------------------------
# one "is this path inside that folder" for the command line, the layout and the runner

def test_is_inside_resolves_links_both_ways(tmp_path):
    from bids_m2i.utils.paths import is_inside

    real = tmp_path / "lustre" / "study"
    (real / "sub-01").mkdir(parents=True)
    link = tmp_path / "study"
    link.symlink_to(real)
    assert is_inside(real / "sub-01", link) and is_inside(link / "sub-01", real)  # a message gives either form
    assert is_inside(link, link) and is_inside(real / "sub-01" / "not-yet", real)
    assert not is_inside(tmp_path, link) and not is_inside(tmp_path / "studyX", link)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert not is_inside(None, real) and not is_inside(b"bytes", real) and not is_inside(loop / "x", real)


def test_the_three_copies_of_the_helper_are_gone():
    import inspect

    import bids_m2i.bids.layout as layout
    import bids_m2i.cli.run as run
    import bids_m2i.cli.runner as runner

    assert not hasattr(layout, "_is_below") and not hasattr(run, "_inside_folder") and not hasattr(runner, "_inside")
    assert "is_inside(" in inspect.getsource(layout.first_unreadable)


# ---------------------------------------------------------------------------------------------------------
# the stale pybids index sweep: a live owner's lock is given back at once

def test_probe_of_a_live_owners_lock_is_released(tmp_path, monkeypatch):
    import bids_m2i.utils.locks as locks
    from bids_m2i.bids.layout import remove_stale_database_dirs

    parent = tmp_path / "pybids_db"
    live = parent / f"{socket.gethostname()}-{os.getpid()}-abc"  # this process: alive, its lock not taken yet
    live.mkdir(parents=True)
    lock = Path(str(live) + ".lock")
    lock.touch()
    past = time.time() - 3600
    os.utime(live, (past, past))
    released = []
    real_release = locks.release
    monkeypatch.setattr(locks, "release", lambda handle: (released.append(handle.name), real_release(handle)))
    assert remove_stale_database_dirs(parent) == []
    assert live.is_dir() and released == [str(lock)]  # unlocked (not only closed) once judged in use
    probe = subprocess.run([sys.executable, "-c", "import fcntl; h = open(%r, 'a+'); "
                            "fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB)" % str(lock)])
    assert probe.returncode == 0  # the owner can take its own lock


# ---------------------------------------------------------------------------------------------------------
# the "No trials found" summary is computed only when the message needs it

def test_looked_at_is_built_lazily_and_right(tmp_path):
    from bids_m2i.bids.events import build_trials_table
    from bids_m2i.bids.inputs import describe_events_looked_at

    files = []
    for run in ("1", "2"):
        path = tmp_path / f"sub-01_task-x_run-{run}_events.tsv"
        path.write_text("onset\tduration\ttrial_type\tstimulus\n2\t1\tstimulus\ta\n6\t1\tfixation\tn/a\n"
                        "10\t1\tstimulus\tb\n")
        files.append((path, {"task": "x", "run": run}))
    table = build_trials_table(files)
    seen = [run["looked_at"] for run in table.attrs["runs"]]
    assert all(item._data is None for item in seen)  # pd.concat's attrs comparison did not compute them
    text = describe_events_looked_at(table.attrs["runs"], tmp_path)
    assert "column 'trial_type': 'stimulus' x2, 'fixation' x1" in text and "3 rows" in text
    assert dict(seen[0]["roles"]) == {"trial": 2, "nuisance": 0, "ignore": 1}


# ---------------------------------------------------------------------------------------------------------
# a BOLD volume without a single finite value

def _save(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(path))
    return path


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_a_volume_of_nan_or_inf_is_65_naming_it(tmp_path, value):
    """Set to 0 and passed on, it gave motion estimates of 80-350 mm and exit 0."""
    from bids_m2i.interfaces.images import load_bold

    data = np.random.default_rng(0).normal(100, 5, (6, 6, 4, 12))
    data[..., 3] = value
    data[..., 9] = value
    path = _save(tmp_path / "sub-01_task-x_bold.nii.gz", data)
    with pytest.raises(BadDataError, match=r"2 of its 12 volumes hold no finite value .*volume\(s\) 3, 9") as caught:
        load_bold(path)
    assert caught.value.exit_code == 65 and path.name in str(caught.value)
    data[..., 3] = 100.0
    data[..., 9] = 100.0
    data[0, 0, 0, :] = value  # NaN/Inf in a few voxels: a warning, as before
    assert np.isfinite(load_bold(_save(path, data))[0]).all()


def test_a_volume_of_zeros_is_65_naming_it(tmp_path):
    """Same failure as a NaN volume set to 0: exit 0 with motion estimates of 350 mm."""
    from bids_m2i.interfaces.images import load_bold

    data = np.random.default_rng(0).normal(100, 5, (6, 6, 4, 12))
    data[..., 7] = 0.0
    path = _save(tmp_path / "sub-01_task-x_bold.nii.gz", data)
    with pytest.raises(BadDataError, match=r"1 of its 12 volumes are all zeros: volume\(s\) 7") as caught:
        load_bold(path)
    assert caught.value.exit_code == 65
    data[:3, ..., 7] = 100.0  # a volume partly zero (a cut field of view) is data
    assert load_bold(_save(path, data))[0].shape == (6, 6, 4, 12)


@pytest.mark.parametrize("value", [True, "NaN", float("nan"), "inf"])
def test_repetition_time_true_or_nan_is_65(tmp_path, capsys, started, value):
    """``true`` was read as 1 s (a misleading "TR mismatch"); "NaN" passed every check and the run ended with
    exit 1 in a figure after preprocessing."""
    bids = make_minimal_bids(tmp_path / "bids")
    sidecar = bids / "task-perception_bold.json"
    sidecar.write_text(json.dumps({"RepetitionTime": value, "TaskName": "perception"}))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "preproc"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert "RepetitionTime of sub-01_task-perception_run-01_bold.nii.gz is not a number of seconds" in err
    assert started == []


# ---------------------------------------------------------------------------------------------------------
# fMRIPrep outputs of other versions

def test_confounds_columns_of_fmriprep_before_1_2_are_read(tmp_path):
    from bids_m2i.interfaces.glm import read_confounds

    path = tmp_path / "sub-01_task-x_desc-confounds_regressors.tsv"
    pd.DataFrame({"X": [0.0, 0.1, 0.2], "RotZ": [0.0] * 3, "FramewiseDisplacement": [np.nan, 0.2, 0.3],
                  "NonSteadyStateOutlier00": [1, 0, 0]}).to_csv(path, sep="\t", index=False, na_rep="n/a")
    table, nonsteady = read_confounds(path)
    assert {"trans_x", "rot_z", "framewise_displacement"} <= set(table.columns)
    assert nonsteady == [0]
    assert table["framewise_displacement"].tolist()[1:] == [0.2, 0.3]


def test_confounds_without_fd_are_warned_about(tiny_dataset, tmp_path, caplog):
    from test_fmriprep_inputs import make_fmriprep_tree

    from bids_m2i.bids.fmriprep import check_fmriprep_run, find_fmriprep_files, index_fmriprep
    from bids_m2i.bids.layout import parse_entities

    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))
    bold = sorted(tiny_dataset.glob("sub-01/func/*_bold.nii.gz"))[0]
    found = find_fmriprep_files(index_fmriprep([tree]), parse_entities(bold), "T1w", bold.name)
    table = pd.read_csv(found["confounds"], sep="\t")
    table.drop(columns=["framewise_displacement"]).to_csv(found["confounds"], sep="\t", index=False)
    with caplog.at_level(logging.WARNING, logger="m2i"):
        check_fmriprep_run(found)
    assert any("has no framewise_displacement column" in r.getMessage() and "fd_mean will be n/a" in r.getMessage()
               for r in caplog.records)


def _legacy_tree(root: Path) -> Path:
    """fMRIPrep 1.0/1.1: no dataset_description.json, ``_bold_space-T1w_preproc`` names."""
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    for name in ("sub-01_task-perception_run-01_bold_space-T1w_preproc.nii.gz",
                 "sub-01_task-perception_run-01_bold_space-T1w_brainmask.nii.gz",
                 "sub-01_task-perception_run-01_bold_confounds.tsv"):
        (func / name).write_bytes(b"")
    return root


def test_fmriprep_before_1_2_says_so(tmp_path, capsys, started):
    bids = make_minimal_bids(tmp_path / "bids")
    tree = _legacy_tree(tmp_path / "fmriprep")
    args = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"), "--skip-bids-validation",
            "--derivatives", str(tree), "--space", "T1w", "--stop-after", "glm"]
    assert run_cli(args) == 66
    err = capsys.readouterr().err
    assert "dataset_description.json is missing" in err and "fMRIPrep before 1.2" in err
    assert "bold_space-T1w_preproc" in err and "--space func" in err
    # with a description added by hand, the files are still not found: the same explanation
    (tree / "dataset_description.json").write_text(json.dumps({"Name": "fMRIPrep", "BIDSVersion": "1.1.1"}))
    assert run_cli(args) == 66
    err = capsys.readouterr().err
    assert "No fMRIPrep preprocessed BOLD" in err and "fMRIPrep before 1.2" in err
    assert started == []


def test_fmriprep_legacy_layout_parent_folder_names_the_subfolder(tmp_path, capsys, started):
    """fMRIPrep before 21.0 wrote OUTPUT_DIR/fmriprep/: giving OUTPUT_DIR is the usual slip."""
    bids = make_minimal_bids(tmp_path / "bids")
    nested = tmp_path / "outputs" / "fmriprep"
    nested.mkdir(parents=True)
    (nested / "dataset_description.json").write_text(json.dumps({"Name": "fMRIPrep", "BIDSVersion": "1.4.0"}))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--derivatives", str(nested.parent), "--stop-after", "glm"])
    err = capsys.readouterr().err
    assert code == 66, err
    assert f"give --derivatives {nested}" in err and started == []


# ---------------------------------------------------------------------------------------------------------
# events with trailing tabs; stimuli.tsv and pure-imagination targets

def test_events_with_trailing_tabs_read_as_without(tmp_path):
    """Two trailing tabs on each line (a spreadsheet export) stopped the run: "duplicate column names"."""
    from bids_m2i.bids.events import read_events

    clean = "onset\tduration\ttrial_type\tstimulus\n2\t1\tstimulus\ta\n6\t1\tstimulus\tb\n"
    plain, tabs, crlf = (tmp_path / f"{n}_events.tsv" for n in ("plain", "tabs", "crlf"))
    plain.write_text(clean)
    tabs.write_text("".join(line + "\t\t\n" for line in clean.splitlines()))
    crlf.write_bytes(("\ufeff" + "".join(line + "\t\r\n" for line in clean.splitlines())).encode())
    for path in (tabs, crlf):
        pd.testing.assert_frame_equal(read_events(path), read_events(plain))


def test_events_unnamed_column_with_values_and_duplicates_are_named(tmp_path):
    from bids_m2i.bids.events import read_events

    path = tmp_path / "x_events.tsv"
    path.write_text("onset\tduration\ttrial_type\t\n2\t1\tstimulus\t\n6\t1\tstimulus\tleft\n")
    with pytest.raises(BadDataError, match=r"column 4 has no name in the header but holds values \(line 3\)"):
        read_events(path)
    path.write_text("onset\tduration\tstim\tstim\n2\t1\ta\tb\n")
    with pytest.raises(BadDataError, match="duplicate column names in the header: 'stim'"):
        read_events(path)


def test_pure_imagination_targets_are_not_missing_stimuli_rows(tmp_path, caplog):
    """The simulator's own datasets warned on every run that stimuli.tsv had no row for nov-0001..."""
    from bids_m2i.bids.events import build_trials_table

    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    (stimuli / "stimuli.tsv").write_text("stimulus\tcategory\na\tcat\nb\tdog\nc\tcow\n")
    path = tmp_path / "sub-01_task-imagery_run-1_events.tsv"
    for name in ("a", "b", "c"):
        (stimuli / f"{name}.png").write_bytes(b"")
    path.write_text("onset\tduration\ttrial_type\tstimulus\tstim_file\tcue\tcue_text\tcategory\n"  # the simulator's
                    "2\t4\timagery\ta\ta.png\timage\tn/a\tn/a\n8\t4\timagery\tb\tb.png\timage\tn/a\tn/a\n"
                    "14\t4\timagery\tnov-0001\tn/a\ttext\ta red disc\tn/a\n")
    with caplog.at_level(logging.WARNING, logger="m2i"):
        table = build_trials_table([(path, {"task": "imagery", "run": "1"})], stimuli_dir=stimuli)
    assert sorted(table.loc[table["role"] == "trial", "stimulus"]) == ["a", "b", "nov-0001"]
    assert not any("has no row for" in r.getMessage() for r in caplog.records)
    # a shown image without its row is still warned about
    path.write_text(path.read_text().replace("\tb\tb.png\t", "\td\td.png\t"))
    (stimuli / "d.png").write_bytes(b"")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="m2i"):
        build_trials_table([(path, {"task": "imagery", "run": "1"})], stimuli_dir=stimuli)
    assert any("has no row for 1 stimulus/stimuli of the trials (d)" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------------
# sidecar JSON written by hand

@pytest.mark.parametrize("text, needle, hint", [
    ('// by hand\n{"RepetitionTime": 2.0, "TaskName": "perception"}', "line 1, column 1", "no comments"),
    ('{"RepetitionTime": 2.0,\n "TaskName": "perception",\n}', "line 3, column 1", "no comma after the last"),
    ('\ufeff{"RepetitionTime": 2.0, "TaskName": "perception"}', "BOM", "without BOM"),
])
def test_sidecar_json_written_by_hand_is_65_with_where_and_why(tmp_path, capsys, started, text, needle, hint):
    bids = make_minimal_bids(tmp_path / "bids")
    sidecar = bids / "task-perception_bold.json"
    sidecar.write_bytes(text.encode("utf-8"))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert f"{sidecar} is not valid JSON" in err and needle in err and hint in err
    assert "BIDSJSONFile" not in err and "Traceback" not in err and started == []


# ---------------------------------------------------------------------------------------------------------
# an empty label selected everything

@pytest.mark.parametrize("option, value", [("--participant-label", ""), ("--participant-label", "sub-"),
                                           ("--session-label", "ses-"), ("--task", "")])
def test_only_empty_labels_are_64_not_all(tmp_path, capsys, started, option, value):
    """`--participant-label "$SUBJECT"` with the variable unset in a job of an array processed every participant
    (exit 0): each such job did the whole dataset."""
    bids = make_minimal_bids(tmp_path / "bids", subjects=("01", "02"))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", option, value])
    err = capsys.readouterr().err
    assert code == 64, err
    assert f"{option} was given only empty labels" in err and started == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
