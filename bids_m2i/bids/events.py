"""Events files → trials table.

An events file says what happened when; the trials table says which events get their own beta
(``trial``), which are modelled as one regressor per event type (``nuisance``: cues, evaluations,
responses, one-back repeats) and which are left to the baseline (``ignore``: rest). Datasets code this
differently, and the same code can mean a stimulus in one task and a cue in another (ds001506: ``1``),
so the decision is made **per task** by a :class:`TaskRule`, taken from (first match wins):

1. an ``--events-map`` TOML file (:func:`load_events_map`) with a section for the task (or ``"*"``);
2. a built-in profile (``bids_m2i/data/events_profiles/*.toml``, :func:`builtin_profiles`, tried in
   file-name order) whose ``match`` conditions hold for this file;
3. auto-detection (:func:`auto_rule`).

Columns of the trials table, in this order (docs/dev/contracts.md): :data:`TRIALS_COLUMNS`. All values
are strings (missing = ``n/a``) except ``onset`` and ``duration`` (float seconds). User documentation:
``docs/events.md``.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import os
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from ..errors import BadDataError, InputMissingError, UsageError
from ..glm.design import MIN_ONSET
from ..utils import tomlread
from .stimuli import (
    NA,
    find_with_other_extension,
    load_stimuli_table,
    normalize_stim_file,
    relative_to_stimuli,
    resolve_stimulus_path,
)

LOGGER = logging.getLogger("m2i.bids")

TRIALS_COLUMNS = (
    "onset",
    "duration",
    "task",
    "session",
    "run",
    "role",
    "event_type",
    "condition",
    "cue",
    "stimulus",
    "category",
    "stim_file",
    "cue_text",
    "split",
)
ROLES = ("trial", "nuisance", "ignore")
#: ``split`` values: the decoder trains on ``train`` and is tested on ``test`` perception trials; ``none`` trials
#: get betas but are not decoded; ``n/a`` leaves the choice to the automatic rules of decoding/splits.py.
SPLITS = ("train", "test", "none")
CONDITIONS = ("perception", "imagery")
CUES = ("image", "text", "none")

#: Auto-detection takes the stimulus identity from the first of these columns that exists.
AUTO_STIMULUS_COLUMNS = ("stim_file", "stimulus_name", "stimulus_id", "ImgName", "category_name", "trial_type")
#: Auto-detection reads the event type (for ``imag`` and the small vocabulary below) from these columns.
AUTO_EVENT_TYPE_COLUMNS = ("trial_type", "event_type")
#: Auto-detection: event types that are never trials. Words, not numeric codes: codes need a map.
AUTO_IGNORE_PATTERN = re.compile(r"rest|fixation|baseline|^null$|^blank$|^iti$", re.IGNORECASE)
AUTO_NUISANCE_PATTERN = re.compile(
    r"^(cue|response|evaluation|oneback|one-back|one_back|instruction|button|button_press)$", re.IGNORECASE
)

#: Cell values taken for ``n/a`` (with a warning): empty, NA, NaN, n.a., N/A, and one-letter typos of
#: ``n/a`` such as ``on/a`` (ds001506). ``none`` is *not* among them: it is a valid ``cue``.
_NA_LIKE = re.compile(r"^(?:|na|nan|n\.a\.?|n\\a|null|[a-z]?n/a[a-z]?|n/[a-z]?a)$", re.IGNORECASE)
#: Seconds before a run's first frame that the design models (:data:`bids_m2i.glm.design.MIN_ONSET`, as
#: nilearn's): an event that starts earlier cannot be held by the design and is dropped with a warning.
EARLIEST_ONSET_S = -MIN_ONSET
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------
#: leading bytes of compressed and binary container formats: such a .tsv was read as Latin-1 and stopped with
#: "line 3 has 2 fields but the header has 1", which sent the user looking for a bad row
BINARY_SIGNATURES = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip (or .xlsx)", b"BZh": "bzip2",
                     b"\xfd7zXZ\x00": "xz", b"(\xb5/\xfd": "zstd", b"7z\xbc\xaf\x27\x1c": "7z",
                     b"\xd0\xcf\x11\xe0": "an OLE file (.xls)"}


def _check_not_compressed(raw: bytes, path: Path) -> None:
    """65 for a .tsv that is a compressed or binary file (``gzip`` without renaming, a spreadsheet)."""
    kind = next((name for magic, name in BINARY_SIGNATURES.items() if raw.startswith(magic)), None)
    if kind is not None:
        raise BadDataError(f"{path} is a binary or compressed file ({kind}), not tab-separated text", path=path,
                           hint="BIDS .tsv files are plain text: decompress it (e.g. `gunzip -c FILE.tsv > "
                           "plain.tsv`) or export the table as tab-separated text, under the same name")


def _decode_events_bytes(raw: bytes, path: Path) -> str:
    """The text of an events file: UTF-8 (a BOM is dropped), else UTF-16 (Excel's "Unicode Text" export,
    tab separated; read as Latin-1 it gave column names full of NUL characters), else Latin-1."""
    head = raw[:200]
    bom = head[:2] in (b"\xff\xfe", b"\xfe\xff")
    odd_nuls, even_nuls = head[1::2].count(0), head[0::2].count(0)
    if bom or max(odd_nuls, even_nuls) > 0.8 * (len(head) // 2):  # without a BOM: every other byte is 0
        encoding = "utf-16" if bom else ("utf-16-le" if odd_nuls >= even_nuls else "utf-16-be")
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            pass
        else:
            LOGGER.warning('%s is UTF-16 text (as Excel\'s "Unicode Text" saves it), not UTF-8; read anyway', path)
            return text.lstrip("\ufeff")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        LOGGER.warning("%s is not UTF-8; reading it as Latin-1", path)
        return raw.decode("latin-1")


EVENTS_EMPTY_HINT = ("write a tab-separated header (onset, duration, ...) and one row per event, or exclude this run "
                     "(--bids-filter-file)")


def read_events(path: str | os.PathLike, what: str = "Events file", empty_hint: str = EVENTS_EMPTY_HINT) -> pd.DataFrame:
    """Read a BIDS events (or any BIDS ``.tsv``) file as strings.

    Every value stays a string (``3079230.008270`` keeps its zeros); cells are stripped of surrounding
    spaces; ``n/a``-like typos (``on/a``, ``N/A``, ``nan``, empty) become ``n/a`` with one warning per
    column; CRLF / CR line ends are accepted with a warning; a UTF-8 byte-order mark is dropped.

    Parameters
    ----------
    path : path
        The ``.tsv`` file.

    Returns
    -------
    pandas.DataFrame
        Shape (n_rows, n_columns), all values ``str``.

    Raises
    ------
    InputMissingError
        The file does not exist.
    BadDataError
        The file is empty, not tab separated, or has rows with more fields than the header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputMissingError(f"Events file not found: {path}", path=path) from exc
    except PermissionError:
        from ..errors import unreadable_input_error

        raise unreadable_input_error(path) from None
    except OSError as exc:
        raise BadDataError(f"Cannot read {path}: {exc.strerror or exc}", path=path) from exc
    if not raw.strip():
        # `what`/`empty_hint`: the stimuli table is read here too, and an empty one is not an events file
        raise BadDataError(f"{what} {path} is empty", path=path, hint=empty_hint)
    _check_not_compressed(raw, path)
    text = _decode_events_bytes(raw, path)
    if "\r" in text:
        LOGGER.warning("%s has Windows (CRLF) or old Mac (CR) line ends; read anyway", path)
        text = text.replace("\r\n", "\n").replace("\r", "\n")

    header = text.split("\n", 1)[0]
    if "\t" not in header and ("," in header or "  " in header.strip() or ";" in header):
        raise BadDataError(
            f"{path} is not tab separated (header: {header[:80]!r})",
            path=path,
            hint="BIDS .tsv files separate columns with tabs; convert the file",
        )
    frame = _parse_tsv(text, path)
    stripped = [str(c).strip() for c in frame.columns]
    if stripped != [str(c) for c in frame.columns]:
        LOGGER.warning("%s: spaces around column names removed", path)
    frame.columns = stripped
    frame = frame.apply(lambda col: col.str.strip())
    frame = _unquote(frame, path)

    for column in frame.columns:
        values = frame[column]
        typo = values.map(lambda v: v != NA and bool(_NA_LIKE.match(v)))
        if typo.any():
            examples = sorted({repr(v) for v in values[typo]})[:5]
            first_line = int(typo.to_numpy().nonzero()[0][0]) + 2  # header is line 1
            LOGGER.warning(
                "%s: column %r has %d n/a-like value(s) (%s, first on line %d); read as n/a",
                path,
                column,
                int(typo.sum()),
                ", ".join(examples),
                first_line,
            )
            frame.loc[typo, column] = NA
    return frame.astype(object)


