"""Bad command lines and output folders found by a fuzz campaign (session 19), each now stopped before any step
with a BIDS-Apps exit code, nothing of the user's lost or overwritten:

* ``-w ""`` (a job script's unset variable) was the current folder, and a run there marked it as m2i's: the next
  ``--clean-workdir`` deleted the user's files. ``-w .`` in a project folder did the same.
* OUTPUT_DIR holding another dataset (another pipeline's derivatives, a raw dataset, BIDS_DIR/derivatives itself)
  was taken over: its dataset_description.json, .bidsignore and files in sub-*/func rewritten, exit 0.
* ``--mem-gb nan``/``inf`` passed the range check; ``--nprocs``, ``--permutations`` had no upper bound (exit 1
  OverflowError; memory without limit); a bad ``--plugin`` or ``--plugin-args`` failed in the scheduler (exit 1).
* ``-w`` inside OUTPUT_DIR made the derivatives dataset fail the BIDS validator; entries of the wrong kind in
  OUTPUT_DIR (a folder named .bidsignore, a file named logs or sub-01) gave exit 1 or a late 74.
* ``--config /dev/zero`` was read until memory ran out.
"""

from __future__ import annotations

import json
import logging
import shutil
import types
import warnings
from pathlib import Path

import pytest

from bids_m2i.cli.run import run_cli


