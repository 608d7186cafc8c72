"""Query the input BIDS dataset: which BOLD runs to process, with their events, TR and geometry.

pybids indexes the dataset without validation, with its database in the work dir (the input is never
written to). Selection follows the command line: participants, sessions, tasks, and a filter file in
fMRIPrep's format (``{"bold": {"acquisition": "mb4"}}``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BadDataError, InputMissingError, NoDataSelected, UsageError
from ..utils.paths import is_inside, natural_key

LOGGER = logging.getLogger("m2i.bids")

# entities we keep from input names (strings, never ints: run-01 stays "01")
_ENTITY_RE = re.compile(r"(?:^|_)(sub|ses|task|acq|ce|rec|dir|run|echo|part)-([a-zA-Z0-9]+)")
_ENTITY_NAMES = {"sub": "subject", "ses": "session", "task": "task", "acq": "acquisition", "ce": "ceagent",
                 "rec": "reconstruction", "dir": "direction", "run": "run", "echo": "echo", "part": "part"}


def parse_entities(path: str | Path) -> dict[str, str]:
    """Entities of a BIDS file name, as strings (``run-01`` -> ``{"run": "01"}``)."""
    name = Path(path).name
    return {_ENTITY_NAMES[key]: value for key, value in _ENTITY_RE.findall(name)}


@dataclass
class BoldRun:
    """One BOLD run selected for processing."""

    path: Path
    entities: dict[str, str]
    events: Path | None
    metadata: dict = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return self.entities["subject"]

    @property
    def session(self) -> str | None:
        return self.entities.get("session")

    @property
    def task(self) -> str:
        return self.entities["task"]

    @property
    def run(self) -> str | None:
        return self.entities.get("run")

    @property
    def tr(self) -> float | None:
        value = self.metadata.get("RepetitionTime")
        return float(value) if value is not None else None

    @property
    def slice_timing(self) -> list[float] | None:
        return self.metadata.get("SliceTiming")

    @property
    def key(self) -> str:
        """A short unique label (used for node names)."""
        parts = [f"{k}-{self.entities[e]}" for k, e in (("ses", "session"), ("task", "task"), ("acq", "acquisition"),
                                                          ("run", "run"), ("echo", "echo")) if e in self.entities]
        return "_".join(parts)


def is_unfetched_link(path: str | Path) -> bool:
    """A symbolic link whose target is absent: in a DataLad / git-annex dataset, a file whose content was
    not fetched (``datalad clone`` without ``datalad get``)."""
    path = Path(path)
    return path.is_symlink() and not path.exists()


def unfetched_content_error(paths: list[Path], what: str, dataset: Path | None = None) -> InputMissingError:
    """Exit 66 for files present only as dangling links, saying how to fetch them when they are annexed."""
    import os

    first = Path(paths[0])
    try:
        target = os.readlink(first)
    except OSError:
        target = "?"
    shown = ", ".join(Path(p).name for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    if "annex/objects" in target:
        where = f"cd {dataset} && " if dataset else ""
        hint = (f"this is a DataLad / git-annex dataset whose file content was not downloaded: run `{where}datalad "
                f"get {first if dataset is None else _relative(first, dataset)}` (or `git annex get`) for these "
                "files, or `datalad get .` for the whole dataset, then run m2i again")
    else:
        hint = f"the link points to {target}, which does not exist: restore the file or fix the link"
    return InputMissingError(f"{len(paths)} {what} are symbolic links to content that is not here: {shown}",
                             path=first, hint=hint)


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).absolute().relative_to(Path(root).absolute()).as_posix()
    except ValueError:
        return str(path)


def check_dataset_root(bids_dir: Path) -> None:
    if not bids_dir.exists():
        raise InputMissingError(f"BIDS_DIR does not exist: {bids_dir}", hint="check the first argument")
    if not bids_dir.is_dir():
        raise InputMissingError(f"BIDS_DIR is not a folder: {bids_dir}", hint="give the dataset's top folder")
    description = bids_dir / "dataset_description.json"
    if is_unfetched_link(description):
        raise unfetched_content_error([description], "file(s)", bids_dir)
    if not description.exists():
        raise InputMissingError(
            f"{description} is missing: {bids_dir} is not a BIDS dataset root",
            path=description,
            hint="give the top folder of the dataset (the one holding dataset_description.json), or add the file",
        )
    try:
        content = json.loads(description.read_text(encoding="utf-8"))
    except PermissionError as exc:
        from ..errors import unreadable_input_error

        raise unreadable_input_error(description) from exc
    except RecursionError:  # e.g. a huge [[[...]]] value: Python's parser gives up (was exit 1)
        raise too_deep_json_error(description) from None
    except (ValueError, OSError) as exc:
        raise BadDataError(f"{description} is not valid JSON ({exc})", path=description,
                           hint=_json_hint(exc, "fix the file (the BIDS validator shows where)")) from exc
    if not isinstance(content, dict):
        raise BadDataError(f"{description} holds a JSON {type(content).__name__}, not an object with Name and "
                           "BIDSVersion", path=description,
                           hint='write e.g. {"Name": "my study", "BIDSVersion": "1.10.0"}')


def first_unreadable(path, root) -> Path:
    """The outermost folder below ``root`` on the way to ``path`` that this user cannot enter or list (else
    ``path``): pybids names a file it looked for inside an unreadable folder (``func/layout_config.json``),
    which does not exist; the folder is what to fix."""
    root = Path(root).absolute()
    path = Path(path).absolute()
    for folder in reversed(path.parents):
        if folder != root and is_inside(folder, root) and not os.access(folder, os.R_OK | os.X_OK):
            return folder
    return path


def index_dataset(bids_dir: Path, database_dir: Path | None):
    """Index ``bids_dir`` with pybids (no validation) with the database under ``database_dir`` (``None``: in
    memory, nothing written)."""
    import bids

    if database_dir is not None:
        # one database per process: the jobs of an HPC array often share -w, and each one re-created a shared
        # index while another read it (exit 65 "no such table: files"); removed when this process ends
        database_dir = process_database_dir(database_dir)
    try:
        return bids.BIDSLayout(str(bids_dir), validate=False, derivatives=False,
                               database_path=None if database_dir is None else str(database_dir),
                               reset_database=database_dir is not None, indexer=_root_relative_indexer())
    except Exception as exc:  # pybids raises many types on broken datasets
        missing = getattr(exc, "filename", None)
        if isinstance(exc, FileNotFoundError) and missing and is_unfetched_link(missing):
            raise unfetched_content_error([Path(missing)], "file(s)", bids_dir) from exc
        if isinstance(exc, PermissionError):
            from ..errors import unreadable_input_error

            raise unreadable_input_error(first_unreadable(missing, bids_dir) if missing else bids_dir) from exc
        if isinstance(exc, RecursionError):
            # pybids names no file: find it (a sidecar nested deeper than Python's JSON parser goes)
            deep = _json_too_deep(bids_dir)
            raise too_deep_json_error(deep if deep is not None else bids_dir) from None
        if isinstance(exc.__cause__, (json.JSONDecodeError, UnicodeDecodeError)):
            raise _sidecar_json_error(exc, exc.__cause__) from exc
        not_object = _json_not_an_object(bids_dir) if isinstance(exc, (TypeError, ValueError)) else None
        if not_object is not None:
            # pybids merges sidecars with dict.update: a list, string or null gave "Cannot index the BIDS dataset:
            # dictionary update sequence element #0 has length 1; 2 is required", naming no file
            path, kind = not_object
            raise BadDataError(f"{path} holds a JSON {kind}, not an object of metadata", path=path,
                               hint='a BIDS sidecar is one object: {"RepetitionTime": 2.0, ...}; fix the file') from exc
        raise BadDataError(f"Cannot index the BIDS dataset {bids_dir}: {exc}", path=bids_dir,
                           hint="run the BIDS validator on it to see what is wrong") from exc


class _BelowRoot:
    """A pybids entity whose pattern is matched on the file's path below the dataset root."""

    def __init__(self, entity, root: str):
        self._entity, self._root = entity, root

    def __getattr__(self, name):  # name, mandatory, _dtype ...: the entity's own
        return getattr(self._entity, name)

    def match_file(self, bids_file):
        below = "/" + os.path.relpath(str(getattr(bids_file, "path", bids_file)), self._root).replace(os.sep, "/")
        return self._entity.match_file(_PathOnly(below))


