"""Atomic file writing: write to a temporary name in the target folder, then rename.

A reader (or a rerun after a crash) sees either the old file or the complete new one, never half a file.
The file gets the mode an ordinary ``open()`` would give it (0666 less the umask: 0644 under umask 022), not
the 0600 of :func:`tempfile.mkstemp`, so the lab's group and a web server can read the results.
Disk-full and permission errors become :class:`~bids_m2i.errors.M2IError` with the right exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import error_from_oserror


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.png``) so that libraries choosing the
    format from the name write the right thing.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error_from_oserror(exc, final.parent) from exc
    suffix = "".join(final.suffixes) if final.suffixes else ""
    stem = final.name[: len(final.name) - len(suffix)] if suffix else final.name
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=final.parent)
    except OSError as exc:  # name the file meant, not the temporary name
        raise error_from_oserror(exc, final) from exc
    tmp = Path(tmp_name)
    try:
        # writers below open this path with "wb" (truncate), which keeps the mode set here
        os.fchmod(fd, 0o666 & ~current_umask())
    except OSError as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise error_from_oserror(exc, final) from exc
    # held until the rename: a later run sweeping the temporaries that killed runs left behind
    # (remove_stale_temporaries) sees that this one's writer lives, also on another node of a shared file system
    _try_flock(fd)
    try:
        yield tmp
        # some writers replace the file instead of truncating it (safetensors 0.8 leaves 0600): set the mode again
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise error_from_oserror(exc, final) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _try_flock(fd: int) -> str:
    """Lock an open file exclusively without waiting: ``"locked"``, ``"busy"`` (another process holds it) or
    ``"unsupported"`` (a file system without locks)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "busy"
    except OSError:
        return "unsupported"
    return "locked"


#: the temporary names of :func:`atomic_path` (``.<stem>.<8 random>.tmp<suffixes>``, tempfile.mkstemp's random
#: part) and of safetensors' ``save_file`` (``.tmp<6 random>``, Rust's tempfile crate), both in the target folder
_TEMPORARY_NAME = re.compile(r"^\..*\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$|^\.tmp[A-Za-z0-9]{6}$")
#: a temporary unchanged for this long and locked by no one is a killed run's (a live writer, even one whose
#: temporary safetensors replaced, changes it at least every few seconds until the rename)
STALE_AFTER_S = 60.0
#: on a file system without locks, liveness cannot be asked: only temporaries this old go
STALE_WITHOUT_LOCKS_S = 6 * 3600.0


def is_temporary_name(name: str) -> bool:
    return bool(_TEMPORARY_NAME.match(name))


def remove_stale_temporaries(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Delete the temporaries (see :func:`atomic_path`) that killed runs left in ``folder``; return them.

    A run killed with SIGKILL (SLURM 30 s after the time limit's SIGTERM, the out-of-memory killer) while it
    wrote a file leaves its hidden temporary next to the final name: half a NIfTI that no later run removed.
    A temporary is removed only when no process holds its lock (``atomic_path`` keeps one while writing; flock
    is released however the holder dies) and it has not changed for :data:`STALE_AFTER_S`: the files that jobs
    of the same OUTPUT_DIR are writing at this moment stay.
    """
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = folder.rglob(".*") if recursive else folder.glob(".*")
    removed = []
    for path in candidates:
        if not is_temporary_name(path.name):
            continue
        try:
            if not path.is_file() or path.is_symlink():
                continue
            age = time.time() - path.stat().st_ctime  # ctime: also changed by a hard link and a rename onto it
            if age < STALE_AFTER_S:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            state = _try_flock(fd)
            if state == "busy" or (state == "unsupported" and age < STALE_WITHOUT_LOCKS_S):
                continue
            path.unlink()
            removed.append(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def current_umask() -> int:
    """The process umask, read without changing it (``/proc/self/status`` on Linux 4.7+).

    Elsewhere it is read by setting and restoring it, which is not thread-safe but only briefly wrong.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def write_tsv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as BIDS TSV (tab separated, ``n/a`` for missing values)."""
    text = frame.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n")
    return write_text(path, text)


def save_nifti(img, path: str | os.PathLike) -> Path:
    """Save a nibabel image atomically (gzip header without a timestamp, so reruns are byte-identical).

    ``.gz``: deflate at level 1 with a strategy chosen by the data type. Measured on a 52 MB float32 run
    of 100 volumes: level 6 1.5-1.9 s, level 1 1.4-1.6 s, both 91.5 % of the raw size:

    * floating point (resampled BOLD, references, statistics): ``Z_RLE``. Noisy float mantissas give
      deflate's string matching nothing to find; run-length matches (zeros outside the FOV or brain) plus
      Huffman coding give the same size as level 6 (91.3 % vs 91.5 % above; 83.0 % vs 83.0 % on a
      resampled simulated run) at 3-4x its speed (0.5 s above).
    * 16-bit and wider integers (the preprocessed BOLD, stored as scaled int16): ``Z_RLE`` too; their low
      bytes are noise as well. On a resampled simulated run (40x40x28x324): 25.4 MB in 0.31 s CPU, against
      24.9 MB in 0.70 s with the default strategy at level 1 (24.7 MB, 1.08 s at level 6).
    * bytes (masks, labels): the default strategy at level 1, ~5x faster than level 6 for ~2 % more bytes.
    """
    import gzip
    import zlib

    import numpy as np

    final = Path(path)
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as fh:
            if str(final).endswith(".gz"):
                stored = np.dtype(img.get_data_dtype())
                noisy = np.issubdtype(stored, np.floating) or stored.itemsize >= 2
                # mtime=0 and no file name in the header: identical inputs give identical bytes
                with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=1) as gz:
                    # GzipFile offers no deflate strategy: give it a raw-deflate compressor with one (same
                    # level; were the attribute ever renamed, this would only fall back to the default).
                    # memLevel 9: larger blocks, ~10 % faster than 8 for the same size
                    gz.compress = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS, 9,
                                                   zlib.Z_RLE if noisy else zlib.Z_DEFAULT_STRATEGY)
                    img.to_stream(gz)  # header, then the data a volume at a time: no copy of the whole image
            else:
                img.to_stream(fh)
    return final


def save_npy(path: str | os.PathLike, array) -> Path:
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    return Path(path)


def save_png(path: str | os.PathLike, image) -> Path:
    """Save a PIL image as PNG atomically (no timestamp chunks: deterministic bytes)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=False)
    return Path(path)


def json_default(obj):
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths (the sidecar writers use it too)."""
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
