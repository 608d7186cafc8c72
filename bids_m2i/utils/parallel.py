"""Independent pieces of an engine's work side by side on the CPU, one torch thread each (issue 13, speed).

The single-trial GLM works group by group after the HRF choice: the voxels that share an HRF (and, with
AR(1), a whitening bin) share one factorised model, and the PC search tries one count of PCs at a time. Each
piece is many small products and factorisations, too small for torch's intra-op threads to divide well: two
threads made the ridge stage only 1.2x faster at V = 20,000. With several threads on the CPU,
:func:`group_map` instead runs whole pieces on that many Python threads, each with one torch thread (torch
operations and numpy's LAPACK release the GIL while they compute). Head-motion correction maps its chunks of
volumes the same way (preproc/motion.py).

Reruns stay identical: every piece is computed by one thread with one torch thread, so its arithmetic does not
depend on which thread ran it or when, and the results come back in the pieces' order. The results are also the
same with any thread count where the stages left on torch's intra-op threads (the HRF library pass's large
products) split their work over voxels, not over sums (tests/test_glm_parallel.py, tests/test_preproc_motion.py).
"""

from __future__ import annotations

import collections
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import torch

Item = TypeVar("Item")
Result = TypeVar("Result")
GroupMap = Callable[[Callable[[Item], Result], Iterable[Item]], list]


def _in_order(function, items, lazy=False):
    results = (function(item) for item in items)
    return results if lazy else list(results)


def group_workers(device: torch.device) -> int:
    """How many groups :func:`group_map` runs at once here (for the memory plan)."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


def in_order_ahead(pool: ThreadPoolExecutor, function, items, ahead: int) -> Iterator:
    """``function(item)`` for each item on ``pool``, yielded in ``items``' order, with at most ``ahead`` items
    started and not yet taken: the next item starts only when the caller asks for the following result, after it
    has let the previous one go. An item's error is raised where its result is yielded; the caller shuts the pool
    down (with ``cancel_futures``, so the items not started never start)."""
    pending = collections.deque()
    for item in items:
        if len(pending) == ahead:
            yield pending.popleft().result()
        pending.append(pool.submit(function, item))
    while pending:
        yield pending.popleft().result()


@contextlib.contextmanager
def group_map(device: torch.device) -> Iterator[GroupMap]:
    """A ``map(function, items)`` (results as a list, in ``items``' order) that runs the items on as many
    threads as torch may use here (``torch.get_num_threads()``, which the engine's ``torch_threads`` set),
    with one torch thread each; one thread, or a device other than the CPU (whose kernels queue on one
    stream), runs them in turn. ``map(function, items, lazy=True)`` yields the results in order as they come
    instead, so that the caller can drop each before the last is computed: an item starts only when at most the
    workers' count are started and not yet taken (one waits in the queue while they run), which bounds the
    results held at once whatever their durations; an item's error is raised when its result is reached.

    ``function`` must touch only its own item's outputs (distinct voxels of shared arrays) and read shared
    state that nothing writes meanwhile (build the model's operators before the map)."""
    workers = group_workers(device)
    if workers <= 1:
        yield _in_order
        return
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="m2i-glm-group")

    def run(function, items, lazy=False):
        return in_order_ahead(pool, function, items, workers + 1) if lazy else list(pool.map(function, items))

    try:
        yield run
    finally:
        # on an error (or a signal) no queued group starts; the running ones finish their current operation
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(workers)