def _is_quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == value[-1] == '"'


def _unquote(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Column names and cells wrapped in double quotes, as R's ``write.table`` writes them by default (and
    spreadsheets for text with special characters), without the quotes (a doubled ``""`` inside is one ``"``).

    Read as they were, ``"onset"`` was no ``onset`` column (65 "no 'onset' / 'duration' column (columns:
    "onset", "duration", ...)"), and a quoted stimulus name was another stimulus than the unquoted one."""
    names = [str(c) for c in frame.columns]
    quoted_cells = frame.apply(lambda col: col.map(_is_quoted))
    if not (any(map(_is_quoted, names)) or quoted_cells.to_numpy().any()):
        return frame
    LOGGER.warning("%s: values in double quotes (as R's write.table writes them); read without the quotes", path)
    frame = frame.where(~quoted_cells, frame.apply(lambda col: col.str[1:-1].str.replace('""', '"')))
    frame.columns = [n[1:-1].replace('""', '"') if _is_quoted(n) else n for n in names]
    return frame


def _parse_tsv(text: str, path: Path) -> pd.DataFrame:
    """Split tab-separated text into a frame of strings (no quoting, as BIDS TSV has none).

    Rows shorter than the header are padded with empty cells and rows with extra *empty* trailing fields
    (a trailing tab) are trimmed, both with a warning; extra non-empty fields are an error (pandas would
    silently turn them into an index).
    """
    lines = [line for line in text.split("\n") if line.strip()]
    header = lines[0].split("\t")
    # trailing tabs (a spreadsheet export of empty columns) end the header in unnamed columns: two of them
    # stopped the run with "duplicate column names". Empty ones are dropped below, ones holding values named.
    named = len(header)
    while named and not header[named - 1].strip():
        named -= 1
    rows: list[list[str]] = []
    short: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) > len(header):
            if any(f.strip() for f in fields[len(header):]):
                hint = "every row must have the same number of tab-separated fields as the header"
                if len(fields) == len(header) + 1 and fields[0].strip().strip('"') == str(number - 1):
                    # R's write.table(events, sep = "\t") starts each row with its row name (1, 2, ...), the header
                    # without a name for it
                    hint = ("the first field of each row is its row number, as R's write.table writes row names: "
                            "write the file with row.names = FALSE (and quote = FALSE); " + hint)
                raise BadDataError(
                    f"{path}: line {number} has {len(fields)} fields but the header has {len(header)}",
                    path=path, hint=hint,
                )
            fields = fields[: len(header)]
        elif len(fields) < len(header):
            if len(fields) < named:
                short.append(number)
            fields = fields + [""] * (len(header) - len(fields))
        rows.append(fields)
    if short:
        LOGGER.warning("%s: %d row(s) have fewer fields than the header (first: line %d); missing cells read as n/a",
                       path, len(short), short[0])
    if named < len(header):
        filled = next(((number, i) for number, fields in enumerate(rows, start=2)
                       for i in range(named, len(header)) if fields[i].strip()), None)
        if filled is not None:
            raise BadDataError(f"{path}: column {filled[1] + 1} has no name in the header but holds values "
                               f"(line {filled[0]})", path=path, hint="name the column in the header, or delete it")
        LOGGER.info("%s: %d empty column(s) without a name at the end of the lines (trailing tabs) ignored",
                       path, len(header) - named)
        header, rows = header[:named], [fields[:named] for fields in rows]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise BadDataError(f"{path}: duplicate column names in the header: {', '.join(map(repr, duplicated))}",
                           path=path, hint="give every column its own name")
    return pd.DataFrame(rows, columns=header, dtype=object)


# ----------------------------------------------------------------------------------------------------
# Rules, maps, profiles
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskRule:
    """How to turn the events of one task into trials (one ``[task.<label>]`` section).

    Attributes mirror the TOML keys; see ``docs/events.md`` for each. ``None`` means "not set":
    ``ignore=None`` ignores every value not listed as trial or nuisance; ``condition``/``cue`` ``"auto"``
    use the columns and the auto-detection rules.
    """

    task: str = "*"
    role_column: str | None = None
    trial: tuple[str, ...] = ()
    nuisance: tuple[str, ...] = ()
    ignore: tuple[str, ...] | None = None
    condition: str = "auto"
    condition_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    cue: str = "auto"
    cue_column: str | None = None
    cue_text_column: str | None = None
    stimulus_column: str | None = None
    stim_file_column: str | None = None
    stim_file_template: str | None = None
    # (regex on the stimulus, template) pairs: the first regex found in the stimulus gives the template
    stim_file_patterns: tuple[tuple[str, str], ...] = ()
    category_column: str | None = None
    category_regex: str | None = None
    onset_column: str = "onset"
    duration_column: str | None = "duration"
    offset_column: str | None = None
    # seconds for trial rows whose duration is n/a (default: the median of the same event type, else 0)
    missing_duration: float | None = None
    oneback_column: str | None = None
    oneback_event_type: str = "oneback"
    match_columns: tuple[str, ...] = ()
    # decoding split of this task's perception trials by session label (shell-style patterns, fnmatch)
    train_sessions: tuple[str, ...] = ()
    test_sessions: tuple[str, ...] = ()
    description: str = ""
    origin: str = "auto-detection"
    # auto-detection only: use the small event-type vocabulary (rest → ignore, cue → nuisance)
    auto_vocabulary: bool = False
    # auto-detection only: further identity columns tried, in order, on rows where stimulus_column is n/a
    stimulus_fallback_columns: tuple[str, ...] = ()

    def needed_columns(self) -> list[str]:
        """Columns the events file must have for this rule."""
        names = [
            self.role_column,
            self.cue_column,
            self.cue_text_column,
            self.stimulus_column,
            self.stim_file_column,
            self.category_column,
            self.onset_column,
            None if self.offset_column else self.duration_column,
            self.offset_column,
            self.oneback_column,
        ]
        out = [n for n in names if n]
        return list(dict.fromkeys(list(self.match_columns) + out))


_STR_KEYS = {
    "role_column",
    "cue_column",
    "cue_text_column",
    "stimulus_column",
    "stim_file_column",
    "stim_file_template",
    "category_column",
    "category_regex",
    "onset_column",
    "duration_column",
    "offset_column",
    "oneback_column",
    "oneback_event_type",
    "description",
}
_LIST_KEYS = {"trial", "nuisance", "ignore", "match_columns", "train_sessions", "test_sessions"}
_RULE_KEYS = _STR_KEYS | _LIST_KEYS | {"condition", "cue", "condition_values", "missing_duration"}


