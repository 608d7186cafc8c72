"""Path questions asked in several packages (one definition, so that they all answer alike)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """``path`` is ``folder`` or lies below it, with symbolic links resolved on both sides.

    Resolving matters: a dataset is often reached through a link (``/data/study -> /lustre/...``), and the
    paths compared come from different places (the user's arguments, pybids' or the OS's messages, which give
    the resolved form). A path that cannot be a path (``None``, bytes) or a link loop is not inside anything.
    """
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (TypeError, ValueError, OSError, RuntimeError):  # RuntimeError: a link loop (Python < 3.13)
        return False


def denied_on_read(path: str | os.PathLike, written_folders) -> bool:
    """Whether a "permission denied" on ``path`` most likely came from reading an input, not from writing.

    Why: a PermissionError says nothing of the operation. m2i writes below OUTPUT_DIR and the work dir (and the
    temporary folder and home, which exist and which it may read); everywhere else it reads: a models folder,
    fMRIPrep's outputs, a ``--captions`` file. So a path outside ``written_folders`` whose nearest existing part
    this user may not read (or, for a folder, enter) is an unreadable input, exit 66, where "Cannot write ...
    choose an output folder" (73) would send the user to the wrong place. As root every access is allowed, so
    nothing changes there.
    """
    if any(folder is not None and is_inside(path, folder) for folder in written_folders):
        return False
    try:
        candidate = Path(os.path.abspath(path))
    except (TypeError, ValueError):
        return False
    for part in (candidate, *candidate.parents):
        if os.path.lexists(part):  # False when a parent cannot be entered: go up to the part that can be seen
            if not os.access(part, os.R_OK):
                return True
            return part.is_dir() and not os.access(part, os.X_OK)
    return False


def check_readable(path: str | os.PathLike, root: str | os.PathLike | None = None, *, hint: str | None = None) -> None:
    """Exit 66 naming the first folder (from ``root`` down) or the file of ``path`` this user may not read.

    Inputs outside the dataset (a models folder, fMRIPrep's outputs, a shared decoder) of another lab member, with
    group-only permissions, were reported as damaged (65), missing, or "Cannot write" (73), with advice to
    recreate or rerun them; as root nothing is unreadable, so only other users saw it. A path that does not exist
    returns quietly (it has its own message, 66 "missing"), unless a folder above it cannot be entered: that
    folder is named. ``hint``: what to do, for this kind of input.
    """
    from ..errors import unreadable_input_error

    path = Path(path)
    chain = [path]
    if root is not None and path != Path(root) and Path(root) in path.parents:
        chain = [Path(root), *[q for q in reversed(path.parents) if Path(root) in q.parents], path]
    for item in chain:
        if not os.path.exists(item):
            # exists() is False behind a folder that cannot be entered too: name that folder, not "missing"
            for parent in Path(os.path.abspath(item)).parents:
                if os.path.lexists(parent):
                    if parent.is_dir() and not os.access(parent, os.X_OK):
                        raise unreadable_input_error(parent, hint=hint)
                    break
            return
        # folders on the way need only be traversable (a `chmod 711` folder is fine); the last one is listed
        mode = os.X_OK if item is not path else (os.R_OK | os.X_OK if item.is_dir() else os.R_OK)
        if not os.access(item, mode):
            raise unreadable_input_error(item, hint=hint)


def natural_key(path) -> tuple:
    """Sort key of a path that orders its numbers by value: ``run-2`` before ``run-10`` (a text sort put run 10
    between 1 and 2, and with it the GLM's runs, trials and outputs), ``sub-9`` before ``sub-10``; the text
    itself breaks ties (``run-01`` against ``run-1``), so the order is total and the same on every machine."""
    text = str(path)
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text))), text
