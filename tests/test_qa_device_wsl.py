"""``--device auto`` on Windows' WSL2 (and Docker Desktop's GPU containers, which run in it) with an NVIDIA GPU.

``auto`` looks for the GPU (in a child process) only where an NVIDIA driver is installed, judged by
``/proc/driver/nvidia/version`` or ``/dev/nvidiactl``. WSL2 has neither: its GPU is ``/dev/dxg``, with the
Windows driver's CUDA library in ``/usr/lib/wsl/lib`` (also mounted there in its containers). There, every
engine ran on the CPU without a word, while torch saw the GPU. Now the driver is found there too, and the
child process decides as elsewhere.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from bids_m2i.utils import torch_runtime
from bids_m2i.workflows import preproc


def _machine_with(monkeypatch, *present):
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda path: str(path) in present or (real_exists(path) and not str(path).startswith(
                            ("/proc/driver/nvidia", "/dev/", "/usr/lib/wsl"))))


@pytest.fixture(autouse=True)
def _fresh_caches():
    torch_runtime.cuda_available_in_a_child.cache_clear()
    preproc._say_device_once.cache_clear()
    yield
    torch_runtime.cuda_available_in_a_child.cache_clear()
    preproc._say_device_once.cache_clear()


def test_wsl2_with_an_nvidia_gpu_uses_it(monkeypatch):
    _machine_with(monkeypatch, "/dev/dxg", "/usr/lib/wsl/lib/libcuda.so.1")
    monkeypatch.setattr(torch_runtime, "cuda_available_in_a_child", lambda: True)
    assert preproc._nvidia_driver_present()
    assert preproc._device(SimpleNamespace(device="auto")) == "cuda"  # before: "cpu", the GPU never asked


def test_wsl2_without_an_nvidia_driver_is_the_cpu_without_asking(monkeypatch):
    # /dev/dxg alone: any GPU of Windows (DirectX), not necessarily an NVIDIA one; no CUDA library
    _machine_with(monkeypatch, "/dev/dxg")
    monkeypatch.setattr(torch_runtime, "cuda_available_in_a_child", lambda: pytest.fail("asked without a driver"))
    assert not preproc._nvidia_driver_present()
    assert preproc._device(SimpleNamespace(device="auto")) == "cpu"


@pytest.mark.parametrize("sign", ["/proc/driver/nvidia/version", "/dev/nvidiactl"])
def test_linux_drivers_are_still_found(monkeypatch, sign):
    _machine_with(monkeypatch, sign)
    assert preproc._nvidia_driver_present()


def test_no_sign_no_driver(monkeypatch):
    _machine_with(monkeypatch)
    assert not preproc._nvidia_driver_present()