@dataclass(frozen=True)
class _PathOnly:
    path: str


def _root_relative_indexer():
    """pybids' indexer, matching entity patterns on the path below the dataset root.

    pybids (0.22 and before; bids-standard/pybids#595, fixed upstream by #1273 after 0.22) matches them on the
    absolute path: a dataset kept in ``/data/task-memory/bids`` (or staged by a job script in
    ``$TMPDIR/sub-01_ses-2/``) gave every file ``task-memory`` (``session 2``), so ``--task perception`` stopped
    with 18 "Task(s) perception not found; tasks present: memory", and ``--session-label 2`` selected a dataset
    without sessions."""
    from bids.layout import BIDSLayoutIndexer

    class RootRelativeIndexer(BIDSLayoutIndexer):
        def _index_file(self, abs_fn, entities):
            root = str(getattr(self._layout._root, "path", self._layout._root))
            return super()._index_file(abs_fn, {k: _BelowRoot(e, root) for k, e in entities.items()})

    return RootRelativeIndexer(validate=False)


def _dataset_json_files(bids_dir: Path):
    """The JSON files pybids indexes: the dataset's, outside derivatives/, sourcedata/ and hidden folders."""
    for folder, dirs, files in os.walk(bids_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (
            Path(folder) == Path(bids_dir) and d in ("derivatives", "sourcedata")))
        yield from (Path(folder) / name for name in sorted(files) if name.endswith(".json"))


