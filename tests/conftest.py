"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_environment():
    """The app redirects caches through environment variables: keep tests independent."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def minimal_bids(tmp_path):
    from helpers import make_minimal_bids

    return make_minimal_bids(tmp_path / "bids")


@pytest.fixture
def started(monkeypatch):
    """Stub out the participant workflows: a check that must stop the run before any step leaves this empty."""
    import bids_m2i.workflows.base as base

    calls = []
    monkeypatch.setattr(base, "run_participant_workflows", lambda *args, **kwargs: calls.append(True))
    return calls


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The simulator's tiny preset (seconds to make), shared by the tests of a session. Read-only by
    convention: tests that modify a dataset copy it first."""
    from bids_m2i.simulate.dataset import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("sim") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_preproc_run(tiny_dataset, tmp_path_factory):
    """``m2i tiny out participant --stop-after preproc``, run once per session."""
    from bids_m2i.cli.run import run_cli

    root = tmp_path_factory.mktemp("preproc_run")
    out, work = root / "out", root / "work"
    code = run_cli([str(tiny_dataset), str(out), "participant", "-w", str(work), "--stop-after", "preproc",
                    "--nprocs", "2", "--omp-nthreads", "1"])
    return {"code": code, "out": out, "work": work, "bids": tiny_dataset}


@pytest.fixture(scope="session")
def tiny_full_run(tiny_dataset, tmp_path_factory):
    """The whole participant pipeline with the defaults on the tiny preset, run once per session."""
    from bids_m2i.cli.run import run_cli

    root = tmp_path_factory.mktemp("full_run")
    out, work = root / "out", root / "work"
    code = run_cli([str(tiny_dataset), str(out), "participant", "-w", str(work), "--nprocs", "2",
                    "--omp-nthreads", "1"])
    return {"code": code, "out": out, "work": work, "bids": tiny_dataset}
