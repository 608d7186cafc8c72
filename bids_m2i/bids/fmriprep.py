"""Use fMRIPrep's outputs instead of our own preprocessing (``--derivatives DIR [--space T1w|MNI...]``).

Any space fMRIPrep wrote works (``T1w``, ``MNI152NLin2009cAsym``, ``MNI152NLin6Asym``, ...): all m2i needs is
one grid common to every run of a participant, which each of them is (docs/fmriprep.md).

For every selected raw BOLD run we look for fMRIPrep's ``desc-preproc_bold`` in the requested space, its
``desc-brain_mask`` and the run's ``desc-confounds_timeseries.tsv`` (``desc-confounds_regressors.tsv`` before
fMRIPrep 20.2). Files are matched by entities, with ``run``/``echo`` compared as numbers (fMRIPrep may write
``run-1`` for a raw ``run-01``). Missing files or space -> exit 66 with what exists.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
from pathlib import Path

from ..errors import InputMissingError
from ..utils.paths import check_readable, is_inside
from .layout import is_unfetched_link, parse_entities, unfetched_content_error

LOGGER = logging.getLogger("m2i.bids")

_MATCH_ENTITIES = ("subject", "session", "task", "acquisition", "ceagent", "direction", "run", "echo")
_SPACE_RE_ENTITIES = ("space", "res", "cohort", "desc")


def _norm(key: str, value: str) -> str:
    if key in ("run", "echo") and value.isdigit():
        return str(int(value))
    return value


def _key(entities: dict[str, str]) -> tuple:
    return tuple((k, _norm(k, entities[k])) for k in _MATCH_ENTITIES if k in entities)


def derivative_entities(path: Path) -> dict[str, str]:
    """The entities of a derivative file's name, with fMRIPrep's ``space``/``cohort``/``res`` (public: the
    shared decoder's workflow finds participants' outputs with it)."""
    ents = parse_entities(path)
    for part in path.name.split("_"):
        if "-" in part:
            key, _, value = part.partition("-")
            if key in _SPACE_RE_ENTITIES:
                ents[key] = value
    return ents


_derivative_entities = derivative_entities  # the former private name, for code written against it


#: fMRIPrep before 1.2 (2018) named its files and confounds columns otherwise (1.2 conformed them to BIDS
#: Derivatives RC1, fMRIPrep PR #1343) and wrote no dataset_description.json: m2i finds files by the names of
#: 1.2 and later, and reads the old columns under their new names (a renamed old table keeps them)
LEGACY_CONFOUND_COLUMNS = {"X": "trans_x", "Y": "trans_y", "Z": "trans_z", "RotX": "rot_x", "RotY": "rot_y",
                           "RotZ": "rot_z", "FramewiseDisplacement": "framewise_displacement",
                           "stdDVARS": "std_dvars", "non-stdDVARS": "dvars", "GlobalSignal": "global_signal",
                           "CSF": "csf", "WhiteMatter": "white_matter"}
_LEGACY_FILE_PATTERNS = ("*_bold_space-*_preproc.nii*", "*_bold_confounds.tsv")


def normalize_confound_columns(table):
    """fMRIPrep's confounds table with the column names of fMRIPrep 1.2 and later (``FramewiseDisplacement`` ->
    ``framewise_displacement``, ``NonSteadyStateOutlier00`` -> ``non_steady_state_outlier00``, ...); a name
    already present in its new spelling is left alone."""
    renames = {}
    for column in table.columns:
        name = str(column)
        new = LEGACY_CONFOUND_COLUMNS.get(name)
        if new is None and name.startswith("NonSteadyStateOutlier"):
            new = "non_steady_state_outlier" + name[len("NonSteadyStateOutlier"):]
        if new is not None and new not in table.columns:
            renames[column] = new
    return table.rename(columns=renames) if renames else table


def legacy_fmriprep_file(folder: Path) -> Path | None:
    """A file of ``folder`` named as fMRIPrep before 1.2 named them (``..._bold_space-T1w_preproc.nii.gz``,
    ``..._bold_confounds.tsv``), else None."""
    for pattern in _LEGACY_FILE_PATTERNS:
        found = next(iter(sorted([*Path(folder).glob(f"sub-*/func/{pattern}"),
                                  *Path(folder).glob(f"sub-*/ses-*/func/{pattern}")])), None)
        if found is not None:
            return found
    return None


def _legacy_hint(example: Path) -> str:
    return (f"these are outputs of fMRIPrep before 1.2 (e.g. {example.name}); m2i reads the file names fMRIPrep "
            "writes since 1.2 (..._desc-preproc_bold.nii.gz, ..._desc-confounds_timeseries.tsv): rerun a recent "
            "fMRIPrep (20.2 LTS or later) on this participant, or use m2i's own preprocessing (--space func)")


#: fMRIPrep's outputs of another lab member were reported as damaged or absent, with the advice to rerun fMRIPrep
#: (hours), or as "Cannot write" (exit 73): they only need to be readable
UNREADABLE_HINT = ("make fMRIPrep's outputs readable by this user (e.g. `chmod -R a+rX` on the folder, or ask their "
                   "owner to add you to its group); m2i only reads them, so there is no need to rerun fMRIPrep")


def _check_readable(path: Path) -> None:
    check_readable(path, hint=UNREADABLE_HINT)


def check_fmriprep_folder(folder: Path) -> dict:
    _check_readable(Path(folder))
    description = Path(folder) / "dataset_description.json"
    _check_readable(description)
    if is_unfetched_link(description):
        # a DataLad clone whose description is annexed: it is there, not fetched (was "not a derivatives dataset:
        # dataset_description.json is missing" for a file the user can see)
        raise unfetched_content_error([description], "file(s) of the --derivatives folder", Path(folder))
    if not description.exists():
        hint = "give fMRIPrep's output folder (the one holding its dataset_description.json)"
        nested = Path(folder) / "fmriprep"
        legacy = legacy_fmriprep_file(folder)
        if (nested / "dataset_description.json").exists():  # fMRIPrep < 21 wrote into OUTPUT_DIR/fmriprep/
            hint = f"give --derivatives {nested} (fMRIPrep before 21.0 wrote its outputs into a fmriprep/ subfolder)"
        elif legacy is not None:
            hint = _legacy_hint(legacy)
        raise InputMissingError(
            f"{folder} is not a derivatives dataset: {description.name} is missing", path=description, hint=hint,
        )
    try:
        return json.loads(description.read_text("utf-8"))
    except (ValueError, RecursionError):
        return {}


def index_fmriprep(folders: list[Path]) -> dict:
    """Map each run key to its fMRIPrep files by kind (``bold``, ``mask``, ``confounds``); the key ``"folders"``
    holds the folders indexed."""
    index: dict = {_FOLDERS: list(folders), _RAW: []}  # the folders themselves, for find_fmriprep_files' messages
    unique: list[Path] = []
    for folder in map(Path, folders):  # one folder given twice (or by two paths) is indexed once: its files were
        if folder.resolve() not in [f.resolve() for f in unique]:  # "several BOLD files ... choose with --space"
            unique.append(folder)
    for folder in unique:
        description = check_fmriprep_folder(folder)
        if isinstance(description, dict) and description.get("DatasetType") == "raw":
            index[_RAW].append(Path(folder))  # fMRIPrep writes "derivative": BIDS_DIR given by mistake?
        # the two levels BIDS allows (sub-X/func, sub-X/ses-Y/func), not "sub-*/**/func": '**' does not enter a
        # session folder that is a symbolic link (a tree assembled from per-session fMRIPrep runs), and those runs
        # were reported as "No fMRIPrep preprocessed BOLD ... run fMRIPrep first"
        paths = [*Path(folder).glob("sub-*/func/*"), *Path(folder).glob("sub-*/ses-*/func/*")]
        for path in sorted(paths):
            name = path.name
            ents = derivative_entities(path)
            if "subject" not in ents or "task" not in ents:
                continue
            kind = None
            if name.endswith(("_desc-preproc_bold.nii.gz", "_desc-preproc_bold.nii")):
                kind = "bold"
            elif name.endswith(("_desc-brain_mask.nii.gz", "_desc-brain_mask.nii")):
                kind = "mask"
            elif name.endswith(("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv")):
                kind = "confounds"
            if kind:
                index.setdefault(_key(ents), {}).setdefault(kind, []).append(path)
    return index


_FOLDERS = "folders"  # the key of index_fmriprep's folder list (run keys are tuples)
_RAW = "raw_folders"  # those whose dataset_description.json says DatasetType raw


def _in_space(paths: list[Path], space: str) -> list[Path]:
    return [p for p in paths if derivative_entities(p).get("space") == space]


def parse_space(spec: str) -> tuple[str, dict[str, str]]:
    """``MNIPediatricAsym:cohort-1:res-2`` -> (``MNIPediatricAsym``, {"cohort": "1", "res": "2"})."""
    label, *qualifiers = spec.split(":")
    return label, dict(q.split("-", 1) for q in qualifiers)


def _variant(path: Path) -> str:
    """How --space names the space, resolution and cohort of a file (fMRIPrep's spelling)."""
    ents = derivative_entities(path)
    return ents.get("space", "(none)") + "".join(f":{k}-{ents[k]}" for k in ("cohort", "res") if k in ents)


def find_fmriprep_files(index: dict, raw_entities: dict[str, str], space: str, raw_name: str) -> dict[str, Path]:
    files = index.get(_key(raw_entities))
    if not files or "bold" not in files:
        for folder in index.get(_FOLDERS, ()):  # the participant's folders exist but are hidden from this user
            subject = Path(folder) / f"sub-{raw_entities.get('subject')}"
            session = raw_entities.get("session")
            for path in [subject, *([subject / f"ses-{session}"] if session else []),
                         (subject / f"ses-{session}" if session else subject) / "func"]:
                _check_readable(path)
        combined = index.get(_key({k: v for k, v in raw_entities.items() if k != "echo"})) if "echo" in raw_entities \
            else None
        if combined and "bold" in combined:
            # one echo of a multi-echo run selected (--bids-filter-file, as m2i's own preprocessing asks): fMRIPrep
            # wrote only the echoes combined, and this read "run fMRIPrep on this participant first"
            raise InputMissingError(
                f"fMRIPrep's outputs of {raw_name} are its echoes combined ({combined['bold'][0].name}: no echo-), "
                f"not echo {raw_entities['echo']} alone", path=combined["bold"][0],
                hint="to use fMRIPrep's combined series, select no echo (remove \"echo\" from --bids-filter-file): "
                "each multi-echo run is then one run; for one echo alone, use m2i's own preprocessing (--space func)")
        legacy = next(filter(None, map(legacy_fmriprep_file, index.get(_FOLDERS, ()))), None)
        hint = _legacy_hint(legacy) if legacy else "run fMRIPrep on this participant first" + _fmriprep_hint()
        # fMRIPrep ran on this participant, only not on this session or run: "run fMRIPrep on this participant
        # first" sent users to rerun what they had, and did not say how to go on with what is there
        subject = raw_entities.get("subject")
        others = [dict(key) for key, files in index.items()
                  if isinstance(key, tuple) and dict(key).get("subject") == subject and "bold" in files]
        session = raw_entities.get("session")
        sessions = sorted({o["session"] for o in others if "session" in o})
        if not legacy and session and sessions and session not in sessions:
            hint = (f"fMRIPrep's outputs of sub-{subject} cover session(s) {', '.join(sessions)} only: run fMRIPrep on "
                    f"ses-{session} too, or select the sessions it processed with --session-label {' '.join(sessions)}")
        elif not legacy and others:
            hint = (f"fMRIPrep's outputs of sub-{subject} hold other runs but not this one (one fMRIPrep skipped, or "
                    "left out with its own filters): rerun fMRIPrep on it, or leave it out with --task or "
                    "--bids-filter-file")
        if index.get(_RAW):  # the raw dataset given as --derivatives: "run fMRIPrep first" misled those who had
            raw = index[_RAW][0]
            nested = next((raw / "derivatives" / n for n in ("fmriprep", "fMRIPrep")
                           if (raw / "derivatives" / n / "dataset_description.json").exists()), None)
            hint = (f"{raw} is a raw BIDS dataset (its dataset_description.json says DatasetType raw), not fMRIPrep's "
                    "outputs: give --derivatives the folder fMRIPrep wrote"
                    + (f": {nested}" if nested else
                       ", whose dataset_description.json names fMRIPrep under GeneratedBy"))
        raise InputMissingError(
            f"No fMRIPrep preprocessed BOLD for {raw_name} in the --derivatives folder(s)", hint=hint)
    # rec- is not part of the run key (a derivative without it still serves a raw run with it), but a derivative of
    # ANOTHER reconstruction is another series: raw runs kept as rec-NORDIC beside the original got the first in
    # name order (rec-NORDIC's) for either, a "several BOLD files" warning aside
    rec = raw_entities.get("reconstruction")
    files = {kind: _same_reconstruction(paths, rec) for kind, paths in files.items()}
    if not files.get("bold"):
        raise InputMissingError(f"No fMRIPrep preprocessed BOLD for {raw_name} in the --derivatives folder(s) "
                                f"({'without rec-' if rec is None else f'with rec-{rec}'}; other reconstructions only)",
                                hint="run fMRIPrep on this reconstruction of the run" + _fmriprep_hint())
    label, wanted = parse_space(space)
    bolds = _in_space(files["bold"], label)
    if not bolds:
        spaces = {derivative_entities(p).get("space") for p in files["bold"]}
        present = sorted(s for s in spaces if s)
        # fMRIPrep 23+ names the series on the run's own BOLD grid (output space `func`/boldref) without space-:
        # it was listed as a space "(none)" and suggested as "--space (none)"; each run has its own such grid, so
        # it cannot serve as the one grid m2i needs
        native = None in spaces
        shown = [*present, *(["the run's own BOLD grid (files without space-)"] if native else [])]
        native_note = ("files without space- are on each run's own BOLD grid (fMRIPrep's output space func), "
                       "which differs between runs: m2i needs one grid common to all runs; ") if native else ""
        if present:
            hint = (f"use --space with one of: {', '.join(present)} (any of them works: m2i needs one grid common to "
                    f"all runs), or rerun fMRIPrep with --output-spaces {label}; see docs/fmriprep.md")
        else:
            hint = (f"rerun fMRIPrep with --output-spaces {label} (or a template such as MNI152NLin2009cAsym), or use "
                    "m2i's own preprocessing (--space func); see docs/fmriprep.md")
        raise InputMissingError(
            f"fMRIPrep outputs of {raw_name} have no space '{label}'; spaces present: {', '.join(shown)}",
            hint=native_note + hint,
        )
    variants = sorted({_variant(p) for p in bolds})
    bolds = [p for p in bolds if all(derivative_entities(p).get(k) == v for k, v in wanted.items())]
    if not bolds:
        raise InputMissingError(f"fMRIPrep outputs of {raw_name} have no '{space}'; present: {', '.join(variants)}",
                                hint=f"use --space with one of: {', '.join(variants)}")
    if len({_variant(p) for p in bolds}) < len(bolds):
        # one run in several --derivatives folders (two fMRIPrep runs): --space cannot choose among them, which the
        # warning below advised; the first folder given wins, as for every run
        LOGGER.warning("%s has several fMRIPrep BOLD files of one space (%s; several --derivatives folders hold the "
                       "run); using %s (the first folder given)", raw_name, ", ".join(map(str, bolds)), bolds[0])
    elif len(bolds) > 1:  # several resolutions or cohorts: take the first, say so and how to choose
        LOGGER.warning("Several fMRIPrep BOLD files in space %s for %s (%s); using %s (choose with --space %s)",
                       space, raw_name, ", ".join(_variant(p) for p in bolds), bolds[0].name, _variant(bolds[0]))
    bold = bolds[0]
    chosen = derivative_entities(bold)
    # the mask of the same grid: same space, resolution and cohort (another cohort's mask is another grid)
    masks = [m for m in _in_space(files.get("mask", []), label)
             if all(derivative_entities(m).get(k) == chosen.get(k) for k in ("res", "cohort"))]
    if not masks:
        raise InputMissingError(f"fMRIPrep brain mask missing for {bold.name}",
                                hint="expected ..._space-<space>_desc-brain_mask.nii.gz next to the BOLD file")
    confounds = files.get("confounds", [])
    if not confounds:
        raise InputMissingError(f"fMRIPrep confounds missing for {raw_name}",
                                hint="expected ..._desc-confounds_timeseries.tsv (or _regressors.tsv) next to it")
    # the files beside the BOLD first (with repeated --derivatives, another folder's are another fMRIPrep run), and
    # today's confounds name before the old one: fMRIPrep >= 20.2 rerun into the OUTPUT_DIR of an older version
    # leaves its _desc-confounds_regressors.tsv beside the new _timeseries.tsv, and the old table, first in name
    # order, was read (its FD and non-steady-state volumes) without a word
    mask = min(masks, key=lambda m: m.parent != bold.parent)
    ranked = sorted(confounds, key=lambda c: (c.parent != bold.parent, c.name.endswith("_regressors.tsv")))
    beside = [c for c in ranked if c.parent == bold.parent]
    if len(beside) > 1:  # (tables of other folders: said by the warning about several folders above)
        LOGGER.warning("Several fMRIPrep confounds tables for %s (%s); using %s", raw_name,
                       ", ".join(c.name for c in beside), beside[0].name)
    return {"bold": bold, "mask": mask, "confounds": ranked[0]}


def preproc_sidecar(preproc_bold: Path) -> Path:
    """The JSON sidecar of fMRIPrep's preprocessed BOLD (``..._desc-preproc_bold.json``)."""
    name = preproc_bold.name
    stem = name[: -len(".nii.gz")] if name.endswith(".gz") else name[: -len(".nii")]
    return preproc_bold.with_name(stem + ".json")


def read_preproc_sidecar(preproc_bold: Path, if_unreadable: str) -> dict:
    """The preprocessed BOLD's sidecar as a dict ({} when absent; unreadable: a warning ending ``if_unreadable``)."""
    sidecar = preproc_sidecar(preproc_bold)
    meta: dict = {}
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text("utf-8"))
        except (OSError, ValueError, RecursionError):
            LOGGER.warning("%s cannot be read: %s", sidecar, if_unreadable)
    return meta if isinstance(meta, dict) else {}


