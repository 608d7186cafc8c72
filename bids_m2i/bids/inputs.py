"""Collect and check everything a participant run needs, before any long step starts.

Fail early and clearly: unreadable or 3-D BOLD, TR missing or disagreeing with the header, events missing or
unusable, stimulus images missing when pixels are needed. Problems that leave the data usable (events past
the end of a run, a run without trials) are warnings.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import Config
from ..errors import BadDataError, InputMissingError, UsageError, unreadable_input_error
from .layout import (BoldRun, combine_echoes, index_dataset, is_unfetched_link, load_bids_filters, select_bold_runs,
                     unfetched_content_error)

LOGGER = logging.getLogger("m2i.bids")

TR_TOLERANCE = 0.01  # relative difference allowed between the sidecar's and the header's TR
# no fMRI sequence has a TR this long (sparse auditory designs reach ~10-20 s): a larger value is milliseconds
MAX_TR_SECONDS = 60.0
# the single-trial GLM engine refuses shorter runs (glm/estimate.py)
MIN_GLM_VOLUMES = 10


@dataclass
class RunInfo:
    bold: BoldRun
    n_volumes: int
    shape: tuple[int, ...]
    tr: float
    # fMRIPrep inputs (None with our own preprocessing)
    preproc_bold: Path | None = None
    brain_mask: Path | None = None
    confounds: Path | None = None
    # seconds from the start of each volume to the time its frame stands for in the GLM (the median slice time of
    # the raw run; fMRIPrep's slice-timing reference with --derivatives, set by bids/fmriprep.py)
    start_time: float | None = None


@dataclass
class SubjectInputs:
    subject: str
    runs: list[RunInfo]
    trials: pd.DataFrame
    stimuli_dir: Path
    warnings: list[str] = field(default_factory=list)

    def runs_of(self, task: str, session: str | None) -> list[RunInfo]:
        return [r for r in self.runs if r.bold.task == task and r.bold.session == session]

    @property
    def task_sessions(self) -> list[tuple[str, str | None]]:
        return list(dict.fromkeys((r.bold.task, r.bold.session) for r in self.runs))


def read_bold_header(run: BoldRun) -> tuple[tuple[int, ...], float | None]:
    """Shape and header TR (seconds) of a BOLD file, reading the header only."""
    import nibabel as nib

    path = run.path
    if path.exists() and not os.access(path, os.R_OK):
        raise unreadable_input_error(path)
    try:
        if path.stat().st_size == 0:
            raise BadDataError(f"BOLD file is empty: {path}", path=path, hint="re-export or remove this run")
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        zooms = img.header.get_zooms()
    except BadDataError:
        raise
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, gzip.BadGzipFile, ...
        raise BadDataError(f"Cannot read the BOLD file {path}: {exc}", path=path,
                           hint="check the file is a complete NIfTI-1/2 image (re-export or re-download it)") from exc
    if len(shape) != 4 or shape[3] < 2 or 0 in shape:
        raise BadDataError(f"BOLD file {path} is not a 4-D time series (shape {shape})", path=path,
                           hint="a BOLD run needs one 3-D volume per time point")
    check_voxel_type(path, img.get_data_dtype())
    check_voxel_to_world(path, img)
    check_data_complete(path, img)
    header_tr = None
    if len(zooms) >= 4 and zooms[3] > 0:
        unit = img.header.get_xyzt_units()[1] if hasattr(img.header, "get_xyzt_units") else "sec"
        scale = {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
        header_tr = float(zooms[3]) * scale
    return shape, header_tr


def check_voxel_type(path: Path, dtype) -> None:
    """Complex (a reconstruction that keeps the phase in one file) or RGB voxels are no BOLD magnitude: complex
    ones were cast to their real part (a ComplexWarning in the log only) and the run went on to exit 0 with motion
    estimates of 500 mm; RGB ones stopped the first step with "probably truncated"."""
    import numpy as np

    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise BadDataError(f"BOLD file {path} holds complex values ({dtype}), not a magnitude image", path=path,
                           hint="convert it to the magnitude (e.g. `fslcomplex -realabs`), or save magnitude and "
                           "phase as _part-mag_bold / _part-phase_bold (m2i uses the magnitude)")
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise BadDataError(f"BOLD file {path} holds {dtype} voxels (RGB or another non-numeric type), not "
                           "intensities", path=path, hint="re-export the run from DICOM as a numeric 4-D image")


def check_voxel_to_world(path: Path, img) -> None:
    """A voxel-to-world affine that cannot be inverted (an all-zero sform written with sform_code 1, voxel sizes
    of 0 in the header) puts every voxel at one point: motion correction, which inverts it, stopped with 1
    ("Singular matrix" in a crash file) after the runs before it were processed."""
    import numpy as np

    affine = np.asarray(img.affine, dtype=float)
    zooms = _stored_voxel_sizes(path, img)
    linear = affine[:3, :3]
    scale = np.abs(linear).max() if np.isfinite(linear).all() else 0.0
    invertible = scale > 0 and abs(np.linalg.det(linear)) > 1e-12 * scale ** 3
    # voxel sizes matter when the affine is built from them (no sform): nibabel replaces 0 by 1 mm, a guess
    sizes_used = _affine_source(img) != "sform (srow_x/y/z)"
    sizes = " x ".join(f"{z:g}" for z in zooms)
    if not (np.isfinite(affine).all() and invertible):
        reason = f"the header's {_affine_source(img)} cannot be inverted"
    elif sizes_used and not all(z > 0 for z in zooms):
        reason = f"its voxel sizes are {sizes} mm"
    else:
        return
    raise BadDataError(
        f"BOLD file {path} has no usable voxel-to-world transform ({reason}): motion correction and resampling "
        "need one", path=path,
        hint="the NIfTI header is damaged: re-convert the run from DICOM (dcm2niix), or fix its sform/qform and "
        "pixdim (e.g. copy them from another run of the session with `fslcpgeom`)")


def _stored_voxel_sizes(path: Path, img) -> list[float]:
    """pixdim[1:4] as the file stores them: nibabel's loaded header has 0 already replaced by 1 (with a warning)."""
    import numpy as np

    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    try:
        from nibabel.openers import ImageOpener

        with ImageOpener(str(path)) as fh:
            raw = type(img.header).from_fileobj(fh, check=False)
        zooms = [float(z) for z in raw["pixdim"][1:4]]
    except Exception:  # another format (NIfTI-2, Analyze): keep the loaded header's
        pass
    return [z if np.isfinite(z) else 0.0 for z in zooms]


