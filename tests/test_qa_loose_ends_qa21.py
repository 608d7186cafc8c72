"""Loose ends of the command line (issue qa21): messages that say what was looked at, OUTPUT_DIR given as a
file, a failed group run taking back what it wrote, event types
that differ only in case, one try-lock helper, public names across packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids

REPO = Path(__file__).resolve().parents[1]


def _events(bids: Path) -> list[Path]:
    return sorted(bids.rglob("*_events.tsv"))


def test_no_trials_message_names_the_files_values_and_what_to_check(tmp_path, capsys, started):
    bids = make_minimal_bids(tmp_path / "bids", runs=("01", "02"))
    for events in _events(bids):
        events.write_text(events.read_text().replace("\tstimulus\t", "\tfixation\t"))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert "No trials found in the events of sub-01" in err
    # both files, relative to BIDS_DIR; the role column, the values found and the rule's trial values
    for events in _events(bids):
        assert f"sub-01/func/{events.name}" in err
    assert str(bids) + "/sub-01" not in err.split("m2i: error:")[1]
    assert "column 'trial_type': 'fixation' x6" in err and "with a stimulus in column" in err
    assert "events map" in err and "--print-trials" in err
    assert started == []


def test_output_dir_that_is_a_file_is_a_usage_error(minimal_bids, tmp_path, capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("mine")
    for output, work, expected in ((a_file, tmp_path / "work", 64), (tmp_path / "out", a_file, 64),
                                   (a_file / "out", tmp_path / "work", 73)):  # below a file: cannot be created
        code = run_cli([str(minimal_bids), str(output), "participant", "-w", str(work), "--skip-bids-validation"])
        err = capsys.readouterr().err
        assert code == expected, err
        assert "not a folder" in err and str(a_file) in err and "File exists" not in err
    assert a_file.read_text() == "mine"
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()  # refused before writing


def _derivative_only(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "dataset_description.json").write_text(json.dumps({"Name": "mine", "BIDSVersion": "1.10.0",
                                                              "DatasetType": "derivative"}))


def test_failed_group_run_takes_back_what_it_created(minimal_bids, tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    _derivative_only(out)
    description = (out / "dataset_description.json").read_bytes()
    code = run_cli([str(minimal_bids), str(out), "group", "-w", str(work)])
    err = capsys.readouterr().err
    assert code == 66, err
    assert "No participant has finished" in err and "details in" not in err
    assert sorted(p.name for p in out.iterdir()) == ["dataset_description.json"]  # no logs/, .bidsignore
    assert (out / "dataset_description.json").read_bytes() == description         # not rewritten
    assert not work.exists()


def test_failed_group_run_keeps_what_existed(minimal_bids, tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    _derivative_only(out)
    (out / "logs").mkdir()
    (out / "logs" / "m2i-participant-old.log").write_text("an earlier run")
    (out / "group").mkdir()
    (out / "group" / "notes.txt").write_text("mine")
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    assert run_cli([str(minimal_bids), str(out), "group", "-w", str(work)]) == 66
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["m2i-participant-old.log"]
    assert (out / "group" / "notes.txt").read_text() == "mine" and (work / "keep.txt").read_text() == "mine"


def test_unexpected_group_failure_keeps_its_log(minimal_bids, tmp_path, capsys, monkeypatch):
    import bids_m2i.workflows.group as group

    out = tmp_path / "out"
    _derivative_only(out)

    def boom(config):
        (out / "group").mkdir()
        (out / "group" / "desc-metrics_table.tsv").write_text("half")
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(group, "run_group_level", boom)
    assert run_cli([str(minimal_bids), str(out), "group", "-w", str(tmp_path / "work")]) == 1
    logs = list((out / "logs").glob("m2i-group-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text()  # what to report
    assert not (out / "group").exists() and not list((out / "logs").glob("config-*.toml"))


def test_event_types_differing_in_case_are_one_nuisance_regressor(tmp_path):
    """Roles match codes whatever their case, and the GLM makes one regressor per event type: ``Cue`` and ``cue``
    (and ``1`` / ``1.0``) were two regressors. One spelling each: the rule's, else lower case / plain number."""
    from bids_m2i.bids.events import build_trials_table, load_events_map

    mapping = tmp_path / "map.toml"
    mapping.write_text('[task.x]\nrole_column = "kind"\ntrial = ["pic"]\nnuisance = ["cue", "2"]\n'
                       'stimulus_column = "stim"\n')
    rows = ["onset\tduration\tkind\tstim", "0\t1\tCue\tn/a", "2\t1\tPIC\ta", "4\t1\tcue\tn/a",
            "6\t1\t2.0\tn/a", "8\t1\t2\tn/a", "10\t1\tpic\tb"]
    first, second = tmp_path / "sub-01_task-x_run-1_events.tsv", tmp_path / "sub-01_task-x_run-2_events.tsv"
    first.write_text("\n".join(rows) + "\n")
    second.write_text("\n".join(rows).replace("Cue", "CUE") + "\n")
    trials = build_trials_table([(first, {"task": "x", "run": "1"}), (second, {"task": "x", "run": "2"})],
                                events_map=load_events_map(mapping))
    nuisance = trials[trials["role"] == "nuisance"]
    assert sorted(set(nuisance["event_type"])) == ["2", "cue"]
    assert set(trials.loc[trials["role"] == "trial", "event_type"]) == {"pic"}