def _json_not_an_object(bids_dir: Path) -> tuple[Path, str] | None:
    """The first JSON file of the dataset whose top level is not an object, with what it holds instead; ``None``
    if every one is an object (or cannot be read: reported elsewhere)."""
    kinds = {list: "list", str: "string", type(None): "null", bool: "true/false", int: "number", float: "number"}
    for path in _dataset_json_files(bids_dir):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(content, dict):
            return path, kinds.get(type(content), type(content).__name__)
    return None


def _json_too_deep(bids_dir: Path) -> Path | None:
    """The first JSON file of the dataset nested too deeply for Python's JSON parser (``None`` if none is)."""
    for path in _dataset_json_files(bids_dir):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except RecursionError:
            return path
        except (OSError, ValueError):
            continue
    return None


def too_deep_json_error(path: Path) -> BadDataError:
    """65 for a JSON file nested thousands of levels deep (a generator's bug, a damaged file): Python's parser
    stops with RecursionError, which ended the run with 1, "unexpected failure", naming no file."""
    return BadDataError(f"{path} is nested too deeply to be read as JSON (thousands of levels of [ or {{)",
                        path=path, hint="BIDS metadata is a flat object of keys: fix or regenerate the file "
                        "(the BIDS validator shows the dataset's broken files)")


def _json_hint(exc: Exception, default: str) -> str:
    if "BOM" in str(exc):  # Windows Notepad's "UTF-8" before 2019, some spreadsheet exports
        return ("the file starts with a byte-order mark (BOM), which JSON does not allow: save it as UTF-8 without "
                "BOM (e.g. `sed -i '1s/^\\xEF\\xBB\\xBF//' FILE`)")
    return default


def _sidecar_json_error(exc: Exception, cause: Exception) -> BadDataError:
    """pybids' "Error occurred while trying to decode JSON from file <BIDSJSONFile filename='...'>" as a message
    naming the file, where in it, and the usual causes (JSON written by hand: comments, a trailing comma)."""
    match = re.search(r"filename='([^']+)'", str(exc))
    path = match.group(1) if match else None
    where = path or "a sidecar JSON file"
    if isinstance(cause, json.JSONDecodeError):
        return BadDataError(f"{where} is not valid JSON: {cause.msg} (line {cause.lineno}, column {cause.colno})",
                            path=path, hint=_json_hint(cause, "JSON allows no comments (// or #) and no comma after "
                                                       "the last item: fix the file (the BIDS validator shows every "
                                                       "such file)"))
    return BadDataError(f"{where} is not UTF-8 text ({cause})", path=path,
                        hint="save the file as UTF-8 (JSON files must be UTF-8)")


#: a database folder younger than this is never taken for stale (its owner may be between creating it and
#: locking it, or on another node whose locks this one cannot see)
STALE_DATABASE_AGE_S = 120.0
#: ... and for a folder of another node: its lock may be invisible here (Lustre mounted with localflock), and
#: the index is read only while a run starts (collect_inputs), which takes minutes at most even for NSD
STALE_DATABASE_AGE_OTHER_HOST_S = 3600.0
#: file lock of a database folder ``<name>`` while its process lives: ``<name>.lock`` beside it
DATABASE_LOCK_SUFFIX = ".lock"