def _affine_source(img) -> str:
    """Which header transform nibabel took the affine from (NIfTI: sform, else qform, else pixdim)."""
    header = img.header
    if getattr(header, "get_sform", None) and int(header["sform_code"]) > 0:
        return "sform (srow_x/y/z)"
    if getattr(header, "get_qform", None) and int(header["qform_code"]) > 0:
        return "qform"
    return "voxel sizes (pixdim)"


def check_data_complete(path: Path, img) -> None:
    """A truncated BOLD file (an interrupted copy or download) stops the run now, not when its run's motion
    correction reads it, possibly hours later after the other runs. Cheap: an uncompressed file's size, or the
    uncompressed size that gzip stores in its last 4 bytes; only when that disagrees (a truncated file, or a
    file of several gzip members, as bgzip writes) is the whole stream read to decide."""
    import struct

    import numpy as np

    offset = int(getattr(img.dataobj, "offset", 0) or 0)
    expected = offset + int(np.prod(img.shape)) * np.dtype(img.get_data_dtype()).itemsize
    try:
        if not str(path).endswith(".gz"):
            complete = path.stat().st_size >= expected
        else:
            with open(path, "rb") as fh:
                fh.seek(-4, 2)
                stored = struct.unpack("<I", fh.read(4))[0]
            complete = stored == expected % 2**32 or _gzip_stream_length(path) >= expected
    except OSError as exc:
        raise BadDataError(f"Cannot read the BOLD file {path}: {exc}", path=path) from exc
    if not complete:
        raise BadDataError(f"BOLD file {path} is truncated: it holds less data than its header's shape "
                           f"{tuple(img.shape)} needs", path=path,
                           hint="the copy or download was probably interrupted: copy or download it again")


def _gzip_stream_length(path: Path) -> int:
    """Bytes of the decompressed stream, or -1 when it is cut short or corrupt."""
    import gzip
    import zlib

    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                total += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error):
        return -1
    return total


