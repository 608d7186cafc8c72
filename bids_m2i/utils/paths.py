"""Path questions asked in several packages (one definition, so that they all answer alike)."""

from __future__ import annotations

import os
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