def _as_code(value: Any, where: str, origin: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UsageError(f"{origin}: {where} must hold strings or numbers, got {value!r}", path=origin)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _parse_rule(task: str, table: Mapping[str, Any], origin: str) -> TaskRule:
    where = f"[task.{task}]"
    if not isinstance(table, Mapping):
        raise UsageError(f"{origin}: {where} must be a table of keys", path=origin)
    unknown = sorted(set(table) - _RULE_KEYS)
    if unknown:
        raise UsageError(
            f"{origin}: unknown key(s) {', '.join(unknown)} in {where}",
            path=origin,
            hint=f"known keys: {', '.join(sorted(_RULE_KEYS))}; in an --events-map also profile (docs/events.md)",
        )
    kwargs: dict[str, Any] = {"task": task, "origin": f"{origin} {where}"}
    for key, value in table.items():
        if key == "stim_file_template" and isinstance(value, Mapping):
            kwargs["stim_file_patterns"] = _parse_template_patterns(value, where, origin)
        elif key in _STR_KEYS:
            if not isinstance(value, str):
                raise UsageError(f"{origin}: {where} {key} must be a string, got {value!r}", path=origin)
            if key == "stim_file_template":
                _check_template(value, where, origin)
            kwargs[key] = value
        elif key in _LIST_KEYS:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                value = [value]
            if not isinstance(value, list):
                raise UsageError(f"{origin}: {where} {key} must be a list, got {value!r}", path=origin)
            kwargs[key] = tuple(_as_code(v, f"{where} {key}", origin) for v in value)
        elif key == "missing_duration":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UsageError(f"{origin}: {where} missing_duration must be a number of seconds >= 0, got {value!r}",
                                 path=origin)
            kwargs[key] = float(value)
        elif key == "condition":
            if value not in (*CONDITIONS, "auto"):
                raise UsageError(
                    f"{origin}: {where} condition must be perception, imagery or auto, got {value!r}", path=origin
                )
            kwargs[key] = value
        elif key == "cue":
            if value not in (*CUES, "auto"):
                raise UsageError(f"{origin}: {where} cue must be image, text, none or auto, got {value!r}", path=origin)
            kwargs[key] = value
        elif key == "condition_values":
            if not isinstance(value, Mapping) or set(value) - set(CONDITIONS):
                raise UsageError(
                    f"{origin}: {where} condition_values must map perception/imagery to lists of values",
                    path=origin,
                )
            kwargs[key] = {
                cond: tuple(_as_code(v, f"{where} condition_values", origin) for v in (vals if isinstance(vals, list) else [vals]))
                for cond, vals in value.items()
            }
    rule = TaskRule(**kwargs)
    if (rule.trial or rule.nuisance or rule.ignore) and not rule.role_column:
        raise UsageError(
            f"{origin}: {where} lists trial/nuisance/ignore values but no role_column",
            path=origin,
            hint="add role_column = \"<column that holds these values>\"",
        )
    if rule.role_column and not rule.trial:
        raise UsageError(f"{origin}: {where} has a role_column but no trial values", path=origin)
    overlap = _overlap(rule.trial, rule.nuisance, rule.ignore or ())
    if overlap:
        raise UsageError(f"{origin}: {where} lists {overlap} in more than one of trial/nuisance/ignore", path=origin)
    if rule.category_regex:
        try:
            re.compile(rule.category_regex)
        except re.error as exc:
            raise UsageError(f"{origin}: {where} category_regex is not a regular expression: {exc}", path=origin)
    if not rule.duration_column and not rule.offset_column:
        raise UsageError(f"{origin}: {where} needs duration_column or offset_column", path=origin)
    return rule


def _parse_template_patterns(value: Mapping[str, Any], where: str, origin: str) -> tuple[tuple[str, str], ...]:
    """``stim_file_template = { '<regex>' = "<template>", ... }`` (tried in the order written)."""
    pairs = []
    for pattern, template in value.items():
        if not isinstance(template, str):
            raise UsageError(f"{origin}: {where} stim_file_template {pattern!r} must map to a string, got "
                             f"{template!r}", path=origin)
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"{origin}: {where} stim_file_template key {pattern!r} is not a regular expression: "
                             f"{exc}", path=origin) from exc
        _check_template(template, where, origin)
        pairs.append((str(pattern), template))
    if not pairs:
        raise UsageError(f"{origin}: {where} stim_file_template is an empty table", path=origin)
    return tuple(pairs)


def _check_template(template: str, where: str, origin: str) -> None:
    """A ``stim_file_template`` whose fields are not plain names (``{stimulus.upper}``, ``{}``, a stray ``{``):
    said when the map is read (64), not at the first trial row, and never as a file named after a method."""
    import string

    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        fields, problem = [], str(exc)
    else:
        bad = [name for name in fields if not name or name.isdigit() or "." in name]
        problem = f"field {{{bad[0]}}} is not a column name" if bad else None
    if problem:
        raise UsageError(f"{origin}: {where} stim_file_template {template!r} cannot be used: {problem}", path=origin,
                         hint="write fields as {column} of the events file or {stimulus}, e.g. "
                         "stim_file_template = \"{stimulus}.png\" (docs/events.md)")


def _overlap(*lists: Iterable[str]) -> str:
    seen: dict[Any, str] = {}
    for values in lists:
        for v in set(_code_key(x) for x in values):
            if v in seen:
                return repr(v[1])
            seen[v] = v
    return ""


def _parse_task_tables(doc: Mapping[str, Any], origin: str) -> dict[str, TaskRule]:
    tasks = doc.get("task", {})
    if not isinstance(tasks, Mapping) or not tasks:
        raise UsageError(
            f"{origin}: no [task.<label>] section",
            path=origin,
            hint='write one section per task, e.g. [task.imagery] with role_column = "event_type"',
        )
    return {str(label): _parse_rule(str(label), table, origin) for label, table in tasks.items()}


def _load_toml(path: Path, what: str) -> dict[str, Any]:
    from ..utils.text import read_settings_text

    try:
        return tomlread.loads(read_settings_text(path, what))
    except FileNotFoundError as exc:
        raise InputMissingError(f"{what} not found: {path}", path=path) from exc
    except tomlread.TOMLDecodeError as exc:
        raise UsageError(f"{what} {path} is not valid TOML: {exc}", path=path) from exc


@dataclass(frozen=True)
class EventsMap:
    """A user's ``--events-map`` file: one :class:`TaskRule` per task label (``"*"`` = any other task)."""

    rules: Mapping[str, TaskRule]
    path: str = ""

    def rule_for(self, task: str) -> TaskRule | None:
        return self.rules.get(task) or self.rules.get("*")


@dataclass(frozen=True)
class EventsProfile:
    """A built-in profile: a named set of task rules with the conditions under which it applies."""

    name: str
    description: str
    match_columns: tuple[str, ...]
    rules: Mapping[str, TaskRule]

    def rule_for(self, task: str, events: pd.DataFrame) -> TaskRule | None:
        """The rule of this profile for ``task`` if the profile applies to ``events``, else ``None``.

        A section applies when it is named after the task (or ``"*"``), every column of the profile's
        ``[match] columns``, of the section's ``match_columns`` and every column the section uses exists,
        and — when the section lists ``ignore`` explicitly — every value of its role column is listed
        (``n/a`` always counts as ignore). Numeric codes compare as numbers (``1`` = ``1.0``).
        """
        for label in (task, "*"):
            rule = self.rules.get(label)
            if rule is None:
                continue
            columns = set(events.columns)
            if not set(self.match_columns) <= columns or not set(rule.needed_columns()) <= columns:
                continue
            if rule.role_column and rule.ignore is not None:
                known = {_code_key(v) for v in (*rule.trial, *rule.nuisance, *rule.ignore)}
                values = {_code_key(v) for v in events[rule.role_column] if v != NA}
                if not values <= known:
                    continue
            return rule
        return None

    def unknown_values(self, task: str, events: pd.DataFrame) -> list[str]:
        """Values of the role column of this profile's section for ``task`` (by name, not ``"*"``) that it does
        not list, when everything else about ``events`` matches; [] otherwise."""
        rule = self.rules.get(task)
        if rule is None or not rule.role_column or rule.ignore is None:
            return []
        columns = set(events.columns)
        if not set(self.match_columns) <= columns or not set(rule.needed_columns()) <= columns:
            return []
        known = {_code_key(v) for v in (*rule.trial, *rule.nuisance, *rule.ignore)}
        return sorted({v for v in events[rule.role_column] if v != NA and _code_key(v) not in known})


def load_events_map(path: str | os.PathLike) -> EventsMap:
    """Read an ``--events-map`` TOML file.

    Raises
    ------
    InputMissingError
        The file does not exist (exit 66).
    UsageError
        Not TOML, unknown keys, wrong types (exit 64); the message names the file and the section.
    """
    path = Path(path)
    doc = _load_toml(path, "Events map")
    unknown = sorted(set(doc) - {"task", "description"})
    if unknown:
        raise UsageError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}",
            path=path,
            hint="an events map holds [task.<label>] sections (docs/events.md)",
        )
    tasks = doc.get("task", {})
    bases: dict[str, str] = {}
    if isinstance(tasks, Mapping):
        merged = {}
        for label, table in tasks.items():
            merged[label], base = _on_profile(str(label), table, path)
            if base:
                bases[str(label)] = base
        doc = {**doc, "task": merged}
    rules = _parse_task_tables(doc, str(path))
    for label, base in bases.items():
        rules[label] = replace(rules[label], origin=f"{rules[label].origin} on {base}")
    return EventsMap(rules=rules, path=str(path))


def _on_profile(label: str, table: Any, path: Path) -> tuple[Any, str]:
    """A map section with ``profile = "<name>"``: that built-in profile's section for the same task (or its
    ``"*"`` section), with the map's keys on top. Returns the merged table and ``"profile <name> [task.x]"``."""
    if not isinstance(table, Mapping) or "profile" not in table:
        return table, ""
    name = table["profile"]
    docs = _builtin_profile_docs()
    if not isinstance(name, str) or name not in docs:
        raise UsageError(
            f"{path}: [task.{label}] profile = {name!r} is not a built-in profile",
            path=path,
            hint=f"built-in profiles: {', '.join(sorted(docs))} (docs/events.md)",
        )
    sections = docs[name].get("task", {})
    base_label = label if label in sections else "*" if "*" in sections else None
    if base_label is None:
        raise UsageError(
            f"{path}: [task.{label}] profile = {name!r}, but that profile has no [task.{label}] section",
            path=path,
            hint=f"profile {name} has: {', '.join(f'[task.{t}]' for t in sections)}",
        )
    own = {k: v for k, v in table.items() if k != "profile"}
    return {**sections[base_label], **own}, f"profile {name} [task.{base_label}]"