def check_tr(run: BoldRun, header_tr: float | None) -> float:
    import math

    try:
        sidecar_tr = run.tr
        raw = run.metadata.get("RepetitionTime")
        if isinstance(raw, bool) or (sidecar_tr is not None and not math.isfinite(sidecar_tr)):
            raise ValueError(raw)  # true read as 1.0 s (a "TR mismatch"), "NaN" / NaN passed as a TR (exit 0)
    except (TypeError, ValueError):  # "2 s", [2], {"value": 2}: stopped the run with 1, "unexpected failure"
        raise BadDataError(
            f"RepetitionTime of {run.path.name} is not a number of seconds: "
            f"{run.metadata.get('RepetitionTime')!r}", path=run.path,
            hint="write it as a plain number (\"RepetitionTime\": 2.0) in the run's _bold.json or in "
            "task-<label>_bold.json") from None
    if sidecar_tr is None and run.metadata.get("VolumeTiming") is not None:
        # BIDS' other timing: VolumeTiming (sparse or clustered acquisitions) instead of RepetitionTime; adding a
        # RepetitionTime would describe volumes that were not acquired at regular intervals
        raise BadDataError(
            f"{run.path.name} gives VolumeTiming (a sparse or clustered acquisition) instead of RepetitionTime: "
            "m2i's motion correction, GLM and confounds assume volumes at one regular interval", path=run.path,
            hint="m2i cannot model irregularly timed volumes; leave this run out (--task, --bids-filter-file) or, if "
            "the volumes are in fact evenly spaced, give that interval as RepetitionTime instead of VolumeTiming",
        )
    folders = _sidecar_folders(run) if sidecar_tr is None else []
    if folders:
        raise BadDataError(
            f"{folders[0]} is a folder, not a JSON sidecar: the RepetitionTime of {run.path.name} cannot be read "
            "from it", path=folders[0],
            hint="replace the folder with the run's JSON file (e.g. {\"RepetitionTime\": 2.0, ...}), or remove it "
            "and give RepetitionTime in task-<label>_bold.json")
    if sidecar_tr is None:
        raise BadDataError(
            f"RepetitionTime is missing for {run.path.name} (no sidecar JSON defines it)",
            path=run.path, hint="add RepetitionTime (seconds) to the run's _bold.json or to task-<label>_bold.json",
        )
    if sidecar_tr <= 0:
        raise BadDataError(f"RepetitionTime {sidecar_tr} of {run.path.name} is not positive", path=run.path,
                           hint="set RepetitionTime to the time between volumes, in seconds, in the run's "
                           "_bold.json or in task-<label>_bold.json")
    if sidecar_tr > MAX_TR_SECONDS:
        # e.g. 2000 for 2 s: with a header that has no TR it was taken as 2000 s, every event in the first volume
        raise BadDataError(f"RepetitionTime {sidecar_tr:g} of {run.path.name} is not a TR in seconds",
                           path=run.path, hint=f"BIDS gives RepetitionTime in seconds: {sidecar_tr:g} ms is "
                           f"{sidecar_tr / 1000:g} s; fix the run's _bold.json or task-<label>_bold.json")
    if header_tr is not None and abs(header_tr / 1000 - sidecar_tr) <= TR_TOLERANCE * sidecar_tr:
        # pixdim[4] in ms with no (or a wrong) time unit, as some converters and resampling tools write it: the
        # run is fine and BIDS takes the TR from the sidecar; stopping with "TR mismatch ... 2000 s" was no help
        LOGGER.warning("%s: the NIfTI header's TR %g looks like milliseconds (its time unit is not set to msec); "
                       "using the sidecar's RepetitionTime %g s", run.path.name, header_tr, sidecar_tr)
        header_tr = sidecar_tr
    if header_tr is not None and abs(header_tr - sidecar_tr) > TR_TOLERANCE * sidecar_tr:
        raise BadDataError(
            f"TR mismatch for {run.path.name}: the sidecar says {sidecar_tr} s, the NIfTI header "
            f"{header_tr:g} s", path=run.path,
            hint="fix whichever is wrong (the header's pixdim[4] or the sidecar's RepetitionTime)",
        )
    if isinstance(raw, str):
        # "2.0" parses, and the run is usable, but the BIDS validator calls it an error; say so once per run
        LOGGER.warning("%s: RepetitionTime is the string %r; BIDS requires a number (write \"RepetitionTime\": "
                       "%g); using %g s", run.path.name, raw, sidecar_tr, sidecar_tr)
    if header_tr is None:
        LOGGER.warning("%s: the NIfTI header has no TR; using the sidecar's %s s", run.path.name, sidecar_tr)
    check_slice_timing(run, float(sidecar_tr))
    return float(sidecar_tr)