def process_database_dir(parent: Path) -> Path:
    """A new folder of this process under ``parent`` (host and pid in its name), removed at exit.

    A job that is killed (SIGKILL, out of memory, a node failure, the scheduler's time limit) never runs its
    exit handlers, so its folder stays; on a work dir shared by many jobs they piled up. Each process therefore
    holds a lock on ``<folder>.lock`` while it lives, and every new process first removes the stale folders of
    dead ones (:func:`remove_stale_database_dirs`)."""
    import atexit
    import os
    import shutil
    import socket
    import tempfile

    from ..utils.locks import LockBusy, try_lock

    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_database_dirs(parent)
    folder = Path(tempfile.mkdtemp(prefix=f"{socket.gethostname()}-{os.getpid()}-", dir=parent))
    lock_path = folder.with_name(folder.name + DATABASE_LOCK_SUFFIX)
    try:
        handle = try_lock(lock_path)
    except LockBusy:  # a new, unique name: another process cannot hold it
        handle = None
    if handle is not None:  # None: a file system without locks, where the host/pid rule decides
        _DATABASE_LOCKS.append(handle)  # held (open) for the process's lifetime
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    atexit.register(lambda: lock_path.unlink(missing_ok=True))
    return folder


_DATABASE_LOCKS: list = []