def _same_reconstruction(paths: list[Path], rec: str | None) -> list[Path]:
    """``paths`` without those of another ``rec-`` than the raw run's; those of its own first when there are."""
    kept = [p for p in paths if derivative_entities(p).get("reconstruction") in (None, rec)]
    exact = [p for p in kept if derivative_entities(p).get("reconstruction") == rec]
    return exact or kept


def fmriprep_frame_start(preproc_bold: Path, slice_timing: list | None, tr: float) -> float:
    """Seconds from the start of each volume to the time fMRIPrep's preprocessed BOLD represents.

    fMRIPrep corrects slice timing whenever the raw run has ``SliceTiming`` (unless ``--ignore slicetiming``),
    to ``StartTime`` = first + ``--slice-time-ref`` (default 0.5) x (last - first) slice time, and says so in the
    BOLD's sidecar (``SliceTimingCorrected``, ``StartTime``; fMRIPrep >= 20.2). The frames were put at the start
    of each volume instead (the raw ``SliceTiming`` was dropped against the T1w grid's slice count): a shift of
    ~TR/2 that cost rapid designs much of their single-trial accuracy (tests/test_qa_fmriprep_timing.py).

    Without slice-timing correction the slices keep their own times: their median, as for our own
    preprocessing (the GLM's time reference). A sidecar that says nothing: fMRIPrep's default reference."""
    import math

    import numpy as np

    name = preproc_bold.name
    meta = read_preproc_sidecar(preproc_bold, "assuming fMRIPrep's default slice-timing reference")
    times = [float(t) for t in slice_timing] if slice_timing and len(slice_timing) > 1 else []
    start = meta.get("StartTime")
    corrected = meta.get("SliceTimingCorrected")
    if corrected is not False and isinstance(start, (int, float)) and not isinstance(start, bool) \
            and math.isfinite(start) and 0 <= start < tr:
        return float(start)
    if corrected is False:
        return float(np.median(times)) if times else 0.0
    if not times:
        return 0.0
    reference = min(times) + 0.5 * (max(times) - min(times))
    LOGGER.info("%s: no usable StartTime in its sidecar; assuming fMRIPrep's default slice-timing reference "
                "(%.3f s, the middle of the slice times)", name, reference)
    return float(reference)