def test_try_lock_helper(tmp_path):
    """One try-lock idiom for the work-dir, participant and pybids-database locks: held, busy for another
    process, released; a file that cannot be opened gives no lock (None), not an error."""
    from bids_m2i.utils.locks import LockBusy, release, try_lock

    path = tmp_path / "x.lock"
    handle = try_lock(path)
    assert handle is not None
    probe = [sys.executable, "-c", "import sys; from bids_m2i.utils.locks import try_lock, LockBusy\n"
             "try:\n    h = try_lock(sys.argv[1])\nexcept LockBusy:\n    sys.exit(3)\nsys.exit(0 if h else 4)",
             str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run(probe, env=env).returncode == 3  # held here: busy there
    release(handle)
    assert subprocess.run(probe, env=env).returncode == 0
    assert try_lock(tmp_path / "no" / "such" / "folder.lock") is None
    shared = try_lock(path, shared=True)
    with pytest.raises(LockBusy):  # an exclusive lock next to a shared one of another open file
        try_lock(path)
    release(shared)


def test_runner_and_layout_use_the_one_lock_helper():
    import inspect

    import bids_m2i.bids.layout as layout
    import bids_m2i.cli.runner as runner

    for module, names in ((runner, ("lock_work_dir", "participants_locked")),
                          (layout, ("process_database_dir", "remove_stale_database_dirs"))):
        for name in names:
            source = inspect.getsource(getattr(module, name))
            assert "try_lock(" in source and "LOCK_NB" not in source, name


def test_names_used_across_packages_are_public():
    import ast

    offenders = []
    for path in (REPO / "bids_m2i").rglob("*.py"):
        package = path.relative_to(REPO / "bids_m2i").parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                target = node.module.split(".")[0] if node.level == 2 else package
                if target != package:
                    offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                                  if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


def test_constant_bold_run_is_65(tmp_path):
    """A run whose every voxel keeps one value (a placeholder, a volume copied over the run) passed as data:
    exit 0 after a registration "cost inf" warning and a GLM on nothing. Now 65, naming the file."""
    import nibabel as nib
    import numpy as np

    from bids_m2i.errors import BadDataError
    from bids_m2i.interfaces.images import load_bold

    path = tmp_path / "sub-01_task-x_bold.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 3, 10), 100.0, np.float32), np.eye(4)), str(path))
    with pytest.raises(BadDataError, match="holds no signal") as caught:
        load_bold(path)
    assert caught.value.exit_code == 65 and path.name in str(caught.value)
    data = np.full((4, 4, 3, 10), 100.0, np.float32)
    data[1, 1, 1, 4] = 101.0  # one change anywhere: a run
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    assert load_bold(path)[0].shape == (4, 4, 3, 10)


@pytest.mark.parametrize("damage, needle", [("fd_text", "'framewise_displacement' holds 'abc' on line 3"),
                                            ("bold_3d", "is not a 4-D time series")])
def test_fmriprep_text_confounds_and_3d_bold_are_65_before_any_step(tiny_dataset, tmp_path, capsys, started,
                                                                     damage, needle):
    """Text in the FD column ended the GLM step with exit 1 ("could not convert string to float"); a 3-D
    preprocessed BOLD was reported as a confounds table with "40 rows for the 1 volumes"."""
    import nibabel as nib
    import numpy as np
    import pandas as pd
    from test_fmriprep_inputs import make_fmriprep_tree

    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))
    confounds = sorted(tree.rglob("*_desc-confounds_timeseries.tsv"))[0]
    bold = sorted(tree.rglob("*_desc-preproc_bold.nii.gz"))[0]
    if damage == "fd_text":
        table = pd.read_csv(confounds, sep="\t")
        table["framewise_displacement"] = table["framewise_displacement"].astype(object)
        table.loc[1, "framewise_displacement"] = "abc"
        table.to_csv(confounds, sep="\t", index=False, na_rep="n/a")
    else:
        img = nib.load(bold)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), str(bold))
    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--derivatives", str(tree), "--space", "T1w", "--skip-bids-validation", "--stop-after", "glm"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert needle in err and "Traceback" not in err
    assert started == []


