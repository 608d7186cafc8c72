"""``--clean-workdir`` never deletes anything but a work dir.

It ran ``shutil.rmtree`` on whatever -w named: ``m2i data/bids out participant -w data --clean-workdir`` (or
``-w .`` from the project folder) deleted the input dataset, and ``-w ~`` a home folder. Now it refuses (exit 64,
before anything is written) a work dir that holds BIDS_DIR or OUTPUT_DIR, or files m2i did not make; m2i marks
its work dirs. ``-w OUTPUT_DIR`` (nipype's folders inside the derivatives dataset) is refused too.
"""

from __future__ import annotations

from pathlib import Path

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(bids, out, work, *extra):
    return run_cli([str(bids), str(out), "participant", "-w", str(work), "--skip-bids-validation",
                    "--stop-after", "preproc", *extra])


def test_work_dir_holding_the_input_is_not_emptied(tmp_path, capsys, started):
    project = tmp_path / "project"
    bids = make_minimal_bids(project / "bids")
    before = _files(project)
    assert _run(bids, tmp_path / "out", project, "--clean-workdir") == 64
    assert "would delete BIDS_DIR" in capsys.readouterr().err
    assert _files(project) == before and started == [] and not (tmp_path / "out").exists()


def test_work_dir_holding_the_output_is_not_emptied(tmp_path, capsys, started):
    bids = make_minimal_bids(tmp_path / "bids")
    results = tmp_path / "scratch" / "out" / "sub-01.html"
    results.parent.mkdir(parents=True)
    results.write_text("earlier results")
    assert _run(bids, tmp_path / "scratch" / "out", tmp_path / "scratch", "--clean-workdir") == 64
    assert "would delete OUTPUT_DIR" in capsys.readouterr().err
    assert results.read_text() == "earlier results"


def test_foreign_folder_is_not_emptied(tmp_path, capsys, started):
    bids = make_minimal_bids(tmp_path / "bids")
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "thesis.tex").write_text("years of work")
    assert _run(bids, tmp_path / "out", home, "--clean-workdir") == 64
    assert "holds files m2i did not make (docs)" in capsys.readouterr().err
    assert (home / "docs" / "thesis.tex").read_text() == "years of work"


def test_work_dir_equal_to_output_is_64(tmp_path, capsys, started):
    bids = make_minimal_bids(tmp_path / "bids")
    assert _run(bids, tmp_path / "out", tmp_path / "out") == 64
    assert "The work dir is OUTPUT_DIR" in capsys.readouterr().err


def test_an_m2i_work_dir_is_emptied(tmp_path, started):
    bids = make_minimal_bids(tmp_path / "bids")
    work = tmp_path / "work"
    assert _run(bids, tmp_path / "out", work) == 0
    assert (work / ".m2i-workdir").exists()
    (work / "m2i_wf" / "stale").mkdir(parents=True)
    (work / "notes.txt").write_text("kept? no: the folder is marked as m2i's")
    assert _run(bids, tmp_path / "out", work, "--clean-workdir") == 0
    assert not (work / "m2i_wf" / "stale").exists() and not (work / "notes.txt").exists()
    # an unmarked work dir of an earlier version, holding only what m2i makes, is emptied too
    (work / ".m2i-workdir").unlink()
    (work / "m2i_wf" / "stale").mkdir(parents=True)
    assert _run(bids, tmp_path / "out", work, "--clean-workdir") == 0
    assert not (work / "m2i_wf" / "stale").exists()
    assert started == [True] * 3
