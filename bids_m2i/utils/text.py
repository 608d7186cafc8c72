"""Reading the small settings files a user writes (``--config``, ``--events-map``, ``--bids-filter-file``).

Windows editors save them with a byte-order mark (Notepad's "UTF-8" before 2019) or as UTF-16 (Notepad's
"Unicode", PowerShell 5's ``>``/``Out-File``): tomllib and json stopped at the first byte ("Invalid statement (at
line 1, column 1)"), and UTF-16 ended the run with exit 1 "unexpected failure: UnicodeDecodeError". A folder given
for the file ended with exit 1 "IsADirectoryError". Each is read, or refused as a usage error naming the file.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from ..errors import UsageError


#: settings files (--config, --events-map, --bids-filter-file, --plugin-args) are a few kB; a captions file can be
#: long, and is read elsewhere
SETTINGS_FILE_MAX_BYTES = 16 * 2**20


def read_settings_text(path: str | Path, what: str) -> str:
    """The text of ``path`` (UTF-8, with or without a BOM, or UTF-16 with a BOM).

    Parameters
    ----------
    path : path
        The file named on the command line.
    what : str
        What it is, for messages ("Config file", "Events map", ...).

    Raises
    ------
    FileNotFoundError, PermissionError
        The file does not exist or may not be read (callers say so in their own words and exit code).
    UsageError
        A folder, an unreadable file, or text that is not UTF-8/UTF-16 (exit 64).
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a file", path=path, hint="give the path of the file itself")
    try:
        # bounded: `--config /dev/zero` (or a data file given by mistake) was read until memory ran out
        with open(path, "rb") as handle:
            raw = handle.read(SETTINGS_FILE_MAX_BYTES + 1)
    except (FileNotFoundError, PermissionError):  # the callers' own messages (and exit codes) as before
        raise
    except OSError as exc:
        raise UsageError(f"Cannot read {what.lower()} {path}: {exc.strerror or exc}", path=path,
                         hint="check the path and its permissions") from exc
    if len(raw) > SETTINGS_FILE_MAX_BYTES:
        raise UsageError(f"{what} {path} is larger than {SETTINGS_FILE_MAX_BYTES // 2**20} MB: not a settings file",
                         path=path, hint="give the small text file (TOML or JSON) the option asks for")
    encoding = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "utf-8-sig"
    try:
        return raw.decode(encoding).lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})", path=path,
                         hint="save it as UTF-8 (in Notepad: Save as, Encoding UTF-8)") from exc
