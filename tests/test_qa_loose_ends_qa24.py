"""Bad inputs of real datasets, 24th pass (issue qa24): what pybids read from folders above BIDS_DIR, labels as
a shell completes them, BOLD voxels that are not intensities, stimulus names in another Unicode form or letter
case, sidecars that are JSON but not an object or name a key twice, events in milliseconds or on the scanner's
clock, events written by R, unfetched DataLad content (fMRIPrep outputs, a stimuli subdataset), settings files
saved by Windows editors. Every case is a row of docs/troubleshooting.md ("Bad inputs we test").

- A dataset kept in ``/data/task-memory/bids`` (or staged by a job script in ``$TMPDIR/study_ses-pilot/``):
  pybids 0.22 matched its entity patterns on the absolute path, so every file got ``task-memory`` (``session
  pilot``). ``--task perception`` stopped with 18 "Task(s) perception not found; tasks present: memory", and
  ``--session-label pilot`` selected a dataset that has no sessions. Now entities come from the path below
  BIDS_DIR only.
- ``--participant-label sub-01/`` (``sub-<TAB>`` in the dataset folder) gave 18 and made a folder
  ``OUTPUT_DIR/logs/m2i-participant-<time>_sub-01/`` holding a file ``.log``. Now the slash is dropped; a label
  that is no BIDS label (``0*``, ``SUB-01``, ``01/anat``) is 64 naming it, before anything is written.
- A complex-valued BOLD image was cast to its real part (a ComplexWarning in the log) and the run ended with 0;
  an RGB one stopped the first step with "the file is probably truncated"; one with a zero-sized axis passed the
  start-up check and failed in the first step with "shape (0,)". Now each is 65 at start-up naming the file.
- Stimulus files copied from macOS have decomposed accents (NFD), events typed elsewhere composed ones (NFC):
  the run stopped with 66 listing ``café-0.png`` as missing from a folder that shows ``café-0.png``. Now the
  file is found. Names that differ in letter case only (``IMG-0.png`` for ``img-0.png``) stay 66, and the
  message now says which file differs only in case.
- A sidecar holding a JSON list, string or null: 65 "Cannot index the BIDS dataset: dictionary update sequence
  element #0 has length 1; 2 is required", naming no file. Now the message names the file. A sidecar giving
  RepetitionTime twice with different values was read with the last one, silently; now 65 (a warning for keys
  m2i does not compute with).
- Events whose every trial starts after the end of the run (onsets in ms, or on the scanner's clock): 65 "No
  trials found ... check the trial_type values"; now 65 naming the likely cause. ``1_4`` was read as 14.
- Events saved by R's ``write.table`` (quoted header and text): 65 "no 'onset' column"; now read as unquoted.
- Unfetched fMRIPrep outputs: 65 "rerun fMRIPrep" (BOLD) or exit 1 FileNotFoundError (confounds); now 66 with the
  ``datalad get`` command, as for the raw files. An uninstalled ``stimuli`` subdataset is named as such.
- ``--config`` / ``--events-map`` / ``--bids-filter-file`` in UTF-16 or given as a folder: exit 1; a BOM: 64
  "Invalid statement". Now read (BOM, UTF-16) or 64 "is a folder". ``"subject": "sub-01"`` in a filter file is
  named in the 18.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids

STEM = "sub-01/func/sub-01_task-perception_run-01"


def _run(bids: Path, tmp_path: Path, *extra: str) -> int:
    return run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm", *extra])


@pytest.fixture
def captured(monkeypatch):
    """The participants' inputs the workflows would get (nothing is run)."""
    import bids_m2i.workflows.base as base

    seen = []
    monkeypatch.setattr(base, "run_participant_workflows", lambda config, inputs, work_dir: seen.append(inputs))
    return seen


# ---------------------------------------------------------------------------------------------------------
# entities are read below BIDS_DIR, never from the folders above it

