"""The single-trial GLM node's memory: its share of --mem-gb under MultiProc, and a peak resident size within
its budget with the process' own baseline (python, numpy, torch, nipype) counted."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bids_m2i.interfaces.glm import ENGINE_SHARE, engine_memory_gb
from bids_m2i.workflows.glm import glm_node_budget_gb


def test_budget_is_the_share_of_the_glm_nodes_that_can_run_together():
    # 4 processes of 1 thread, 6 GLM nodes: 4 may run at once, each gets a quarter
    assert glm_node_budget_gb(8.0, 4, 1, 6) == pytest.approx(2.0)
    # 2 GLM nodes only: each gets half
    assert glm_node_budget_gb(8.0, 4, 1, 2) == pytest.approx(4.0)
    # 2 threads per node on 4 processes: 2 at once
    assert glm_node_budget_gb(8.0, 4, 2, 6) == pytest.approx(4.0)
    # one process: the whole budget
    assert glm_node_budget_gb(8.0, 1, 1, 6) == pytest.approx(8.0)
    # a node that needs more than its share gets it (MultiProc then runs fewer beside it), never more than all
    assert glm_node_budget_gb(8.0, 4, 1, 6, need_gb=3.0) == pytest.approx(3.0)
    assert glm_node_budget_gb(8.0, 4, 1, 6, need_gb=30.0) == pytest.approx(8.0)


def test_engine_plans_against_budget_less_baseline_and_one_raw_run():
    assert engine_memory_gb(4.0, 0.6, 0.4) == pytest.approx(3.0 * ENGINE_SHARE)
    assert engine_memory_gb(1.0, 0.9, 0.5) == pytest.approx(0.05)  # the engine then refuses with the sizes


def test_workflow_declares_the_budget_to_multiproc(tmp_path):
    from nipype.pipeline import engine as pe

    from bids_m2i.bids.inputs import collect_inputs
    from bids_m2i.config import build_config
    from bids_m2i.workflows.base import init_m2i_wf
    from helpers import make_minimal_bids

    bids = make_minimal_bids(tmp_path / "bids", tasks=("a", "b", "c"), runs=("01", "02"))
    values = {"stop_after": "glm", "nprocs": 2, "mem_gb": 6.0, "skip_bids_validation": True}
    config = build_config(bids, tmp_path / "out", "participant", values, set(values))
    workflow = init_m2i_wf(config, collect_inputs(config, tmp_path / "work"), tmp_path / "work")
    glm_nodes = [n for n in workflow._create_flat_graph().nodes() if isinstance(n, pe.Node)
                 and n.name == "estimate_betas"]
    assert len(glm_nodes) == 3
    for node in glm_nodes:  # 3 GLMs, 2 processes: 2 at once, 3 GB each
        assert node.mem_gb == pytest.approx(3.0)
        assert node.inputs.mem_gb == pytest.approx(3.0)


def _bench():
    """``benchmarks/bench_glm_node_memory.py``: its child process and its session writer are what these tests run
    (the benchmark is the same measurement at NSD size)."""
    from pathlib import Path

    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    import bench_glm_node_memory

    return bench_glm_node_memory


def test_peak_rss_within_a_budget_that_forces_chunking(tmp_path):
    """A fresh process runs the GLM node on 40,000 voxels x 3 runs with 0.45 GB above its own baseline: the
    engine must work in chunks, and the process' peak resident size stays within the budget."""
    bench, n_voxels = _bench(), 40_000
    tr = bench.write_session(tmp_path, n_voxels, n_runs=3, n_volumes=150, n_stimuli=40, seed=3)
    proc = subprocess.run([sys.executable, "-c", bench.CHILD, str(tmp_path), "0.45", str(tr)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["plan"]["chunk_voxels"] < n_voxels, report  # the budget forced chunks
    assert report["peak_gb"] <= report["budget_gb"], report


def test_a_budget_too_small_for_the_engine_says_how_the_share_was_split(tmp_path):
    """The engine's message names the budget it was given; the node adds where that figure came from (its
    share of --mem-gb, the process baseline, one raw run), so a user can see which --mem-gb would do."""
    from bids_m2i.errors import UsageError
    from bids_m2i.interfaces.glm import SingleTrialBetas, process_rss_gb

    tr = _bench().write_session(tmp_path, 4_000, n_runs=3, n_volumes=60, n_stimuli=12, seed=1)
    runs = sorted(tmp_path.glob("run-*_bold.nii"))
    budget = process_rss_gb() + 0.005  # 5 MB above this process' own size: nothing left for the engine
    node = SingleTrialBetas(bold_files=[str(p) for p in runs],
                            confounds_files=[str(p).replace("_bold.nii", "_confounds.tsv") for p in runs],
                            mask=str(tmp_path / "mask.nii"), trials=str(tmp_path / "trials.tsv"),
                            run_labels=[p.name[len("run-"):-len("_bold.nii")] for p in runs],
                            trs=[tr] * len(runs), method="fithrf-denoise-rr", mem_gb=budget)
    (tmp_path / "node").mkdir()
    with pytest.raises(UsageError) as caught:
        node._run_interface(SimpleNamespace(cwd=str(tmp_path / "node"), returncode=0))
    text = str(caught.value)
    assert "needs at least" in text and f"share of --mem-gb ({budget:.2f} GB)" in text and "raw run" in text