def _sidecar_folders(run: BoldRun) -> list[Path]:
    """Folders named like a sidecar this run inherits (``*_bold.json`` whose entities are the run's, from the
    run's folder up to the dataset root): pybids skips them, and the run's TR was then "missing"."""
    from .layout import parse_entities

    entities = set(parse_entities(run.path).items())
    found = []
    for folder in [run.path.parent, *run.path.parent.parents]:
        try:
            found += [p for p in sorted(folder.glob("*_bold.json"))
                      if p.is_dir() and set(parse_entities(p).items()) <= entities]
        except OSError:
            break
        if (folder / "dataset_description.json").exists():
            break
    return found


def check_slice_timing(run: BoldRun, tr: float) -> None:
    """SliceTiming (seconds from the start of each volume, all within the TR) sets the GLM's frame times.

    Values in milliseconds (``[0, 500, 1000, 1500]``, a common conversion slip) or inherited from a
    top-level sidecar written for another TR moved every frame by their median, up to minutes: every event then
    fell before the first frame, and the betas were fitted to nothing, without a word. Non-numeric values
    stopped the GLM step with 1. Both are exit 65 now, before any step, naming the file."""
    import math

    timing = run.metadata.get("SliceTiming")
    if timing is None:
        return
    where = f"SliceTiming of {run.path.name}"
    fix = "fix or remove SliceTiming in the run's _bold.json (or in task-<label>_bold.json, which every run inherits)"
    if not isinstance(timing, list) or not timing or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in timing):
        raise BadDataError(f"{where} is not a list of numbers of seconds: {str(timing)[:80]}", path=run.path,
                           hint=fix)
    low, high = min(timing), max(timing)
    if low < 0:
        raise BadDataError(f"{where} has a negative value ({low:g} s)", path=run.path, hint=fix)
    if high > tr:
        unit = (f"they look like milliseconds ({high:g} ms = {high / 1000:g} s): BIDS gives SliceTiming in seconds; "
                if high / 1000 < tr else "")
        raise BadDataError(f"{where} reaches {high:g} s, beyond the repetition time {tr:g} s (every slice is "
                           "acquired within one TR)", path=run.path, hint=unit + fix)


def slice_time_reference(run: BoldRun, shape: tuple[int, ...]) -> float:
    """The time (s from the start of each volume) the GLM gives a frame of this run: the median of its
    ``SliceTiming`` (no slice-timing correction; docs/glm.md), else 0.

    ``SliceTiming`` has one entry per slice along ``SliceEncodingDirection`` (``k`` unless said otherwise) of the
    raw run. It was compared with the third axis of the participant grid: a sagittal or coronal acquisition
    (``i``/``j``), or a run with another slice count than the participant's first run, lost its reference (frames
    put at the start of each volume, ~TR/2 early, with a warning saying "ignored")."""
    import numpy as np

    timing = run.slice_timing
    if not timing:
        return 0.0
    direction = str(run.metadata.get("SliceEncodingDirection") or "k").rstrip("-")
    axis = {"i": 0, "j": 1, "k": 2}.get(direction, 2)
    if len(timing) != shape[axis]:
        LOGGER.warning("%s: SliceTiming has %d entries for %d slices (axis %s); ignored (frame times at the start of "
                       "each volume)", run.path.name, len(timing), shape[axis], direction)
        return 0.0
    return float(np.median(np.asarray(timing, dtype=float)))