def test_trials_sharing_an_onset_are_warned_about(tmp_path, caplog):
    import logging

    from bids_m2i.bids.events import check_events_within_run, events_to_trials

    path = tmp_path / "sub-01_task-x_run-1_events.tsv"
    path.write_text("onset\tduration\ttrial_type\tstimulus\n2\t1\tstimulus\ta\n6\t1\tstimulus\tb\n"
                    "6\t1\tstimulus\tb\n10\t1\tstimulus\tc\n")
    trials = events_to_trials(path, task="x")
    with caplog.at_level(logging.WARNING, logger="m2i"):
        kept = check_events_within_run(trials, n_volumes=20, tr=2.0, path=path)
    assert len(kept) == 4  # kept: a warning, not a refusal
    assert any("2 trial(s) share their onset" in r.getMessage() and path.name in r.getMessage()
               for r in caplog.records)


def test_dataset_without_runs_says_so_not_the_filters(tmp_path, capsys, started):
    import shutil

    bids = make_minimal_bids(tmp_path / "bids")
    shutil.rmtree(bids / "sub-01")
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 18, err
    assert "BIDS_DIR holds no BOLD runs" in err and "The filters select" not in err


def test_stimuli_table_missing_a_row_is_warned_about(tmp_path, caplog):
    import logging

    from bids_m2i.bids.events import build_trials_table

    stimuli = tmp_path / "stimuli"
    stimuli.mkdir()
    (stimuli / "stimuli.tsv").write_text("stimulus\tcategory\na\tcat\nb\tdog\nc\tcow\n")
    path = tmp_path / "sub-01_task-x_run-1_events.tsv"
    path.write_text("onset\tduration\ttrial_type\tstimulus_name\n2\t1\tstimulus\ta\n6\t1\tstimulus\tb\n"
                    "10\t1\tstimulus\tc\n14\t1\tstimulus\td\n")
    with caplog.at_level(logging.WARNING, logger="m2i"):
        build_trials_table([(path, {"task": "x", "run": "1"})], stimuli_dir=stimuli)
    assert any("stimuli.tsv has no row for 1 stimulus/stimuli of the trials (d)" in r.getMessage()
               for r in caplog.records)
