"""Where and with how many threads the torch engines run (one implementation for every engine)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import sys
from typing import Iterator

from ..errors import UsageError

log = logging.getLogger("m2i")

#: asked in a child process: CUDA answered there cannot break the workers this process forks
_CUDA_PROBE = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"


def resolve_device(device=None):
    """``auto``/None -> CUDA when available, else CPU; ``cuda`` without a GPU -> UsageError (exit 64)."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        # say how a run gets a GPU: the usual cause is a job or container started without one, or
        # CUDA_VISIBLE_DEVICES emptied ("" or -1 hide every GPU), not a wrong option
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = f' (CUDA_VISIBLE_DEVICES="{visible}")' if visible is not None else ""
        raise UsageError(f"--device cuda was asked for but no CUDA GPU is visible{shown}",
                         hint="give the run a GPU (SLURM: --gres=gpu:1; Docker: --gpus all; Apptainer: --nv; "
                         "CUDA_VISIBLE_DEVICES must name it), or use --device auto or --device cpu")
    return torch.device(device)


def blas_threads(n_threads: int):
    """Context limiting numpy/scipy's BLAS thread pool (threadpoolctl, a scikit-learn dependency, itself a
    nilearn dependency) to ``n_threads``; without threadpoolctl, the OMP/OPENBLAS variables ``m2i`` sets rule."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=int(n_threads), user_api="blas")


@contextlib.contextmanager
def torch_threads(n_threads: int | None, *, single_threaded_blas: bool = False) -> Iterator[None]:
    """Run a block with at most ``n_threads`` torch threads, never raising the process' count (--nprocs and
    --omp-nthreads set it), and restore it afterwards.

    ``single_threaded_blas``: numpy's BLAS gets one thread inside the block. For engines whose numpy work is
    small factorisations: on a busy machine several BLAS threads spin against each other and a 200 x 70 SVD
    becomes ~100x slower.
    """
    import torch

    before = torch.get_num_threads()
    wanted = before if not n_threads or n_threads < 1 else min(int(n_threads), before)
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        if single_threaded_blas:
            with blas_threads(1):
                yield
        else:
            yield
    finally:
        if wanted != before:
            torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def cuda_available_in_a_child() -> bool | None:
    """Whether torch sees a CUDA GPU, asked in a separate Python process; ``None`` when the child could not
    answer (it could not start, or did not answer within 120 s), which is logged here.

    ``torch.cuda.is_available()`` initialises the CUDA driver in the process that calls it, and torch then
    refuses CUDA in every process forked from it ("Cannot re-initialize CUDA in forked subprocess"). The main
    ``m2i`` process resolves ``--device auto`` and then forks nipype's MultiProc workers: asked in the main
    process, every step on the GPU failed (seen on an H200, issue 14's GPU check). A child process costs the
    torch import (about 1-2 s), only on machines with an NVIDIA driver.
    """
    try:
        done = subprocess.run([sys.executable, "-c", _CUDA_PROBE], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=120, env=dict(os.environ))
    except (OSError, ValueError, TypeError, subprocess.SubprocessError) as exc:
        # None, not False: the caller then does not add "torch sees no usable CUDA GPU, check the driver",
        # which torch never said. TypeError/ValueError: sys.executable None or "" (embedded interpreters).
        what = f"timed out after {exc.timeout:.0f} s" if isinstance(exc, subprocess.TimeoutExpired) else str(exc)
        log.warning("--device auto: could not ask whether torch can use the GPU (a Python child process %s); "
                    "the engines run on the CPU (--device cuda uses the GPU without asking)", what)
        return None
    return done.returncode == 0


#: share of a GPU's free memory an engine's working set may take (the rest: the allocator's slack, cuBLAS and
#: cuSOLVER workspaces, the estimate's own error)
DEVICE_MEMORY_SHARE = 0.5


def device_working_gb(device) -> float | None:
    """GB an engine's working set may take on ``device``: half the GPU's free memory; None on the CPU (host
    memory is planned by ``--mem-gb``)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    free_bytes, _total = torch.cuda.mem_get_info(device)
    return DEVICE_MEMORY_SHARE * free_bytes / 1e9
