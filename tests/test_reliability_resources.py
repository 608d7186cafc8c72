"""Issue 9, part 5: --nprocs, --omp-nthreads and --mem-gb are respected, and a memory budget that is too small
is reported before the step starts (not by the system's OOM killer, not by a scheduler that waits forever)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib

import pytest

from bids_m2i.cli.parser import expand_multi_value_args, make_command
from bids_m2i.cli.run import run_cli
from bids_m2i.config import build_config
from bids_m2i.errors import UsageError
from bids_m2i.workflows.base import plugin_settings


def resolved_config(bids, out, *options):
    """The Config object ``m2i`` builds from these options (nothing runs)."""
    captured = []
    command = make_command(lambda *args: captured.append(args))
    command.main(expand_multi_value_args([str(bids), str(out), "participant", *options]), standalone_mode=False)
    bids_dir, output_dir, level, config_file, values, given = captured[0]
    return build_config(bids_dir, output_dir, level, values, given, config_file)


@pytest.mark.parametrize("nprocs, omp, plugin_args, expected_procs, expected_threads", [
    ("2", "8", None, 2, 2),                      # threads per process capped by --nprocs
    ("3", "1", '{"n_procs": 16}', 3, 1),          # --plugin-args cannot raise the process count
    ("1", "4", '{"maxtasksperchild": 1}', 1, 1),  # other plugin arguments pass through
])
def test_processes_and_threads_never_exceed_nprocs(minimal_bids, tmp_path, nprocs, omp, plugin_args,
                                                   expected_procs, expected_threads):
    options = ["--nprocs", nprocs, "--omp-nthreads", omp, "--mem-gb", "3.5"]
    if plugin_args:
        options += ["--plugin-args", plugin_args]
    config = resolved_config(minimal_bids, tmp_path / "out", *options)
    plugin, args = plugin_settings(config)
    assert plugin == "MultiProc"
    assert args["n_procs"] == expected_procs
    assert args["memory_gb"] == 3.5
    assert config.n_threads == expected_threads
    if plugin_args and "maxtasksperchild" in plugin_args:
        assert args["maxtasksperchild"] == 1


def test_run_sets_torch_and_blas_threads_and_writes_the_limits(minimal_bids, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        # an unknown task stops (exit 18) after the limits are set and the config is written (--print-trials
        # would write nothing)
        code = run_cli([str(minimal_bids), str(tmp_path / "out"), "participant", "--task", "nosuchtask", "-w",
                        str(tmp_path / "work"), "--nprocs", "2", "--omp-nthreads", "5", "--mem-gb", "1.5"])
        assert code == 18
        assert torch.get_num_threads() == 2
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            assert os.environ[variable] == "2"
    finally:
        torch.set_num_threads(before)
    written = sorted((tmp_path / "out" / "logs").glob("config-*.toml"))
    execution = tomllib.loads(written[-1].read_text())["execution"]
    assert execution["nprocs"] == 2 and execution["mem_gb"] == 1.5
    assert execution["omp_nthreads"] == 2  # the effective count: --omp-nthreads 5 capped by --nprocs 2


def test_glm_engine_refuses_a_budget_that_cannot_hold_the_data():
    from bids_m2i.glm.estimate import estimate_memory

    with pytest.raises(UsageError) as caught:
        estimate_memory(n_voxels=200_000, n_volumes=2_000, n_trials=750, itemsize=4, input_itemsize=2,
                        n_kernels=20, mem_gb=0.5)
    message = str(caught.value)
    assert "--mem-gb 0.5" in message and "needs at least" in message and "raise --mem-gb" in message
    # the same data fit a larger budget, in voxel chunks that respect it
    chunk, plan = estimate_memory(n_voxels=200_000, n_volumes=2_000, n_trials=750, itemsize=4, input_itemsize=2,
                                  n_kernels=20, mem_gb=8)
    assert 256 <= chunk <= 200_000 and plan["total_gb"] <= 8


def test_on_a_gpu_the_glm_chunk_also_fits_the_gpu(monkeypatch):
    """--mem-gb is host memory: on a GPU the voxel chunk (the working set there) is bounded by what the GPU has
    free too; the inputs and outputs stay on the host."""
    import torch

    from bids_m2i.glm.estimate import estimate_memory
    from bids_m2i.utils import torch_runtime

    sizes = dict(n_voxels=200_000, n_volumes=2_000, n_trials=750, itemsize=4, input_itemsize=2, n_kernels=20)
    host_chunk, host_plan = estimate_memory(**sizes, mem_gb=64)
    gpu_chunk, gpu_plan = estimate_memory(**sizes, mem_gb=64, device_gb=2.0)
    assert gpu_chunk < host_chunk and gpu_plan["working_gb"] <= 2.0 < host_plan["working_gb"]
    assert gpu_plan["device_gb"] == 2.0 and "device_gb" not in host_plan
    assert estimate_memory(**sizes, mem_gb=64, device_gb=1e-6)[0] == 256  # never below the minimum chunk
    assert torch_runtime.device_working_gb("cpu") is None
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10e9, 16e9))
    assert torch_runtime.device_working_gb("cuda") == 5.0


def test_too_small_mem_gb_is_reported_before_the_run_starts(tiny_dataset, tmp_path):
    """--mem-gb 0.001: a clear message (exit 64) naming --mem-gb, without starting any step."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bids_m2i.cli.run", str(tiny_dataset), str(tmp_path / "out"), "participant",
         "-w", str(tmp_path / "work"), "--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1",
         "--mem-gb", "0.001", "--stop-after", "glm"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        # a hang (nipype's scheduler waiting forever for memory it cannot have) fails here with TimeoutExpired
        stdout, stderr = process.communicate(timeout=60)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert process.returncode == 64, stderr[-3000:]
    assert "--mem-gb" in stderr and "Traceback" not in stderr
    assert not list((tmp_path / "out").rglob("*_desc-preproc_bold.nii.gz"))
