"""``--device auto`` on a machine with an NVIDIA driver when the child process that asks torch for the GPU
cannot answer: it cannot start (no processes left to the user, ``sys.executable`` unusable) or does not
answer in time (torch imported from a cold network file system).

The run went on on the CPU, as it should, but said two things: why the question could not be asked, and then
"an NVIDIA driver is installed but torch sees no usable CUDA GPU; check the driver version against torch's
CUDA", which torch never said: it sent the user to check drivers. ``sys.executable`` unset (``None``, as in
embedded interpreters) was exit 1 "unexpected failure: TypeError". Now one warning, which says what happened
and that ``--device cuda`` uses the GPU without asking.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bids_m2i.utils import torch_runtime
from bids_m2i.workflows import preproc


@pytest.fixture(autouse=True)
def _fresh_caches():
    torch_runtime.cuda_available_in_a_child.cache_clear()
    preproc._say_device_once.cache_clear()
    yield
    torch_runtime.cuda_available_in_a_child.cache_clear()
    preproc._say_device_once.cache_clear()


def _no_answer(kind):
    def run(cmd, **kwargs):
        if kind == "timeout":
            raise subprocess.TimeoutExpired(cmd, 120)
        if kind == "no processes":
            raise BlockingIOError(11, "Resource temporarily unavailable")
    return run


@pytest.mark.parametrize("kind, executable", [("timeout", None), ("no processes", None),
                                              ("real", ""), ("real", "None"), ("real", "/nonexistent/python")])
def test_a_probe_without_an_answer_is_one_warning_and_the_cpu(monkeypatch, caplog, kind, executable):
    monkeypatch.setattr(preproc, "_nvidia_driver_present", lambda: True)
    if kind != "real":  # "real": the real call, with an unusable sys.executable
        monkeypatch.setattr(torch_runtime.subprocess, "run", _no_answer(kind))
    if executable is not None:
        monkeypatch.setattr(sys, "executable", None if executable == "None" else executable)
    with caplog.at_level(logging.INFO, logger="m2i"):
        assert preproc._device(SimpleNamespace(device="auto")) == "cpu"
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1, [r.getMessage() for r in said]
    text = said[0].getMessage()
    assert "could not ask" in text and "--device cuda" in text and "sees no usable" not in text


def test_a_probe_that_answers_no_still_says_check_the_driver(monkeypatch, caplog):
    monkeypatch.setattr(preproc, "_nvidia_driver_present", lambda: True)
    monkeypatch.setattr(torch_runtime.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=3))
    with caplog.at_level(logging.INFO, logger="m2i"):
        assert preproc._device(SimpleNamespace(device="auto")) == "cpu"
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "sees no usable CUDA GPU" in said[0]


def test_no_usable_gpu_names_the_container_flags(monkeypatch, caplog):
    """A GPU node's driver is seen from a container (Apptainer binds /dev and the host's /proc) that was
    started without the GPU: the warning said to check the driver version and CUDA_VISIBLE_DEVICES only; the
    usual fix there is Apptainer's --nv or Docker's --gpus all."""
    monkeypatch.setattr(preproc, "_nvidia_driver_present", lambda: True)
    monkeypatch.setattr(torch_runtime, "cuda_available_in_a_child", lambda: False)
    with caplog.at_level(logging.INFO, logger="m2i"):
        preproc._device(SimpleNamespace(device="auto"))
    assert "--nv" in caplog.text and "--gpus all" in caplog.text
