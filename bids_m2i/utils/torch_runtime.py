"""Where and with how many threads the torch engines run (one implementation for every engine)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from ..errors import UsageError


def resolve_device(device=None):
    """``auto``/None -> CUDA when available, else CPU; ``cuda`` without a GPU -> UsageError (exit 64)."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible", hint="use --device auto or cpu")
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