def check_events_map_tasks(events_map: EventsMap, dataset_tasks: Iterable[str]) -> None:
    """Every ``[task.<label>]`` section of a map must name a task of the dataset (exit 64 otherwise).

    A misspelled section (``[task.Perception]`` for task ``perception``) would otherwise be skipped without a
    word and the built-in profile used instead. The message lists the dataset's tasks and, when one is close
    (same letters in another case, or a near spelling), says which.
    """
    tasks = sorted({str(t) for t in dataset_tasks})
    unknown = [label for label in events_map.rules if label != "*" and label not in tasks]
    if not unknown:
        return
    guesses = []
    for label in unknown:
        lowered = {t.lower(): t for t in tasks}
        close = [lowered[label.lower()]] if label.lower() in lowered else [
            lowered[m] for m in difflib.get_close_matches(label.lower(), list(lowered), n=1, cutoff=0.6)
        ]
        if close:
            guesses.append(f"[task.{label}] -> [task.{close[0]}]")
    sections = ", ".join(f"[task.{label}]" for label in unknown)
    raise UsageError(
        f"{events_map.path}: {sections} name(s) no task of the dataset (its tasks: {', '.join(tasks) or 'none'})",
        path=events_map.path,
        hint=(f"did you mean {'; '.join(guesses)}? " if guesses else "")
        + "task labels are case-sensitive and come from the file names (..._task-<label>_...); "
        'use [task."*"] for every task',
    )


def load_profile(path: str | os.PathLike) -> EventsProfile:
    """Read one profile file (same sections as an events map, plus ``description`` and ``[match]``)."""
    path = Path(path)
    doc = _load_toml(path, "Events profile")
    name = PurePosixPath(str(path)).stem
    unknown = sorted(set(doc) - {"task", "description", "match"})
    if unknown:
        raise UsageError(f"{path}: unknown top-level key(s) {', '.join(unknown)}", path=path)
    match = doc.get("match", {})
    if set(match) - {"columns"}:
        raise UsageError(f"{path}: [match] knows only 'columns'", path=path)
    origin = f"profile {name}"
    rules = _parse_task_tables(doc, origin)
    return EventsProfile(
        name=name,
        description=str(doc.get("description", "")),
        match_columns=tuple(str(c) for c in match.get("columns", ())),
        rules=rules,
    )


@functools.lru_cache(maxsize=1)
def _builtin_profile_docs() -> dict[str, dict[str, Any]]:
    """The packaged profiles as raw TOML documents, by name (for ``profile = "<name>"`` in a map)."""
    folder = resources.files("bids_m2i") / "data" / "events_profiles"
    docs = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            with resources.as_file(entry) as real:
                docs[PurePosixPath(entry.name).stem] = _load_toml(Path(real), "Events profile")
    return docs


@functools.lru_cache(maxsize=1)
def _builtin_profiles_cached() -> tuple[EventsProfile, ...]:
    folder = resources.files("bids_m2i") / "data" / "events_profiles"
    profiles = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            with resources.as_file(entry) as real:
                profiles.append(load_profile(real))
    return tuple(profiles)


def builtin_profiles() -> list[EventsProfile]:
    """The packaged profiles, in the order they are tried (file name order)."""
    return list(_builtin_profiles_cached())


def auto_rule(events: pd.DataFrame, task: str) -> TaskRule:
    """The rule auto-detection builds for ``events`` (no map section, no profile applies).

    Stimulus from the first of :data:`AUTO_STIMULUS_COLUMNS`; event type from ``trial_type`` /
    ``event_type`` (words like ``rest`` → ignore, ``cue`` → nuisance); ``stim_file``, ``category``,
    ``cue``, ``cue_text`` from the columns of those names when present.
    """
    columns = set(events.columns)
    candidates = [c for c in AUTO_STIMULUS_COLUMNS if c in columns]
    if len(candidates) > 1 and "trial_type" in candidates:
        candidates.remove("trial_type")  # an event type names the stimulus only when nothing else does
    event_type = next((c for c in AUTO_EVENT_TYPE_COLUMNS if c in columns), None)
    cue_column = "cue" if "cue" in columns else None
    cue_text_column = "cue_text" if "cue_text" in columns else None
    if cue_column and not all(v == NA or v.lower() in CUES for v in events["cue"]):
        # a 'cue' column holding the cue itself (a word or sentence), not its kind
        cue_column = None
        cue_text_column = cue_text_column or "cue"
    return TaskRule(
        task=task,
        role_column=event_type,
        stimulus_column=candidates[0] if candidates else None,
        stimulus_fallback_columns=tuple(candidates[1:]),
        stim_file_column="stim_file" if "stim_file" in columns else None,
        category_column="category" if "category" in columns else None,
        cue_column=cue_column,
        cue_text_column=cue_text_column,
        origin="auto-detection",
        auto_vocabulary=True,
    )


def select_rule(
    events: pd.DataFrame,
    task: str,
    events_map: EventsMap | None = None,
    profiles: Sequence[EventsProfile] | None = None,
    source: str | os.PathLike | None = None,
) -> TaskRule:
    """Choose the rule for one events file: map section, else first applicable profile, else auto."""
    if events_map is not None:
        rule = events_map.rule_for(task)
        if rule is not None:
            timing = {rule.onset_column, rule.duration_column, rule.offset_column}  # checked later, clearer
            missing = [c for c in rule.needed_columns() if c not in events.columns and c not in timing]
            if missing:
                raise BadDataError(
                    f"{source}: column(s) {', '.join(missing)} named by {rule.origin} are missing "
                    f"(the file has: {', '.join(events.columns)})",
                    path=source,
                    hint="fix the events map section for this task",
                )
            return rule
    profiles = builtin_profiles() if profiles is None else profiles
    for profile in profiles:
        rule = profile.rule_for(task, events)
        if rule is not None:
            return rule
    for profile in profiles:
        unknown = profile.unknown_values(task, events)
        if unknown:
            # a look-alike of a known dataset with codes its profile does not list: say so, not only "auto" in INFO
            LOGGER.warning("%s: not read with %s: its %r values %s are not listed there; read by auto-detection "
                           "instead (check m2i --print-trials, or give an --events-map with profile = %r and "
                           "these values under trial / nuisance / ignore; docs/events.md)", source,
                           profile.rules[task].origin, profile.rules[task].role_column,
                           ", ".join(repr(v) for v in unknown[:5]), profile.name)
    return auto_rule(events, task)


# ----------------------------------------------------------------------------------------------------
# Events → trials
# ----------------------------------------------------------------------------------------------------
def _code_key(value: str) -> tuple[str, Any]:
    """Comparison key of a code: numbers compare as numbers (``1`` == ``1.0``), words as text whatever their case
    (``Famous`` == ``FAMOUS``: a lab's spreadsheet or script that capitalises differently means the same event;
    the profile stopped applying and the rows were read by auto-detection, null events becoming trials)."""
    text = str(value).strip()
    if _NUMBER.match(text):
        return ("num", float(text))
    return ("str", text.casefold())


