"""fMRIPrep output trees as real versions and real labs lay them out (QA pass 36).

* fMRIPrep 23+ writes the series on each run's own BOLD grid (output space ``func``) without a ``space-``
  entity: with only those, ``--space T1w`` listed a space "(none)" and advised ``--space with one of: (none)
  (any of them works)``, a value that does not exist for a grid that is not common to the runs.
* DataLad clones: a ``dataset_description.json`` present as a dangling annex link was reported as "missing";
  a preprocessed BOLD's sidecar not fetched was silently replaced by fMRIPrep's default slice-timing reference.
* A preprocessed BOLD's sidecar whose ``RepetitionTime`` is not the raw run's went through without a word
  (only the NIfTI header's TR was compared).
* A session folder that is a symbolic link (a tree assembled from per-session fMRIPrep runs) was not indexed
  ("No fMRIPrep preprocessed BOLD ... run fMRIPrep on this participant first").
* The raw dataset given as ``--derivatives`` was told to "run fMRIPrep on this participant first".
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bids_m2i.bids.fmriprep import find_fmriprep_files, index_fmriprep
from bids_m2i.cli.run import run_cli
from bids_m2i.errors import InputMissingError
from test_fmriprep_inputs import make_fmriprep_tree


def _run(bids: Path, tmp_path: Path, derivatives: Path, *extra: str) -> int:
    return run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--derivatives", str(derivatives), "--skip-bids-validation", "--nprocs", "1",
                    "--stop-after", "glm", *extra])


def _annex(path: Path, fetched: bool) -> None:
    """``path`` as git-annex keeps it: a link into .git/annex/objects, dangling while the content is not fetched."""
    root = next(p for p in path.parents if (p / "dataset_description.json").exists()
                or (p / "dataset_description.json").is_symlink())
    key = root / ".git" / "annex" / "objects" / "Xk" / "12" / path.name / path.name
    key.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, key)
    os.symlink(os.path.relpath(key, path.parent), path)
    if not fetched:
        key.unlink()


def test_native_only_outputs_are_not_offered_as_a_space(tiny_dataset, tmp_path, capsys, started):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))
    for path in tree.rglob("*_space-T1w_desc-*.nii.gz"):  # fMRIPrep 23+ --output-spaces func
        path.rename(path.with_name(path.name.replace("_space-T1w", "")))
    assert _run(tiny_dataset, tmp_path, tree, "--space", "T1w") == 66
    err = capsys.readouterr().err
    assert "(none)" not in err, err
    assert "own BOLD grid" in err and "--output-spaces T1w" in err and "--space func" in err
    assert started == []


def test_native_outputs_beside_a_template_suggest_the_template_only(tiny_dataset, tmp_path, capsys, started):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w", "MNI152NLin2009cAsym"))
    for path in tree.rglob("*_space-T1w_desc-*.nii.gz"):
        path.rename(path.with_name(path.name.replace("_space-T1w", "")))
    assert _run(tiny_dataset, tmp_path, tree, "--space", "T1w") == 66
    err = capsys.readouterr().err
    assert "use --space with one of: MNI152NLin2009cAsym (" in err and "(none)" not in err, err


def test_unfetched_dataset_description_says_datalad_get(tiny_dataset, tmp_path, capsys, started):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))
    _annex(tree / "dataset_description.json", fetched=False)
    assert _run(tiny_dataset, tmp_path, tree) == 66
    err = capsys.readouterr().err
    assert "is missing" not in err, err
    assert "datalad get dataset_description.json" in err
    assert started == []


def test_unfetched_bold_sidecar_says_datalad_get(tiny_dataset, tmp_path, capsys, started):
    """The sidecar holds StartTime (fMRIPrep's slice-timing reference): not fetched, it was silently guessed."""
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))
    for bold in tree.rglob("*_space-T1w_desc-preproc_bold.nii.gz"):
        sidecar = bold.with_name(bold.name.replace(".nii.gz", ".json"))
        sidecar.write_text(json.dumps({"RepetitionTime": 2.0, "SliceTimingCorrected": True, "StartTime": 0.0}))
        _annex(sidecar, fetched=False)
    assert _run(tiny_dataset, tmp_path, tree) == 66
    err = capsys.readouterr().err
    assert "_space-T1w_desc-preproc_bold.json" in err and "datalad get" in err, err
    assert started == []