def attach_fmriprep_inputs(inputs: dict, config) -> None:
    """Fill ``RunInfo.preproc_bold/brain_mask/confounds`` for every selected run."""
    space = config.space_spec
    if space == "func":
        LOGGER.info("--space func: using our own preprocessing; --derivatives is ignored")
        return
    index = index_fmriprep([Path(p) for p in config.derivatives])
    variants = set()
    found_runs = []
    for subject_inputs in inputs.values():
        for run in subject_inputs.runs:
            found = find_fmriprep_files(index, run.bold.entities, space, run.bold.path.name)
            run.preproc_bold, run.brain_mask, run.confounds = found["bold"], found["mask"], found["confounds"]
            found_runs.append((run, found))
    # fMRIPrep outputs kept with DataLad (OpenNeuroDerivatives, a lab's own) and cloned without `datalad get`: said
    # as such (66, the command), not as "Cannot read ... rerun fMRIPrep (the file is damaged)" (65). The BOLD's
    # sidecar too (annexed unless the dataset keeps text in git): unfetched, its StartTime was silently replaced
    # by fMRIPrep's default reference, which is wrong for a run made with --slice-time-ref or --ignore slicetiming
    unfetched = [path for _, found in found_runs
                 for path in [*found.values(), preproc_sidecar(found["bold"])] if is_unfetched_link(path)]
    if unfetched:
        folder = next((Path(f) for f in config.derivatives if is_inside(unfetched[0], f)), None)
        raise unfetched_content_error(unfetched, "of fMRIPrep's files for the selected runs", folder)
    for run, found in found_runs:
        run.start_time = fmriprep_frame_start(found["bold"], run.bold.slice_timing, run.tr)
        check_fmriprep_run(found, raw=run)
        chosen = derivative_entities(found["bold"])
        variants.add(tuple((k, chosen[k]) for k in ("space", "cohort", "res") if k in chosen))
    if len(variants) == 1:  # outputs named after the grid used (res/cohort included: see Config.space_entities)
        config.__dict__["input_space_entities"] = dict(variants.pop())


