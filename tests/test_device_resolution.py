"""--device auto is resolved in the main process without touching CUDA there.

torch refuses CUDA in processes forked from one that asked ``torch.cuda.is_available()`` (it initialises the
driver), and nipype's MultiProc forks the workers that run the steps: asked in the main process, every step
of a GPU machine failed ("Cannot re-initialize CUDA in forked subprocess", seen on an H200)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bids_m2i.utils import torch_runtime
from bids_m2i.workflows import preproc

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh_cache():
    torch_runtime.cuda_available_in_a_child.cache_clear()
    yield
    torch_runtime.cuda_available_in_a_child.cache_clear()


@pytest.mark.parametrize("child_says, expected", [(0, "cuda"), (3, "cpu")])
def test_auto_asks_a_child_process_never_this_one(monkeypatch, child_says, expected):
    import torch

    asked = []

    def fake_run(cmd, **kwargs):
        asked.append(cmd)
        return SimpleNamespace(returncode=child_says)

    def forbidden():  # pragma: no cover - the test fails if it is called
        raise AssertionError("torch.cuda.is_available() called in the main process")

    monkeypatch.setattr(preproc, "_nvidia_driver_present", lambda: True)
    monkeypatch.setattr(torch_runtime.subprocess, "run", fake_run)
    monkeypatch.setattr(torch.cuda, "is_available", forbidden)
    config = SimpleNamespace(device="auto")
    assert preproc._device(config) == expected
    assert preproc._device(config) == expected  # asked once per process
    assert len(asked) == 1 and asked[0][0] == sys.executable and "torch.cuda.is_available()" in asked[0][-1]


def test_no_driver_means_cpu_without_a_child(monkeypatch):
    monkeypatch.setattr(preproc, "_nvidia_driver_present", lambda: False)
    monkeypatch.setattr(torch_runtime.subprocess, "run", lambda *a, **k: pytest.fail("no child without a driver"))
    assert preproc._device(SimpleNamespace(device="auto")) == "cpu"
    assert preproc._device(SimpleNamespace(device="cuda")) == "cuda"  # an explicit choice is kept as given


def test_a_child_that_cannot_answer_means_cpu(monkeypatch, caplog):
    def hang(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], 120)

    monkeypatch.setattr(torch_runtime.subprocess, "run", hang)
    assert torch_runtime.cuda_available_in_a_child() is None  # no answer (False: torch answered no); _device: cpu
    assert "GPU" in caplog.text


def test_the_probe_really_runs_here():
    """The real child process: on this machine its answer is torch's own."""
    import torch

    assert torch_runtime.cuda_available_in_a_child() == torch.cuda.is_available()


_FORK_CHECK = """
import os, sys
import torch
from types import SimpleNamespace
from bids_m2i.workflows import preproc
preproc._nvidia_driver_present = lambda: True
preproc._device(SimpleNamespace(device="auto"))
{ask_here}
pid = os.fork()
if pid == 0:
    os._exit(1 if torch.cuda._is_in_bad_fork() else 0)
sys.exit(os.waitpid(pid, 0)[1] >> 8)
"""


@pytest.mark.parametrize("ask_here, worker_ok", [("", True), ("torch.cuda.is_available()", False)])
def test_workers_forked_after_auto_can_still_use_cuda(ask_here, worker_ok):
    """torch marks forked children as unable to use CUDA once the parent asked the driver (even without a
    GPU, as here): that mark is what failed every step on the H200. After ``_device`` (driver present, the
    real child probe) a forked worker must not carry it; asking in the parent (the old code) does set it.
    In a fresh interpreter: pytest's own process has asked already (the CUDA skip markers)."""
    import os

    done = subprocess.run([sys.executable, "-c", _FORK_CHECK.format(ask_here=ask_here)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == (0 if worker_ok else 1), done.stderr


_WHOLE_RUN = """
import os, sys
import torch
from bids_m2i.workflows import preproc
preproc._nvidia_driver_present = lambda: True   # as on a GPU machine: --device auto runs the child probe
from bids_m2i.cli.run import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
pid = os.fork()
if pid == 0:
    os._exit(1 if torch.cuda._is_in_bad_fork() else 0)
sys.exit(3 if os.waitpid(pid, 0)[1] >> 8 else 0)
"""


@pytest.mark.slow
def test_a_whole_run_leaves_the_main_process_able_to_fork_cuda_workers(tmp_path):
    """Nothing the main process does in a participant run (building every stage's nodes, the models folder,
    the tiny unCLIP path with best-of-N, the report) asks CUDA: the workers it forks can use the GPU."""
    import os

    from bids_m2i.models.tiny import make_tiny_models
    from bids_m2i.simulate.dataset import simulate_dataset

    bids = tmp_path / "bids"
    simulate_dataset(bids, preset="tiny", seed=0)
    models = tmp_path / "models"
    make_tiny_models(models, include_eval=False)
    done = subprocess.run(
        [sys.executable, "-c", _WHOLE_RUN, str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
         "--models-dir", str(models), "--target", "pixels", "clip", "clip-text", "--generator", "unclip",
         "--candidates", "2", "--skip-bids-validation"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("found, level", [(True, "INFO"), (False, "WARNING")])
def test_auto_says_once_where_the_engines_run(monkeypatch, caplog, found, level):
    import logging

    preproc._say_device_once.cache_clear()
    monkeypatch.setattr(preproc, "_nvidia_driver_present", lambda: True)
    monkeypatch.setattr(torch_runtime, "cuda_available_in_a_child", lambda: found)
    with caplog.at_level(logging.INFO, logger="m2i"):
        for _ in range(3):
            preproc._device(SimpleNamespace(device="auto"))
    said = [r for r in caplog.records if "--device auto" in r.getMessage()]
    assert [r.levelname for r in said] == [level]
    preproc._say_device_once.cache_clear()