def test_fetched_annexed_files_run(tiny_dataset, tmp_path, started):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))
    for path in [*tree.rglob("*.nii.gz"), *tree.rglob("*.tsv")]:
        _annex(path, fetched=True)
    assert _run(tiny_dataset, tmp_path, tree) == 0
    assert started == [True]


def test_sidecar_tr_other_than_the_raw_runs_is_65(tiny_dataset, tmp_path, capsys, started):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))
    bold = sorted(tree.rglob("*task-perception_run-1_space-T1w_desc-preproc_bold.nii.gz"))[0]
    sidecar = bold.with_name(bold.name.replace(".nii.gz", ".json"))
    sidecar.write_text(json.dumps({"RepetitionTime": 1.5, "SliceTimingCorrected": False}))
    assert _run(tiny_dataset, tmp_path, tree) == 65
    err = capsys.readouterr().err
    assert sidecar.name in err and "1.5 s" in err and "Traceback" not in err, err
    assert started == []
    sidecar.write_text(json.dumps({"RepetitionTime": 2.0, "SliceTimingCorrected": False}))  # the raw run's TR
    assert _run(tiny_dataset, tmp_path, tree) == 0


def test_symlinked_session_folder_is_indexed(tmp_path):
    elsewhere = tmp_path / "fmriprep_ses-2" / "sub-01" / "ses-2" / "func"
    elsewhere.mkdir(parents=True)
    stem = "sub-01_ses-2_task-perception_run-1"
    for kind in ("space-T1w_desc-preproc_bold.nii.gz", "space-T1w_desc-brain_mask.nii.gz",
                 "desc-confounds_timeseries.tsv"):
        (elsewhere / f"{stem}_{kind}").write_bytes(b"")
    tree = tmp_path / "fmriprep"
    (tree / "sub-01").mkdir(parents=True)
    (tree / "dataset_description.json").write_text(json.dumps({"Name": "fMRIPrep", "DatasetType": "derivative"}))
    os.symlink(elsewhere.parent, tree / "sub-01" / "ses-2")
    raw = {"subject": "01", "session": "2", "task": "perception", "run": "01"}
    found = find_fmriprep_files(index_fmriprep([tree]), raw, "T1w", "sub-01_ses-2_task-perception_run-01_bold.nii.gz")
    assert found["bold"].name == f"{stem}_space-T1w_desc-preproc_bold.nii.gz"


def test_raw_dataset_given_as_derivatives_says_so(tiny_dataset, tmp_path, capsys, started):
    assert _run(tiny_dataset, tmp_path, tiny_dataset) == 66
    err = capsys.readouterr().err
    assert "is a raw BIDS dataset" in err and "run fMRIPrep on this participant first" not in err, err
    assert started == []


def test_raw_dataset_hint_names_its_fmriprep_folder(tmp_path):
    raw = tmp_path / "bids"
    (raw / "sub-01" / "func").mkdir(parents=True)
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "x", "DatasetType": "raw"}))
    (raw / "derivatives" / "fmriprep").mkdir(parents=True)
    (raw / "derivatives" / "fmriprep" / "dataset_description.json").write_text("{}")
    with pytest.raises(InputMissingError) as info:
        find_fmriprep_files(index_fmriprep([raw]), {"subject": "01", "task": "x"}, "T1w", "sub-01_task-x_bold.nii.gz")
    assert str(raw / "derivatives" / "fmriprep") in info.value.hint


def test_new_confounds_table_before_an_older_fmripreps(tmp_path):
    """fMRIPrep >= 20.2 rerun into an older version's OUTPUT_DIR: the old _regressors.tsv stays beside the new
    _timeseries.tsv, and was the one read (first in name order)."""
    func = tmp_path / "fmriprep" / "sub-01" / "func"
    func.mkdir(parents=True)
    (tmp_path / "fmriprep" / "dataset_description.json").write_text(json.dumps({"DatasetType": "derivative"}))
    stem = "sub-01_task-perception_run-1"
    for kind in ("space-T1w_desc-preproc_bold.nii.gz", "space-T1w_desc-brain_mask.nii.gz",
                 "desc-confounds_regressors.tsv", "desc-confounds_timeseries.tsv"):
        (func / f"{stem}_{kind}").write_bytes(b"")
    raw = {"subject": "01", "task": "perception", "run": "01"}
    found = find_fmriprep_files(index_fmriprep([tmp_path / "fmriprep"]), raw, "T1w", "run")
    assert found["confounds"].name == f"{stem}_desc-confounds_timeseries.tsv"