def _as_strings(events: pd.DataFrame) -> pd.DataFrame:
    """A frame read by someone else (maybe with floats and NaN) as strings with ``n/a`` for missing."""
    if all(events[c].map(lambda v: isinstance(v, str)).all() for c in events.columns):
        return events

    def text(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return NA
        return str(value).strip()

    return events.apply(lambda col: col.map(text)).astype(object)


def _label_from_path(source: Any, entity: str) -> str | None:
    if source is None:
        return None
    found = re.search(rf"(?:^|_){entity}-([A-Za-z0-9]+)", Path(str(source)).name)
    return found.group(1) if found else None


def _parse_times(values: Sequence[str], column: str, roles: list[str], source, line_offset: int = 2,
                 nuisance_na: float | None = None, notes: list[str] | None = None, signed: bool = False):
    """Float seconds per row; ``None`` where the row is ``ignore`` and unusable (dropped by the caller).

    ``signed``: negative values are times (onsets, offsets): BIDS allows an onset before the first stored volume
    ("to account for events that occur prior to the first stored data point", e.g. during discarded dummy
    scans); durations are never negative.

    ``n/a`` on a nuisance row (a response that never came, a button press of unknown duration) is not an error:
    it becomes ``nuisance_na`` (``None``: the row is dropped; 0: an impulse), with a warning (also appended to
    ``notes``, which the GLM sidecar records)."""
    out: list[float | None] = []
    bad: list[str] = []
    replaced: list[int] = []
    for i, (text, role) in enumerate(zip(values, roles)):
        # float() also reads "1_4" as 14 (Python's digit grouping): only plain decimal numbers are seconds
        number = float(text) if _NUMBER.match(text) else math.nan
        ok = math.isfinite(number) and (signed or number >= 0)
        if ok:
            out.append(number)
        elif role == "ignore":
            out.append(None)
        elif role == "nuisance" and text == NA:
            out.append(nuisance_na)
            replaced.append(i + line_offset)
        else:
            out.append(None)
            bad.append(f"line {i + line_offset}: {text!r}")
    if bad:
        hint = ("onsets must be numbers of seconds (negative: before the first volume), durations numbers of "
                "seconds >= 0; fix the events file or map these rows to ignore with --events-map")
        if any(re.fullmatch(r"[+-]?\d+,\d+", text.strip()) for text, role in zip(values, roles) if role != "ignore"):
            # a spreadsheet in a locale that writes 10,5 for 10.5 (German, French, ...)
            hint = ("the values use a decimal comma (10,5): BIDS needs a decimal point (10.5); export the table "
                    "from the spreadsheet with '.' as the decimal separator. " + hint)
        raise BadDataError(
            f"{source}: column {column!r} has missing{'' if signed else ', negative'} or non-numeric values in rows "
            f"that are trials or nuisance events ({'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''})",
            path=source, hint=hint,
        )
    if replaced:
        message = "%s: %d nuisance event(s) with %r n/a (line(s) %s): %s" % (
            source, len(replaced), column, ", ".join(str(i) for i in replaced[:5]),
            "left out" if nuisance_na is None else f"modelled with {column} {nuisance_na:g}")
        LOGGER.warning(message)
        if notes is not None:
            notes.append(message)
    return out


def _fill_missing_trial_durations(values: list[str], roles: list[str], event_types: list[str], rule: TaskRule,
                                  source, line_offset: int = 2) -> tuple[list[str], list[str]]:
    """Durations for trial rows whose duration is ``n/a`` (BIDS allows it: "unknown"), with one note per event
    type saying what was used.

    What a lab would expect, in order: the duration the ``--events-map`` gives (``missing_duration``), else the
    median of the known durations of trials of the same event type in this file (a row whose logging failed in
    a run where every other stimulus lasted 3 s), else 0 s, an impulse (the whole file leaves it unknown: brief
    events are modelled so). Non-numeric or negative values stay errors (a typo, not an unknown)."""
    missing = [i for i, (text, role) in enumerate(zip(values, roles)) if role == "trial" and text == NA]
    if not missing:
        return list(values), []
    known: dict[str, list[float]] = {}
    for text, role, kind in zip(values, roles, event_types):
        try:
            number = float(text)
        except ValueError:
            continue
        if role == "trial" and math.isfinite(number) and number >= 0:
            known.setdefault(kind, []).append(number)
    out = list(values)
    by_type: dict[str, list[int]] = {}
    for i in missing:
        by_type.setdefault(event_types[i], []).append(i)
    notes = []
    for kind, rows in by_type.items():
        if rule.missing_duration is not None:
            value, how = rule.missing_duration, f"{rule.missing_duration:g} s (missing_duration of {rule.origin})"
        elif known.get(kind):
            value = float(statistics.median(known[kind]))
            how = (f"{value:g} s, the median of the {len(known[kind])} known duration(s) of {kind!r} trials in "
                   "this file")
        else:
            value, how = 0.0, f"0 s (an impulse: no {kind!r} trial in this file has a known duration)"
        for i in rows:
            out[i] = repr(value)
        lines = ", ".join(str(i + line_offset) for i in rows[:5]) + (" ..." if len(rows) > 5 else "")
        notes.append(f"{source}: {len(rows)} {kind!r} trial(s) with duration n/a (line(s) {lines}) modelled with "
                     f"duration {how}")
    for note in notes:
        LOGGER.warning(note)
    return out, notes


def _stem_of(value: str) -> str:
    if value == NA:
        return NA
    name = PurePosixPath(value.replace("\\", "/")).name
    return name.rsplit(".", 1)[0] if "." in name else name


def events_to_trials(
    events: pd.DataFrame | str | os.PathLike,
    *,
    task: str,
    session: str | None = None,
    run: str | int | None = None,
    events_map: EventsMap | None = None,
    source: str | os.PathLike | None = None,
    stimuli_dir: str | os.PathLike | None = None,
    profiles: Sequence[EventsProfile] | None = None,
    include_ignore: bool = False,
    stimuli_table: Mapping[str, Mapping[str, str]] | None = None,
) -> pd.DataFrame:
    """Turn one events file into trials-table rows.

    Parameters
    ----------
    events : DataFrame or path
        As returned by :func:`read_events` (strings), or the path of the file.
    task, session, run : str
        Entities of the run (``session``/``run`` ``None`` → taken from ``source``'s name, else ``n/a``).
    events_map : EventsMap, optional
        Overrides profiles and auto-detection for the tasks it names.
    source : path, optional
        The events file (named in messages; default: ``events`` when it is a path).
    stimuli_dir : path, optional
        ``BIDS_DIR/stimuli``: ``stim_file`` values are looked up there (found files are written relative
        to it) and ``stimuli.tsv`` fills categories.
    profiles : list of EventsProfile, optional
        Default: :func:`builtin_profiles`.
    include_ignore : bool
        Keep ``ignore`` rows (for ``--print-trials`` and checks).
    stimuli_table : mapping, optional
        Pre-read ``stimuli.tsv`` (default: read from ``stimuli_dir``).

    Returns
    -------
    pandas.DataFrame
        Shape (n_events_kept, 13), columns :data:`TRIALS_COLUMNS`, sorted by onset (stable).
        ``attrs["rule"]`` names the rule used (map section, profile section or auto-detection).

    Raises
    ------
    BadDataError
        Missing onset/duration columns, unusable onsets/durations on trial or nuisance rows, no rows, a
        ``stim_file`` outside ``stimuli/``, an invalid ``cue`` value.
    """
    if not isinstance(events, pd.DataFrame):
        source = events if source is None else source
        events = read_events(events)
    else:
        events = _as_strings(events)
    source_text = str(source) if source is not None else "<events>"
    session = session if session not in (None, "") else (_label_from_path(source, "ses") or NA)
    run_label = str(run) if run not in (None, "") else (_label_from_path(source, "run") or NA)
    if run not in (None, "") and _label_from_path(source, "run"):
        run_label = _label_from_path(source, "run")  # keeps zero padding that int run numbers lose

    if len(events) == 0:
        raise BadDataError(
            f"{source_text} has a header but no events",
            path=source,
            hint="add the events of this run or exclude the run (--bids-filter-file)",
        )
    rule = select_rule(events, task, events_map, profiles, source_text)
    LOGGER.info("%s: events read with %s", source_text, rule.origin)
    onset_col, duration_col = rule.onset_column, rule.duration_column
    time_columns = [onset_col] + ([rule.offset_column] if rule.offset_column else [duration_col])
    missing = [c for c in time_columns if c not in events.columns]
    if missing:
        raise BadDataError(
            f"{source_text} has no {' / '.join(repr(c) for c in missing)} column "
            f"(columns: {', '.join(events.columns)})",
            path=source,
            hint="BIDS events need 'onset' and 'duration' in seconds; if they are under other names, set "
            "onset_column / duration_column in an --events-map (docs/events.md)",
        )

    records = events.to_dict("records")
    roles, event_types = _assign_roles(records, rule)

    if stimuli_table is None:
        stimuli_table = load_stimuli_table(stimuli_dir)

    notes: list[str] = []  # what was assumed for missing times
    onsets = _parse_times([r[onset_col] for r in records], onset_col, roles, source_text, nuisance_na=None,
                          notes=notes, signed=True)
    if rule.offset_column:
        offsets = _parse_times([r[rule.offset_column] for r in records], rule.offset_column, roles, source_text,
                               signed=True)
        durations = [None if (a is None or b is None) else b - a for a, b in zip(onsets, offsets)]
        negative = [i + 2 for i, d in enumerate(durations) if d is not None and d < 0 and roles[i] != "ignore"]
        if negative:
            raise BadDataError(
                f"{source_text}: {rule.offset_column!r} is before {onset_col!r} on line(s) {negative[:5]}",
                path=source,
            )
        durations = [None if (d is not None and d < 0) else d for d in durations]
    else:
        duration_texts, filled = _fill_missing_trial_durations([r[duration_col] for r in records], roles,
                                                               event_types, rule, source_text)
        notes += filled
        durations = _parse_times(duration_texts, duration_col, roles, source_text, nuisance_na=0.0, notes=notes)
    dropped = [i for i, (a, b) in enumerate(zip(onsets, durations)) if a is None or b is None]
    if dropped:
        LOGGER.warning(
            "%s: %d ignored or nuisance row(s) without a usable onset/duration dropped (line(s) %s)",
            source_text,
            len(dropped),
            ", ".join(str(i + 2) for i in dropped[:5]),
        )

    dropped_set = set(dropped)
    order = sorted((i for i in range(len(records)) if i not in dropped_set), key=lambda i: onsets[i])
    stimuli = [_stimulus_value(records[i], rule) for i in range(len(records))]
    if rule.oneback_column:
        _mark_oneback(records, order, roles, event_types, rule)

    rows = []
    n_unidentified = 0
    for i in order:
        role = roles[i]
        if role == "ignore" and not include_ignore:
            continue
        row = _trial_fields(
            records[i], stimuli[i], role, event_types[i], rule, task, session, source, stimuli_dir, stimuli_table
        )
        if row["role"] == "trial" and row["stimulus"] == NA and row["cue_text"] == NA:
            # no identity: it still gets modelled (its own event type) but not decoded
            row["role"] = "nuisance"
            row["split"] = NA
            n_unidentified += 1
        row.update(onset=onsets[i], duration=durations[i], run=run_label)
        rows.append(row)
    if n_unidentified:
        LOGGER.warning(
            "%s: %d trial row(s) have no stimulus (column %r is n/a); modelled as nuisance",
            source_text,
            n_unidentified,
            rule.stimulus_column,
        )
    table = _as_trials_frame(rows)
    if not (table["role"] == "trial").any():
        LOGGER.warning("%s: no trials found (rule: %s)", source_text, rule.origin)
    table.attrs["rule"] = rule.origin
    table.attrs["looked_at"] = _LookedAt(events[rule.role_column] if rule.role_column else None, len(records),
                                         rule, roles, n_unidentified)
    table.attrs["notes"] = notes  # what was assumed for missing times (the GLM sidecar records it)
    return table


class _LookedAt(Mapping):
    """What was looked at in one events file, for the "No trials found" message
    (:func:`bids_m2i.bids.inputs.describe_events_looked_at`): the column deciding the role, its values and what
    they became. A read-only mapping computed on first access: the message is rare, and counting every file's
    values for it was work on every run."""

    def __init__(self, role_column_values, n_rows: int, rule: TaskRule, roles: list[str], n_unidentified: int):
        self._inputs = (role_column_values, n_rows, rule, roles, n_unidentified)
        self._data: dict | None = None

    def _content(self) -> dict:
        if self._data is None:
            values, n_rows, rule, roles, n_unidentified = self._inputs
            role_values = dict(Counter(map(str, values))) if values is not None else {NA: n_rows}
            self._data = {
                "role_column": rule.role_column, "role_values": role_values, "stimulus_column": rule.stimulus_column,
                "trial_values": list(rule.trial), "n_rows": n_rows, "no_stimulus": n_unidentified,
                "roles": {name: roles.count(name) for name in ("trial", "nuisance", "ignore")},
            }
            self._inputs = None  # nothing more to keep
        return self._data

    def __getitem__(self, key):
        return self._content()[key]

    def __iter__(self):
        return iter(self._content())

    def __len__(self) -> int:
        return len(self._content())

    # pandas deep-copies ``attrs`` into derived frames and compares them in ``concat``: neither should compute
    def __deepcopy__(self, memo):
        return self

    def __eq__(self, other) -> bool:
        return self is other

    __hash__ = object.__hash__


def _assign_roles(records: list[dict], rule: TaskRule) -> tuple[list[str], list[str]]:
    """Role and event type of every row (before one-back marking)."""
    roles: list[str] = []
    event_types: list[str] = []
    trial = {_code_key(v) for v in rule.trial}
    nuisance = {_code_key(v) for v in rule.nuisance}
    ignore = {_code_key(v) for v in (rule.ignore or ())}
    spellings = {_code_key(v): str(v) for v in (*(rule.ignore or ()), *rule.nuisance, *rule.trial)}
    unlisted: dict[str, int] = {}
    for record in records:
        stimulus = _stimulus_value(record, rule)
        value = record[rule.role_column] if rule.role_column else NA
        event_types.append(canonical_event_type(value, spellings) if rule.role_column
                           else ("stimulus" if stimulus != NA else NA))
        if rule.auto_vocabulary:
            # auto-detection: words of the event type first, then "no stimulus → ignore"
            if value != NA and AUTO_IGNORE_PATTERN.search(value):
                roles.append("ignore")
            elif value != NA and AUTO_NUISANCE_PATTERN.match(value):
                roles.append("nuisance")
            elif stimulus == NA and (not rule.cue_text_column or record[rule.cue_text_column] == NA):
                roles.append("ignore")
            else:
                roles.append("trial")  # an identity, or a text-only (pure imagination) target
            continue
        if not rule.role_column:
            roles.append("ignore" if stimulus == NA else "trial")
            continue
        key = _code_key(value)
        if value == NA:
            roles.append("ignore")
        elif key in trial:
            roles.append("trial")
        elif key in nuisance:
            roles.append("nuisance")
        else:
            if rule.ignore is not None and key not in ignore:
                unlisted[value] = unlisted.get(value, 0) + 1
            roles.append("ignore")
    if unlisted:
        LOGGER.warning(
            "%s: value(s) %s of %r are not listed as trial, nuisance or ignore; treated as ignore",
            rule.origin,
            ", ".join(f"{k!r} ({n}x)" for k, n in sorted(unlisted.items())),
            rule.role_column,
        )
    return roles, event_types


def canonical_event_type(value: str, spellings: Mapping[tuple, str]) -> str:
    """One spelling per event type. Roles match codes whatever their case (``Cue`` == ``cue``, ``1`` == ``1.0``:
    :func:`_code_key`), but the GLM makes one nuisance regressor per distinct ``event_type`` string: ``Cue`` and
    ``cue`` rows became two regressors (and two names in the sidecar and the design figure). The rule's own
    spelling when it lists the code, else the key's (lower case; numbers as ``1`` / ``1.5``)."""
    if value == NA:
        return value
    key = _code_key(value)
    if key in spellings:
        return spellings[key]
    kind, canonical = key
    if kind == "num":
        return str(int(canonical)) if float(canonical).is_integer() else repr(canonical)
    return canonical


def _stimulus_value(record: Mapping[str, str], rule: TaskRule) -> str:
    if not rule.stimulus_column:
        return NA
    for column in (rule.stimulus_column, *rule.stimulus_fallback_columns):
        value = record[column]
        if value == NA:
            continue
        # a stimulus named by a file path is the file's stem: func/f013.bmp → f013, stimuli/img-1.png → img-1
        if column == rule.stim_file_column or column == "stim_file":
            return _stem_of(value)
        return value
    return NA


def _mark_oneback(records, order, roles, event_types, rule: TaskRule) -> None:
    """Trials whose ``oneback_column`` equals the previous trial's become nuisance (one-back repeats)."""
    previous = None
    for i in order:
        if roles[i] != "trial":
            continue
        value = records[i][rule.oneback_column]
        if value != NA and value == previous:
            roles[i] = "nuisance"
            event_types[i] = rule.oneback_event_type
        previous = value


def _trial_fields(
    record, stimulus, role, event_type, rule: TaskRule, task, session, source, stimuli_dir, stimuli_table
) -> dict[str, Any]:
    lenient = role == "ignore"  # ignore rows are informative only: never fail on them
    info = stimuli_table.get(stimulus, {}) if stimulus != NA else {}

    stim_file = NA
    templated = False
    template = _template_for(rule, stimulus)
    if rule.stim_file_column:
        stim_file = record[rule.stim_file_column]
    elif template is not None:
        stim_file = _fill_template(template, stimulus, record, rule, source)
        templated = True
    elif info.get("stim_file", NA) != NA:
        stim_file = info["stim_file"]
    if stim_file != NA:
        try:
            found = resolve_stimulus_path(stimuli_dir, stim_file, source)
            if found is None and templated:
                # a name we built: the lab may hold the image under another extension (.jpg for .JPEG, .png)
                found = find_with_other_extension(stimuli_dir, stim_file, source)
            stim_file = relative_to_stimuli(stimuli_dir, found) if found else normalize_stim_file(stim_file, source)
        except BadDataError:
            if not lenient:
                raise
            stim_file = NA

    category = record[rule.category_column] if rule.category_column else NA
    if category == NA:
        category = info.get("category", NA) or NA
    if category == NA and rule.category_regex and stimulus != NA:
        found_cat = re.search(rule.category_regex, stimulus)
        if found_cat:
            category = found_cat.group(1) if found_cat.groups() else found_cat.group(0)

    cue_text = record[rule.cue_text_column] if rule.cue_text_column else NA
    if cue_text == NA:
        cue_text = info.get("cue_text", NA) or NA

    condition = _condition_of(rule, task, session, event_type)
    cue = _cue_of(rule, record, condition, cue_text, source, lenient)
    return {
        "task": task,
        "session": session,
        "role": role,
        "event_type": event_type,
        "condition": condition,
        "cue": cue,
        "stimulus": stimulus,
        "category": category,
        "stim_file": stim_file,
        "cue_text": cue_text,
        "split": _split_of(rule, session, condition, role),
    }


def _fill_template(template: str, stimulus: str, record: Mapping[str, str], rule: TaskRule, source) -> str:
    """``stim_file_template`` filled with the row's columns and ``{stimulus}`` (the rule's stimulus, which wins
    over a column of that name: m2i's own events have a ``stimulus`` column, and passing both to ``format``
    stopped the documented example with 1, "unexpected failure"). A field the row cannot fill (an unknown
    column, ``{stimulus.x}``, ``{stimulus[x]}``, a bad format spec) is the map's fault: 64 naming it."""
    try:
        return template.format(**{**record, "stimulus": stimulus})
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        origin = rule.origin.rsplit(" [", 1)[0]  # "<map file> [task.x]": the file alone for the error's path
        reason = f"no column {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
        raise UsageError(
            f"{rule.origin}: stim_file_template {template!r} cannot be filled for {Path(source).name} ({reason})",
            path=origin, hint="use {column} fields of the events file and {stimulus} only, e.g. "
            "stim_file_template = \"{stimulus}.png\" (docs/events.md)") from exc


def _template_for(rule: TaskRule, stimulus: str) -> str | None:
    """The file-name template of ``stimulus``: the first pattern found in it, else ``stim_file_template``."""
    if stimulus == NA:
        return None
    for pattern, template in rule.stim_file_patterns:
        if re.search(pattern, stimulus):
            return template
    return rule.stim_file_template


def _split_of(rule: TaskRule, session: str, condition: str, role: str) -> str:
    """``train`` / ``test`` / ``none`` for the perception trials of a task whose rule names sessions, else ``n/a``.

    With both lists, a session in neither is ``none`` (betas, no decoding: ds001506's shapes and letters);
    with one list, every other session is the other part.
    """
    if role != "trial" or condition != "perception" or not (rule.train_sessions or rule.test_sessions):
        return NA
    label = "" if session in (None, NA) else str(session)
    is_test = any(fnmatchcase(label, p) for p in rule.test_sessions)
    is_train = any(fnmatchcase(label, p) for p in rule.train_sessions)
    if is_test and is_train:
        raise UsageError(
            f"{rule.origin}: session {label!r} matches both train_sessions and test_sessions",
            hint="a session is either trained on or tested on; make the patterns exclusive",
        )
    if is_test:
        return "test"
    if is_train:
        return "train"
    if not rule.test_sessions:
        return "test"
    if not rule.train_sessions:
        return "train"
    return "none"


_IMAGERY_LABEL = re.compile(r"imag(?!e(?!r))")


def _condition_of(rule: TaskRule, task: str, session: str, event_type: str) -> str:
    key = _code_key(event_type)
    for condition, values in rule.condition_values.items():
        if key in {_code_key(v) for v in values}:
            return condition
    if rule.condition != "auto":
        return rule.condition
    labels = (task or "", session if session != NA else "", event_type if event_type != NA else "")
    # "imag" as in imagery, imagine, imagination, imag: but not "image"/"images" (an event type of plain viewing)
    return "imagery" if any(_IMAGERY_LABEL.search(text.lower()) for text in labels) else "perception"


def _cue_of(rule: TaskRule, record, condition: str, cue_text: str, source, lenient: bool) -> str:
    if rule.cue != "auto":
        return rule.cue
    if rule.cue_column:
        value = record[rule.cue_column]
        if value == NA:
            value = "none"
        if value.lower() in CUES:
            return value.lower()
        if lenient:
            return "none"
        raise BadDataError(
            f"{source}: column {rule.cue_column!r} has {value!r}; cue must be image, text or none",
            path=source,
            hint="fix the events file, or set cue = \"...\" / another cue_column in an --events-map",
        )
    if condition == "imagery" and cue_text != NA:
        return "text"
    return "none"


def _as_trials_frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in TRIALS_COLUMNS})
    else:
        frame = pd.DataFrame.from_records(rows, columns=list(TRIALS_COLUMNS))
    frame["onset"] = frame["onset"].astype(float)
    frame["duration"] = frame["duration"].astype(float)
    for column in TRIALS_COLUMNS[2:]:
        frame[column] = frame[column].astype(object)
    return frame


