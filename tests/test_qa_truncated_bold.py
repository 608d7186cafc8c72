"""A truncated BOLD file stops the run before anything is computed.

An interrupted copy leaves a .nii.gz whose header is intact: the start-up check read only the header, and the
run failed only when that run's motion correction read the data, after the runs before it (hours into a
large dataset). Now the start-up check compares the size gzip stores with the header's, and reads the whole
stream only when they disagree (so that multi-member files, as bgzip writes, stay accepted).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids


def _run(bids, tmp_path):
    return run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "preproc"])


@pytest.mark.parametrize("compressed", [True, False])
def test_truncated_bold_is_65_before_any_step(tmp_path, capsys, started, compressed):
    bids = make_minimal_bids(tmp_path / "bids", runs=("01", "02"))
    bold = bids / "sub-01" / "func" / "sub-01_task-perception_run-02_bold.nii.gz"
    if not compressed:
        plain = bold.with_name(bold.name[:-3])
        plain.write_bytes(gzip.decompress(bold.read_bytes()))
        bold.unlink()
        bold = plain
    data = bold.read_bytes()
    bold.write_bytes(data[: int(len(data) * 0.8)])
    assert _run(bids, tmp_path) == 65
    err = capsys.readouterr().err
    assert "is truncated" in err and bold.name in err and "Traceback" not in err
    assert started == []


def test_multi_member_gzip_bold_is_accepted(tmp_path, started):
    """bgzip and concatenated gzip files store the size of their last member only: read whole, complete."""
    bids = make_minimal_bids(tmp_path / "bids")
    bold = bids / "sub-01" / "func" / "sub-01_task-perception_run-01_bold.nii.gz"
    raw = gzip.decompress(bold.read_bytes())
    half = len(raw) // 2
    bold.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    assert _run(bids, tmp_path) == 0
    assert started == [True]


def test_run_too_short_for_the_glm_is_65_before_any_step(tmp_path, capsys, started):
    """A 4-volume run (an aborted acquisition) was preprocessed with the others, then the GLM said "Run 01 has
    only 4 volumes" without naming the task or the file."""
    bids = make_minimal_bids(tmp_path / "bids", n_volumes=4)
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"])
    err = capsys.readouterr().err
    assert code == 65, err
    assert "sub-01_task-perception_run-01_bold.nii.gz has only 4 volumes" in err and started == []
    assert _run(bids, tmp_path) == 0  # --stop-after preproc: fine
