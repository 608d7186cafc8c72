"""A rerun with another ``--device`` reuses the finished steps.

A step that fails on the GPU (CUDA out of memory, a driver error) ends with "rerun with --device cpu and the
same work dir (finished steps are reused)". But ``device`` was part of every node's hash: the rerun on the CPU
computed the motion correction, the resampling and the single-trial GLM (hours on real data) again. The same
for a job resumed on a CPU partition after a GPU one (``--device auto`` resolves to ``cuda`` there). The device
changes how an engine computes, not what (CPU and GPU betas: median per-voxel correlation 1.0000,
docs/benchmarks.md), as ``mem_gb`` changes the GLM's chunks: it is no longer hashed.

On this CPU-only machine a rerun with ``--device cuda`` shows it: a step that ran again would stop the run with
64 "--device cuda was asked for but no CUDA GPU is visible"; the reused ones never ask.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import bids_m2i.interfaces as interfaces_package
from bids_m2i.cli.run import run_cli
from bids_m2i.interfaces.base import M2IInterface


def _interfaces_with_a_device():
    found = []
    for info in pkgutil.iter_modules(interfaces_package.__path__):
        module = importlib.import_module(f"bids_m2i.interfaces.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, M2IInterface) and cls.__module__ == module.__name__ and cls.input_spec is not None \
                    and "device" in cls.input_spec().trait_names():
                found.append(cls)
    return found


def test_every_step_with_a_device_exists():
    # the engines of preprocessing, the GLM and decoding: the parametrised test below must see them
    names = {cls.__name__ for cls in _interfaces_with_a_device()}
    assert len(names) >= 4, names


@pytest.mark.parametrize("interface", _interfaces_with_a_device(), ids=lambda cls: cls.__name__)
def test_the_device_is_not_part_of_a_steps_hash(interface):
    hashes = {}
    for device in ("cpu", "cuda"):
        node_inputs = interface(device=device).inputs
        hashes[device] = node_inputs.get_hashval()[1]
    assert hashes["cpu"] == hashes["cuda"]


def test_a_rerun_with_another_device_reuses_the_finished_steps(tiny_dataset, tmp_path, capsys):
    common = [str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
              "--skip-bids-validation", "--nprocs", "1", "--stop-after", "preproc"]
    assert run_cli([*common, "--device", "cpu"]) == 0
    capsys.readouterr()
    code = run_cli([*common, "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 0, err  # before: 64, the first motion-correction step ran again and asked for the GPU
    assert "no CUDA GPU" not in err