@pytest.mark.parametrize("parent", ["task-memory", "study_ses-pilot", "data_run-2_acq-old"])
def test_folders_above_the_dataset_give_no_entities(tmp_path, captured, capsys, parent):
    from bids_m2i.bids.layout import index_dataset

    bids = make_minimal_bids(tmp_path / parent / "bids")
    layout = index_dataset(bids, None)
    assert layout.get_tasks() == ["perception"] and layout.get_sessions() == [] and layout.get_subjects() == ["01"]
    bold = layout.get(suffix="bold", extension=".nii.gz")
    assert len(bold) == 1 and "acquisition" not in bold[0].entities and bold[0].entities["run"] == 1
    assert layout.get_metadata(bold[0].path)["RepetitionTime"] == 2.0  # the top-level sidecar still applies

    assert _run(bids, tmp_path, "--task", "perception") == 0, capsys.readouterr().err
    (runs,) = [inputs["01"].runs for inputs in captured]
    assert [(r.bold.task, r.bold.session, r.bold.run) for r in runs] == [("perception", None, "01")]


def test_a_session_named_only_by_a_folder_above_is_not_selectable(tmp_path, captured, capsys):
    bids = make_minimal_bids(tmp_path / "study_ses-pilot" / "bids")
    assert _run(bids, tmp_path, "--session-label", "pilot") == 18
    err = capsys.readouterr().err
    assert "Session(s) pilot not found" in err and "sessions present: none" in err and captured == []


# ---------------------------------------------------------------------------------------------------------
# participant (session, task) labels

def test_a_label_completed_by_the_shell_is_the_participant(tmp_path, captured, capsys):
    bids = make_minimal_bids(tmp_path / "bids", subjects=("01", "02"))
    assert _run(bids, tmp_path, "--participant-label", "sub-01/", "--task", "task-perception/") == 0
    assert [sorted(inputs) for inputs in captured] == [["01"]]
    logs = tmp_path / "out" / "logs"
    assert all(p.is_file() for p in logs.iterdir()), sorted(logs.iterdir())  # no folder made from the label
    assert any(p.name.endswith("_sub-01.log") for p in logs.iterdir())


@pytest.mark.parametrize("option, value", [("--participant-label", "0*"), ("--participant-label", "SUB-01"),
                                           ("--participant-label", "01/anat"), ("--session-label", "a b"),
                                           ("--task", "perception.")])
def test_a_value_that_is_no_bids_label_is_64_before_anything_is_written(tmp_path, captured, capsys, option, value):
    bids = make_minimal_bids(tmp_path / "bids")
    assert _run(bids, tmp_path, option, value) == 64
    err = capsys.readouterr().err
    assert f"{option} {value!r}: not a BIDS label" in err and "Traceback" not in err
    assert captured == [] and not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


# ---------------------------------------------------------------------------------------------------------
# BOLD voxels that are not intensities, an axis of size 0

def _bold(bids: Path, data: np.ndarray) -> Path:
    path = bids / f"{STEM}_bold.nii.gz"
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("kind, expected", [
    ("complex", "holds complex values (complex64), not a magnitude image"),
    ("rgb", "voxels (RGB or another non-numeric type), not intensities"),
    ("empty axis", "is not a 4-D time series (shape (6, 0, 4, 40))"),
])
def test_bold_voxels_that_are_no_intensities_are_65_at_start_up(tmp_path, captured, capsys, kind, expected):
    bids = make_minimal_bids(tmp_path / "bids")
    magnitude = 1000 + 10 * np.random.default_rng(0).standard_normal((6, 6, 4, 40))
    data = {"complex": magnitude.astype(np.complex64),
            "rgb": np.zeros((6, 6, 4, 40), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]),
            "empty axis": np.zeros((6, 0, 4, 40), np.float32)}[kind]
    path = _bold(bids, data)
    assert _run(bids, tmp_path) == 65
    err = capsys.readouterr().err
    assert str(path) in err and expected in err and "truncated" not in err and "Traceback" not in err
    assert captured == []  # before any step (complex: was exit 0 with the real part)


# ---------------------------------------------------------------------------------------------------------
# stimulus file names: Unicode normal forms and letter case