def build_trials_table(
    event_files: Sequence[tuple[str | os.PathLike, Mapping[str, Any]]],
    events_map: EventsMap | None = None,
    stimuli_dir: str | os.PathLike | None = None,
    *,
    include_ignore: bool = False,
    profiles: Sequence[EventsProfile] | None = None,
) -> pd.DataFrame:
    """Trials table of several runs (one participant).

    Parameters
    ----------
    event_files : list of (path, entities)
        ``entities`` holds ``task`` (required), ``session``, ``run`` (``subject`` is not a column).
    events_map, stimuli_dir, include_ignore, profiles
        As in :func:`events_to_trials`.

    Returns
    -------
    pandas.DataFrame
        Rows of every run in the given order, columns :data:`TRIALS_COLUMNS`. ``attrs["runs"]`` lists one
        dict per run: ``task session run source rule``.
    """
    stimuli_table = load_stimuli_table(stimuli_dir)
    parts = []
    runs = []
    for path, entities in event_files:
        task = entities.get("task") or _label_from_path(path, "task")
        if not task:
            raise BadDataError(f"No task label for {path}", path=path, hint="name the file ..._task-<label>_...")
        part = events_to_trials(
            path,
            task=str(task),
            session=None if entities.get("session") in (None, "") else str(entities["session"]),
            run=entities.get("run"),
            events_map=events_map,
            source=path,
            stimuli_dir=stimuli_dir,
            profiles=profiles,
            include_ignore=include_ignore,
            stimuli_table=stimuli_table,
        )
        session = str(entities["session"]) if entities.get("session") not in (None, "") else (_label_from_path(path, "ses") or NA)
        run = _label_from_path(path, "run") or (str(entities["run"]) if entities.get("run") not in (None, "") else NA)
        runs.append({"task": str(task), "session": session, "run": run, "source": str(path), "rule": part.attrs["rule"],
                     "notes": list(part.attrs.get("notes", [])), "looked_at": part.attrs.get("looked_at")})
        parts.append(part)
    if parts:
        table = pd.concat(parts, ignore_index=True)
        table = _as_trials_frame(table.to_dict("records")) if len(table) else _as_trials_frame([])
    else:
        table = _as_trials_frame([])
    table.attrs["runs"] = runs
    _warn_stimuli_without_row(table, stimuli_table, stimuli_dir)
    return table


