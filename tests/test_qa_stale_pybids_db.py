"""pybids database folders of killed jobs piled up in the work dir (``-w/pybids_db/<host>-<pid>-*``): a job
killed by SIGKILL, the OOM killer or a scheduler's time limit never runs its exit handler. Each process now
holds a lock on ``<folder>.lock`` while it lives, and a new run removes the folders of ended ones, never the
folder of a live job (on this host or on another node sharing the work dir) nor one too young to judge (an
hour for another node's: its lock may not be visible here, as on Lustre mounted with localflock)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bids_m2i.bids.layout import index_dataset, process_database_dir, remove_stale_database_dirs

HOST = socket.gethostname()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _old(folder: Path, lock: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "layout_index.sqlite").write_text("x")
    if lock:
        folder.with_name(folder.name + ".lock").touch()
    past = time.time() - 3600
    os.utime(folder, (past, past))
    return folder


def test_only_the_folders_of_ended_runs_are_removed(tmp_path):
    parent = tmp_path / "pybids_db"
    dead = _old(parent / f"{HOST}-{_dead_pid()}-abc")                     # older version: no lock file
    alive = _old(parent / f"{HOST}-{os.getpid()}-def")                    # this process, no lock file
    elsewhere = _old(parent / f"othernode-{_dead_pid()}-ghi")             # another node, no lock: can't tell
    unlocked = _old(parent / f"othernode-{os.getpid() + 1}-jkl", lock=True)  # its lock is free: ended
    held = _old(parent / "othernode-77-mno", lock=True)
    young = parent / f"{HOST}-{_dead_pid()}-pqr"
    young.mkdir()
    recent = _old(parent / "othernode-78-stu", lock=True)  # free lock, but another node's and only 20 min old
    os.utime(recent, (time.time() - 1200, time.time() - 1200))
    other = _old(parent / "notes")                                        # not ours
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"h = open({str(held) + '.lock'!r}, 'a+'); fcntl.flock(h, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        removed = remove_stale_database_dirs(parent)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(removed) == sorted([dead, unlocked])
    assert not dead.exists() and not unlocked.exists() and not Path(str(unlocked) + ".lock").exists()
    for kept in (alive, elsewhere, held, young, recent, other):
        assert kept.is_dir(), kept.name


def test_a_killed_run_leaves_a_folder_the_next_run_removes(tmp_path, minimal_bids):
    parent = tmp_path / "work" / "pybids_db"
    code = ("import os, signal, sys\n"
            "from bids_m2i.bids.layout import index_dataset\n"
            f"index_dataset({str(minimal_bids)!r}, {str(parent)!r})\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run([sys.executable, "-c", code], env=env)
    assert killed.returncode == -signal.SIGKILL
    left = [p for p in parent.iterdir() if p.is_dir()]
    assert len(left) == 1  # before: it stayed there for good
    past = time.time() - 3600
    os.utime(left[0], (past, past))
    own = process_database_dir(parent)  # what the next run does first
    assert not left[0].exists() and not Path(str(left[0]) + ".lock").exists()
    assert own.is_dir() and Path(str(own) + ".lock").exists()
    # the live folder of this process is never taken for stale, even when old
    os.utime(own, (past, past))
    assert remove_stale_database_dirs(parent) == [] and own.is_dir()
    layout = index_dataset(minimal_bids, parent)
    assert layout.get_subjects() == ["01"]