def check_fmriprep_run(found: dict[str, Path], raw=None) -> None:
    """fMRIPrep's files of one run are readable and agree (headers and the confounds table only: cheap), so
    that a broken file stops the run now with 65, not in the GLM step after the others (an empty confounds
    table ended there in exit 1 with pandas' traceback).

    ``raw`` (the run's :class:`~bids_m2i.bids.inputs.RunInfo`): fMRIPrep keeps every volume and the TR, so a
    BOLD series of another length or TR comes from other raw data (a dataset version trimmed of its dummy
    volumes after fMRIPrep ran): the events, which count from the raw run's first volume, were silently
    shifted by the difference."""
    import nibabel as nib
    import pandas as pd

    from ..errors import BadDataError

    for kind in ("bold", "mask", "confounds"):
        _check_readable(found[kind])
    shapes, zooms = {}, {}
    for kind in ("bold", "mask"):
        try:
            img = nib.load(str(found[kind]))
            shapes[kind] = img.shape
            zooms[kind] = (img.header.get_zooms(), img.header.get_xyzt_units()[1])
        except Exception as exc:  # nibabel raises several kinds for a file that is not an image
            raise BadDataError(f"Cannot read fMRIPrep's {found[kind].name}: {exc}", path=found[kind],
                               hint="rerun fMRIPrep for this participant (the file is damaged or incomplete)") from exc
    if len(shapes["bold"]) != 4:
        raise BadDataError(f"fMRIPrep's {found['bold'].name} is not a 4-D time series (shape {shapes['bold']})",
                           path=found["bold"], hint="rerun fMRIPrep for this participant (the file is damaged or "
                           "not its preprocessed BOLD series)")
    if raw is not None:
        check_same_acquisition(found["bold"], shapes["bold"], zooms["bold"], raw)
    try:
        table = normalize_confound_columns(pd.read_csv(found["confounds"], sep="\t", na_values=["n/a"]))
        n_rows = len(table)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadDataError(f"fMRIPrep's confounds table {found['confounds'].name} cannot be read: {exc}",
                           path=found["confounds"], hint="rerun fMRIPrep for this participant (the table is empty "
                           "or damaged)") from exc
    # the columns m2i reads (FD for the trials' fd_mean, the non-steady-state indicators) must be numbers: text
    # there stopped the GLM step with exit 1 and "could not convert string to float"
    for column in table.columns:
        if column == "framewise_displacement" or str(column).startswith("non_steady_state_outlier"):
            bad = table[column].notna() & pd.to_numeric(table[column], errors="coerce").isna()
            if bad.any():
                line = int(bad.to_numpy().argmax()) + 2
                raise BadDataError(f"fMRIPrep's confounds table {found['confounds'].name}: column {column!r} holds "
                                   f"{table[column][bad].iloc[0]!r} on line {line}, not a number",
                                   path=found["confounds"], hint="rerun fMRIPrep for this participant (the table "
                                   "was edited or damaged); missing values must be n/a")
    if "framewise_displacement" not in table.columns:  # not needed to run, but the user should know
        LOGGER.warning("fMRIPrep's confounds table %s has no framewise_displacement column (columns: %s): the "
                       "trials' fd_mean will be n/a", found["confounds"].name, ", ".join(map(str, table.columns[:12])))
    n_volumes = shapes["bold"][3]
    if n_rows != n_volumes:
        raise BadDataError(f"fMRIPrep's confounds table {found['confounds'].name} has {n_rows} rows for the "
                           f"{n_volumes} volumes of {found['bold'].name}", path=found["confounds"],
                           hint="the files come from different fMRIPrep runs or an interrupted one: rerun fMRIPrep "
                           "for this participant into a clean output folder")