def _warn_stimuli_without_row(table: pd.DataFrame, stimuli_table: Mapping, stimuli_dir) -> None:
    """``stimuli/stimuli.tsv`` lists most stimuli of the trials but not all (a row lost in an edit): their
    category and caption silently became n/a. Said once per participant; a table keyed by something else (fewer
    than half of the stimuli found in it) is not this user error and stays quiet."""
    if not stimuli_table or not len(table):
        return
    # pure-imagination targets (stim_file n/a, a text cue: DESIGN "Events -> trials") are not stimuli of the
    # dataset: the simulator's nov-NNNN raised this warning on every run of its own datasets
    text_only = (table["stim_file"] == NA) & (table["cue_text"] != NA)
    named = {s for s in table.loc[(table["role"] == "trial") & ~text_only, "stimulus"] if s != NA}
    absent = sorted(named - set(stimuli_table))
    if absent and len(absent) <= len(named) / 2:
        LOGGER.warning("%s has no row for %d stimulus/stimuli of the trials (%s%s): their category and caption "
                       "are n/a", Path(stimuli_dir) / "stimuli.tsv", len(absent), ", ".join(absent[:5]),
                       ", ..." if len(absent) > 5 else "")


def check_events_within_run(
    trials: pd.DataFrame, n_volumes: int, tr: float, path: str | os.PathLike | None = None,
    notes: list[str] | None = None,
) -> pd.DataFrame:
    """Drop events that start after the end of the run (``n_volumes * tr`` seconds), or too long before its
    first volume for the design to hold them (:data:`EARLIEST_ONSET_S`), with a warning.

    Parameters
    ----------
    trials : DataFrame
        Rows of one run (columns :data:`TRIALS_COLUMNS`).
    n_volumes : int
        Number of volumes of the BOLD series.
    tr : float
        Repetition time in seconds.
    path : path, optional
        The events (or BOLD) file named in the warning.
    notes : list, optional
        Receives the warnings about dropped and truncated events, which the GLM sidecar's ``events_warnings``
        and the report then show (a warning only in the log was missed: QA pass 29).

    Returns
    -------
    DataFrame
        ``trials`` without the rows whose onset is at or after the end, or earlier than the design's window;
        index reset. Events that start inside the run but end after it, and trials that start (less than the
        window) before its first volume, are kept (their HRF is truncated) and reported.
    """
    if n_volumes <= 0 or not (tr > 0):
        raise BadDataError(f"Run of {path} has no volumes or no repetition time", path=path)
    end = n_volumes * float(tr)
    # the design's high-resolution grid starts EARLIEST_ONSET_S before the first frame, which lies up to one TR
    # after the first volume's start (slice timing): earlier events would be dropped there with a bare warning
    earliest = -max(EARLIEST_ONSET_S - float(tr), 0.0)
    early = trials["onset"].astype(float) < earliest
    late = (trials["onset"] >= end) | early
    is_trial = trials["role"] == "trial"
    if is_trial.any() and late[is_trial].all():
        # onsets in milliseconds, or counted on the scanner's / experiment's clock: every trial was dropped with a
        # warning, and the run stopped with "No trials found ... check the trial_type values", which were right
        onsets = trials.loc[is_trial, "onset"].astype(float)
        gaps = onsets.sort_values().diff().dropna()
        # milliseconds: divided by 1000 they fit the run, and trials are >= 100 "s" apart or last >= 100 "s"
        in_ms = onsets.max() / 1000 < end and (
            (len(gaps) and float(gaps.median()) >= 100) or float(trials.loc[is_trial, "duration"].median()) >= 100)
        cause = (f"they look like milliseconds ({onsets.max():g} ms = {onsets.max() / 1000:g} s): BIDS gives onsets "
                 "and durations in seconds" if in_ms else
                 "onsets count from the first volume of this run, not from the scanner's or the experiment's clock: "
                 "subtract the time of the run's first volume")
        raise BadDataError(
            f"{path}: all {int(is_trial.sum())} trials start after the end of the run ({end:.1f} s = {n_volumes} "
            f"volumes x {tr:g} s; the first at {onsets.min():g} s)", path=path,
            hint=f"{cause}; or check that this events file belongs to this run")
    said = []
    if early.any():
        counts = trials.loc[early, "role"].value_counts().to_dict()
        said.append(f"{path}: {int(early.sum())} event(s) start more than {-earliest:g} s before the first volume and "
                    "are dropped: " + ", ".join(f"{n} {role}" for role, n in sorted(counts.items())))
    before = (~early) & (trials["onset"].astype(float) < 0) & (trials["role"] == "trial")
    if before.any():
        said.append(f"{path}: {int(before.sum())} trial(s) start before the first volume (from "
                    f"{float(trials.loc[before, 'onset'].min()):g} s): their responses are partly before the run, "
                    "their betas less reliable")
    late_only = late & ~early
    if late_only.any():
        counts = trials.loc[late_only, "role"].value_counts().to_dict()
        said.append(f"{path}: {int(late_only.sum())} event(s) start after the end of the run ({end:.1f} s = "
                    f"{n_volumes} volumes x {tr:g} s) and are dropped: "
                    + ", ".join(f"{n} {role}" for role, n in sorted(counts.items())))
    overrun = (~late) & (trials["onset"] + trials["duration"] > end) & (trials["role"] == "trial")
    if overrun.any():
        said.append(f"{path}: {int(overrun.sum())} trial(s) end after the end of the run ({end:.1f} s): their "
                    "responses are cut short")
    for message in said:
        LOGGER.warning("%s", message)
        if notes is not None:
            notes.append(message)
    # trials at the same onset (a row pasted twice, onsets overwritten by one value) have identical regressors:
    # their single-trial betas cannot be told apart; said, not refused (a design may pair two events on purpose)
    onsets = trials.loc[~late & (trials["role"] == "trial"), "onset"].astype(float)
    shared = onsets[onsets.duplicated(keep=False)]
    if len(shared):
        LOGGER.warning("%s: %d trial(s) share their onset with another trial (e.g. %g s): their single-trial "
                       "betas cannot be told apart; check for duplicated rows", path, len(shared),
                       float(shared.iloc[0]))
    kept = trials.loc[~late].reset_index(drop=True)
    kept.attrs = dict(trials.attrs)
    return kept


