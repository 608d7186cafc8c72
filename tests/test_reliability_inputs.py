"""Issue 9, part 1: the bad-input catalogue.

Each case feeds ``m2i participant`` one broken input (a copy of the simulator's tiny dataset with one thing
wrong) and checks what the user sees: the exit code of DESIGN.md, a message that names the file (or the
label) and says what to do (the ``->`` hint line), no traceback on the terminal, and no half-written file
(``*.tmp*``) left in OUTPUT_DIR. Cases that leave the data usable (NaN in a few voxels, an event past the
end of a run) must run to the end with a warning.

Every case here is listed in docs/troubleshooting.md ("Bad inputs we test"); cases already covered by
tests/test_cli.py (missing dataset_description.json, truncated gzip, TR mismatch, ...) are not repeated.
Most cases fail while the inputs are collected (about a second each, in-process through ``run_cli``);
the few that need a node to run use ``--stop-after preproc``.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_m2i.cli.run import run_cli

FUNC = Path("sub-01") / "func"


# ----------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def dataset(tiny_dataset, tmp_path):
    """A private copy of the tiny simulated dataset (its ground-truth derivatives left out)."""
    copy = tmp_path / "bids"
    shutil.copytree(tiny_dataset, copy, ignore=shutil.ignore_patterns("derivatives"))
    return copy


def bold_file(bids: Path, task="perception", run="01") -> Path:
    return bids / FUNC / f"sub-01_task-{task}_run-{run}_bold.nii.gz"


def events_file(bids: Path, task="perception", run="01") -> Path:
    return bids / FUNC / f"sub-01_task-{task}_run-{run}_events.tsv"


def set_event_cell(bids: Path, column: str, row: int, value: str, task="perception", run="01") -> Path:
    """Replace one cell of an events file (row 1 = first event)."""
    path = events_file(bids, task, run)
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    cells = lines[row].split("\t")
    cells[header.index(column)] = value
    lines[row] = "\t".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path


def first_trial_stimulus(bids: Path) -> Path:
    path = events_file(bids)
    lines = path.read_text().splitlines()
    column = lines[0].split("\t").index("stim_file")
    return bids / "stimuli" / lines[1].split("\t")[column]


def run_m2i(bids: Path, tmp_path: Path, *extra: str, stop_after: str | None = "preproc") -> tuple[int, Path]:
    out = tmp_path / "out"
    args = [str(bids), str(out), "participant", "--skip-bids-validation", "-w", str(tmp_path / "work"),
            "--nprocs", "1", "--omp-nthreads", "1", *extra]
    if stop_after:
        args += ["--stop-after", stop_after]
    return run_cli(args), out


def check_failure(capsys, code: int, out: Path, expected_code: int, *names: str, in_node: bool = False) -> str:
    """The common contract of every failing case; returns stderr for case-specific checks."""
    err = capsys.readouterr().err
    assert code == expected_code, err[-3000:]
    error_lines = [line for line in err.splitlines() if line.startswith("m2i: error:")]
    assert error_lines, err[-3000:]
    message = err[err.index(error_lines[0]):]
    for name in names:
        assert name in message, f"{name!r} not in the message:\n{message}"
    assert "->" in message, f"no hint saying what to do:\n{message}"
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name] if out.exists() else []
    assert leftovers == []
    # in_node: the failure comes from inside a nipype node, whose crash report carries a traceback of its
    # own (it must go to the crash file and the log only)
    assert "Traceback" not in err, f"traceback on the terminal (in_node={in_node}):\n{err[-3000:]}"
    return message


# ----------------------------------------------------------------------------------------------------------
# BOLD


def test_bold_empty_file_is_65(dataset, tmp_path, capsys):
    bold = bold_file(dataset)
    bold.write_bytes(b"")
    code, out = run_m2i(dataset, tmp_path)
    check_failure(capsys, code, out, 65, bold.name, "empty")


def test_bold_not_nifti_is_65(dataset, tmp_path, capsys):
    bold = bold_file(dataset)
    bold.write_bytes(gzip.compress(b"this is a text file, not a NIfTI image\n" * 20))
    code, out = run_m2i(dataset, tmp_path)
    check_failure(capsys, code, out, 65, bold.name)


def test_bold_not_even_gzip_is_65(dataset, tmp_path, capsys):
    bold = bold_file(dataset)
    bold.write_text("plain text under a .nii.gz name")
    code, out = run_m2i(dataset, tmp_path)
    check_failure(capsys, code, out, 65, bold.name)


def test_bold_3d_is_65(dataset, tmp_path, capsys):
    bold = bold_file(dataset)
    img = nib.load(bold)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), bold)
    code, out = run_m2i(dataset, tmp_path)
    assert "4-D" in check_failure(capsys, code, out, 65, bold.name)


def test_bold_single_volume_is_65(dataset, tmp_path, capsys):
    bold = bold_file(dataset)
    img = nib.load(bold)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :1], img.affine, img.header), bold)
    code, out = run_m2i(dataset, tmp_path)
    assert "4-D" in check_failure(capsys, code, out, 65, bold.name)


def _rewrite_float(bold: Path, change) -> None:
    img = nib.load(bold)
    data = np.asarray(img.dataobj, dtype=np.float32).copy()
    change(data)
    header = img.header.copy()
    header.set_data_dtype(np.float32)  # an integer file cannot hold NaN: the case would not be tested
    header.set_slope_inter(1, 0)
    nib.save(nib.Nifti1Image(data, img.affine, header), bold)


def test_bold_all_zeros_run_stops_in_the_first_node_is_65(dataset, tmp_path, capsys):
    bold = bold_file(dataset)
    _rewrite_float(bold, lambda data: data.fill(0))
    code, out = run_m2i(dataset, tmp_path)
    assert "all zeros" in check_failure(capsys, code, out, 65, bold.name, in_node=True)


def test_bold_already_demeaned_is_65(dataset, tmp_path, capsys):
    """A cleaned derivative given as the raw BOLD (every voxel demeaned over time): exit 0 before, with motion
    estimates of ~7e9 mm and betas of a run resampled from outside its field of view (QA pass 32)."""
    bold = bold_file(dataset)
    _rewrite_float(bold, lambda data: data.__isub__(data.mean(axis=3, keepdims=True)))
    code, out = run_m2i(dataset, tmp_path)
    assert "already demeaned" in check_failure(capsys, code, out, 65, bold.name, in_node=True)


def test_bold_all_nan_is_65(dataset, tmp_path, capsys):
    bold = bold_file(dataset)
    _rewrite_float(bold, lambda data: data.fill(np.nan))
    code, out = run_m2i(dataset, tmp_path)
    assert "finite" in check_failure(capsys, code, out, 65, bold.name, in_node=True)


# ----------------------------------------------------------------------------------------------------------
# repetition time and sidecars


def _edit_sidecars(bids: Path, task: str, change) -> None:
    for path in [bids / f"task-{task}_bold.json", *sorted((bids / FUNC).glob(f"*task-{task}_*_bold.json"))]:
        if path.exists():
            sidecar = json.loads(path.read_text())
            change(sidecar)
            path.write_text(json.dumps(sidecar))


def test_tr_missing_is_65(dataset, tmp_path, capsys):
    _edit_sidecars(dataset, "perception", lambda s: s.pop("RepetitionTime", None))
    code, out = run_m2i(dataset, tmp_path)
    assert "RepetitionTime" in check_failure(capsys, code, out, 65, bold_file(dataset).name)


def test_tr_not_positive_is_65(dataset, tmp_path, capsys):
    _edit_sidecars(dataset, "perception",
                   lambda s: s.update(RepetitionTime=-2.0) if "RepetitionTime" in s else None)
    code, out = run_m2i(dataset, tmp_path)
    check_failure(capsys, code, out, 65, bold_file(dataset).name)


def test_sidecar_not_json_is_65(dataset, tmp_path, capsys):
    (dataset / "task-perception_bold.json").write_text("{RepetitionTime: 2")
    code, out = run_m2i(dataset, tmp_path)
    check_failure(capsys, code, out, 65, "task-perception_bold.json")


def test_dataset_description_not_json_is_65(dataset, tmp_path, capsys):
    (dataset / "dataset_description.json").write_text("{not json")
    code, out = run_m2i(dataset, tmp_path)
    check_failure(capsys, code, out, 65, "dataset_description.json")


def test_duplicate_runs_are_65(dataset, tmp_path, capsys):
    bold = bold_file(dataset)
    nib.save(nib.load(bold), str(bold).replace(".nii.gz", ".nii"))  # the same run, twice
    code, out = run_m2i(dataset, tmp_path)
    check_failure(capsys, code, out, 65, bold.name, "run-01")


# ----------------------------------------------------------------------------------------------------------
# filters


@pytest.mark.parametrize("option, label", [("--session-label", "zz"), ("--task", "dreaming")])
def test_unknown_session_or_task_is_18(dataset, tmp_path, capsys, option, label):
    code, out = run_m2i(dataset, tmp_path, option, label)
    message = check_failure(capsys, code, out, 18, label)
    if option == "--task":
        assert "perception" in message  # it lists the tasks present


# ----------------------------------------------------------------------------------------------------------
# events (the GLM needs them: --stop-after glm; each case fails before any node runs)


def test_events_missing_is_66(dataset, tmp_path, capsys):
    events_file(dataset).unlink()
    code, out = run_m2i(dataset, tmp_path, stop_after="glm")
    assert "--stop-after preproc" in check_failure(capsys, code, out, 66, bold_file(dataset).name)


def test_events_empty_file_is_65(dataset, tmp_path, capsys):
    events = events_file(dataset)
    events.write_text("")
    code, out = run_m2i(dataset, tmp_path, stop_after="glm")
    check_failure(capsys, code, out, 65, events.name, "empty")


def test_events_header_only_is_65(dataset, tmp_path, capsys):
    events = events_file(dataset)
    events.write_text(events.read_text().splitlines()[0] + "\n")
    code, out = run_m2i(dataset, tmp_path, stop_after="glm")
    check_failure(capsys, code, out, 65, events.name, "no events")


def test_events_without_onset_column_is_65(dataset, tmp_path, capsys):
    events = events_file(dataset)
    events.write_text("\n".join(line.split("\t", 1)[1] for line in events.read_text().splitlines()) + "\n")
    code, out = run_m2i(dataset, tmp_path, stop_after="glm")
    check_failure(capsys, code, out, 65, events.name, "onset")


@pytest.mark.parametrize("column, value", [
    # (a negative onset is allowed by BIDS: events before the first volume, tests/test_qa_negative_onsets.py)
    ("onset", "n/a"),     # missing
    ("onset", "abc"),     # not a number
    ("duration", "-3"),   # (n/a is allowed by BIDS: the median of its event type, tests/test_qa_na_trial_durations.py)
    ("duration", "long"),
])
def test_events_bad_onset_or_duration_is_65(dataset, tmp_path, capsys, column, value):
    events = set_event_cell(dataset, column, 2, value)
    code, out = run_m2i(dataset, tmp_path, stop_after="glm")
    message = check_failure(capsys, code, out, 65, events.name, column)
    assert "line 3" in message and repr(value) in message  # the user can find the row


def test_events_without_any_trial_is_65(dataset, tmp_path, capsys):
    for path in sorted((dataset / FUNC).glob("*_events.tsv")):
        header = path.read_text().splitlines()[0]
        n_columns = len(header.split("\t"))
        path.write_text(header + "\n" + "\t".join(["10", "3", "rest"] + ["n/a"] * (n_columns - 3)) + "\n")
    code, out = run_m2i(dataset, tmp_path, stop_after="glm")
    assert "--print-trials" in check_failure(capsys, code, out, 65, "sub-01", "No trials")


# ----------------------------------------------------------------------------------------------------------
# stimuli (needed by the decoding stage: the run must stop before preprocessing starts)


def test_stimulus_missing_stops_before_preprocessing_with_66(dataset, tmp_path, capsys):
    stimulus = first_trial_stimulus(dataset)
    stimulus.unlink()
    code, out = run_m2i(dataset, tmp_path, stop_after=None)
    check_failure(capsys, code, out, 66, stimulus.name, "stimuli")
    assert not list(out.rglob("*_desc-preproc_bold.nii.gz"))


def test_stimulus_not_an_image_is_65(dataset, tmp_path, capsys):
    stimulus = first_trial_stimulus(dataset)
    stimulus.write_text("<html>not an image</html>")
    code, out = run_m2i(dataset, tmp_path, stop_after=None)
    check_failure(capsys, code, out, 65, stimulus.name)
    assert not list(out.rglob("*_desc-preproc_bold.nii.gz"))


def test_stimulus_truncated_is_65(dataset, tmp_path, capsys):
    stimulus = first_trial_stimulus(dataset)
    stimulus.write_bytes(stimulus.read_bytes()[:80])  # a valid PNG header, then nothing
    code, out = run_m2i(dataset, tmp_path, stop_after=None)
    check_failure(capsys, code, out, 65, stimulus.name)


@pytest.mark.parametrize("stim_file", ["../../../../etc/passwd", "/etc/hostname", "stimuli/../../README"])
def test_stimulus_path_escaping_stimuli_is_65(dataset, tmp_path, capsys, stim_file):
    events = set_event_cell(dataset, "stim_file", 1, stim_file)
    code, out = run_m2i(dataset, tmp_path, stop_after="glm")
    message = check_failure(capsys, code, out, 65, events.name, "outside")
    assert stim_file in message


def test_stimulus_link_leading_outside_the_dataset_is_65(dataset, tmp_path, capsys):
    secret = tmp_path / "secret.png"
    shutil.copy(first_trial_stimulus(dataset), secret)  # a real image: only its location is wrong
    stimulus = first_trial_stimulus(dataset)
    stimulus.unlink()
    stimulus.symlink_to(secret)
    code, out = run_m2i(dataset, tmp_path, stop_after="glm")
    check_failure(capsys, code, out, 65, stimulus.name, "outside the dataset")


def test_stimulus_link_inside_the_dataset_is_followed(dataset, tmp_path):
    """DataLad/git-annex datasets store every image as a link into .git/annex: that must keep working."""
    annex = dataset / ".git" / "annex" / "objects"
    annex.mkdir(parents=True)
    stimulus = first_trial_stimulus(dataset)
    shutil.move(stimulus, annex / "key.png")
    stimulus.symlink_to(os.path.relpath(annex / "key.png", stimulus.parent))
    assert run_cli([str(dataset), str(tmp_path / "out"), "participant", "--print-trials",
                    "-w", str(tmp_path / "work")]) == 0


# ----------------------------------------------------------------------------------------------------------
# models folder (needed by --target clip: checked before preprocessing starts)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from bids_m2i.models.tiny import make_tiny_models

    folder = tmp_path_factory.mktemp("models") / "tiny"
    make_tiny_models(folder, seed=0, include_eval=False)
    return folder


def _models_copy(tiny_models, tmp_path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(tiny_models, copy)
    return copy


def _clip_weights(models: Path) -> Path:
    return next((models / "open_clip").rglob("*.safetensors"))


def test_models_folder_missing_is_66(dataset, tmp_path, capsys):
    code, out = run_m2i(dataset, tmp_path, "--target", "clip", "--models-dir", str(tmp_path / "no-models"),
                        stop_after=None)
    check_failure(capsys, code, out, 66, "no-models")
    assert not list(out.rglob("*_desc-preproc_bold.nii.gz"))


def test_models_folder_not_given_is_64(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("M2I_MODELS_DIR", raising=False)
    code, out = run_m2i(dataset, tmp_path, "--target", "clip", stop_after=None)
    check_failure(capsys, code, out, 64, "--models-dir")


def test_models_folder_incomplete_is_66(dataset, tmp_path, capsys, tiny_models):
    models = _models_copy(tiny_models, tmp_path)
    weights = _clip_weights(models)
    weights.unlink()
    code, out = run_m2i(dataset, tmp_path, "--target", "clip", "--models-dir", str(models), stop_after=None)
    check_failure(capsys, code, out, 66, weights.name)


def test_models_wrong_shapes_are_65(dataset, tmp_path, capsys, tiny_models):
    import torch
    from safetensors.torch import load_file, save_file

    models = _models_copy(tiny_models, tmp_path)
    weights = _clip_weights(models)
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = torch.zeros(*[s + 1 for s in tensors[name].shape])
    save_file(tensors, weights)
    code, out = run_m2i(dataset, tmp_path, "--target", "clip", "--models-dir", str(models), stop_after=None)
    check_failure(capsys, code, out, 65, weights.name)


def test_models_folder_holding_a_pickle_is_65_and_never_unpickled(dataset, tmp_path, capsys, tiny_models):
    models = _models_copy(tiny_models, tmp_path)
    marker = tmp_path / "pickle-was-executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle

    planted = _clip_weights(models).parent / "open_clip_pytorch_model.bin"
    planted.write_bytes(pickle.dumps(Payload()))
    code, out = run_m2i(dataset, tmp_path, "--target", "clip", "--models-dir", str(models), stop_after=None)
    check_failure(capsys, code, out, 65, planted.name)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# config file, work dir, disk


@pytest.mark.parametrize("text, name", [
    ("target = 3\n", "target"),                 # a list expected
    ("[decoding]\nglm = [\"lss\"]\n", "glm"),  # a key in another section, with a wrong type
    ("nprocs = = 2\n", "config"),               # not TOML
])
def test_config_file_errors_are_64(dataset, tmp_path, capsys, text, name):
    config = tmp_path / "m2i.toml"
    config.write_text(text)
    code, out = run_m2i(dataset, tmp_path, "--config", str(config))
    check_failure(capsys, code, out, 64, name)


def test_config_file_missing_is_64_or_66(dataset, tmp_path, capsys):
    code, out = run_m2i(dataset, tmp_path, "--config", str(tmp_path / "nope.toml"))
    err = capsys.readouterr().err
    assert code in (64, 66) and "nope.toml" in err and "Traceback" not in err


def test_uncreatable_work_dir_is_73(dataset, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = tmp_path / "out"
    code = run_cli([str(dataset), str(out), "participant", "--skip-bids-validation", "-w", str(blocker / "work"),
                    "--stop-after", "preproc"])
    check_failure(capsys, code, out, 73, "work")


class _FillsTheDisk(gzip.GzipFile):
    """A gzip stream on a disk that fills up: a third of the data is written, then ENOSPC."""

    only_our_outputs = True

    def write(self, data):
        name = str(getattr(self.fileobj, "name", ""))
        if self.only_our_outputs and ".tmp.nii" not in name:  # only our images (nipype writes .pklz)
            return super().write(data)
        super().write(bytes(data)[: len(data) // 3])
        self.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def _check_nothing_half_written(out: Path) -> None:
    broken = []
    for image in out.rglob("*.nii.gz"):
        try:
            nib.load(image).get_fdata()
        except Exception:  # noqa: BLE001 - any failure to read is what we look for
            broken.append(image)
    assert broken == []


def test_disk_full_in_the_middle_of_a_nifti_write_is_74(dataset, tmp_path, capsys, monkeypatch):
    """ENOSPC after part of a compressed image was written (not at the rename, as test_cli's case): the
    partial temporary file is removed and nothing half-written is left under the final name."""
    monkeypatch.setattr(gzip, "GzipFile", _FillsTheDisk)
    code, out = run_m2i(dataset, tmp_path, "--plugin", "Linear")  # in this process: the patch applies
    message = check_failure(capsys, code, out, 74, "space", in_node=True)
    assert "run again" in message
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    _check_nothing_half_written(out)


def test_disk_full_while_nipype_writes_its_own_files_is_74(dataset, tmp_path, capsys, monkeypatch):
    """The disk can fill up anywhere, also while nipype stores a node's result file."""
    monkeypatch.setattr(_FillsTheDisk, "only_our_outputs", False)
    monkeypatch.setattr(gzip, "GzipFile", _FillsTheDisk)
    code, out = run_m2i(dataset, tmp_path, "--plugin", "Linear")
    err = capsys.readouterr().err
    assert "No space left" in err
    _check_nothing_half_written(out)
    assert code == 74


# ----------------------------------------------------------------------------------------------------------
# usable data: the run goes on, with a warning


def test_nan_voxels_and_events_past_the_end_warn_and_go_on(dataset, tmp_path, capsys):
    bold = bold_file(dataset)

    def few_bad_voxels(data):
        data[0, 0, 0, :] = np.nan
        data[1, 0, 0, 3] = np.inf

    _rewrite_float(bold, few_bad_voxels)
    events = set_event_cell(dataset, "onset", 3, "99999")
    # Linear: nodes run in this process, so their warnings reach capsys (with MultiProc they go straight
    # to the terminal from the worker processes)
    code, out = run_m2i(dataset, tmp_path, "--plugin", "Linear", stop_after="glm")
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    assert any(bold.name in line and "NaN" in line for line in warnings), warnings
    assert any(events.name in line and "after the end" in line for line in warnings), warnings
    betas = list(out.rglob("*task-perception_stat-effect_desc-*_statseries.nii.gz"))
    assert betas and np.isfinite(nib.load(betas[0]).get_fdata()).all()
    preproc = next(out.rglob("*task-perception_run-01_desc-preproc_bold.nii.gz"))
    assert np.isfinite(nib.load(preproc).get_fdata()).all()


# ----------------------------------------------------------------------------------------------------------
# what a terminal really shows (a subprocess: nothing captured or redirected in-process)


def test_node_failure_shows_no_traceback_in_a_real_terminal(dataset, tmp_path):
    bold = bold_file(dataset)
    _rewrite_float(bold, lambda data: data.fill(0))
    result = subprocess.run(
        [sys.executable, "-m", "bids_m2i.cli.run", str(dataset), str(tmp_path / "out"), "participant",
         "--skip-bids-validation", "-w", str(tmp_path / "work"), "--stop-after", "preproc", "--nprocs", "1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 65, result.stderr[-3000:]
    assert f"m2i: error: {bold}" in result.stderr and "all zeros" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "out" / "logs").glob("crash-*"))  # the traceback went there
