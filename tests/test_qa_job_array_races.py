"""Participant jobs of a job array, started in the same second into one OUTPUT_DIR with one -w, must each
report their own failure and keep their own log.

Before: the nodes' error records went to ``-w/errors/<UTC second>`` and the fallback read the newest
``crash-*`` file of the shared ``OUTPUT_DIR/logs``: a job could stop with the exit code and message of
another job's failure (e.g. 74 "No space left" for a job whose own events were bad)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from bids_m2i.errors import BadDataError, ProcessingIOError
from bids_m2i.workflows import base


def _error_dir_of_a_job(work: str, now: float) -> str:
    from bids_m2i.workflows.base import run_error_dir

    return str(run_error_dir(Path(work), now=now))


def test_jobs_of_one_second_record_errors_in_folders_of_their_own(tmp_path):
    now = time.time()
    # one pool per job: a pool of two may hand both calls to the same worker process (seen under load)
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as first, context.Pool(1) as second:
        pending = [pool.apply_async(_error_dir_of_a_job, (str(tmp_path), now)) for pool in (first, second)]
        folders = [result.get(timeout=120) for result in pending]
    assert folders[0] != folders[1]
    assert all(Path(f).parent == tmp_path / "errors" for f in folders)


def _crash_file(logs: Path, name: str, node: str, text: str) -> Path:
    path = logs / name
    path.write_text(f"Node: {node}\nWorking directory: /w/{node}\n\nTraceback (most recent call last):\n"
                    f"  File \"x.py\", line 1\n{text}\n")
    return path


def test_another_jobs_crash_file_is_not_reported_as_ours(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    started = time.time()
    ours = _crash_file(logs, "crash-20261202-080000-u-estimate_betas-a.txt", "m2i_wf.sub_01_wf.estimate_betas",
                       "ValueError: ours went wrong")
    # another participant's job failed a second later, into the same logs folder
    _crash_file(logs, "crash-20261202-080001-u-resample-b.txt", "m2i_wf.sub_02_wf.preproc_wf.resample",
                "OSError: [Errno 28] No space left on device")
    error = base._error_from_records(tmp_path / "none", logs, RuntimeError("x"), since=started,
                                     workflows=["sub_01_wf"])
    assert not isinstance(error, ProcessingIOError)
    assert "ours went wrong" in error.message and ours.name in error.message


def test_crash_files_of_earlier_runs_are_not_reported(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    old = _crash_file(logs, "crash-20261201-080000-u-x-a.txt", "m2i_wf.sub_01_wf.x", "OSError: [Errno 13] denied")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    error = base._error_from_records(tmp_path / "none", logs, RuntimeError("the workflow failed"),
                                     since=time.time(), workflows=["sub_01_wf"])
    assert "crash file" not in error.message and "the workflow failed" in error.message
    assert error.exit_code == 1


@pytest.mark.parametrize("line", [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 15.7 GiB total capacity)",
    "RuntimeError: Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you must use"])
def test_a_gpu_failure_says_so_and_how_to_run_without_it(tmp_path, line):
    logs = tmp_path / "logs"
    logs.mkdir()
    _crash_file(logs, "crash-20261204-080000-u-estimate_betas-a.txt", "m2i_wf.sub_01_wf.estimate_betas", line)
    error = base._error_from_records(tmp_path / "none", logs, RuntimeError("x"), since=time.time() - 5,
                                     workflows=["sub_01_wf"])
    assert error.message.startswith("A processing step failed on the GPU: ") and "--device cpu" in error.hint
    assert error.exit_code == 1


def test_records_of_the_run_give_its_exit_code(tmp_path, monkeypatch):
    from bids_m2i.interfaces.base import record_error

    folder = base.run_error_dir(tmp_path)
    monkeypatch.setenv("M2I_ERROR_DIR", str(folder))
    record_error(BadDataError("bad events"), "EstimateBetas")
    error = base._error_from_records(folder, tmp_path, RuntimeError("x"), since=time.time(), workflows=[])
    assert error.exit_code == 65 and error.message == "bad events"


def test_jobs_of_one_second_with_the_same_participant_keep_their_own_log_and_config(tmp_path, monkeypatch):
    """An array over sessions (same --participant-label, another --session-label per task) started in one
    second: both appended to one log and the second config replaced the first."""
    import tomllib

    from helpers import make_minimal_bids

    from bids_m2i.cli import runner
    from bids_m2i.cli.run import run_cli

    bids = make_minimal_bids(tmp_path / "bids", subjects=("01",))
    monkeypatch.setattr(runner.time, "strftime", lambda fmt, *args: "20260102T030405Z")
    for session in ("a", "b"):  # no such sessions: each run stops with 18 after writing its log and config
        code = run_cli([str(bids), str(tmp_path / "out"), "participant", "--participant-label", "01",
                        "--session-label", session, "--skip-bids-validation", "-w", str(tmp_path / "work")])
        assert code == 18
    logs = tmp_path / "out" / "logs"
    assert sorted(p.name for p in logs.glob("m2i-participant-*.log")) == [
        "m2i-participant-20260102T030405Z-2_sub-01.log", "m2i-participant-20260102T030405Z_sub-01.log"]
    sessions = {p.name: tomllib.loads(p.read_text())["bids"]["session_label"] for p in logs.glob("config-*.toml")}
    assert sessions == {"config-20260102T030405Z_sub-01.toml": ["a"], "config-20260102T030405Z-2_sub-01.toml": ["b"]}
    first = (logs / "m2i-participant-20260102T030405Z_sub-01.log").read_text()
    assert "Session(s) a not found" in first and "Session(s) b" not in first


def test_a_second_run_of_a_participant_in_one_work_dir_is_refused(tmp_path, started, capsys):
    """A job resubmitted while the first still runs (or a label twice in an array) ran the same nipype nodes in
    the same work-dir folders at once, each deleting the other's results. Now the second is 64 at start-up."""
    import fcntl

    from helpers import make_minimal_bids

    from bids_m2i.cli.run import run_cli

    bids = make_minimal_bids(tmp_path / "bids", subjects=("01", "02"))
    work = tmp_path / "work"
    args = [str(bids), str(tmp_path / "out"), "participant", "-w", str(work), "--skip-bids-validation",
            "--stop-after", "preproc"]
    assert run_cli(args) == 0 and len(started) == 1  # the locks of a run are released when it ends
    holder = open(work / "locks" / "sub-02.lock", "a+")  # another process's run of sub-02, still going
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert run_cli(args) == 64
        err = capsys.readouterr().err
        assert "Another m2i run is processing sub-02" in err and "-w" in err and len(started) == 1
        assert run_cli([*args, "--participant-label", "01"]) == 0 and len(started) == 2  # other participants run
    finally:
        holder.close()
    assert run_cli(args) == 0 and len(started) == 3


def test_clean_workdir_accepts_the_locks_folder(tmp_path):
    from types import SimpleNamespace

    from bids_m2i.cli.runner import check_work_dir_is_ours, prepare_work_dir

    work = tmp_path / "work"
    prepare_work_dir(SimpleNamespace(work_dir=str(work), clean_workdir=False))
    (work / "locks").mkdir()
    (work / "locks" / "sub-01.lock").touch()
    check_work_dir_is_ours(work)  # no UsageError: m2i made it


def test_the_participant_lock_is_released_even_when_a_forked_worker_lives_on(tmp_path):
    """nipype's MultiProc workers are forked while the run holds its locks and, after a failed node, may outlive
    the run in the same process: the lock must not stay with them (a rerun in that process was refused)."""
    import fcntl

    from bids_m2i.cli.runner import participants_locked

    with participants_locked(tmp_path, ["01"]):
        child = os.fork()
        if child == 0:  # a worker that shares the locked file and lives on
            time.sleep(5)
            os._exit(0)
    try:
        probe = open(tmp_path / "locks" / "sub-01.lock", "a+")
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the worker still held it
        probe.close()
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