def _run(bids, out, tmp_path, *extra, work=None):
    # the minimal dataset names no image files: the runs stop after the GLM (the workflows are stubbed anyway)
    return run_cli([str(bids), str(out), "participant", "-w", str(work or tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm", *extra])


@pytest.mark.parametrize("which", ["work", "output"])
def test_an_empty_path_is_a_usage_error(minimal_bids, tmp_path, capsys, started, which, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ([str(minimal_bids), str(tmp_path / "out"), "participant", "-w", ""] if which == "work"
            else [str(minimal_bids), "", "participant"])
    assert run_cli(args) == 64
    err = capsys.readouterr().err
    assert "empty path" in err and "Traceback" not in err
    assert started == [] and list(tmp_path.iterdir()) == [tmp_path / "bids"]


def test_an_empty_path_in_the_config_file_is_a_usage_error(minimal_bids, tmp_path, capsys, started):
    config = tmp_path / "m2i.toml"
    config.write_text('work_dir = ""\n')
    assert _run(minimal_bids, tmp_path / "out", tmp_path, "--config", str(config)) == 64
    assert "non-empty" in capsys.readouterr().err and started == []


def test_a_project_folder_used_as_work_dir_is_never_marked_nor_emptied(minimal_bids, tmp_path, capsys, started):
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_script.sh").write_text("important\n")
    assert _run(minimal_bids, tmp_path / "out", tmp_path, work=project) == 0
    assert not (project / ".m2i-workdir").exists()            # m2i used it, but did not mark it as its own
    assert "--clean-workdir will not empty it" in capsys.readouterr().err
    assert _run(minimal_bids, tmp_path / "out", tmp_path, "--clean-workdir", work=project) == 64
    assert "holds files m2i did not make (my_script.sh)" in capsys.readouterr().err
    assert (project / "my_script.sh").read_text() == "important\n"
    assert started == [True]


def test_a_work_dir_m2i_made_is_still_emptied(minimal_bids, tmp_path, started):
    work = tmp_path / "work"
    assert _run(minimal_bids, tmp_path / "out", tmp_path, work=work) == 0
    assert (work / ".m2i-workdir").exists()
    (work / "m2i_wf").mkdir(exist_ok=True)
    (work / "m2i_wf" / "old.txt").write_text("x")
    assert _run(minimal_bids, tmp_path / "out", tmp_path, "--clean-workdir", work=work) == 0
    assert not (work / "m2i_wf" / "old.txt").exists()


@pytest.mark.parametrize("description, what", [
    ({"Name": "truth", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
      "GeneratedBy": [{"Name": "m2i-simulate"}]}, "the outputs of m2i-simulate"),
    ({"Name": "raw study", "BIDSVersion": "1.10.0"}, "a raw dataset"),
    ({"Name": "fmriprep", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
      "GeneratedBy": [{"Name": "fMRIPrep", "Version": "24.1.0"}]}, "the outputs of fMRIPrep"),
    # fMRIPrep before 20.2 named itself the BIDS < 1.4 way (and wrote no DatasetType); a derivative that names
    # its pipeline so was taken for ours
    ({"Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.1.1",
      "PipelineDescription": {"Name": "fMRIPrep", "Version": "1.4.1"}}, "the outputs of fMRIPrep"),
    ({"Name": "old pipeline", "BIDSVersion": "1.2.0", "DatasetType": "derivative",
      "PipelineDescription": {"Name": "fitlins"}}, "the outputs of fitlins"),
])
def test_output_dir_holding_another_dataset_is_refused(minimal_bids, tmp_path, capsys, started, description, what):
    out = tmp_path / "other"
    (out / "sub-01" / "func").mkdir(parents=True)
    text = json.dumps(description)
    (out / "dataset_description.json").write_text(text)
    (out / "sub-01" / "func" / "sub-01_desc-brain_mask.nii.gz").write_bytes(b"theirs")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert _run(minimal_bids, out, tmp_path) == 64
    err = capsys.readouterr().err
    assert what in err and "not m2i's" in err and "Traceback" not in err
    assert (out / "dataset_description.json").read_text() == text
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before and started == []


def test_output_dir_of_an_earlier_m2i_run_is_reused(minimal_bids, tmp_path, started):
    out = tmp_path / "out"
    assert _run(minimal_bids, out, tmp_path) == 0
    assert _run(minimal_bids, out, tmp_path) == 0 and started == [True, True]


def test_output_dir_as_the_input_derivatives_folder_is_refused(minimal_bids, tmp_path, capsys, started):
    (minimal_bids / "derivatives").mkdir()
    assert _run(minimal_bids, minimal_bids / "derivatives", tmp_path) == 64
    assert "derivatives/m2i" in capsys.readouterr().err
    assert list((minimal_bids / "derivatives").iterdir()) == [] and started == []


def test_work_dir_inside_output_dir_is_refused(minimal_bids, tmp_path, capsys, started):
    out = tmp_path / "out"
    assert _run(minimal_bids, out, tmp_path, work=out / "work") == 64
    assert "inside OUTPUT_DIR" in capsys.readouterr().err and not out.exists() and started == []


@pytest.mark.parametrize("entry, make, kind", [
    (".bidsignore", lambda p: p.mkdir(), "is a folder"),
    ("logs", lambda p: p.write_text("x"), "is a file"),
    ("dataset_description.json", lambda p: p.mkdir(), "is a folder"),
])
def test_output_dir_entries_of_the_wrong_kind_are_73(minimal_bids, tmp_path, capsys, started, entry, make, kind):
    out = tmp_path / "out"
    out.mkdir()
    make(out / entry)
    assert _run(minimal_bids, out, tmp_path) == 73
    err = capsys.readouterr().err
    assert f"{out / entry} {kind}" in err and "Traceback" not in err and started == []


def test_a_file_in_place_of_the_participant_folder_is_73_before_any_step(minimal_bids, tmp_path, capsys, started):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub-01").write_text("x")
    assert _run(minimal_bids, out, tmp_path) == 73
    assert "is a file, not a folder" in capsys.readouterr().err and started == []


@pytest.mark.parametrize("flag, value", [("--mem-gb", "nan"), ("--mem-gb", "inf"), ("--mem-gb", "1e400"),
                                         ("--fd-threshold", "nan"), ("--nprocs", "99999999999999999999"),
                                         ("--permutations", "99999999999999999999"), ("--candidates", "100000")])
def test_non_finite_and_unbounded_numbers_are_usage_errors(minimal_bids, tmp_path, capsys, started, flag, value):
    assert _run(minimal_bids, tmp_path / "out", tmp_path, flag, value) == 64
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err and started == []


@pytest.mark.parametrize("line", ["mem_gb = nan", "mem_gb = inf", "nprocs = 99999999999999999999",
                                  "permutations = 1000000"])
def test_the_same_numbers_in_a_config_file_are_usage_errors(minimal_bids, tmp_path, capsys, started, line):
    config = tmp_path / "m2i.toml"
    config.write_text(line + "\n")
    assert _run(minimal_bids, tmp_path / "out", tmp_path, "--config", str(config)) == 64
    assert "m2i.toml" in capsys.readouterr().err and started == []


@pytest.mark.parametrize("plugin, expected", [("Foo", "nipype's plugins: "), ("multiproc", "did you mean MultiProc")])
def test_an_unknown_plugin_is_a_usage_error(minimal_bids, tmp_path, capsys, started, plugin, expected):
    assert _run(minimal_bids, tmp_path / "out", tmp_path, "--plugin", plugin) == 64
    err = capsys.readouterr().err
    assert expected in err and "crash file" not in err and started == []


def test_a_batch_plugin_without_its_submit_command_is_a_usage_error(minimal_bids, tmp_path, capsys, started,
                                                                     monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert _run(minimal_bids, tmp_path / "out", tmp_path, "--plugin", "SLURM") == 64
    assert "sbatch, which is not on this machine's PATH" in capsys.readouterr().err and started == []


@pytest.mark.parametrize("args", ['{"n_procs": "abc"}', '{"n_procs": null}', '{"n_procs": 0}',
                                  '{"memory_gb": "x"}', '{"raise_insufficient": "no"}', "[1, 2]"])
def test_bad_plugin_arguments_are_usage_errors(minimal_bids, tmp_path, capsys, started, args):
    assert _run(minimal_bids, tmp_path / "out", tmp_path, "--plugin-args", args) == 64
    err = capsys.readouterr().err
    assert "--plugin-args" in err and "Traceback" not in err and started == []


def test_a_long_json_plugin_argument_is_read_as_json_not_as_a_file_name():
    from bids_m2i.workflows.base import plugin_settings

    sbatch = "-p normal -t 02:00:00 --mem 16G --account=myaccount " * 6      # > 255 characters, no slash
    config = types.SimpleNamespace(plugin="SLURM", plugin_args=json.dumps({"sbatch_args": sbatch}), n_procs=2,
                                   memory_gb=4.0)
    assert plugin_settings(config) == ("SLURM", {"sbatch_args": sbatch})


def test_a_settings_file_that_never_ends_is_a_usage_error(minimal_bids, tmp_path, capsys):
    assert run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--print-trials",
                    "--config", "/dev/zero"]) == 64
    assert "larger than 16 MB" in capsys.readouterr().err


def test_an_engine_warning_reaches_the_terminal_once_and_without_source_code(capsys):
    from bids_m2i.utils import logs

    logging.captureWarnings(False)  # an earlier test's capture, whose showwarning pytest has since restored
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        handler = logs.setup_terminal_logging(0)
        try:
            logging.getLogger("m2i.preproc").warning("only 2 slice(s): in-plane motion only")
            warnings.warn("only 2 slice(s): in-plane motion only", UserWarning)  # the engine also warns its callers
            warnings.warn("a library's own warning", UserWarning)
        finally:
            logging.getLogger().removeHandler(handler)
            logging.captureWarnings(False)
    err = capsys.readouterr().err
    assert err.count("only 2 slice(s)") == 1
    assert "UserWarning: a library's own warning (test_qa_fuzz19_cli.py:" in err
    assert 'warnings.warn("a library' not in err                         # no line of source code under it
