"""Stimulus files and the optional ``stimuli/stimuli.tsv`` table of a BIDS dataset.

BIDS says ``stim_file`` is relative to ``BIDS_DIR/stimuli/``. Real datasets also write ``stimuli/x.png``
(the folder repeated), ``func/x.bmp`` (ds000117) or a bare name (ds001499), so a file is looked up as
given, then without a leading ``stimuli/``, then by its bare name, then by its bare name in the subfolders of
``stimuli/`` when one file there has it (BOLD5000's images come in ``COCO/``, ``ImageNet/`` and ``Scene/``
while its events give bare names). A path that climbs out of ``stimuli/``
(``../``, absolute) is refused: events files come from other people and must not make us read (and later
copy into the report) arbitrary files.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import unicodedata
from pathlib import Path, PurePosixPath

from ..errors import BadDataError

LOGGER = logging.getLogger("m2i.bids")

NA = "n/a"


def normalize_stim_file(stim_file: str, events_path: str | os.PathLike | None = None) -> str:
    """Return ``stim_file`` as a clean path relative to ``stimuli/`` (or ``n/a``).

    Backslashes become slashes, ``./`` and a leading ``stimuli/`` are removed. Raises
    :class:`BadDataError` when the path is absolute or climbs out of ``stimuli/``.

    >>> normalize_stim_file("stimuli/img-0001.png")
    'img-0001.png'
    >>> normalize_stim_file("func/f013.bmp")
    'func/f013.bmp'
    >>> normalize_stim_file("/stimuli/img-0001.png")
    'img-0001.png'
    """
    if stim_file is None or stim_file == NA or str(stim_file).strip() == "":
        return NA
    text = str(stim_file).strip().replace("\\", "/")
    if text.startswith("/stimuli/"):
        # the BIDS specification writes the folder as "/stimuli" (from the dataset root); events that copy that
        # notation name BIDS_DIR/stimuli/..., not a file of this computer
        text = text[1:]
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise _outside_error(stim_file, events_path)
    clean = posixpath.normpath(text)
    if clean == ".." or clean.startswith("../"):
        raise _outside_error(stim_file, events_path)
    if clean.startswith("stimuli/"):
        clean = clean[len("stimuli/"):]
    if clean in ("", ".", "stimuli"):
        raise BadDataError(
            f"stim_file {stim_file!r} names a folder, not a file",
            path=events_path,
            hint="give the image file relative to BIDS_DIR/stimuli/ (e.g. img-0001.png)",
        )
    return clean


def _outside_error(stim_file, events_path) -> BadDataError:
    return BadDataError(
        f"stim_file {stim_file!r} points outside BIDS_DIR/stimuli/",
        path=events_path,
        hint="stim_file must be relative to BIDS_DIR/stimuli/ (BIDS); move the images there and fix the "
        "events file",
    )


def stimulus_candidates(stimuli_dir: str | os.PathLike, stim_file: str, events_path=None) -> list[Path]:
    """Paths tried for ``stim_file``, in order: as given, without ``stimuli/``, bare name."""
    if stim_file is None or stim_file == NA:
        return []
    base = Path(stimuli_dir)
    raw = str(stim_file).strip().replace("\\", "/")
    clean = normalize_stim_file(raw, events_path)  # raises when it escapes stimuli/
    relatives: list[str] = []
    as_given = posixpath.normpath(raw)
    for rel in (as_given, clean, PurePosixPath(clean).name):
        if rel not in relatives:
            relatives.append(rel)
    return [base.joinpath(*rel.split("/")) for rel in relatives]


def resolve_stimulus_path(
    stimuli_dir: str | os.PathLike | None, stim_file: str, events_path: str | os.PathLike | None = None
) -> Path | None:
    """Find the image file of ``stim_file`` under ``stimuli_dir``.

    Parameters
    ----------
    stimuli_dir : path or None
        ``BIDS_DIR/stimuli``. ``None`` only checks the path (no lookup).
    stim_file : str
        Value of the events file (relative to ``stimuli/`` by BIDS; ``n/a`` for none).
    events_path : path, optional
        The events file, named in error messages.

    Returns
    -------
    Path or None
        The first existing candidate (as given, without a leading ``stimuli/``, bare name), or ``None``
        when ``stim_file`` is ``n/a`` or no candidate exists.

    Raises
    ------
    BadDataError
        When ``stim_file`` is absolute or climbs out of ``stimuli/`` (checked on the text, whether or not
        the file exists). Symbolic links inside ``stimuli/`` are followed on purpose: DataLad / git-annex
        datasets store every image as a link into ``.git/annex``.
    """
    if stim_file is None or stim_file == NA:
        return None
    if stimuli_dir is None:
        normalize_stim_file(stim_file, events_path)
        return None
    candidates = stimulus_candidates(stimuli_dir, stim_file, events_path)
    if not str(stim_file).isascii():
        # accented names copied from macOS are stored decomposed (NFD: "e" + U+0301), events typed elsewhere
        # composed (NFC): the same name to the eye, another file name here; the message listed "café.png" as
        # missing from a folder that showed café.png
        candidates += [found for c in candidates if (found := _same_name_other_unicode_form(Path(stimuli_dir), c))]
    for candidate in candidates:
        if candidate.is_file():
            _check_link_target(Path(stimuli_dir), candidate, stim_file, events_path)
            return candidate
    found = _in_subfolders(Path(stimuli_dir), PurePosixPath(normalize_stim_file(stim_file, events_path)).name,
                           stim_file, events_path)
    if found is not None:
        _check_link_target(Path(stimuli_dir), found, stim_file, events_path)
    return found


#: {(stimuli folder, its modification time): {file name (NFC): [paths below a subfolder]}}: one walk of the
#: folder per run, not one per image (BOLD5000: 5000 names, every one looked up in the subfolders)
_SUBFOLDER_INDEX: dict[tuple[str, int], dict[str, list[Path]]] = {}


def _subfolder_index(stimuli_dir: Path) -> dict[str, list[Path]]:
    try:
        key = (str(stimuli_dir.absolute()), stimuli_dir.stat().st_mtime_ns)
    except OSError:
        return {}
    if key not in _SUBFOLDER_INDEX:
        index: dict[str, list[Path]] = {}
        for folder, subfolders, files in os.walk(stimuli_dir):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # not .git, .datalad
            if Path(folder) == stimuli_dir:
                continue  # the top level was looked at already, by exact name
            for name in sorted(files):
                index.setdefault(unicodedata.normalize("NFC", name), []).append(Path(folder) / name)
        _SUBFOLDER_INDEX.clear()  # one dataset per run: keep the latest index only
        _SUBFOLDER_INDEX[key] = index
    return _SUBFOLDER_INDEX[key]


def _in_subfolders(stimuli_dir: Path, name: str, stim_file: str, events_path) -> Path | None:
    """The one file named ``name`` in a subfolder of ``stimuli/`` (at any depth), or ``None``; a name that two
    subfolders hold is an error: which image the participant saw cannot be told."""
    if not stimuli_dir.is_dir():
        return None
    hits = [p for p in _subfolder_index(stimuli_dir).get(unicodedata.normalize("NFC", name), []) if p.is_file()]
    if len(hits) > 1:
        shown = ", ".join(relative_to_stimuli(stimuli_dir, p) for p in hits[:3]) + (", ..." if len(hits) > 3 else "")
        raise BadDataError(
            f"stim_file {stim_file!r} is not in BIDS_DIR/stimuli/ itself, and {len(hits)} of its subfolders hold "
            f"a file of that name: {shown}", path=events_path,
            hint="give the subfolder in the events' stim_file (e.g. "
            f"{relative_to_stimuli(stimuli_dir, hits[0])!r}), relative to BIDS_DIR/stimuli/")
    return hits[0] if hits else None


def _same_name_other_unicode_form(base: Path, candidate: Path) -> Path | None:
    """``candidate`` (below ``base``) with each part that does not exist replaced by the entry of its folder whose
    name is the same in Unicode normal form NFC, or ``None``."""
    folder = base
    for part in candidate.relative_to(base).parts:
        if not (folder / part).exists():
            wanted = unicodedata.normalize("NFC", part)
            try:
                part = next(name for name in sorted(os.listdir(folder)) if unicodedata.normalize("NFC", name) == wanted)
            except (OSError, StopIteration):
                return None
        folder = folder / part
    return folder


def _check_link_target(stimuli_dir: Path, candidate: Path, stim_file: str, events_path) -> None:
    """A symbolic link may point into the dataset (git-annex keeps images in ``.git/annex``) or within
    the (possibly linked) stimuli folder, never elsewhere: a link to ``/etc/...`` or a home folder would
    make us read it and copy it into the report.

    The dataset's annex may live outside it: a dataset cloned as a git submodule (``git clone
    --recurse-submodules`` of a DataLad superdataset) keeps its repository in the superdataset's
    ``.git/modules/<name>``, and ``git annex init`` there makes ``.git`` a link to it, so every image resolves
    to ``<super>/.git/modules/<name>/annex/objects/...``. That object store is the dataset's own content."""
    target = candidate.resolve()
    allowed = [stimuli_dir.resolve(), stimuli_dir.absolute().parent.resolve()]
    for folder in (stimuli_dir, stimuli_dir.absolute().parent):  # the dataset's, or a stimuli subdataset's
        if (folder / ".git").is_dir():  # a folder, or a link to one (a submodule's repository)
            allowed.append((folder / ".git").resolve() / "annex" / "objects")
    if not any(target == root or root in target.parents for root in allowed):
        raise BadDataError(
            f"stim_file {stim_file!r} is a link to {target}, outside the dataset",
            path=events_path or candidate,
            hint="copy the image into BIDS_DIR/stimuli/ instead of linking to a file outside the dataset",
        )


