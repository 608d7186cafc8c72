"""Reruns and workflow size: a second identical run recomputes nothing, a full run after ``--stop-after glm``
reuses the betas, and the number of nipype nodes grows by at most two per run (it grew by 14 per run, and the
scheduler, not the work, was the cost of many-run datasets)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids


def _results(work: Path) -> dict[str, int]:
    """nipype's result file of every node that ran, with its mtime (rewritten whenever the node runs)."""
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}


def _outputs(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and "logs" not in p.relative_to(out).parts}


@pytest.fixture(scope="module")
def own_full_run(tiny_dataset, tmp_path_factory):
    """A full run of this module's own: the session's ``tiny_full_run`` work dir is reused by other tests with
    other output folders, which (rightly) recomputes the publishing nodes there."""
    root = tmp_path_factory.mktemp("rerun")
    out, work = root / "out", root / "work"
    code = run_cli([str(tiny_dataset), str(out), "participant", "-w", str(work), "--nprocs", "2",
                    "--omp-nthreads", "1"])
    return {"code": code, "out": out, "work": work, "bids": tiny_dataset}


def test_identical_rerun_recomputes_nothing(own_full_run):
    """The whole participant pipeline (decoding included), run again with the same command: no node runs and
    no output file is touched."""
    assert own_full_run["code"] == 0
    out, work = own_full_run["out"], own_full_run["work"]
    results, outputs = _results(work), _outputs(out)
    assert any("estimate_betas" in k for k in results)
    assert all(any(f"decode_{stage}" in k for k in results)
               for stage in ("features", "fit", "predict", "generate", "evaluate"))
    code = run_cli([str(own_full_run["bids"]), str(out), "participant", "-w", str(work), "--nprocs", "2",
                    "--omp-nthreads", "1"])
    assert code == 0
    after = _results(work)
    assert sorted(k for k in after if after[k] != results.get(k)) == []
    touched = _outputs(out)
    assert sorted(k for k in touched if touched[k] != outputs.get(k)) == []


def test_published_outputs_are_links_to_the_work_dir(own_full_run):
    """Preprocessed BOLD and betas exist once on disk: the derivatives file is a hard link to the node's."""
    func = own_full_run["out"] / "sub-01" / "func"
    for path in list(func.glob("*_desc-preproc_bold.nii.gz")) + list(func.glob("*_statseries.nii.gz")):
        assert path.stat().st_nlink == 2, path.name


@pytest.mark.slow
def test_full_run_after_stop_after_glm_reuses_the_betas(tiny_dataset, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    common = [str(tiny_dataset), str(out), "participant", "-w", str(work), "--nprocs", "2", "--omp-nthreads", "1"]
    assert run_cli(common + ["--stop-after", "glm"]) == 0
    before = _results(work)
    assert run_cli(common) == 0
    after = _results(work)
    rerun = sorted(k for k in before if after[k] != before[k])
    assert not [k for k in rerun if "estimate_betas" in k or "hmc_" in k or "resample_" in k], rerun
    assert any("decode_evaluate" in k for k in after)


def _count_nodes(tmp_path: Path, n_runs: int) -> int:
    from nipype.interfaces.utility import IdentityInterface

    from bids_m2i.bids.inputs import collect_inputs
    from bids_m2i.config import build_config
    from bids_m2i.workflows.base import init_m2i_wf

    root = tmp_path / f"runs{n_runs}"
    bids = make_minimal_bids(root / "bids", runs=tuple(f"{i:02d}" for i in range(1, n_runs + 1)))
    values = {"stop_after": "glm", "nprocs": 2, "skip_bids_validation": True}
    config = build_config(bids, root / "out", "participant", values, set(values))
    inputs = collect_inputs(config, root / "work")
    graph = init_m2i_wf(config, inputs, root / "work")._create_flat_graph()
    return sum(1 for node in graph.nodes() if not isinstance(node.interface, IdentityInterface))


def test_nodes_per_run(tmp_path):
    """Workflow size for 2 and 8 runs of one task: at most 2 more nodes per run (motion, resampling)."""
    small, large = _count_nodes(tmp_path, 2), _count_nodes(tmp_path, 8)
    assert (large - small) / 6 <= 2.0, (small, large)
    assert large <= 30, large  # main's layout had 14 nodes per run plus 24 per GLM: 150 here
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_other_code_recomputes_the_work_dir(tiny_dataset, tmp_path, monkeypatch):
    """nipype reuses a node when its inputs' hash matches, whatever code computed it; every m2i node carries
    the installed code's fingerprint among its inputs, so a work dir made by other code (an upgraded m2i) is
    recomputed, while the same code still reuses all of it."""
    import bids_m2i.interfaces.base as base

    out, work = tmp_path / "out", tmp_path / "work"
    command = [str(tiny_dataset), str(out), "participant", "-w", str(work), "--stop-after", "preproc",
               "--nprocs", "1", "--omp-nthreads", "1"]
    assert run_cli(command) == 0
    first = _results(work)
    computed = sorted(k for k in first if "/hmc_" in k or "/resample_" in k or "/grid" in k)
    assert computed, sorted(first)
    assert run_cli(command) == 0
    assert _results(work) == first  # same code: nothing recomputed

    monkeypatch.setattr(base, "code_fingerprint", lambda: "0.1.0+another-build")
    assert run_cli(command) == 0
    again = _results(work)
    assert [k for k in computed if again.get(k) == first[k]] == []


def test_code_fingerprint_follows_the_files(tmp_path):
    from bids_m2i.utils.fingerprint import code_fingerprint

    package = tmp_path / "pkg"
    (package / "sub" / "__pycache__").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.json").write_text("{}")
    (package / "sub" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    first = code_fingerprint(str(package))
    code_fingerprint.cache_clear()
    (package / "sub" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\1")  # byte code: not the code
    assert code_fingerprint(str(package)) == first
    code_fingerprint.cache_clear()
    (package / "sub" / "b.json").write_text('{"k": 1}')
    changed = code_fingerprint(str(package))
    assert changed != first and changed.split("+")[0] == first.split("+")[0]
    code_fingerprint.cache_clear()
    (package / "sub" / "b.json").rename(package / "b.json")  # a moved file is another package
    assert code_fingerprint(str(package)) not in (first, changed)
    code_fingerprint.cache_clear()