def collect_inputs(config: Config, work_dir: Path) -> dict[str, SubjectInputs]:
    from .events import build_trials_table, check_events_map_tasks, check_events_within_run, load_events_map

    # --print-trials writes nothing anywhere: its index stays in memory
    layout = index_dataset(config.bids_dir, None if config.print_trials else work_dir / "pybids_db")
    selected = select_bold_runs(
        layout, participants=config.participant_label, sessions=config.session_label, tasks=config.task,
        bids_filters=load_bids_filters(config.bids_filter_file),
    )
    selected = combine_echoes(selected, fmriprep=bool(config.values.get("derivatives"))
                              and config.resolved_space != "func")
    events_map = load_events_map(config.events_map) if config.events_map else None
    if events_map is not None:
        check_events_map_tasks(events_map, layout.get_tasks())
    stimuli_dir = config.bids_dir / "stimuli"
    needs_events = config.stop_after != "preproc" or config.print_trials
    needs_stimuli = config.stop_after == "decode" and not config.print_trials
    if needs_stimuli:
        check_models_early(config)
    unfetched = [run.path for runs in selected.values() for run in runs if is_unfetched_link(run.path)]
    unfetched += [run.events for runs in selected.values() for run in runs
                  if needs_events and run.events is not None and is_unfetched_link(run.events)]
    if unfetched:
        raise unfetched_content_error(unfetched, "of the selected BOLD / events files", config.bids_dir)
    check_sidecar_duplicate_keys([run.path for runs in selected.values() for run in runs], config.bids_dir)
    if needs_events and not config.print_trials:
        selected = drop_resting_state_runs(selected)
    out: dict[str, SubjectInputs] = {}
    for subject, runs in selected.items():
        infos: list[RunInfo] = []
        trials_parts = []
        rules: list[dict] = []  # which rule read each run (--print-trials shows it)
        for run in runs:
            shape, header_tr = read_bold_header(run)
            tr = check_tr(run, header_tr)
            info = RunInfo(run, shape[3], shape[:3], tr, start_time=slice_time_reference(run, shape))
            infos.append(info)
            if not needs_events:
                continue
            if info.n_volumes < MIN_GLM_VOLUMES and not config.print_trials:
                # said now, not after the preprocessing of every run (the GLM engine refuses it there)
                raise BadDataError(
                    f"{run.path.name} has only {info.n_volumes} volumes: too few for the single-trial GLM (at least "
                    f"{MIN_GLM_VOLUMES})", path=run.path,
                    hint="exclude this run (--bids-filter-file, --task, --session-label) or stop before the GLM "
                    "with --stop-after preproc")
            if not config.print_trials:
                check_dummy_scans(config.dummy_scans, info)
            if run.events is None:
                raise InputMissingError(
                    f"No events file for {run.path.name}", path=run.path,
                    hint="add the run's _events.tsv, filter the run out (--bids-filter-file / --task), or use "
                    "--stop-after preproc",
                )
            trials = build_trials_table([(run.events, dict(run.entities))], events_map=events_map,
                                        stimuli_dir=stimuli_dir, include_ignore=config.print_trials)
            run_rules = trials.attrs.get("runs", [])
            rules.extend(run_rules)
            # dropped or cut-short events go in this run's notes: the GLM sidecar and the report show them
            notes = run_rules[-1].setdefault("notes", []) if run_rules else None
            trials = check_events_within_run(trials, n_volumes=info.n_volumes, tr=tr, path=run.events,
                                             notes=notes)
            trials_parts.append(trials)
        trials_table = pd.concat(trials_parts, ignore_index=True) if trials_parts else pd.DataFrame()
        trials_table.attrs = {"runs": rules}  # pd.concat drops attrs that differ between the parts
        out[subject] = SubjectInputs(subject, infos, trials_table, stimuli_dir)
        if needs_events and not config.print_trials:
            _check_trials(out[subject])
        if needs_stimuli:
            check_has_training_trials(out[subject])
            check_stimulus_images(out[subject].trials, stimuli_dir)
    if config.values.get("derivatives"):
        from .fmriprep import attach_fmriprep_inputs

        attach_fmriprep_inputs(out, config)
    return out


