"""One try-lock idiom (``flock``) for the locks m2i takes: the work dir in use, a participant being processed,
a pybids database folder of a live process.

flock is per host (and across nodes on NFS/Lustre mounted with locks), and released however the holder dies.
Where the file cannot be opened or the file system has no locks, callers go on without the lock (``None``);
a lock another process holds is :class:`LockBusy`, for the caller to turn into its own message.
"""

from __future__ import annotations

import contextlib
import os
from typing import IO


class LockBusy(Exception):
    """Another process holds the lock."""


def try_lock(path: str | os.PathLike, *, shared: bool = False, wait: bool = False) -> IO | None:
    """Open ``path`` (created if need be) and lock it; return the open file, which holds the lock until it is
    closed (or :func:`release`). ``None`` where no lock can be taken; :class:`LockBusy` when another process
    holds it and ``wait`` is false."""
    import fcntl

    try:
        handle = open(path, "a+")
    except OSError:
        return None
    flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(handle, flags if wait else flags | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise LockBusy(str(path)) from None
    except OSError:  # a file system without locks
        handle.close()
        return None
    return handle


def release(handle: IO) -> None:
    """Unlock, then close. Unlocking first matters: processes forked while the lock was held (nipype's workers)
    share the open file, and the lock would outlive this close in them."""
    import fcntl

    with contextlib.suppress(OSError, ValueError):
        fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()