def _with_images(bids: Path, in_events: list[str], on_disk: list[str]) -> None:
    (bids / "stimuli").mkdir()
    for name in on_disk:
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(bids / "stimuli" / name, format="PNG")
    rows = ["onset\tduration\ttrial_type\tstim_file"] + [f"{4 + 10 * i}\t3\tstimulus\t{name}"
                                                       for i, name in enumerate(in_events)]
    (bids / f"{STEM}_events.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_stimulus_names_in_another_unicode_form_are_found(tmp_path, captured, capsys):
    bids = make_minimal_bids(tmp_path / "bids")
    names = [f"café-{i}.png" for i in range(6)]
    _with_images(bids, [unicodedata.normalize("NFC", n) for n in names],
                 [unicodedata.normalize("NFD", n) for n in names])
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])  # decoding requested: the start-up check looks for every image
    assert code == 0, capsys.readouterr().err
    (inputs,) = captured
    on_disk = set((bids / "stimuli").iterdir())
    stim_files = set(inputs["01"].trials["stim_file"])
    assert {bids / "stimuli" / f for f in stim_files} == on_disk  # the trials name the files as they are stored


def test_stimulus_names_differing_in_case_say_so(tmp_path, captured, capsys):
    bids = make_minimal_bids(tmp_path / "bids")
    _with_images(bids, [f"IMG-{i}.png" for i in range(6)], [f"img-{i}.png" for i in range(6)])
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 66 and "IMG-0.png differs only in letter case from img-0.png, which is there" in err
    assert captured == []


# ---------------------------------------------------------------------------------------------------------
# a sidecar that is JSON, but not an object

@pytest.mark.parametrize("content, kind", [("[{\"RepetitionTime\": 2.0}]", "list"), ('"2.0"', "string"),
                                           ("null", "null")])
def test_a_sidecar_that_is_no_json_object_is_named(tmp_path, captured, capsys, content, kind):
    bids = make_minimal_bids(tmp_path / "bids")
    sidecar = bids / "task-perception_bold.json"
    sidecar.write_text(content)
    assert _run(bids, tmp_path) == 65
    err = capsys.readouterr().err
    assert f"{sidecar} holds a JSON {kind}, not an object" in err and "dictionary update" not in err
    assert json.loads(sidecar.read_text()) == json.loads(content) and captured == []


# ---------------------------------------------------------------------------------------------------------
# a sidecar naming a key twice

def test_a_timing_key_given_twice_with_two_values_is_65(tmp_path, captured, capsys, caplog):
    bids = make_minimal_bids(tmp_path / "bids")
    sidecar = bids / "task-perception_bold.json"
    # the header says 2 s: before, the last value (3.0) was read, and "the sidecar says 3.0 s" named a file whose
    # reader sees 2.0 first
    sidecar.write_text('{"RepetitionTime": 2.0, "TaskName": "perception", "RepetitionTime": 3.0}')
    assert _run(bids, tmp_path) == 65
    err = capsys.readouterr().err
    assert f"{sidecar} gives RepetitionTime twice, with different values: 2.0 and then 3.0" in err and captured == []

    # the same value twice is harmless; another key twice is a warning naming it
    caplog.clear()
    sidecar.write_text('{"RepetitionTime": 2.0, "TaskName": "perception", "RepetitionTime": 2.0, '
                       '"Manufacturer": "Siemens", "Manufacturer": "GE"}')
    assert _run(bids, tmp_path) == 0, capsys.readouterr().err
    assert 'gives Manufacturer twice, with different values ("Siemens" and then "GE")' in caplog.text
    assert "RepetitionTime twice" not in caplog.text and len(captured) == 1


# ---------------------------------------------------------------------------------------------------------
# events whose every trial starts after the end of the run; numbers Python reads but a lab does not write

@pytest.mark.parametrize("onsets, durations, cause", [
    ([4000 + 10000 * i for i in range(6)], 3000, "they look like milliseconds (54000 ms = 54 s)"),
    ([1238.5 + 10 * i for i in range(6)], 3, "not from the scanner's or the experiment's clock"),
])
def test_all_trials_after_the_end_of_the_run_is_65_with_the_likely_cause(tmp_path, captured, capsys, onsets,
                                                                         durations, cause):
    """Every trial was dropped with a warning, then 65 "No trials found ... check the trial_type values"."""
    bids = make_minimal_bids(tmp_path / "bids")  # 40 volumes x 2 s
    events = bids / f"{STEM}_events.tsv"
    events.write_text("onset\tduration\ttrial_type\tstimulus\n"
                      + "".join(f"{t}\t{durations}\tstimulus\timg-{i}\n" for i, t in enumerate(onsets)))
    assert _run(bids, tmp_path) == 65
    err = capsys.readouterr().err
    assert f"{events}: all 6 trials start after the end of the run (80.0 s = 40 volumes x 2 s" in err
    assert cause in err and "No trials found" not in err and captured == []