def check_dummy_scans(dummy_scans: int | None, info: RunInfo) -> None:
    """``--dummy-scans N`` leaves out the first N volumes of every run from the GLM: N at or near a run's length
    left the GLM of that run 1 volume, and the run stopped with 65 "Run 01 has only 1 volumes -> check the BOLD
    file" after the preprocessing of every run. The option is at fault, not the file: 64 now, before any step."""
    if dummy_scans is None or dummy_scans <= 0:
        return
    left = info.n_volumes - min(int(dummy_scans), info.n_volumes - 1)  # the GLM keeps at least one (interfaces/glm)
    if left >= MIN_GLM_VOLUMES:
        return
    raise UsageError(
        f"--dummy-scans {dummy_scans} leaves {left} of the {info.n_volumes} volumes of {info.bold.path.name}: too "
        f"few for the single-trial GLM (at least {MIN_GLM_VOLUMES})", path=info.bold.path,
        hint=f"--dummy-scans counts the non-steady-state volumes at the start of each run (usually 0-10); give at "
        f"most {max(info.n_volumes - MIN_GLM_VOLUMES, 0)} for this run, or leave the option out to detect them")


#: sidecar keys whose value m2i computes with: a duplicate with another value is an error, not a warning
TIMING_KEYS = ("RepetitionTime", "SliceTiming")


def check_sidecar_duplicate_keys(bold_paths: list[Path], bids_dir: Path) -> None:
    """Sidecars on the inheritance path of the runs (``*_bold.json`` from BIDS_DIR down to each run's folder)
    that name a key twice with different values (two JSON files merged by hand, a key added that was there).

    pybids (as Python's json) keeps the last value without a word: ``"RepetitionTime": 2.0`` first in the file
    and 3.0 further down gave "TR mismatch: the sidecar says 3.0 s" for a file whose reader sees 2.0 first, and
    a run whose header agreed with the last value went on with whichever value came last. Now a timing key
    (:data:`TIMING_KEYS`) is 65 naming the file, the key and the values; any other key a warning."""
    import json

    folders: list[Path] = []
    for path in bold_paths:
        folder = path.parent
        while folder not in folders:
            folders.append(folder)
            if folder == bids_dir or bids_dir not in folder.parents:
                break
            folder = folder.parent
    for folder in folders:
        for sidecar in sorted(folder.glob("*_bold.json")):
            duplicates: list[tuple[str, list]] = []

            def pairs(items, found=duplicates):
                values: dict[str, list] = {}
                for key, value in items:
                    values.setdefault(key, []).append(value)
                found.extend((k, v) for k, v in values.items() if len(v) > 1 and any(x != v[0] for x in v))
                return {k: v[-1] for k, v in values.items()}

            try:
                json.loads(sidecar.read_text(encoding="utf-8"), object_pairs_hook=pairs)
            except (OSError, ValueError, RecursionError):  # unreadable or not JSON: index_dataset says so
                continue
            for key, values in duplicates:
                shown = " and then ".join(json.dumps(v) for v in values)
                if key in TIMING_KEYS:
                    raise BadDataError(f"{sidecar} gives {key} twice, with different values: {shown}", path=sidecar,
                                       hint=f"keep one {key} (JSON keys must be unique; readers keep the last)")
                LOGGER.warning("%s gives %s twice, with different values (%s): the last is used", sidecar, key, shown)


def drop_resting_state_runs(selected: dict[str, list]) -> dict[str, list]:
    """Resting-state runs (BIDS ``task-rest``, no events by definition) are left out of a run that models trials,
    with a warning: most datasets hold one, and each stopped the whole participant with 66 "No events file"
    unless the user filtered it out. A participant left with no run keeps them (the 66 then names the run)."""
    kept: dict[str, list] = {}
    for subject, runs in selected.items():
        rest = [run for run in runs if run.events is None and run.entities.get("task", "").lower() == "rest"]
        others = [run for run in runs if run not in rest]
        if rest and others:
            LOGGER.warning("sub-%s: %d resting-state run(s) without events left out (%s); single-trial betas need "
                           "events", subject, len(rest), ", ".join(run.path.name for run in rest[:3]))
            kept[subject] = others
        else:
            kept[subject] = runs
    return kept


def _check_trials(inputs: SubjectInputs) -> None:
    trials = inputs.trials
    if trials.empty or not (trials["role"] == "trial").any():
        raise BadDataError(
            f"No trials found in the events of sub-{inputs.subject}; looked at:\n"
            + describe_events_looked_at(trials.attrs.get("runs", []), inputs.stimuli_dir.parent),
            hint="a trial is a row whose role column has one of the trial values of its rule (the --events-map "
            "[task.<label>] `trial = [...]`, or the built-in profile) and that names a stimulus; check the "
            "trial_type (role column) values above against the events map, and the stimulus column. "
            "`m2i BIDS_DIR OUT participant --print-trials` shows what was read (docs/events.md)",
        )