def test_mask_and_confounds_from_the_folder_of_the_bold(tmp_path):
    """Two --derivatives folders (two fMRIPrep runs): the mask and confounds of the BOLD's own folder."""
    stem = "sub-01_task-perception_run-1"
    folders = []
    for name, kinds in (("a", ("space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz", "space-T1w_desc-brain_mask.nii.gz",
                               "desc-confounds_timeseries.tsv")),
                        ("b", ("space-T1w_desc-preproc_bold.nii.gz", "space-T1w_desc-brain_mask.nii.gz",
                               "desc-confounds_timeseries.tsv"))):
        func = tmp_path / name / "sub-01" / "func"
        func.mkdir(parents=True)
        (tmp_path / name / "dataset_description.json").write_text(json.dumps({"DatasetType": "derivative"}))
        for kind in kinds:
            (func / f"{stem}_{kind}").write_bytes(b"")
        folders.append(tmp_path / name)
    raw = {"subject": "01", "task": "perception", "run": "01"}
    found = find_fmriprep_files(index_fmriprep(folders), raw, "T1w", "run")
    assert found["bold"].parent == folders[1] / "sub-01" / "func"
    assert found["mask"].parent == found["bold"].parent and found["confounds"].parent == found["bold"].parent


@pytest.mark.parametrize("raw_rec, expected", [(None, "sub-01_task-perception_run-1_space-T1w"),
                                               ("NORDIC", "sub-01_task-perception_rec-NORDIC_run-1_space-T1w")])
def test_another_reconstruction_is_not_the_runs(tmp_path, raw_rec, expected):
    """Raw runs kept in two reconstructions (the original and rec-NORDIC): each gets its own fMRIPrep files."""
    func = tmp_path / "fmriprep" / "sub-01" / "func"
    func.mkdir(parents=True)
    (tmp_path / "fmriprep" / "dataset_description.json").write_text(json.dumps({"DatasetType": "derivative"}))
    for stem in ("sub-01_task-perception_run-1", "sub-01_task-perception_rec-NORDIC_run-1"):
        for kind in ("space-T1w_desc-preproc_bold.nii.gz", "space-T1w_desc-brain_mask.nii.gz",
                     "desc-confounds_timeseries.tsv"):
            (func / f"{stem}_{kind}").write_bytes(b"")
    raw = {"subject": "01", "task": "perception", "run": "01", **({"reconstruction": raw_rec} if raw_rec else {})}
    found = find_fmriprep_files(index_fmriprep([tmp_path / "fmriprep"]), raw, "T1w", "run")
    assert found["bold"].name == f"{expected}_desc-preproc_bold.nii.gz"
    assert found["mask"].name == f"{expected}_desc-brain_mask.nii.gz"
    assert found["confounds"].name == expected.replace("_space-T1w", "") + "_desc-confounds_timeseries.tsv"


def test_a_derivative_without_rec_still_serves_a_raw_run_with_it(tmp_path):
    func = tmp_path / "fmriprep" / "sub-01" / "func"
    func.mkdir(parents=True)
    (tmp_path / "fmriprep" / "dataset_description.json").write_text(json.dumps({"DatasetType": "derivative"}))
    for kind in ("space-T1w_desc-preproc_bold.nii.gz", "space-T1w_desc-brain_mask.nii.gz",
                 "desc-confounds_timeseries.tsv"):
        (func / f"sub-01_task-perception_run-1_{kind}").write_bytes(b"")
    raw = {"subject": "01", "task": "perception", "run": "01", "reconstruction": "NORDIC"}
    assert find_fmriprep_files(index_fmriprep([tmp_path / "fmriprep"]), raw, "T1w", "run")["bold"].exists()


def _tree_of(tmp_path: Path, stems: list[str]) -> Path:
    tree = tmp_path / "fmriprep"
    tree.mkdir()
    (tree / "dataset_description.json").write_text(json.dumps({"DatasetType": "derivative"}))
    for stem in stems:
        func = tree / "sub-01" / (f"ses-{stem.split('_ses-')[1].split('_')[0]}" if "_ses-" in stem else "") / "func"
        func.mkdir(parents=True, exist_ok=True)
        for kind in ("space-T1w_desc-preproc_bold.nii.gz", "space-T1w_desc-brain_mask.nii.gz",
                     "desc-confounds_timeseries.tsv"):
            (func / f"{stem}_{kind}").write_bytes(b"")
    return tree


