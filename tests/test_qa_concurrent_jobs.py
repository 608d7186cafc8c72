"""Participant jobs of an HPC job array started at the same moment, into one OUTPUT_DIR with one -w.

Every job re-created the pybids index in WORK_DIR/pybids_db while the other read it: one job stopped with 65
"Cannot index the BIDS dataset ... (sqlite3.OperationalError) no such table: files ... run the BIDS validator"
(the dataset was fine). Now each process indexes into a database of its own (removed when it ends); both
jobs finish, with one valid dataset_description.json and their own logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import make_minimal_bids

from bids_m2i.bids.layout import index_dataset

REPO = Path(__file__).resolve().parents[1]


def test_two_layouts_in_one_work_dir_use_separate_databases(tmp_path):
    bids = make_minimal_bids(tmp_path / "bids", subjects=("01", "02"), n_volumes=12)
    first = index_dataset(bids, tmp_path / "work" / "pybids_db")
    second = index_dataset(bids, tmp_path / "work" / "pybids_db")  # a second job, the first still reading
    assert first.connection_manager.database_file != second.connection_manager.database_file
    assert first.get_subjects() == ["01", "02"]


def test_two_participant_jobs_at_once_share_output_and_work_dir(tmp_path):
    bids = make_minimal_bids(tmp_path / "bids", subjects=("01", "02"), n_volumes=12)
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    jobs = [subprocess.Popen([sys.executable, "-m", "bids_m2i.cli.run", str(bids), str(out), "participant",
                              "--participant-label", label, "-w", str(work), "--skip-bids-validation",
                              "--stop-after", "preproc", "--nprocs", "1"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for label in ("01", "02")]
    results = [(job.wait(timeout=300), job.stdout.read()) for job in jobs]
    for code, text in results:
        assert code == 0, text[-2000:]
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "m2i"
    for label in ("01", "02"):
        assert list((out / f"sub-{label}" / "func").glob(f"sub-{label}_*desc-preproc_bold.nii.gz"))
        assert len(list((out / "logs").glob(f"m2i-participant-*_sub-{label}.log"))) == 1
    assert not [p for p in (work / "pybids_db").iterdir()]  # each job removed its own index
    # nipype's graph report, fixed names in the shared work dir that every job rewrote at once, is not written
    assert not [p.name for p in (work / "m2i_wf").iterdir() if p.is_file()]


def _prepare_many_times(work: str, times: int) -> str:
    from types import SimpleNamespace

    from bids_m2i.cli.runner import prepare_work_dir
    from bids_m2i.errors import OutputCreateError

    config = SimpleNamespace(work_dir=work, clean_workdir=False)
    try:
        for _ in range(times):
            prepare_work_dir(config)
    except OutputCreateError as exc:
        return str(exc)
    return ""


def test_jobs_starting_at_once_do_not_delete_each_others_write_probe(tmp_path):
    """The start-up check wrote and removed one probe file shared by every job: a job could delete the other's
    probe between its write and its unlink, and that job stopped with 73 "Cannot write to the work dir ...:
    No such file or directory" (seen once in CI). Each process now probes with a name of its own."""
    import multiprocessing

    work = tmp_path / "work"
    # one pool per job, so that four processes really run at once (a shared pool may give one worker every call)
    context = multiprocessing.get_context("spawn")
    pools = [context.Pool(1) for _ in range(4)]
    try:
        pending = [pool.apply_async(_prepare_many_times, (str(work), 300)) for pool in pools]
        errors = [result.get(timeout=300) for result in pending]
    finally:
        for pool in pools:
            pool.terminate()
    assert errors == [""] * 4
    assert sorted(p.name for p in work.iterdir()) == [".m2i-in-use", ".m2i-workdir"]
