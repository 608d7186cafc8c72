"""The command line: options, config precedence and every exit code of DESIGN.md."""

from __future__ import annotations

import errno
import json
import tomllib
from pathlib import Path

import pytest

from bids_m2i.cli.parser import expand_multi_value_args
from bids_m2i.cli.run import run_cli
from bids_m2i.config import OPTIONS

FIXTURES = Path(__file__).resolve().parent / "data" / "real-bids"  # carried in the repository


def test_help_lists_every_option(capsys):
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    for spec in OPTIONS:
        for flag in spec.cli_flags:
            for part in flag.split("/"):
                assert part in out, part
    for code in ("16", "17", "18", "64", "65", "66", "73", "74"):
        assert code in out


def test_version(capsys):
    from bids_m2i import __version__

    assert run_cli(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_several_labels_after_one_flag():
    args = expand_multi_value_args(["b", "o", "participant", "--participant-label", "01", "sub-02",
                                    "--task", "a", "--nprocs", "2", "--target", "pixels", "clip"])
    assert args == ["b", "o", "participant", "--participant-label", "01", "--participant-label", "sub-02",
                    "--task", "a", "--nprocs", "2", "--target", "pixels", "--target", "clip"]


def test_unknown_analysis_level_is_17(minimal_bids, tmp_path, capsys):
    assert run_cli([str(minimal_bids), str(tmp_path / "out"), "session"]) == 17
    err = capsys.readouterr().err
    assert "participant" in err and "Traceback" not in err


@pytest.mark.parametrize("args", [
    [],                                      # missing arguments
    ["{bids}", "{out}", "participant", "--no-such-option"],
    ["{bids}", "{out}", "participant", "--nprocs", "zero"],
    ["{bids}", "{out}", "participant", "--glm", "magic"],
])
def test_click_usage_errors_are_64(args, minimal_bids, tmp_path, capsys):
    args = [a.format(bids=minimal_bids, out=tmp_path / "out") for a in args]
    assert run_cli(args) == 64
    assert "Traceback" not in capsys.readouterr().err


def test_output_equal_to_input_is_64(minimal_bids, capsys):
    assert run_cli([str(minimal_bids), str(minimal_bids), "participant", "--skip-bids-validation"]) == 64
    assert "OUTPUT_DIR" in capsys.readouterr().err


def test_work_dir_inside_input_is_64(minimal_bids, tmp_path):
    code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "-w", str(minimal_bids / "work")])
    assert code == 64
    assert not (minimal_bids / "work").exists()


def test_config_unknown_key_and_wrong_type_are_64(minimal_bids, tmp_path, capsys):
    bad_key = tmp_path / "bad_key.toml"
    bad_key.write_text("nprocz = 2\n")
    assert run_cli([str(minimal_bids), str(tmp_path / "o"), "participant", "--config", str(bad_key)]) == 64
    assert "nprocz" in capsys.readouterr().err
    bad_type = tmp_path / "bad_type.toml"
    bad_type.write_text("[execution]\nnprocs = \"two\"\n")
    assert run_cli([str(minimal_bids), str(tmp_path / "o"), "participant", "--config", str(bad_type)]) == 64
    assert "nprocs" in capsys.readouterr().err
    wrong_section = tmp_path / "wrong_section.toml"
    wrong_section.write_text("[glm]\nnprocs = 2\n")
    assert run_cli([str(minimal_bids), str(tmp_path / "o"), "participant", "--config", str(wrong_section)]) == 64


def test_missing_bids_dir_is_66(tmp_path, capsys):
    assert run_cli([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == 66
    assert "nope" in capsys.readouterr().err


def test_missing_dataset_description_is_66(minimal_bids, tmp_path, capsys):
    (minimal_bids / "dataset_description.json").unlink()
    assert run_cli([str(minimal_bids), str(tmp_path / "out"), "participant"]) == 66
    err = capsys.readouterr().err
    assert "dataset_description.json" in err and "Traceback" not in err


def test_validation_errors_are_16(tmp_path, capsys):
    from fixture_datasets import make_fixture_copy

    dataset = make_fixture_copy("ds000117", tmp_path / "ds000117")
    code = run_cli([str(dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work")])
    assert code == 16
    err = capsys.readouterr().err
    assert "--skip-bids-validation" in err


def test_unknown_participant_is_18(minimal_bids, tmp_path, capsys):
    code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--participant-label", "99",
                    "--skip-bids-validation", "-w", str(tmp_path / "work")])
    assert code == 18
    assert "99" in capsys.readouterr().err


def test_filter_file_selecting_nothing_is_18(minimal_bids, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"acquisition": "mb8"}}))
    code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--bids-filter-file", str(filters),
                    "--skip-bids-validation", "-w", str(tmp_path / "work")])
    assert code == 18


def test_unreadable_nifti_is_65(minimal_bids, tmp_path, capsys):
    bold = next(minimal_bids.rglob("*_bold.nii.gz"))
    bold.write_bytes(bold.read_bytes()[:200])  # truncated gzip
    code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                    "-w", str(tmp_path / "work")])
    assert code == 65
    err = capsys.readouterr().err
    assert bold.name in err and "Traceback" not in err


