"""A fingerprint of the code that computes: part of every m2i node's cache key.

nipype decides whether a node of a work dir can be reused from the hash of the node's *inputs*, never from
the code that runs it. A rerun with an upgraded m2i on an old work dir would otherwise reuse results of the
old code (in issue 14 the betas changed units, and an old cache kept the old units under a new report).
fMRIPrep meets the same problem by naming its workflow after its version; a version string does not change
with every installed change, so m2i hashes the installed package's files instead: any change of the code
recomputes every m2i node once, and reruns of the same code reuse everything as before.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

#: files that do not change what the code computes
_SKIPPED_SUFFIXES = (".pyc", ".pyo")
_SKIPPED_FOLDERS = ("__pycache__",)


@lru_cache(maxsize=None)
def code_fingerprint(root: str | None = None) -> str:
    """``<version>+<sha256 prefix>`` of every file of the package under ``root`` (default: the installed
    ``bids_m2i``), by relative path and content, in a fixed order. About 130 small files: a few milliseconds,
    once per process."""
    from .. import __version__

    package = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    files = sorted(p for p in package.rglob("*")
                   if p.is_file() and not p.name.endswith(_SKIPPED_SUFFIXES)
                   and not any(part in _SKIPPED_FOLDERS for part in p.relative_to(package).parts))
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return f"{__version__}+{digest.hexdigest()[:16]}"
