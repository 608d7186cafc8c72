"""A rerun with the same work dir restores a complete derivatives dataset.

nipype skips the nodes whose results are in the work dir, and these nodes are the ones that publish into
OUTPUT_DIR: derivatives deleted (or replaced) since the first run never came back, and the report of the
rerun described files that were not there. Now a node found finished publishes its files again from its
results (computing nothing), and a node whose hard-linked work-dir result was edited in place runs again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bids_m2i.cli.run import run_cli
from bids_m2i.interfaces.derivatives import recording_publications, restore_publications


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and "logs" not in p.relative_to(out).parts}


def _results(work: Path) -> dict[str, int]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}


def test_restore_publications_unit(tmp_path):
    """The manifest a node leaves names every file and sidecar it published; deleted or replaced ones come
    back with the same bytes, unchanged ones are not touched."""
    from bids_m2i.interfaces.derivatives import (publish_derivative, recording_publications,
                                                 restore_publications)

    node = tmp_path / "work" / "node"
    node.mkdir(parents=True)
    src = node / "statseries.nii.gz"
    src.write_bytes(b"betas")
    out = tmp_path / "out"
    with recording_publications(node):
        written = publish_derivative(src, str(out), entities={"subject": "01", "task": "a", "stat": "effect",
                                                               "desc": "lss"},
                                     suffix="statseries", extension=".nii.gz", datatype="func",
                                     metadata={"Method": "lss"})
    data, sidecar = (Path(p) for p in written)
    sidecar_text = sidecar.read_text()
    assert restore_publications(node) == ([], [])  # nothing to do
    data.unlink()
    sidecar.unlink()
    restored, stale = restore_publications(node)
    assert sorted(restored) == sorted(written) and stale == []
    assert data.read_bytes() == b"betas" and sidecar.read_text() == sidecar_text
    # a file replaced by another (a new inode) is put back; the work-dir result is intact
    data.unlink()
    data.write_bytes(b"something else")
    assert restore_publications(node)[0] == [str(data)]
    assert data.read_bytes() == b"betas"
    # edited in place through the hard link: the work-dir result changed too, nothing to restore from
    with open(data, "r+b") as fh:
        fh.write(b"BETAS, edited")
    assert restore_publications(node) == ([], [str(data)])


@pytest.fixture(scope="module")
def glm_run(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("qa_rerun")
    out, work = root / "out", root / "work"
    args = [str(tiny_dataset), str(out), "participant", "-w", str(work), "--stop-after", "glm",
            "--glm", "lsa", "--nprocs", "2", "--omp-nthreads", "1"]
    assert run_cli(args) == 0
    return {"args": args, "out": out, "work": work}


def test_rerun_restores_deleted_and_replaced_outputs_without_recomputing(glm_run):
    out, work = glm_run["out"], glm_run["work"]
    before, results = _snapshot(out), _results(work)
    assert any("statseries.nii.gz" in k for k in before) and "sub-01.html" in before
    shutil.rmtree(out / "sub-01" / "func")
    (out / "sub-01.html").unlink()
    figure = next((out / "sub-01" / "figures").glob("*.svg"))
    figure.unlink()
    figure.write_text("<svg/>")  # replaced by the user: a new file under the same name
    assert run_cli(glm_run["args"]) == 0
    assert _snapshot(out) == before
    after = _results(work)
    assert sorted(k for k in after if after[k] != results[k]) == []  # nothing computed again


def test_rerun_after_an_in_place_edit_recomputes_that_step(glm_run):
    """``pandas.to_csv(path)`` or ``echo > path`` on a hard-linked derivative writes into the work-dir result
    too: the rerun must not trust it (it used to feed the edited table to the next steps)."""
    out, work = glm_run["out"], glm_run["work"]
    before = _snapshot(out)
    events = next((out / "sub-01" / "func").glob("*task-perception_desc-lsa_events.tsv"))
    with open(events, "w") as fh:  # truncates the shared inode
        fh.write("edited\n")
    results = _results(work)
    assert run_cli(glm_run["args"]) == 0
    assert events.read_bytes() == before[str(events.relative_to(out))]
    after = _results(work)
    rerun = sorted(k for k in after if after[k] != results[k])
    assert any("single_trial_task_perception" in k and "estimate_betas" in k for k in rerun), rerun
    assert not any("hmc_" in k or "resample_" in k for k in rerun), rerun


def test_restore_publications_with_copies(tmp_path, monkeypatch):
    """OUTPUT_DIR on another file system than the work dir: outputs are copies; a deleted one comes back with
    the published modification time (nipype then sees the steps after it unchanged), an intact one is only
    looked at."""
    import os

    from bids_m2i.interfaces.derivatives import publish_file

    def no_links(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    node = tmp_path / "node"
    node.mkdir()
    src = node / "table.tsv"
    src.write_text("a\tb\n1\t2\n")
    dst = tmp_path / "out" / "sub-01" / "sub-01_desc-x_table.tsv"
    with recording_publications(node):
        publish_file(src, dst)
    assert not os.path.samefile(src, dst)
    published = dst.stat().st_mtime_ns
    assert restore_publications(node) == ([], [])
    dst.unlink()
    assert restore_publications(node) == ([str(dst)], [])
    assert dst.read_text() == src.read_text() and dst.stat().st_mtime_ns == published
