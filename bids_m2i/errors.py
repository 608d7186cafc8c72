"""One error framework for every stage.

Each error carries a BIDS-Apps exit code (DESIGN.md), the file it concerns and what the user should do.
The command line prints ``str(error)`` (never a traceback) and exits with ``error.exit_code``.
"""

from __future__ import annotations

import os


class M2IError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.path and self.path not in text:
            text = f"{text} [{self.path}]"
        if self.hint:
            text = f"{text}\n  -> {self.hint}"
        return text


class ValidationFailed(M2IError):
    """The BIDS validator reported errors (exit 16)."""

    exit_code = 16


class UnknownAnalysisLevel(M2IError):
    """The analysis level is not ``participant`` or ``group`` (exit 17)."""

    exit_code = 17


class NoDataSelected(M2IError):
    """The filters (participants, sessions, tasks, filter file) select no data (exit 18)."""

    exit_code = 18


class UsageError(M2IError):
    """Bad command line or configuration (exit 64)."""

    exit_code = 64


class BadDataError(M2IError):
    """Data content is unusable: unreadable NIfTI, TR mismatch, unusable events (exit 65)."""

    exit_code = 65


class InputMissingError(M2IError):
    """An input file or folder does not exist (exit 66)."""

    exit_code = 66


class OutputCreateError(M2IError):
    """An output file or folder cannot be created (exit 73)."""

    exit_code = 73


class ProcessingIOError(M2IError):
    """An I/O error while processing, e.g. the disk is full (exit 74)."""

    exit_code = 74


EXIT_CODES = {
    "ok": 0,
    "other": 1,
    "validation": ValidationFailed.exit_code,
    "analysis_level": UnknownAnalysisLevel.exit_code,
    "no_data": NoDataSelected.exit_code,
    "usage": UsageError.exit_code,
    "data": BadDataError.exit_code,
    "input_missing": InputMissingError.exit_code,
    "cannot_create_output": OutputCreateError.exit_code,
    "io": ProcessingIOError.exit_code,
}


def error_from_oserror(exc: OSError, path: str | os.PathLike | None = None, *, writing: bool = True) -> M2IError:
    """Translate an ``OSError`` raised while reading or writing into an :class:`M2IError`."""
    import errno

    where = path if path is not None else getattr(exc, "filename", None)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ProcessingIOError(
            f"No space left on the device while writing {where}",
            path=where,
            hint="free some disk space (or point --work-dir/OUTPUT_DIR to a larger disk) and run again; "
            "finished steps are reused",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and writing:
        return OutputCreateError(
            f"Cannot write {where}: {exc.strerror}",
            path=where,
            hint="choose an output/work folder you can write to",
        )
    if exc.errno == errno.ENOENT and not writing:
        return InputMissingError(f"File not found: {where}", path=where)
    if exc.errno in (errno.EACCES, errno.EPERM) and not writing:
        return unreadable_input_error(where)
    return ProcessingIOError(f"I/O error on {where}: {exc.strerror or exc}", path=where)


def unreadable_input_error(path: str | os.PathLike | None, hint: str | None = None) -> InputMissingError:
    """Exit 66 (sysexits' EX_NOINPUT: an input that does not exist *or cannot be read*) for an input file or
    folder this user may not read: group-only permissions of another lab member's files, a root-owned copy.
    ``hint`` replaces the dataset's advice for inputs that are no dataset (the models folder, a model file)."""
    return InputMissingError(
        f"Cannot read {path}: permission denied (m2i runs as uid {os.getuid()})",
        path=path,
        hint=hint or "make the dataset readable by this user (e.g. `chmod -R a+rX DATASET`, or ask its owner to "
        "add you to its group); m2i only reads it, so a read-only copy or mount is fine",
    )