def describe_events_looked_at(runs: list[dict], bids_dir: Path, limit: int = 6) -> str:
    """One line per events file read: its path relative to BIDS_DIR, the rule, the role column's values and
    what they became (for the "No trials found" message: the user sees which values to map)."""
    lines = []
    for run in runs[:limit]:
        source = Path(run.get("source", "?"))
        try:
            shown = source.absolute().relative_to(Path(bids_dir).absolute())
        except ValueError:
            shown = source.name
        seen = run.get("looked_at") or {}
        values = sorted(seen.get("role_values", {}).items(), key=lambda kv: -kv[1])
        value_text = ", ".join(f"{v!r} x{n}" for v, n in values[:8]) + (", ..." if len(values) > 8 else "")
        roles = seen.get("roles", {})
        parts = [f"rule {run.get('rule', '?')}", f"{seen.get('n_rows', '?')} rows"]
        if seen.get("role_column"):
            parts.append(f"column {seen['role_column']!r}: {value_text or 'no rows'}")
            if seen.get("trial_values"):
                parts.append(f"trial values {list(seen['trial_values'])}")
            else:  # auto-detection: rest/fixation-like words are ignored, cue/response-like ones nuisance
                parts.append(f"trials: other values with a stimulus in column {seen.get('stimulus_column')!r}")
        parts.append("roles " + ", ".join(f"{k} {v}" for k, v in roles.items()))
        if seen.get("no_stimulus"):
            parts.append(f"{seen['no_stimulus']} trial row(s) without a stimulus in column "
                         f"{seen.get('stimulus_column')!r}")
        lines.append(f"  {shown}: " + "; ".join(parts))
    if len(runs) > limit:
        lines.append(f"  ... and {len(runs) - limit} more events file(s)")
    return "\n".join(lines) or "  no events file"


def check_has_training_trials(inputs: SubjectInputs) -> None:
    """Decoding trains on perception trials with a stimulus: a participant with only imagery runs (or
    perception events without a stimulus column) stopped the run with 65 at the decoding stage, after its
    preprocessing and GLM. Said now (65), naming the participant and what to do."""
    from ..decoding.splits import stimulus_identity

    trials = inputs.trials
    if trials.empty or "condition" not in trials.columns:
        return
    rows = trials[trials["role"] == "trial"] if "role" in trials.columns else trials
    perception = rows[rows["condition"].astype(str) == "perception"]
    if len(perception) and (stimulus_identity(perception) != "n/a").any():
        return
    conditions = ", ".join(sorted(set(rows["condition"].astype(str)))) or "none"
    raise BadDataError(
        f"sub-{inputs.subject} has no perception trials with a stimulus (its trials' conditions: {conditions}): "
        "the decoder has nothing to train on",
        hint="select perception runs of this participant too, stop before decoding with --stop-after glm, or "
        "check the condition/stimulus columns (m2i --print-trials)")


def check_models_early(config: Config) -> None:
    """Check the models folder the decoding stage will need, before hours of preprocessing and GLM.

    Sizes, tensor shapes and forbidden (pickle/code) files are checked; sha256 is left to the loaders,
    which verify it anyway (hashing real weights takes minutes).
    """
    purposes = []
    if "clip" in (config.values.get("target") or []):
        purposes.append("clip")
    if config.values.get("generator") == "unclip":
        purposes.append("unclip")
    from ..models.store import check_models, resolve_models_dir

    if purposes:
        check_models(resolve_models_dir(config.values.get("models_dir")), purposes, verify_hashes=False)
    check_metric_models_early(config.resolved_models_dir)


