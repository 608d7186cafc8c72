"""Multi-echo BOLD (``_echo-1_bold``, ``_echo-2_bold`` of one run).

Each echo was taken as a run of its own with the run's events: every trial twice, the echoes counted as
repeats of each stimulus (inflating ncsnr, the voxel choice and the averaged test betas), and with fMRIPrep's
optimally combined outputs (no echo entity) no file matched (exit 66). Now: with --derivatives each run is used
once, from fMRIPrep's combined series; without, exit 64 says to use fMRIPrep or select one echo.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bids_m2i.cli.run import run_cli
from test_fmriprep_inputs import make_fmriprep_tree


@pytest.fixture
def multi_echo(tiny_dataset, tmp_path):
    bids = tmp_path / "me"
    shutil.copytree(tiny_dataset, bids, ignore=shutil.ignore_patterns("derivatives"))
    for bold in sorted(bids.glob("sub-01/func/*_bold.nii.gz")):
        stem = bold.name[: -len("_bold.nii.gz")]
        for echo in ("1", "2"):
            shutil.copy(bold, bold.with_name(f"{stem}_echo-{echo}_bold.nii.gz"))
        bold.unlink()
        sidecar = bold.with_name(f"{stem}_bold.json")
        if sidecar.exists():
            for echo, te in (("1", 0.015), ("2", 0.035)):
                meta = {**json.loads(sidecar.read_text()), "EchoTime": te}
                sidecar.with_name(f"{stem}_echo-{echo}_bold.json").write_text(json.dumps(meta))
            sidecar.unlink()
    return bids


def _total_trials(text: str) -> int:
    return int(re.search(r"total: (\d+) trials", text).group(1))


def test_multi_echo_without_fmriprep_is_64(multi_echo, tmp_path, capsys):
    code = run_cli([str(multi_echo), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"])
    err = capsys.readouterr().err
    assert code == 64, err
    assert "multi-echo runs" in err and '{"bold": {"echo": "1"}}' in err


def test_one_echo_selected_or_fmriprep_combined_gives_each_trial_once(multi_echo, tiny_dataset, tmp_path, capsys):
    assert run_cli([str(tiny_dataset), str(tmp_path / "o0"), "participant", "--print-trials"]) == 0
    expected = _total_trials(capsys.readouterr().out)
    filters = tmp_path / "echo.json"
    filters.write_text(json.dumps({"bold": {"echo": "2"}}))
    assert run_cli([str(multi_echo), str(tmp_path / "o1"), "participant", "--print-trials",
                    "--bids-filter-file", str(filters)]) == 0
    assert _total_trials(capsys.readouterr().out) == expected
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))  # combined: no echo entity
    assert run_cli([str(multi_echo), str(tmp_path / "o2"), "participant", "--print-trials",
                    "--derivatives", str(tree)]) == 0
    assert _total_trials(capsys.readouterr().out) == expected


def test_one_echo_selected_with_fmriprep_says_its_outputs_are_combined(multi_echo, tiny_dataset, tmp_path, capsys):
    """The echo filter the 64 above suggests, given with --derivatives: fMRIPrep wrote only the combined series, and
    the message was 'No fMRIPrep preprocessed BOLD ... run fMRIPrep on this participant first'."""
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))
    filters = tmp_path / "echo.json"
    filters.write_text(json.dumps({"bold": {"echo": "1"}}))
    code = run_cli([str(multi_echo), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm", "--derivatives", str(tree),
                    "--bids-filter-file", str(filters)])
    err = capsys.readouterr().err
    assert code == 66, err
    assert "run fMRIPrep on this participant first" not in err, err
    assert "echoes combined" in err and "remove \"echo\" from --bids-filter-file" in err