#: Image extensions tried, in this order, for a file name built from a template (``{stimulus}.JPEG``) that is
#: not found as built: labs convert and rename (.jpg, .png); the stem is what identifies the image.
IMAGE_EXTENSIONS = (".JPEG", ".jpeg", ".jpg", ".JPG", ".png", ".PNG", ".tiff", ".tif", ".TIFF", ".TIF", ".bmp",
                    ".BMP", ".gif", ".webp")


def find_with_other_extension(
    stimuli_dir: str | os.PathLike | None, stim_file: str, events_path: str | os.PathLike | None = None
) -> Path | None:
    """The image of ``stim_file`` under another extension of :data:`IMAGE_EXTENSIONS` (same stem), or ``None``."""
    if stimuli_dir is None or stim_file in (None, NA) or not Path(stimuli_dir).is_dir():
        return None
    name = PurePosixPath(normalize_stim_file(stim_file, events_path))
    for extension in IMAGE_EXTENSIONS:
        if extension == name.suffix:
            continue
        found = resolve_stimulus_path(stimuli_dir, str(name.with_suffix(extension)), events_path)
        if found is not None:
            return found
    return None


def relative_to_stimuli(stimuli_dir: str | os.PathLike, path: Path) -> str:
    """``path`` relative to ``stimuli_dir`` with forward slashes (the trials table's ``stim_file``)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(stimuli_dir))
    return rel.replace(os.sep, "/")


_WARNED_FOLDER_TABLES: set[str] = set()


def load_stimuli_table(stimuli_dir: str | os.PathLike | None) -> dict[str, dict[str, str]]:
    """Read ``stimuli/stimuli.tsv`` (columns ``stimulus`` and any of ``category``, ``cue_text``, ...).

    Returns a mapping ``stimulus -> {column: value}`` (strings; empty when the file is absent). Used to
    fill ``category`` (and ``cue_text``) when imagery targets are categories named in the events only.
    """
    if stimuli_dir is None:
        return {}
    path = Path(stimuli_dir) / "stimuli.tsv"
    if path.is_dir():  # ignored without a word before: categories and cue texts went n/a
        if str(path) in _WARNED_FOLDER_TABLES:  # read once per events file: one warning is enough
            return {}
        _WARNED_FOLDER_TABLES.add(str(path))
        LOGGER.warning("%s is a folder, not a table: ignored (categories and cue texts come from the events only); "
                       "make it a tab-separated file with a 'stimulus' column, or remove it", path)
        return {}
    if not path.is_file():
        return {}
    from .events import read_events  # late import: events imports this module

    table = read_events(path, what="The stimuli table", empty_hint=(
        "write a tab-separated header with a 'stimulus' column and any of 'category', 'cue_text' (the names the "
        "events use), then one row per stimulus; or remove the file"))
    if "stimulus" not in table.columns:
        raise BadDataError(
            "stimuli.tsv has no 'stimulus' column",
            path=path,
            hint="add a header row with 'stimulus' and 'category' (tab separated)",
        )
    out: dict[str, dict[str, str]] = {}
    for record in table.to_dict("records"):
        key = record["stimulus"]
        if key == NA:
            continue
        if key in out and out[key] != record:
            LOGGER.warning("stimuli.tsv lists %r twice with different values; the first row is used [%s]", key, path)
            continue
        out.setdefault(key, {k: v for k, v in record.items() if k != "stimulus"})
    return out


def missing_stimulus_files(trials, stimuli_dir: str | os.PathLike, roles=("trial",)) -> list[str]:
    """``stim_file`` values of the trials table that have no image under ``stimuli_dir`` (in table order).

    Stages that need pixels call this and stop with :class:`~bids_m2i.errors.InputMissingError` naming
    the first one (or skip with a warning when asked to).
    """
    missing: list[str] = []
    seen: set[str] = set()
    for role, stim_file in zip(trials["role"], trials["stim_file"]):
        if role not in roles or stim_file == NA or stim_file in seen:
            continue
        seen.add(stim_file)
        if resolve_stimulus_path(stimuli_dir, stim_file) is None:
            missing.append(stim_file)
    return missing


def trials_needing_images(trials):
    """The trial rows whose image decoding reads, in table order.

    The same rows :func:`bids_m2i.decoding.reconstruct.reconstruct_participant` asks for: the perception
    trials the split trains or tests on (``split`` ``none`` trials, e.g. ds001506's shapes and letters, are
    not read) and the imagery trials cued by an image (imagery from memory). Which seeded stimuli are held
    out changes nothing here: training and test images are both needed.
    """
    from ..decoding.splits import split_trials

    rows = trials[trials["role"] == "trial"].reset_index(drop=True)
    split = split_trials(rows, seed=0)
    memory = [int(r) for r in split.imagery if rows.at[int(r), "cue"] != "text" and rows.at[int(r), "stim_file"] != NA]
    needed = sorted({int(r) for r in split.train} | {int(r) for r in split.test} | set(memory))
    return rows.iloc[needed]


def check_decoding_stimuli(trials, stimuli_dir: str | os.PathLike, runs: list[dict] | None = None) -> int:
    """Stop now (exit 66) when an image that decoding will read is missing, instead of after the GLM.

    Parameters
    ----------
    trials : DataFrame
        The trials table of one participant (all roles).
    stimuli_dir : path
        ``BIDS_DIR/stimuli``.
    runs : list of dict, optional
        ``trials.attrs["runs"]`` (task, session, run, rule): names the events rule in the message.

    Returns
    -------
    int
        Number of distinct images checked (all present).

    Raises
    ------
    InputMissingError
        Trials to decode have no file name (the events rule builds none: name the rule and what to set), or
        files are absent (the first five and the count, where they were looked for, and the exact path
        expected for the first).
    """
    from ..errors import InputMissingError

    needed = trials_needing_images(trials)
    if needed.empty:
        return 0
    unnamed = needed[needed["stim_file"] == NA]
    if len(unnamed):
        first = unnamed.iloc[0]
        rules = sorted({r["rule"] for r in runs or [] if r["task"] == first["task"]})
        rule = f" ({' / '.join(rules)})" if rules else ""
        raise InputMissingError(
            f"{len(unnamed)} trial(s) that decoding trains or tests on have no image file: the events rule{rule} "
            f"builds no file name (first: stimulus {first['stimulus']!r}, task {first['task']}, session "
            f"{first['session']}, run {first['run']})",
            path=stimuli_dir,
            hint="name the images in an --events-map section for this task: stim_file_column (a column holding "
            "the file) or stim_file_template (e.g. \"{stimulus}.png\"); see docs/events.md. Or run with "
            "--stop-after glm to stop before decoding",
        )
    files = list(dict.fromkeys(needed["stim_file"]))
    missing = [f for f in files if resolve_stimulus_path(stimuli_dir, f) is None]
    dangling = [c for f in missing for c in stimulus_candidates(stimuli_dir, f)[:1] if c.is_symlink()]
    if dangling:
        from .layout import is_unfetched_link, unfetched_content_error

        dangling = [c for c in dangling if is_unfetched_link(c)]
        if dangling:
            raise unfetched_content_error(dangling, "stimulus images that decoding needs",
                                          Path(stimuli_dir).parent)
    folders = [c for f in missing for c in stimulus_candidates(stimuli_dir, f)[:1] if c.is_dir()]
    if folders:
        raise BadDataError(
            f"Stimulus {folders[0]} is a folder, not an image file"
            + (f" ({len(folders) - 1} more stimulus paths are folders too)" if len(folders) > 1 else ""),
            path=folders[0], hint="put the image file itself at that path (an unpacked archive or a copy may have "
            "made a folder of that name), or fix the stimulus names in the events; or run with --stop-after glm")
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        expected = Path(stimuli_dir).joinpath(*missing[0].split("/"))
        other_case = _same_name_other_case(expected)
        # names written on macOS or Windows, whose file systems ignore letter case (IMG-0.png for img-0.png)
        case_note = (f"; {expected.name} differs only in letter case from {other_case.name}, which is there: "
                     "this file system tells them apart, rename the files or fix the events" if other_case else "")
        if _uninstalled_subdataset(Path(stimuli_dir)):
            # `datalad clone` (or `git clone` without --recursive) leaves a subdataset as an empty folder
            root = Path(stimuli_dir).parent
            raise InputMissingError(
                f"{stimuli_dir} is empty: it is a DataLad / git subdataset that was not installed (the {len(missing)} "
                f"stimulus images that decoding needs belong in it, e.g. {missing[0]})", path=stimuli_dir,
                hint=f"run `cd {root} && datalad get -n stimuli && datalad get stimuli` (or `git submodule update "
                "--init stimuli`), then run m2i again; or run with --stop-after glm")
        raise InputMissingError(
            f"{len(missing)} of the {len(files)} stimulus images that decoding needs are not in {stimuli_dir}: "
            f"{shown}{case_note}",
            path=stimuli_dir,
            hint=f"put each image at BIDS_DIR/stimuli/<name above>, e.g. {expected} (also looked for: without a "
            "leading stimuli/, the bare file name, in stimuli/ and its subfolders, and for names built from a "
            f"template the same name with another image extension: {', '.join(IMAGE_EXTENSIONS[:8])}...); or run "
            "with --stop-after glm",
        )
    return len(files)


def _same_name_other_case(path: Path) -> Path | None:
    """An entry of ``path``'s folder whose name differs from ``path``'s in letter case only, or ``None``."""
    try:
        names = sorted(os.listdir(path.parent))
    except OSError:
        return None
    wanted = unicodedata.normalize("NFC", path.name).casefold()
    # the entry of the very name is no other-case twin (a folder where the image should be: said elsewhere)
    return next((path.parent / name for name in names if name != path.name
                 and unicodedata.normalize("NFC", name).casefold() == wanted), None)


def _uninstalled_subdataset(stimuli_dir: Path) -> bool:
    """``stimuli/`` is an empty folder that the dataset's ``.gitmodules`` lists (a subdataset not installed)."""
    try:
        if any(stimuli_dir.iterdir()):
            return False
        modules = (stimuli_dir.parent / ".gitmodules").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(r"^\s*path\s*=\s*stimuli/?\s*$", modules, re.MULTILINE) is not None
