"""``--clean-workdir`` in the job script of a job array whose tasks share one -w.

A task starting later emptied the work dir under the tasks still running (their nipype folders, their
trials tables), which then failed in the middle of a step. Every run now holds a shared lock on
``WORK_DIR/.m2i-in-use``; --clean-workdir needs it exclusively and stops with 64 (nothing deleted) while
another run holds it. Without other runs it empties the folder as before.
"""

from __future__ import annotations

import fcntl

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids


def _run(tmp_path, *extra):
    return run_cli([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "preproc", *extra])


def test_clean_workdir_waits_for_no_one_and_deletes_nothing_in_use(tmp_path, capsys, started):
    make_minimal_bids(tmp_path / "bids", n_volumes=12)
    assert _run(tmp_path) == 0  # a first run made the work dir
    running = tmp_path / "work" / "m2i_wf" / "sub_02_wf" / "result.pklz"
    running.parent.mkdir(parents=True)
    running.write_text("another task's step")
    with open(tmp_path / "work" / ".m2i-in-use", "a+") as other_job:  # another task, still running
        fcntl.flock(other_job, fcntl.LOCK_SH)
        assert _run(tmp_path, "--clean-workdir") == 64
        err = capsys.readouterr().err
        assert "another m2i run is using the work dir" in err and running.exists()
        assert _run(tmp_path) == 0  # a run without --clean-workdir shares the work dir
    assert _run(tmp_path, "--clean-workdir") == 0  # that task has ended: emptied as before
    assert not running.exists() and started == [True, True, True]