def check_metric_models_early(models_dir: Path | None) -> None:
    """The networks of the feature metrics, which the evaluation step loads from any models folder given
    (:func:`bids_m2i.evaluation.feature_spaces.load_feature_extractors`), even for ``--target pixels``: a
    damaged, unreadable or hand-edited folder stopped the run at that last step, after all the others."""
    from ..models.store import MANIFEST_NAME, check_models, check_not_a_file, check_readable, read_manifest

    if models_dir is None:
        return
    check_not_a_file(models_dir)  # else 66 "Cannot read <file>/manifest.json: permission denied" (ENOTDIR)
    check_readable(models_dir / MANIFEST_NAME, models_dir)
    if not (models_dir / MANIFEST_NAME).is_file():
        return  # no folder (no metrics) or one without a manifest: read as it is, as the evaluation does
    manifest = read_manifest(models_dir)
    components, roles = manifest["components"], manifest.get("roles", {})
    # the components the evaluation loads: the CLIP metric (else the decoding CLIP) and every eval network
    clip = next((roles[r] for r in ("clip_metric", "clip_features") if roles.get(r) in components), None)
    needed = [name for name in components if name == clip or name.startswith("eval/")]
    if needed:
        check_models(models_dir, components=needed, verify_hashes=False)


def check_stimulus_images(trials: pd.DataFrame, stimuli_dir: Path) -> None:
    """Every image decoding will read exists under ``stimuli/`` (exit 66) and is a readable image (exit 65).

    Decoding reads them only after preprocessing and the GLM: a missing or broken image must stop the run
    now, not hours later. The rows checked are those decoding trains and tests on
    (:func:`bids_m2i.bids.stimuli.trials_needing_images`), for every profile, map and auto-detected rule.
    """
    from PIL import UnidentifiedImageError

    from ..utils.images import open_stimulus
    from .stimuli import check_decoding_stimuli, resolve_stimulus_path, trials_needing_images

    if trials.empty or "stim_file" not in trials.columns:
        return
    check_decoding_stimuli(trials, stimuli_dir, trials.attrs.get("runs"))
    needed = trials_needing_images(trials)
    for stim_file in dict.fromkeys(needed["stim_file"]):
        path = resolve_stimulus_path(stimuli_dir, stim_file)
        kind = NOT_IMAGES.get(path.suffix.lower())
        if kind:
            raise not_an_image_error(path, kind, needed, trials, stim_file)
        try:
            with open_stimulus(path) as img:  # an image too large to read safely: 65 naming it
                img.verify()  # reads the whole file: catches truncation, not only a bad header
        except PermissionError:
            raise unreadable_input_error(path) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise BadDataError(
                f"Stimulus image {path} cannot be read: {exc}", path=path,
                hint="replace it with a complete PNG/JPEG (re-export or re-download it)",
            ) from exc


#: Stimulus files of other senses that events name in ``stim_file`` (auditory localizers, movie runs): by
#: extension, so that the message says what they are instead of "re-export or re-download" a file that is fine.
NOT_IMAGES = {**dict.fromkeys((".wav", ".mp3", ".flac", ".ogg", ".oga", ".aac", ".m4a", ".aif", ".aiff", ".wma",
                               ".opus"), "a sound"),
              **dict.fromkeys((".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".m4v", ".flv"),
                              "a video"),
              **dict.fromkeys((".txt", ".csv", ".tsv", ".json", ".html", ".pdf", ".doc", ".docx"),
                              "a text or document")}


def not_an_image_error(path: Path, kind: str, needed: pd.DataFrame, trials: pd.DataFrame, stim_file: str):
    """65 for a trial whose ``stim_file`` is a sound, video or text: the task is not one of seen or imagined
    images (an auditory localizer, a movie run), yet its trials were taken as perception trials to decode."""
    tasks = sorted({str(t) for t in needed.loc[needed["stim_file"] == stim_file, "task"]}) if "task" in needed else []
    others = sorted({str(t) for t in trials.get("task", pd.Series(dtype=str))} - set(tasks))
    where = f" (task {', '.join(tasks)})" if tasks else ""
    select = (f"select the tasks with images, e.g. --task {' '.join(others)}" if others
              else "select the tasks with images with --task")
    return BadDataError(
        f"Stimulus {path}{where} is {kind} file, not an image: m2i decodes images that were seen or imagined, and "
        "the trials naming it would be decoded as images", path=path,
        hint=f"{select}; or make these rows nuisance events or ignored with an --events-map section for that task "
        "(docs/events.md); or run with --stop-after glm",
    )