def summarize_trials(trials: pd.DataFrame) -> str:
    """Readable per-run summary for ``m2i --print-trials``.

    One line per (task, session, run): counts by role, trials by condition and cue, nuisance by event
    type, and the rule used when ``trials.attrs["runs"]`` is present; then totals.
    """
    if len(trials) == 0:
        return "No events."
    rules = {(r["task"], r["session"], r["run"]): r["rule"] for r in trials.attrs.get("runs", [])}
    header = ["task", "session", "run", "trials", "nuisance", "ignore", "conditions", "cues", "nuisance types",
              "split", "rule"]
    lines = []
    groups = trials.groupby(["task", "session", "run"], sort=False, dropna=False)
    for (task, session, run), part in groups:
        lines.append(_summary_row(part, [str(task), str(session), str(run)], rules.get((task, session, run), "")))
    for key, rule in rules.items():  # runs without any kept row still deserve a line
        if not ((trials["task"] == key[0]) & (trials["session"] == key[1]) & (trials["run"] == key[2])).any():
            lines.append([*key, "0", "0", "0", "", "", "", "", rule])
    widths = [max(len(header[k]), *(len(line[k]) for line in lines)) for k in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(line) for line in lines]
    trial_rows = trials[trials["role"] == "trial"]
    by_cond = _counts(trial_rows["condition"])
    by_cue = _counts(trial_rows["condition"] + "/" + trial_rows["cue"])
    n_stim = trial_rows["stimulus"].nunique()
    out.append("")
    out.append(
        f"total: {len(trial_rows)} trials ({by_cond or 'none'}; by cue {by_cue or 'none'}), "
        f"{n_stim} distinct stimuli, {int((trials['role'] == 'nuisance').sum())} nuisance events, "
        f"{len(groups)} run(s)"
    )
    if "split" in trials.columns and trial_rows["split"].isin(SPLITS).any():
        unset = int(((trial_rows["condition"] == "perception") & ~trial_rows["split"].isin(SPLITS)).sum())
        out.append(f"decoding split of the perception trials (events rules): "
                   f"{_split_counts(trial_rows, every_value=True)}"
                   + (f", no split set {unset} (not decoded)" if unset else ""))
    return "\n".join(out)


def _split_counts(trial_rows: pd.DataFrame, every_value: bool = False) -> str:
    """``train 50`` (``train 6000, test 1200, not decoded 920`` with ``every_value``) for the trials whose rule
    sets a split; empty when none does."""
    if "split" not in trial_rows.columns or not trial_rows["split"].isin(SPLITS).any():
        return ""
    counts = trial_rows["split"].value_counts()
    return ", ".join(f"{'not decoded' if v == 'none' else v} {int(counts.get(v, 0))}" for v in SPLITS
                     if every_value or counts.get(v, 0))


def _counts(values: pd.Series) -> str:
    counts = values.value_counts(sort=False)
    return ", ".join(f"{k} {int(v)}" for k, v in sorted(counts.items()))


def _summary_row(part: pd.DataFrame, keys: list[str], rule: str) -> list[str]:
    trial_rows = part[part["role"] == "trial"]
    nuisance_rows = part[part["role"] == "nuisance"]
    return [
        *keys,
        str(len(trial_rows)),
        str(len(nuisance_rows)),
        str(int((part["role"] == "ignore").sum())),
        _counts(trial_rows["condition"]),
        _counts(trial_rows["cue"]),
        _counts(nuisance_rows["event_type"]),
        _split_counts(trial_rows),
        rule,
    ]


__all__ = [
    "TRIALS_COLUMNS",
    "TaskRule",
    "EventsMap",
    "EventsProfile",
    "read_events",
    "load_events_map",
    "load_profile",
    "builtin_profiles",
    "auto_rule",
    "select_rule",
    "events_to_trials",
    "build_trials_table",
    "check_events_within_run",
    "summarize_trials",
    "check_events_map_tasks",
    "resolve_stimulus_path",
]
