"""A run's lifecycle on a cluster (qa27): the whole job signalled, a killed run's temporaries, a full disk under
MultiProc, OUTPUT_DIR and the work dir on different file systems, OUTPUT_DIR through a link or with spaces and
accents in its path.

Earlier passes covered SIGTERM to the main process and SIGKILL of the group (``test_reliability_runs.py``),
job arrays sharing folders (``test_qa_concurrent_jobs.py``, ``test_qa_job_array_races.py``) and reruns
(``test_qa_rerun_publish.py``). The tests that mount a small tmpfs need root and ``mount``; they skip otherwise
and always unmount.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bids_m2i.cli.run import run_cli
from helpers import group_alive, kill_group

OPTIONS = ["--skip-bids-validation", "--nprocs", "2", "--omp-nthreads", "1", "--seed", "0"]
DATA_SUFFIXES = (".nii.gz", ".tsv", ".npy", ".png", ".safetensors")


def data_checksums(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name.endswith(DATA_SUFFIXES) and not str(p.relative_to(out)).startswith("logs")}


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


@contextlib.contextmanager
def small_tmpfs(mountpoint: Path, size: str):
    """A tmpfs of ``size`` at ``mountpoint`` (skip without root or mount), always unmounted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount")
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def start_m2i(bids: Path, out: Path, work: Path, *extra: str) -> subprocess.Popen:
    """m2i in its own process group (as a batch job), its stderr kept for the checks (``-vv`` puts nipype's
    node messages in the log, which the interruption tests wait for)."""
    return subprocess.Popen([sys.executable, "-m", "bids_m2i.cli.run", str(bids), str(out), "participant", "-w",
                             str(work), *OPTIONS, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_log(process: subprocess.Popen, out: Path, needle: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in (out / "logs").glob("m2i-participant-*.log"):
            if needle in log.read_text(errors="replace"):
                return
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before {needle!r}")
        time.sleep(0.02)
    raise AssertionError(f"{needle!r} never appeared in the log")


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
    """One uninterrupted run with the options of the interrupted ones."""
    root = tmp_path_factory.mktemp("lifecycle_ref")
    code = run_cli([str(tiny_dataset), str(root / "out"), "participant", "-w", str(root / "work"), *OPTIONS])
    assert code == 0
    return data_checksums(root / "out")


# ----------------------------------------------------------------------------------------------------------
# 1. the whole job signalled: SLURM's time limit / scancel (SIGTERM to every process), Ctrl-C (SIGINT to the
#    terminal's foreground group)


@pytest.mark.parametrize("signal_number, code, word", [
    (signal.SIGTERM, 143, "Terminated"),
    (signal.SIGHUP, 129, "Hangup"),  # the ssh session of an interactive run closed
    pytest.param(signal.SIGINT, 130, "Interrupted", marks=pytest.mark.slow),
])
def test_whole_job_signalled_stops_without_traceback_and_resumes_identically(
        tiny_dataset, reference, tmp_path, signal_number, code, word):
    """Before the fix: the idle MultiProc worker died with a traceback on the terminal (the main process's
    SIGTERM handler inherited through fork, or KeyboardInterrupt, raised while it waited for a job); SIGHUP
    killed the run at once (exit -1), its log ending mid-step without a word."""
    out, work = tmp_path / "out", tmp_path / "work"
    process = start_m2i(tiny_dataset, out, work, "-vv")
    try:
        # one node runs, the other worker waits: the state SLURM's time limit meets most of the time
        wait_for_log(process, out, '[Node] Executing "decode_fit"')
        os.killpg(process.pid, signal_number)
        _, stderr = process.communicate(timeout=60)
        survivors = group_alive(process.pid, 3.0)
    finally:
        kill_group(process)
    assert process.returncode == code, stderr[-3000:]
    assert word in stderr and "same work dir" in stderr
    log = sorted((out / "logs").glob("m2i-participant-*.log"))[-1].read_text()
    assert word in log  # what the user reads when the terminal is gone
    assert "Traceback" not in stderr, stderr[stderr.find("Traceback"):][:3000]
    assert not survivors, "worker processes outlived the main process"
    assert temporaries(out) == []
    assert run_cli([str(tiny_dataset), str(out), "participant", "-w", str(work), *OPTIONS]) == 0
    assert data_checksums(out) == reference


def test_under_nohup_a_hangup_does_not_stop_the_run(tiny_dataset, tmp_path):
    """``nohup m2i ...``: SIGHUP ignored, as the user asked (m2i catches it only where it would kill the run)."""
    out, work = tmp_path / "out", tmp_path / "work"
    process = subprocess.Popen([sys.executable, "-m", "bids_m2i.cli.run", str(tiny_dataset), str(out), "participant",
                                "-w", str(work), *OPTIONS, "-vv", "--stop-after", "glm"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        wait_for_log(process, out, '[Node] Executing "estimate_betas"')
        os.killpg(process.pid, signal.SIGHUP)
        _, stderr = process.communicate(timeout=120)
    finally:
        kill_group(process)
    assert process.returncode == 0, stderr[-3000:]
    assert sorted(out.rglob("*_statseries.nii.gz"))


# ----------------------------------------------------------------------------------------------------------
# 1b. a killed run's temporaries: swept by the next run, never those of a live job

WRITER = textwrap.dedent("""
    import os, signal, sys, time
    from bids_m2i.utils.atomic import atomic_path
    target, mode = sys.argv[1], sys.argv[2]
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"half a NIfTI" * 1000)
            fh.flush()
            print(tmp, flush=True)
            if mode == "die":
                os.kill(os.getpid(), signal.SIGKILL)  # as SLURM's SIGKILL 30 s after the time limit
            sys.stdin.readline()  # "live": a job still writing, until the test says so
            fh.write(b"the rest")
""")


def start_writer(target: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target), mode], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    return process, Path(process.stdout.readline().strip())


def test_temporaries_of_a_killed_run_are_swept_but_not_a_live_jobs(tiny_dataset, tmp_path, monkeypatch):
    """Before the fix: the temporary of a writer killed mid-write stayed in OUTPUT_DIR for good (half a file
    under a hidden name, counted by ``du``, copied by rsync, listed by ``ls -a``)."""
    import bids_m2i.utils.atomic as atomic

    out, work = tmp_path / "out", tmp_path / "work"
    run = [str(tiny_dataset), str(out), "participant", "-w", str(work), *OPTIONS, "--stop-after", "preproc"]
    assert run_cli(run) == 0
    func = out / "sub-01" / "func"
    final = next(func.glob("*desc-preproc_bold.nii.gz"))
    killed, killed_tmp = start_writer(final, "die")
    killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL and killed_tmp.exists()
    safetensors_tmp = out / "sub-01" / ".tmpAb3dE9"  # what safetensors' save_file leaves when killed
    safetensors_tmp.write_bytes(b"half")
    # another job writing into this OUTPUT_DIR right now (an array task of the same participant with another -w)
    live, live_tmp = start_writer(func / "sub-01_desc-other_mask.nii.gz", "live")
    users_file = func / ".notes.tmp"  # not a name m2i gives its temporaries
    users_file.write_text("mine")
    other_participant = out / "sub-02" / ".sub-02_x.abcd1234.tmp.nii.gz"  # not this run's folder
    other_participant.parent.mkdir()
    other_participant.write_bytes(b"x")
    try:
        # a fresh temporary stays (a writer may be between two of its steps): swept once older than this
        assert atomic.remove_stale_temporaries(out) == []
        monkeypatch.setattr(atomic, "STALE_AFTER_S", 0.0)  # as if resubmitted a while after the kill
        assert run_cli(run) == 0
        assert not killed_tmp.exists() and not safetensors_tmp.exists()
        assert live_tmp.exists(), "the temporary of a live job was deleted"
        assert users_file.exists() and other_participant.exists()
        logs = sorted((out / "logs").glob("m2i-participant-*.log"))
        assert "half-written temporary file(s) left by an interrupted run" in logs[-1].read_text()
    finally:
        live.communicate("go\n", timeout=30)
    assert live.returncode == 0
    assert (func / "sub-01_desc-other_mask.nii.gz").read_bytes().endswith(b"the rest")


# ----------------------------------------------------------------------------------------------------------
# 2. disk full


FULL_WHILE_NIPYPE_STORES_A_RESULT = textwrap.dedent("""
    import errno, os, sys
    import nipype.pipeline.engine.utils as engine_utils
    save = engine_utils.savepkl
    def full_disk(filename, *args, **kwargs):  # in the workers too: they are forked from this process
        if "result_estimate_betas" in str(filename):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return save(filename, *args, **kwargs)
    engine_utils.savepkl = full_disk
    sys.argv[0] = "m2i"
    from bids_m2i.cli.run import main
    main()
""")


def _run_or_hang(command: list[str], timeout: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(process)
        process.communicate()
        pytest.fail(f"the run hung (killed after {timeout:.0f} s)")
    finally:
        kill_group(process)
    return process, stderr


def test_disk_full_while_a_worker_stores_a_result_is_74_naming_the_work_dir_not_a_hang(tiny_dataset, tmp_path):
    """Before the fix: nipype's worker could neither store the node's result file (ENOSPC) nor read it back
    (FileNotFoundError), nipype's callback raised in the pool's thread, and MultiProc (the default plugin) waited
    for that node forever: the job hung until its time limit. (The Linear plugin, which the earlier test of this
    case used, has no callback.) Seen first with a real 2 MB tmpfs as the work dir."""
    out, work = tmp_path / "out", tmp_path / "work"
    process, stderr = _run_or_hang([sys.executable, "-c", FULL_WHILE_NIPYPE_STORES_A_RESULT, str(tiny_dataset),
                                    str(out), "participant", "-w", str(work), *OPTIONS, "--stop-after", "glm"],
                                   timeout=90)
    assert process.returncode == 74, stderr[-3000:]
    assert "No space left" in stderr and f"the work dir {work}" in stderr
    assert "Traceback" not in stderr
    assert temporaries(out) == []


def test_full_work_dir_on_a_real_small_disk_is_74(tiny_dataset, tmp_path):
    """A 2 MB tmpfs as the work dir. Which write meets the full disk first depends on timing: a step's own
    output (74 from the step) or nipype's result file (the hang above, before its fix)."""
    out = tmp_path / "out"
    with small_tmpfs(tmp_path / "small", "2m") as small:
        work = small / "work"
        try:
            process, stderr = _run_or_hang([sys.executable, "-m", "bids_m2i.cli.run", str(tiny_dataset), str(out),
                                            "participant", "-w", str(work), *OPTIONS], timeout=120)
        finally:
            time.sleep(0.5)  # the killed workers must let go of the mount
    assert process.returncode == 74, stderr[-3000:]
    assert "No space left" in stderr and str(work) in stderr
    assert "Traceback" not in stderr
    assert temporaries(out) == []


def test_full_output_dir_is_74_naming_the_file_with_nothing_half_written(tiny_dataset, tmp_path):
    """Behaved before this pass (kept as a check with a real full disk, not a patched writer)."""
    with small_tmpfs(tmp_path / "small", "2m") as small:
        out = small / "out"
        process = start_m2i(tiny_dataset, out, tmp_path / "work")
        try:
            _, stderr = process.communicate(timeout=120)
        finally:
            kill_group(process)
        assert process.returncode == 74, stderr[-3000:]
        assert "No space left" in stderr and str(out) in stderr
        assert "Traceback" not in stderr
        assert temporaries(out) == []


# ----------------------------------------------------------------------------------------------------------
# 3. OUTPUT_DIR and the work dir on different file systems; 4. OUTPUT_DIR through a link, spaces, accents


def test_output_dir_on_another_file_system_gets_copies_and_restores_them(tiny_dataset, tmp_path):
    """Behaved before this pass: a hard link across devices fails (EXDEV) and publishing copies instead."""
    with small_tmpfs(tmp_path / "other_fs", "64m") as other:
        out, work = other / "out", tmp_path / "work"
        run = [str(tiny_dataset), str(out), "participant", "-w", str(work), *OPTIONS, "--stop-after", "preproc"]
        assert run_cli(run) == 0
        published = sorted(out.rglob("*desc-preproc_bold.nii.gz"))
        assert published and all(p.stat().st_dev != work.stat().st_dev for p in published)
        before = data_checksums(out)
        published[0].unlink()
        assert run_cli(run) == 0
        assert data_checksums(out) == before
        assert temporaries(out) == []


def test_output_dir_through_a_link_with_spaces_and_accents(tiny_dataset, tmp_path):
    real = tmp_path / "real folder" / "dérivées ü"
    real.mkdir(parents=True)
    link = tmp_path / "out link"
    link.symlink_to(real)
    run = [str(tiny_dataset), str(link), "participant", "-w", str(tmp_path / "wörk dir"), *OPTIONS,
           "--stop-after", "preproc"]
    assert run_cli(run) == 0
    assert link.is_symlink() and sorted(real.rglob("*desc-preproc_bold.nii.gz"))
    before = data_checksums(real)
    assert run_cli(run) == 0  # rerun through the link: nothing rewritten
    assert data_checksums(real) == before and temporaries(real) == []


@pytest.mark.parametrize("which", ["OUTPUT_DIR", "work dir"])
def test_a_link_to_a_folder_that_does_not_exist_names_the_link_and_its_target(tiny_dataset, tmp_path, capsys, which):
    """``ln -s /scratch/$USER/out out`` before the scratch folder exists (or after a purge). Before the fix: 64
    "OUTPUT_DIR out is an existing file, not a folder"."""
    target = tmp_path / "scratch" / "m2i"
    link = tmp_path / "link"
    link.symlink_to(target)
    out, work = (link, tmp_path / "work") if which == "OUTPUT_DIR" else (tmp_path / "out", link)
    code = run_cli([str(tiny_dataset), str(out), "participant", "-w", str(work), *OPTIONS, "--stop-after", "preproc"])
    err = capsys.readouterr().err
    assert code == 73, err
    assert "symbolic link" in err and str(target) in err and "existing file" not in err
    assert not target.exists() and not (tmp_path / "scratch").exists()  # nothing created where the link points
