"""Process-level settings shared by the console scripts (and the benchmarks that stand in for them)."""

from __future__ import annotations

import contextlib
import gc


def skip_exit_gc() -> None:
    """Call when the process is about to exit: skip the garbage collector's sweeps during interpreter
    teardown.

    Why: with torch, nibabel and scipy imported, a process tracks ~200 000 container objects; CPython's
    finalisation walks them in several full collections, 0.3-0.5 s per process (measured on one head-motion
    run of 100 volumes: process 4.4 s -> 3.7 s). ``gc.freeze()`` moves every tracked object out of the
    collector's reach. Objects are still freed by reference counting at teardown; only garbage held in
    reference cycles is left to the operating system, as when any process ends. Our files are written and
    closed inside ``with`` blocks and logging flushes its handlers in its own exit hook, so nothing is lost.
    Never call it in a process that goes on working (a test runner): nothing frozen is ever collected.
    """
    gc.freeze()


@contextlib.contextmanager
def gc_paused():
    """Run the block with the cyclic garbage collector paused: for loading large libraries (torch).

    Why: importing torch creates ~100 000 tracked objects (modules, classes, functions) that live as long as
    the process; the collector, run every few hundred allocations, walks the ever larger heap again and
    again and frees nothing. Paused, ``import torch`` took 3.6-4.0 CPU s instead of 4.1-4.3 on the busy
    2-core machine (load 11). Follow with ``gc.freeze()`` where the process keeps the libraries (``m2i``'s main process
    and its workers): the first collection then does not walk them either.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
