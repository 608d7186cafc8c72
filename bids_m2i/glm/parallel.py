"""Groups of voxels fitted side by side on the CPU (issue 13, speed).

After the HRF choice the engine works group by group: the voxels that share an HRF (and, with AR(1), a
whitening bin) share one factorised model. Each group is many small products and factorisations, too small
for torch's intra-op threads to divide well: two threads made the ridge stage only 1.2x faster at
V = 20,000. With several threads on the CPU, :func:`group_map` instead runs whole groups on that many Python
threads, each with one torch thread (torch operations and numpy's LAPACK release the GIL while they compute).

Reruns stay identical: every group is computed by one thread with one torch thread, so its arithmetic does not
depend on which thread ran it or when, and the results come back in the groups' order. The betas are also the
same with any ``n_threads``: the stages left on torch's intra-op threads (the HRF library pass's large products)
split their work over voxels, not over sums (tests/test_glm_parallel.py).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")
GroupMap = Callable[[Callable[[Item], Result], Iterable[Item]], list]


def _in_order(function, items):
    return [function(item) for item in items]


def group_workers(device: torch.device) -> int:
    """How many groups :func:`group_map` runs at once here (for the memory plan)."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


@contextlib.contextmanager
def group_map(device: torch.device) -> Iterator[GroupMap]:
    """A ``map(function, items)`` (results as a list, in ``items``' order) that runs the items on as many
    threads as torch may use here (``torch.get_num_threads()``, which the engine's ``torch_threads`` set),
    with one torch thread each; one thread, or a device other than the CPU (whose kernels queue on one
    stream), runs them in turn.

    ``function`` must touch only its own item's outputs (distinct voxels of shared arrays) and read shared
    state that nothing writes meanwhile (build the model's operators before the map)."""
    workers = group_workers(device)
    if workers <= 1:
        yield _in_order
        return
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="m2i-glm-group")

    def run(function, items):
        return list(pool.map(function, items))

    try:
        yield run
    finally:
        # on an error (or a signal) no queued group starts; the running ones finish their current operation
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(workers)
