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


# glibc's mallopt parameters (<malloc.h>) and what the GLM step sets them to while it runs
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
STEP_MMAP_THRESHOLD = 256 * 1024 * 1024
STEP_TRIM_THRESHOLD = 1024 * 1024 * 1024
# what they are set back to: glibc cannot report them, nor turn its dynamic threshold on again once mallopt has
# set one, so the ceiling of that dynamic threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit, trim twice it), which
# a process reaches once it has freed a mapped block of that size, as every GLM node does
AFTER_MMAP_THRESHOLD = 32 * 1024 * 1024
AFTER_TRIM_THRESHOLD = 2 * AFTER_MMAP_THRESHOLD
# a user who tunes malloc through the environment keeps their settings
_USER_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _glibc_malloc():
    """glibc's ``mallopt`` and ``malloc_trim`` through ctypes, or None: not glibc (musl, macOS, Windows), no
    ctypes, the functions not found, or malloc tuned by the user's environment. Never raises."""
    import os

    try:
        if any(name in os.environ for name in _USER_MALLOC_SETTINGS) or \
                "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
            return None
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
        import ctypes

        libc = ctypes.CDLL(None)  # the C library this process already uses
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        return mallopt, malloc_trim
    except Exception:  # no confstr name, no ctypes, no such symbol: run with the allocator as it is
        return None


@contextlib.contextmanager
def malloc_retained():
    """Run the block with glibc's allocator keeping large freed blocks for reuse; give them back afterwards.

    Why: glibc serves every block above its mmap threshold (at most 32 MB by its own adjustment) with a fresh
    ``mmap`` and unmaps it on ``free``; the GLM engine makes and drops numpy and torch temporaries of tens of
    MB hundreds of times per fit, so each one costs the system calls and a page fault per 4 KB page, again and
    again. With the mmap threshold and the heap's trim threshold raised for the block, freed blocks stay in the
    heap and the next temporary reuses their pages: at 20,000 voxels the process' minor page faults fell by ~38 %
    and its system CPU from 1.0-1.4 to 0.7-1.0 s (of 15-21 s; the whole process' CPU did not change beyond the
    shared machine's noise), and peak RSS rose by up to ~8 % at chunked sizes, where freed heap blocks do not
    always fit the next ones (docs/benchmarks.md, "fifth pass").
    After the block ``malloc_trim(0)`` returns the free pages to the system, so a process that goes on working
    (an m2i worker that runs further nodes) does not keep the GLM's peak, and the thresholds are set back (see
    ``AFTER_MMAP_THRESHOLD``). No effect on any value computed; a no-op where the C library is not glibc or
    the user tunes malloc in the environment.
    """
    functions = _glibc_malloc()
    if functions is None:
        yield
        return
    mallopt, malloc_trim = functions
    try:
        mallopt(_M_MMAP_THRESHOLD, STEP_MMAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, STEP_TRIM_THRESHOLD)
    except Exception:  # a ctypes call that cannot fail here; never let tuning break a step
        pass
    try:
        yield
    finally:
        try:
            mallopt(_M_MMAP_THRESHOLD, AFTER_MMAP_THRESHOLD)
            mallopt(_M_TRIM_THRESHOLD, AFTER_TRIM_THRESHOLD)
            malloc_trim(0)
        except Exception:
            pass