def test_tr_mismatch_is_65(minimal_bids, tmp_path, capsys):
    (minimal_bids / "task-perception_bold.json").write_text(json.dumps({"RepetitionTime": 1.5,
                                                                        "TaskName": "perception"}))
    code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                    "-w", str(tmp_path / "work")])
    assert code == 65
    assert "TR mismatch" in capsys.readouterr().err


def test_uncreatable_output_is_73(minimal_bids, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = run_cli([str(minimal_bids), str(blocker / "out"), "participant", "--skip-bids-validation",
                    "-w", str(tmp_path / "work")])
    assert code == 73
    assert "Traceback" not in capsys.readouterr().err


def test_disk_full_is_74(minimal_bids, tmp_path, monkeypatch, capsys):
    import bids_m2i.utils.atomic as atomic

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                    "-w", str(tmp_path / "work")])
    assert code == 74
    err = capsys.readouterr().err
    assert "space" in err
    leftovers = [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_unexpected_failure_is_1_without_traceback(minimal_bids, tmp_path, monkeypatch, capsys):
    import bids_m2i.cli.runner as runner

    def boom(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(runner, "redirect_caches", boom)
    code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                    "-w", str(tmp_path / "work")])
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "boom" in err
    logs = list((tmp_path / "out" / "logs").glob("m2i-participant-*.log"))
    assert logs and "Traceback" in logs[0].read_text()


def test_config_precedence_and_written_back(minimal_bids, tmp_path):
    config = tmp_path / "m2i.toml"
    config.write_text('glm = "lss"\nseed = 7\n[execution]\nnprocs = 1\nomp_nthreads = 1\n'
                      '[bids]\nparticipant_label = ["sub-01"]\n')
    # an unknown --task stops (exit 18) after the resolved config is written and before any processing
    code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--config", str(config),
                    "--seed", "3", "--task", "nosuchtask", "-w", str(tmp_path / "work")])
    assert code == 18
    written = sorted((tmp_path / "out" / "logs").glob("config-*.toml"))
    assert written
    resolved = tomllib.loads(written[-1].read_text())
    assert resolved["execution"]["seed"] == 3          # command line beats the file
    assert resolved["glm"]["glm"] == "lss"             # file beats the default
    assert resolved["decoding"]["decoder"] == "ridge"  # default
    assert resolved["bids"]["participant_label"] == ["01"]
    # the written-back config is itself a valid config file
    code = run_cli([str(minimal_bids), str(tmp_path / "out2"), "participant", "--config", str(written[-1]),
                    "-w", str(tmp_path / "work")])
    assert code == 18  # the same stop, not a config error (64)
    again = tomllib.loads(sorted((tmp_path / "out2" / "logs").glob("config-*.toml"))[-1].read_text())
    assert {k: v for k, v in again.items() if k != "output_dir"} == {k: v for k, v in resolved.items()
                                                                     if k != "output_dir"}


def test_print_trials(minimal_bids, tmp_path, capsys):
    code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--print-trials",
                    "-w", str(tmp_path / "work")])
    assert code == 0
    out = capsys.readouterr().out
    assert "sub-01" in out and "trial" in out and "6" in out


def test_failure_inside_a_node_keeps_its_exit_code_and_crash_file(minimal_bids, tmp_path, capsys):
    """An all-zero BOLD passes the header checks and fails inside the motion-correction node: the user sees
    that node's message and exit code (65), nipype's crash file lands in OUTPUT_DIR/logs."""
    import nibabel as nib
    import numpy as np

    bold = next(minimal_bids.rglob("*_bold.nii.gz"))
    img = nib.load(bold)
    zeros = nib.Nifti1Image(np.zeros(img.shape, dtype=np.float32), img.affine, img.header)
    nib.save(zeros, bold)
    out = tmp_path / "out"
    code = run_cli([str(minimal_bids), str(out), "participant", "--skip-bids-validation", "-w", str(tmp_path / "w"),
                    "--stop-after", "preproc", "--nprocs", "1"])
    assert code == 65
    err = capsys.readouterr().err
    assert "all zeros" in err and bold.name in err and "Traceback" not in err
    assert list((out / "logs").glob("crash-*"))


def test_relative_paths_work(tiny_dataset, tmp_path, monkeypatch):
    """BIDS_DIR, OUTPUT_DIR and the work dir given relative to the current folder (as in the README's demo):
    nipype runs each step in its own folder, so the app must resolve them first."""
    import shutil

    shutil.copytree(tiny_dataset, tmp_path / "bids")
    monkeypatch.chdir(tmp_path)
    code = run_cli(["bids", "out", "participant", "-w", "work", "--skip-bids-validation", "--nprocs", "2"])
    assert code == 0
    assert list((tmp_path / "out" / "sub-01" / "images").glob("*_image.png"))