def test_some_trials_after_the_end_stay_a_warning(tmp_path, captured, caplog):
    bids = make_minimal_bids(tmp_path / "bids")
    events = bids / f"{STEM}_events.tsv"
    events.write_text("onset\tduration\ttrial_type\tstimulus\n4\t3\tstimulus\ta\n14\t3\tstimulus\tb\n"
                      "90\t3\tstimulus\tc\n")
    assert _run(bids, tmp_path) == 0
    assert "1 event(s) start after the end of the run" in caplog.text
    assert list(captured[0]["01"].trials["onset"]) == [4.0, 14.0]


def test_an_onset_with_an_underscore_is_not_read_as_digits(tmp_path):
    """float("1_4") is 14 (Python's digit grouping): the trial went to 14 s without a word."""
    from bids_m2i.bids.events import events_to_trials
    from bids_m2i.errors import BadDataError

    path = tmp_path / "sub-01_task-x_events.tsv"
    path.write_text("onset\tduration\ttrial_type\tstimulus\n1_4\t3\tstimulus\ta\n24\t3\tstimulus\tb\n")
    with pytest.raises(BadDataError, match=r"column 'onset' .*line 2: '1_4'"):
        events_to_trials(path, task="x")
    path.write_text("onset\tduration\ttrial_type\tstimulus\n1.4e1\t3.\tstimulus\ta\n+24\t.5\tstimulus\tb\n")
    assert events_to_trials(path, task="x")[["onset", "duration"]].values.tolist() == [[14.0, 3.0], [24.0, 0.5]]


# ---------------------------------------------------------------------------------------------------------
# fMRIPrep outputs kept with DataLad, cloned without `datalad get`

@pytest.mark.parametrize("kind", ["space-T1w_desc-preproc_bold.nii.gz", "desc-confounds_timeseries.tsv"])
def test_unfetched_fmriprep_files_are_66_with_the_datalad_command(tmp_path, captured, capsys, kind):
    """OpenNeuroDerivatives and many labs keep fMRIPrep's outputs with DataLad. An unfetched BOLD gave 65 "Cannot
    read fMRIPrep's ...: rerun fMRIPrep (the file is damaged or incomplete)"."""
    import os

    from test_fmriprep_inputs import make_fmriprep_tree

    bids = make_minimal_bids(tmp_path / "bids")
    fmriprep = make_fmriprep_tree(bids, tmp_path / "derivatives" / "fmriprep", spaces=("T1w",))
    path = fmriprep / "sub-01" / "func" / f"sub-01_task-perception_run-1_{kind}"
    path.unlink()
    os.symlink("../../.git/annex/objects/Xk/3Q/SHA256E-s9--ab/SHA256E-s9--ab", path)
    assert _run(bids, tmp_path, "--derivatives", str(fmriprep), "--space", "T1w") == 66
    err = capsys.readouterr().err
    assert "of fMRIPrep's files for the selected runs are symbolic links to content that is not here" in err
    assert f"cd {fmriprep} && datalad get sub-01/func/{path.name}" in err and "rerun fMRIPrep" not in err
    assert captured == []


# ---------------------------------------------------------------------------------------------------------
# events written by R's write.table (quotes, row names)

def test_events_quoted_as_r_writes_them_give_the_trials_of_the_plain_file(tmp_path, caplog):
    """``write.table(events, "x_events.tsv", sep = "\\t", row.names = FALSE)`` quotes the header and every text
    value: the run stopped with 65 "no 'onset' / 'duration' column (columns: "onset", "duration", ...)"."""
    from bids_m2i.bids.events import events_to_trials

    plain = tmp_path / "sub-01_task-x_run-1_events.tsv"
    plain.write_text('onset\tduration\ttrial_type\tstim_file\n4\t3\tface\tf 1.png\n14.5\t3\tsay "hi"\th.png\n'
                     "24\t3\tfixation\tn/a\n")
    quoted = tmp_path / "sub-01_task-x_run-2_events.tsv"
    quoted.write_text('"onset"\t"duration"\t"trial_type"\t"stim_file"\n4\t3\t"face"\t"f 1.png"\n'
                      '14.5\t3\t"say ""hi"""\t"h.png"\n24\t3\t"fixation"\t"n/a"\n')
    expected = events_to_trials(plain, task="x", include_ignore=True)
    got = events_to_trials(quoted, task="x", include_ignore=True)
    columns = ["onset", "duration", "role", "stimulus", "stim_file"]
    assert got[columns].values.tolist() == expected[columns].values.tolist()
    assert list(got["role"]) == ["trial", "trial", "ignore"]
    assert "values in double quotes (as R's write.table writes them)" in caplog.text