def check_same_acquisition(bold: Path, shape: tuple, zooms: tuple, raw) -> None:
    """fMRIPrep's BOLD series has the raw run's number of volumes and TR (see :func:`check_fmriprep_run`)."""
    from ..errors import BadDataError
    from .inputs import TR_TOLERANCE

    hint = ("these fMRIPrep outputs were made from other raw data than BIDS_DIR holds (e.g. a dataset version whose "
            "dummy volumes were removed later): rerun fMRIPrep on this BIDS_DIR, or give the BIDS_DIR fMRIPrep ran on")
    difference = int(shape[3]) - int(raw.n_volumes)
    if difference:
        raise BadDataError(
            f"{raw.bold.path.name} has {abs(difference)} volumes {'fewer' if difference > 0 else 'more'} than "
            f"fMRIPrep's {bold.name} ({raw.n_volumes} against {shape[3]}): the events would not line up with "
            "fMRIPrep's volumes", path=bold, hint=hint)
    # the sidecar's RepetitionTime (BIDS' authority on the TR) too: fMRIPrep copies the raw run's, so another value
    # means the raw sidecar was changed after fMRIPrep ran (its slice-timing correction and StartTime used the old
    # TR); the header alone agreed, and the run went through without a word
    sidecar_tr = read_preproc_sidecar(bold, "its RepetitionTime is not checked").get("RepetitionTime")
    if isinstance(sidecar_tr, (int, float)) and not isinstance(sidecar_tr, bool) and sidecar_tr > 0 \
            and abs(float(sidecar_tr) - raw.tr) > TR_TOLERANCE * raw.tr:
        raise BadDataError(f"fMRIPrep's {preproc_sidecar(bold).name} gives a RepetitionTime of {sidecar_tr:g} s, the "
                           f"raw run {raw.bold.path.name} {raw.tr:g} s", path=preproc_sidecar(bold), hint=hint)
    values, unit = zooms
    if len(values) >= 4 and values[3] > 0:
        tr = float(values[3]) * {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
        if abs(tr - raw.tr) > TR_TOLERANCE * raw.tr:
            raise BadDataError(f"fMRIPrep's {bold.name} has a TR of {tr:g} s, its raw run {raw.bold.path.name} "
                               f"{raw.tr:g} s", path=bold, hint=hint)


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def build_fmriprep_docker_command(bids_dir: Path, output_dir: Path, participants: list[str], *,
                                  work_dir: Path, fs_license: Path | None = None, nprocs: int | None = None,
                                  mem_gb: float | None = None, output_spaces: tuple[str, ...] = ("T1w",),
                                  image_version: str | None = None) -> list[str]:
    """The ``fmriprep-docker`` command that produces what ``--derivatives DIR --space T1w`` needs."""
    cmd = ["fmriprep-docker", str(bids_dir), str(output_dir), "participant"]
    if participants:
        cmd += ["--participant-label", *participants]
    cmd += ["--output-spaces", *output_spaces, "-w", str(work_dir)]
    if fs_license:
        cmd += ["--fs-license-file", str(fs_license)]
    if nprocs:
        cmd += ["--nprocs", str(nprocs)]
    if mem_gb:
        cmd += ["--mem-mb", str(int(mem_gb * 1024))]
    if image_version:
        cmd += ["-i", f"nipreps/fmriprep:{image_version}"]
    return cmd


def _fmriprep_hint() -> str:
    if not docker_available():
        return " (the files needed: docs/fmriprep.md)"
    cmd = build_fmriprep_docker_command(Path("BIDS_DIR"), Path("FMRIPREP_DIR"), [], work_dir=Path("WORK_DIR"),
                                        fs_license=Path("license.txt"))
    return "; a Docker engine is available, so you can run: " + shlex.join(cmd)
