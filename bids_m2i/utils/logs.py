"""Logging: short messages on the terminal, everything (with tracebacks) in ``OUTPUT_DIR/logs``."""

from __future__ import annotations

import collections
import logging
import sys
import warnings
from pathlib import Path

TERMINAL_FORMAT = "%(asctime)s m2i %(levelname)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


class NoTracebackFormatter(logging.Formatter):
    """Terminal formatter: never prints a traceback (those go to the log file)."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


#: the last warnings of m2i's own loggers: an engine that logs a warning and also raises it as a Python warning
#: (for callers of the engine outside the app) showed it twice on the terminal, the second time with a source line
_RECENT_OWN_WARNINGS: collections.deque = collections.deque(maxlen=32)


def compact_warning(message, category, filename, lineno, line=None) -> str:
    """A Python warning as one line, without the source line of code that ``warnings`` prints under it."""
    return f"{category.__name__}: {message} ({Path(filename).name}:{lineno})"


def _show_on_terminal(record: logging.LogRecord, verbosity: int) -> bool:
    if record.name.startswith("m2i") and record.levelno >= logging.WARNING:
        _RECENT_OWN_WARNINGS.append(record.getMessage())
    if record.name == "py.warnings" and verbosity < 2:
        text = record.getMessage()
        if any(own and own in text for own in _RECENT_OWN_WARNINGS):
            return False  # said already, by m2i's own logger (the log file keeps both)
    if verbosity >= 2 or record.name.startswith("m2i"):
        return True
    if record.name.startswith("nipype"):
        # nipype's node errors carry whole tracebacks in their text; our own message says what failed and
        # where the crash file is
        return False
    return record.levelno >= logging.WARNING


def setup_terminal_logging(verbosity: int) -> logging.Handler:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_m2i", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._m2i = True  # type: ignore[attr-defined]
    handler.setFormatter(NoTracebackFormatter(TERMINAL_FORMAT, datefmt="%H:%M:%S"))
    handler.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    # only our own messages reach the terminal at INFO; other libraries' warnings still do
    handler.addFilter(lambda r: _show_on_terminal(r, verbosity))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    warnings.formatwarning = compact_warning  # what captureWarnings logs: no source line on the terminal
    # nipype prints through its own stdout handler: route it through ours instead, so that its node messages
    # reach the log file (INFO) and the terminal only with -vv
    import nipype  # noqa: F401  (sets up nipype's loggers, which we then take over)

    for name in ("nipype", "nipype.workflow", "nipype.interface", "nipype.utils", "nipype.filemanip"):
        nipype_logger = logging.getLogger(name)
        for previous in list(nipype_logger.handlers):
            nipype_logger.removeHandler(previous)
        nipype_logger.propagate = True
        nipype_logger.setLevel(logging.INFO)
    for noisy in ("bids", "matplotlib", "PIL", "urllib3", "filelock", "diffusers", "transformers", "numexpr",
                  "fsspec", "bidsschematools", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbosity >= 2 else logging.WARNING)
    logging.getLogger("py.warnings").setLevel(logging.WARNING)
    return handler


def add_file_logging(log_file: Path) -> logging.Handler:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler._m2i = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    return handler


def close_handlers() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_m2i", False):
            handler.flush()
            if isinstance(handler, logging.FileHandler):
                handler.close()
            root.removeHandler(handler)