def test_a_session_fmriprep_did_not_process_names_those_it_did(tmp_path):
    """fMRIPrep run on session 1 only: 'run fMRIPrep on this participant first' sent users to redo what they had."""
    tree = _tree_of(tmp_path, ["sub-01_ses-1_task-perception_run-1"])
    raw = {"subject": "01", "session": "2", "task": "perception", "run": "01"}
    with pytest.raises(InputMissingError) as info:
        find_fmriprep_files(index_fmriprep([tree]), raw, "T1w", "sub-01_ses-2_task-perception_run-01_bold.nii.gz")
    assert "run fMRIPrep on this participant first" not in info.value.hint, info.value.hint
    assert "--session-label 1" in info.value.hint


def test_a_run_fmriprep_did_not_process_says_the_others_are_there(tmp_path):
    tree = _tree_of(tmp_path, ["sub-01_task-perception_run-1"])
    raw = {"subject": "01", "task": "perception", "run": "02"}
    with pytest.raises(InputMissingError) as info:
        find_fmriprep_files(index_fmriprep([tree]), raw, "T1w", "sub-01_task-perception_run-02_bold.nii.gz")
    assert "hold other runs but not this one" in info.value.hint, info.value.hint


def test_one_folder_given_twice_is_read_once(tiny_dataset, tmp_path, caplog, started):
    """--derivatives DIR --derivatives DIR/: every run warned 'Several fMRIPrep BOLD files ... (T1w, T1w); choose
    with --space T1w'."""
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))
    with caplog.at_level("WARNING", logger="m2i"):
        assert _run(tiny_dataset, tmp_path, tree, "--derivatives", f"{tree}/") == 0
    assert not [r for r in caplog.records if "Several" in r.getMessage()], caplog.text


def test_one_run_in_two_folders_does_not_advise_space(tmp_path, caplog):
    stem = "sub-01_task-perception_run-1"
    folders = []
    for name in ("a", "b"):
        func = tmp_path / name / "sub-01" / "func"
        func.mkdir(parents=True)
        (tmp_path / name / "dataset_description.json").write_text(json.dumps({"DatasetType": "derivative"}))
        for kind in ("space-T1w_desc-preproc_bold.nii.gz", "space-T1w_desc-brain_mask.nii.gz",
                     "desc-confounds_timeseries.tsv"):
            (func / f"{stem}_{kind}").write_bytes(b"")
        folders.append(tmp_path / name)
    raw = {"subject": "01", "task": "perception", "run": "01"}
    with caplog.at_level("WARNING", logger="m2i"):
        found = find_fmriprep_files(index_fmriprep(folders), raw, "T1w", "run")
    assert found["bold"].parent == folders[0] / "sub-01" / "func"
    assert "choose with --space" not in caplog.text, caplog.text
    assert "several --derivatives folders hold the run" in caplog.text, caplog.text


@pytest.mark.parametrize("where", ["output", "output_inside", "work"])
def test_outputs_into_the_fmriprep_folder_are_64_and_write_nothing(tiny_dataset, tmp_path, capsys, started, where):
    """OUTPUT_DIR = the --derivatives folder replaced fMRIPrep's dataset_description.json by m2i's (exit 0)."""
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))
    before = sorted((p.relative_to(tree), p.read_bytes() if p.is_file() else b"") for p in tree.rglob("*"))
    out = {"output": tree, "output_inside": tree / "m2i"}.get(where, tmp_path / "out")
    work = tree / "work" if where == "work" else tmp_path / "work"
    code = run_cli([str(tiny_dataset), str(out), "participant", "-w", str(work), "--derivatives", str(tree),
                    "--skip-bids-validation", "--stop-after", "glm"])
    err = capsys.readouterr().err
    assert code == 64, err
    assert "fMRIPrep's outputs are never modified" in err
    assert sorted((p.relative_to(tree), p.read_bytes() if p.is_file() else b"") for p in tree.rglob("*")) == before
    assert started == []