def test_r_row_names_are_named_in_the_message(tmp_path):
    from bids_m2i.bids.events import read_events
    from bids_m2i.errors import BadDataError

    path = tmp_path / "sub-01_task-x_events.tsv"
    path.write_text('"onset"\t"duration"\t"trial_type"\n"1"\t4\t3\t"face"\n"2"\t14\t3\t"house"\n')
    with pytest.raises(BadDataError, match="line 2 has 4 fields but the header has 3") as caught:
        read_events(path)
    assert "row.names = FALSE" in caught.value.hint and caught.value.exit_code == 65


# ---------------------------------------------------------------------------------------------------------
# settings files saved by Windows editors, or a folder given for one

_MAP = '[task.perception]\nrole_column = "trial_type"\ntrial = ["stimulus"]\nstimulus_column = "stimulus"\n'


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
@pytest.mark.parametrize("option, name, content", [
    ("--events-map", "map.toml", _MAP),
    ("--config", "config.toml", "[execution]\nnprocs = 1\n"),
    ("--bids-filter-file", "filter.json", '{"bold": {"run": "01"}}'),
])
def test_settings_files_with_a_bom_or_in_utf16_are_read(tmp_path, captured, capsys, option, name, content, encoding):
    """A BOM gave 64 "Invalid statement (at line 1, column 1)" (TOML) / "Unexpected UTF-8 BOM" (JSON); UTF-16 (Notepad's
    "Unicode", PowerShell's Out-File) exit 1 "unexpected failure: UnicodeDecodeError"."""
    bids = make_minimal_bids(tmp_path / "bids")
    path = tmp_path / name
    path.write_bytes(content.replace("\n", "\r\n").encode(encoding))
    assert _run(bids, tmp_path, option, str(path)) == 0, capsys.readouterr().err
    assert len(captured) == 1


@pytest.mark.parametrize("option, what", [("--events-map", "Events map"), ("--config", "Config file"),
                                          ("--bids-filter-file", "BIDS filter file")])
def test_a_folder_given_for_a_settings_file_is_64(tmp_path, captured, capsys, option, what):
    """--events-map and --bids-filter-file ended with exit 1 "unexpected failure: IsADirectoryError"."""
    bids = make_minimal_bids(tmp_path / "bids")
    folder = tmp_path / "settings"
    folder.mkdir()
    assert _run(bids, tmp_path, option, str(folder)) == 64
    err = capsys.readouterr().err
    assert f"{what} {folder} is a folder, not a file" in err and "Traceback" not in err and captured == []


def test_a_filter_value_with_its_prefix_is_named(tmp_path, captured, capsys):
    bids = make_minimal_bids(tmp_path / "bids")
    path = tmp_path / "filter.json"
    path.write_text('{"bold": {"subject": "sub-01", "task": "perception"}}')
    assert _run(bids, tmp_path, "--bids-filter-file", str(path)) == 18
    assert 'labels without their prefix: "subject": "01", not "sub-01"' in capsys.readouterr().err


def test_stimuli_as_an_uninstalled_subdataset_say_so(tmp_path, captured, capsys):
    """A DataLad dataset whose stimuli/ is a subdataset (cloned without installing it) has an empty stimuli/: the
    message listed every image as missing and said to put them there."""
    bids = make_minimal_bids(tmp_path / "bids")
    _with_images(bids, [f"img-{i}.png" for i in range(6)], [])
    (bids / ".gitmodules").write_text('[submodule "stimuli"]\n\tpath = stimuli\n\turl = ./stimuli\n')
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 66 and "is empty: it is a DataLad / git subdataset that was not installed" in err
    assert f"cd {bids} && datalad get -n stimuli && datalad get stimuli" in err and captured == []