def _database_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of a folder named ``<host>-<pid>-<random>`` by :func:`process_database_dir`, else None."""
    parts = name.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _process_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_database_dirs(parent: Path, min_age_s: float = STALE_DATABASE_AGE_S,
                               min_age_other_host_s: float = STALE_DATABASE_AGE_OTHER_HOST_S) -> list[Path]:
    """Remove the pybids database folders under ``parent`` whose process has ended; return them.

    A folder is stale when it is older than ``min_age_s`` (``min_age_other_host_s`` when made on another
    node) and either its lock file can be locked (the process
    that held it is gone: flock is released when a process dies, however it dies) or, where there is no lock
    file or locks are not supported, it was made on this host by a process id that no longer runs. Anything
    else is left alone: a folder of a live job (on this node or another), of another program, or too young to
    judge. Errors (a folder another job is removing at the same time) are ignored."""
    import shutil
    import socket
    import time

    from ..utils.locks import LockBusy, release, try_lock

    parent = Path(parent)
    host = socket.gethostname()
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for folder in entries:
        owner = _database_owner(folder.name)
        if owner is None or not folder.is_dir() or folder.is_symlink():
            continue
        try:
            if now - folder.stat().st_mtime < (min_age_s if owner[0] == host else min_age_other_host_s):
                continue
        except OSError:
            continue
        lock_path = folder.with_name(folder.name + DATABASE_LOCK_SUFFIX)
        handle = None
        verdict = None  # True: stale, False: in use, None: the lock cannot tell
        if lock_path.exists():
            try:
                handle = try_lock(lock_path)
                verdict = True if handle is not None else None
            except LockBusy:
                verdict = False
        if verdict is None:
            verdict = owner[0] == host and not _process_alive(owner[1])
        elif verdict and owner[0] == host and _process_alive(owner[1]):
            verdict = False  # its process lives (it has not locked yet, or this is a reused pid): leave it
        if not verdict and handle is not None:
            # in use: give the probe's lock back at once (unlocked, not only closed): the owner, about to lock
            # its own file, must find it free
            release(handle)
            handle = None
        try:
            if verdict:
                shutil.rmtree(folder, ignore_errors=True)
                lock_path.unlink(missing_ok=True)
                removed.append(folder)
        finally:
            if handle is not None:  # held while the folder is removed: no other run judges it meanwhile
                release(handle)
    if removed:
        LOGGER.info("Removed %d pybids database folder(s) of ended runs from %s: %s", len(removed), parent,
                    ", ".join(p.name for p in removed[:5]))
    return removed


def load_bids_filters(path: Path | None) -> dict:
    """Read an fMRIPrep-style filter file and return the filters for ``bold``."""
    if path is None:
        return {}
    if not Path(path).exists():
        raise InputMissingError(f"BIDS filter file not found: {path}", path=path)
    from ..utils.text import read_settings_text

    try:
        data = json.loads(read_settings_text(path, "BIDS filter file"))
    except RecursionError:
        raise UsageError(f"BIDS filter file {path} is nested too deeply to be read as JSON", path=path,
                         hint='write e.g. {"bold": {"run": 1}}') from None
    except ValueError as exc:
        raise UsageError(f"BIDS filter file {path} is not valid JSON: {exc}", path=path) from exc
    # a list of filter sets for "bold" selects their union (e.g. 2 perception runs plus every imagery run)
    if not isinstance(data, dict) or not all(isinstance(v, dict) or (isinstance(v, list) and v and all(
            isinstance(item, dict) for item in v)) for v in data.values()):
        raise UsageError(f"BIDS filter file {path} must map a file type to filters, e.g. "
                         '{"bold": {"acquisition": "mb4"}}', path=path)
    unknown = set(data) - {"bold", "t1w", "t2w", "flair", "fmap", "sbref", "roi", "events"}
    if unknown:
        raise UsageError(f"BIDS filter file {path}: unknown query name(s) {sorted(unknown)}", path=path,
                         hint='use "bold" for the functional runs')
    bold = data.get("bold", {})
    for filters in bold if isinstance(bold, list) else [bold]:
        for key, value in filters.items():
            check_filter_value(path, key, value)
    return [dict(item) for item in bold] if isinstance(bold, list) else dict(bold)


#: entities whose label is an index (a non-negative integer) in BIDS; pybids stores ``run`` as an integer
INDEX_ENTITIES = ("run", "echo", "flip", "inv", "chunk")
#: pybids keeps an index in SQLite, whose integers are 64-bit
MAX_FILTER_INT = 2**63 - 1


def check_filter_value(path: Path, key: str, value) -> None:
    """A filter value pybids would misread (64 naming the file and the entity): ``"run": 1.5`` selected run 1
    (pybids truncates), a huge integer stopped the run with 1 (OverflowError from SQLite), an object selected
    nothing with 18 as if the dataset lacked the label."""
    problem = None
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, (dict, list)):
            problem = f"{json.dumps(item)[:60]} is a JSON {'object' if isinstance(item, dict) else 'list'}"
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue  # strings, "*" and null are labels and fMRIPrep's any/absent; booleans are pybids options
        elif isinstance(item, float) and (key in INDEX_ENTITIES and not item.is_integer() or not math.isfinite(item)):
            problem = f"{item!r} is not a whole number"
        elif isinstance(item, (int, float)) and abs(item) > MAX_FILTER_INT:
            problem = f"{item!r} is out of range"
        elif isinstance(item, (int, float)) and key in INDEX_ENTITIES and item < 0:
            problem = f"{item!r} is negative"
        if problem:
            break
    if problem:
        example = f'"{key}": 1 or "{key}": [1, 2]' if key in INDEX_ENTITIES else f'"{key}": "label" or [...]'
        raise UsageError(f"BIDS filter file {path}: the value of {key!r} is not a label: {problem}", path=path,
                         hint=f"give a label string, or for an index entity ({', '.join(INDEX_ENTITIES)}) a whole "
                         f'number >= 0, or a list of them: {example}; "*" is any value, null none')


def select_bold_runs(layout, *, participants: list[str], sessions: list[str], tasks: list[str],
                     bids_filters: dict | None = None) -> dict[str, list[BoldRun]]:
    """BOLD runs per participant after the filters. Raises NoDataSelected (exit 18) when nothing is left."""
    available_subjects = sorted(layout.get_subjects())
    missing = [p for p in participants if p not in available_subjects]
    if missing:
        raise NoDataSelected(
            f"Participant(s) {', '.join(missing)} not found in the dataset",
            hint=f"participants present: {', '.join(available_subjects) or 'none'}",
        )
    for name, wanted, present in (("session", sessions, layout.get_sessions()), ("task", tasks, layout.get_tasks())):
        unknown = [w for w in wanted if w not in present]
        if unknown:
            raise NoDataSelected(f"{name.capitalize()}(s) {', '.join(unknown)} not found in the dataset",
                                 hint=f"{name}s present: {', '.join(sorted(present)) or 'none'}")
    from bids.layout import Query

    files = {}
    filter_sets = bids_filters if isinstance(bids_filters, list) else [bids_filters or {}]
    for filters in filter_sets:
        query = {"datatype": "func", "suffix": "bold", "extension": [".nii", ".nii.gz"]}
        for key, value in filters.items():
            # fMRIPrep's reading of a filter file: "*" is any value, null the entity absent
            query[key] = Query.ANY if value == "*" else Query.NONE if value is None else value
        if participants:
            query["subject"] = participants
        if sessions:
            query["session"] = sessions
        if tasks:
            query["task"] = tasks
        try:
            files.update({f.path: f for f in layout.get(**query)})
        except (ValueError, TypeError) as exc:
            detail = str(exc).split(" If you're sure")[0]  # pybids' advice (invalid_filters='allow') is not ours
            raise UsageError(f"Invalid --bids-filter-file: {detail}",
                             hint="use BIDS entity names as pybids spells them (subject, session, task, "
                             "acquisition, run, echo, ...; see docs/usage.md)") from exc
    files = list(files.values())

    selected: dict[str, list[BoldRun]] = {}
    part_filtered = any("part" in f for f in filter_sets)
    left_out: list[str] = []
    for bids_file in sorted(files, key=lambda f: natural_key(f.path)):
        path = Path(bids_file.path)
        entities = parse_entities(path)
        if "subject" not in entities or "task" not in entities:
            continue
        if not part_filtered and entities.get("part", "mag") != "mag":
            # the phase (real, imag) image of a complex-valued run: the magnitude is the run, as fMRIPrep's
            # default filter ("part": ["mag", null]) takes it; taken as another run it doubled every trial
            left_out.append(path.name)
            continue
        try:
            metadata = layout.get_metadata(bids_file.path)
        except Exception as exc:  # invalid JSON sidecar
            raise BadDataError(f"Cannot read the JSON sidecar(s) of {path}: {exc}", path=path,
                               hint="fix the sidecar JSON (the BIDS validator shows where)") from exc
        events = find_events_file(layout, path, entities)
        selected.setdefault(entities["subject"], []).append(BoldRun(path, entities, events, dict(metadata)))
    if left_out:
        LOGGER.info("%d part-phase/real/imag BOLD file(s) left out: the magnitude (part-mag) is used, as by "
                    "fMRIPrep (select another part with --bids-filter-file '{\"bold\": {\"part\": ...}}')",
                    len(left_out))
    def shown(value):
        return "null" if value is None else str(value)

    given = [", ".join(f"{k}={shown(v)}" for k, v in f.items()) for f in filter_sets if f]
    labels = [f"{k}={','.join(v)}" for k, v in (("subject", participants), ("session", sessions),
                                                 ("task", tasks)) if v]
    described = "; ".join([*labels, *(f"filter file: {g}" for g in given)])
    unselected = [p for p in participants if p not in selected]
    if selected and unselected:
        # a participant asked for by name whose runs the other filters all leave out (a session or task it
        # lacks): the run went on with the others and exit 0, saying nothing, and that participant had no output
        others = "; ".join(part for part in described.split("; ") if not part.startswith("subject="))
        LOGGER.warning("Participant(s) %s: no BOLD run passes the filters (%s); left out, the others are processed",
                       ", ".join(unselected), others or described)
    if not selected:
        events_only = _events_without_bold(layout, participants, sessions, tasks)
        if events_only:
            raise NoDataSelected(
                f"BIDS_DIR has events files but no BOLD images for them ({len(events_only)} events file(s), e.g. "
                f"{Path(events_only[0]).name}; no _bold.nii/_bold.nii.gz beside them)", path=events_only[0],
                hint="m2i selects runs in BIDS_DIR, which must hold the raw _bold.nii[.gz] files (also with "
                "--derivatives, as fMRIPrep needs them); restore them, or point BIDS_DIR at the complete dataset")
        if not described:  # nothing filtered: the dataset itself has no run (no sub-*/[ses-*/]func/*_bold.nii*)
            raise NoDataSelected("BIDS_DIR holds no BOLD runs (no sub-<label>/[ses-<label>/]func/*_bold.nii[.gz])",
                                 hint="point BIDS_DIR at the dataset root that holds the sub-* folders")
        hint = "check --participant-label, --session-label, --task and --bids-filter-file"
        prefixed = [(key, value) for f in filter_sets for key, values in f.items()
                    for value in (values if isinstance(values, list) else [values])
                    if isinstance(value, str) and value.startswith(_FILTER_PREFIXES.get(key, "\0"))]
        if prefixed:
            # "subject": "sub-01" as on the command line (where sub- is optional): pybids compares labels
            key, value = prefixed[0]
            hint = (f"a filter file gives labels without their prefix: \"{key}\": "
                    f"\"{value[len(_FILTER_PREFIXES[key]):]}\", not \"{value}\"; " + hint)
        raise NoDataSelected(f"The filters select no BOLD runs ({described})", hint=hint)
    _check_duplicates(selected)
    warn_orphan_events(layout, sorted(selected), sessions, tasks)
    return selected


def warn_orphan_events(layout, participants: list[str], sessions: list[str], tasks: list[str]) -> list[Path]:
    """Warn about events files of the selected participants that no BOLD file of the dataset goes with (its BOLD
    deleted, not fetched, or a folder in its place): the run was dropped without a word and the participant
    processed with one run fewer (exit 0). Returns them."""
    query = {"datatype": "func", "extension": ".tsv", "subject": participants}
    for key, value in (("session", sessions), ("task", tasks)):
        if value:
            query[key] = value
    try:
        events = [Path(f.path) for f in layout.get(suffix="events", **query)]
        bold = [parse_entities(f.path) for f in layout.get(**{**query, "suffix": "bold",
                                                               "extension": [".nii", ".nii.gz"]})]
    except Exception:  # a warning only is at stake
        return []
    # a BOLD file with every entity of the events file: the run's (multi-echo and part- files add entities);
    # the exact match first, so that a dataset of thousands of runs is not compared pair by pair
    exact = {frozenset(b.items()) for b in bold}
    orphans = [path for path in sorted(events) if (wanted := frozenset(parse_entities(path).items())) not in exact
               and not any(wanted <= b for b in exact)]
    if orphans:
        shown = ", ".join(p.name for p in orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
        LOGGER.warning("%d events file(s) have no BOLD run beside them and are left out: %s (in %s); restore the "
                       "run's _bold.nii[.gz] to process it", len(orphans), shown, orphans[0].parent)
    return orphans


#: the file-name prefix of each entity a filter file names (its values are the labels after it)
_FILTER_PREFIXES = {"subject": "sub-", "session": "ses-", "task": "task-", "acquisition": "acq-", "run": "run-",
                    "echo": "echo-", "direction": "dir-", "reconstruction": "rec-", "ceagent": "ce-", "part": "part-",
                    "space": "space-"}


def _events_without_bold(layout, participants, sessions, tasks) -> list[str]:
    """Events files of the selection when the dataset has no BOLD image at all for it (a copy of the events
    and sidecars only, or BOLD files deleted after fMRIPrep ran): said as such, not as filters selecting nothing."""
    query = {"datatype": "func", "suffix": "events", "extension": ".tsv"}
    for key, value in (("subject", participants), ("session", sessions), ("task", tasks)):
        if value:
            query[key] = value
    try:
        events = sorted(f.path for f in layout.get(**query))
        bold = layout.get(**{**query, "suffix": "bold", "extension": [".nii", ".nii.gz"]})
    except Exception:  # only a better message is at stake
        return []
    return events if events and not bold else []


def combine_echoes(selected: dict[str, list[BoldRun]], *, fmriprep: bool) -> dict[str, list[BoldRun]]:
    """Multi-echo runs (``echo-1``, ``echo-2``, ... of one run) are one acquisition, not several runs.

    Taken as separate runs, every trial was modelled once per echo, with the same events: the echoes counted
    as repeats of each stimulus (inflating ncsnr and the voxel choice) and the trials table doubled. With
    fMRIPrep's outputs (optimally combined, no ``echo`` entity) each run is kept once, without its echo, so that
    it matches them. Without them m2i cannot combine echoes: exit 64 with how to select one.
    """
    out = {}
    for subject, runs in selected.items():
        groups: dict[str, list[BoldRun]] = {}
        for run in runs:
            key = "_".join(f"{k}-{v}" for k, v in sorted(run.entities.items()) if k != "echo")
            groups.setdefault(key, []).append(run)
        multi = {key: group for key, group in groups.items() if len({r.entities.get("echo") for r in group}) > 1}
        if not multi:
            out[subject] = runs
            continue
        first = next(iter(multi.values()))
        echoes = sorted(r.entities["echo"] for r in first if "echo" in r.entities)
        if not fmriprep:
            raise UsageError(
                f"sub-{subject} has multi-echo runs ({first[0].path.name}: echoes {', '.join(echoes)}): m2i's own "
                "preprocessing does not combine echoes, and taking them as separate runs would count every trial "
                "once per echo",
                path=first[0].path,
                hint="preprocess with fMRIPrep (it combines the echoes) and pass --derivatives FMRIPREP_DIR, or "
                f"select one echo: --bids-filter-file with {{\"bold\": {{\"echo\": \"{echoes[0]}\"}}}}",
            )
        kept = []
        for key, group in groups.items():
            if key in multi:
                run = sorted(group, key=lambda r: natural_key(r.path.name))[0]
                entities = {k: v for k, v in run.entities.items() if k != "echo"}
                group = [BoldRun(run.path, entities, run.events, run.metadata)]
            kept.extend(group)
        LOGGER.info("sub-%s: %d multi-echo run(s) use fMRIPrep's combined series (one run each, not one per echo)",
                    subject, len(multi))
        out[subject] = sorted(kept, key=lambda r: natural_key(r.path.name))
    return out


def find_events_file(layout, bold_path: Path, entities: dict[str, str]) -> Path | None:
    """The events file of a run: same name with ``_events.tsv`` (BIDS inheritance for the rest)."""
    name = bold_path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    stem = name[: -len("_bold")] if name.endswith("_bold") else name
    candidate = bold_path.parent / f"{stem}_events.tsv"
    if candidate.exists():
        return candidate
    return inherited_events_file(Path(layout.root), bold_path)


def inherited_events_file(root: Path, bold_path: Path) -> Path | None:
    """BIDS inheritance for an events file: the nearest folder (the run's, then up to the dataset's top) holding
    an ``*_events.tsv`` whose entities are all the run's (``task-x_events.tsv`` at the top serves every run of
    task x; ``sub-01_task-x_run-1_events.tsv`` serves ``..._run-1_echo-2_bold``); the most specific one of a
    folder wins. (A pybids query by the run's own entities found none of the top-level files.)"""
    wanted = parse_entities(bold_path)
    root = root.absolute()
    folder = bold_path.parent.absolute()
    levels = [folder]
    if root in folder.parents:
        while folder != root:
            folder = folder.parent
            levels.append(folder)
    for level in levels:
        best: tuple[int, Path] | None = None
        for path in sorted(level.glob("*_events.tsv")):
            ents = parse_entities(path)
            if "task" in ents and all(wanted.get(k) == v for k, v in ents.items()):
                if best is None or len(ents) > best[0]:
                    best = (len(ents), path)
        if best is not None:
            return best[1]
    return None


def _check_duplicates(selected: dict[str, list[BoldRun]]) -> None:
    for subject, runs in selected.items():
        seen: dict[str, Path] = {}
        for run in runs:
            key = run.key
            if key in seen:
                first, second = parse_entities(seen[key]), parse_entities(run.path)
                differing = [name for name in ("ceagent", "reconstruction", "direction", "part")
                             if first.get(name) != second.get(name)]
                if differing:  # e.g. dir-AP and dir-PA runs: m2i has no outputs names for these entities
                    name = differing[0]
                    raise BadDataError(
                        f"Two BOLD files of sub-{subject} differ only in their '{name}' entity ({key}): "
                        f"{seen[key].name} and {run.path.name}; m2i does not tell runs apart by it",
                        path=run.path,
                        hint=f"select one with --bids-filter-file, e.g. '{{\"bold\": {{\"{name}\": "
                        f"\"{second.get(name) or first.get(name)}\"}}}}' (or give them different run- labels)")
                raise BadDataError(
                    f"Two BOLD files of sub-{subject} have the same entities ({key}): {seen[key].name} and "
                    f"{run.path.name}",
                    path=run.path,
                    hint="keep one of them (e.g. .nii and .nii.gz of the same run), or filter with "
                    "--bids-filter-file",
                )
            seen[key] = run.path
