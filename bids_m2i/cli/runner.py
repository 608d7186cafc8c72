"""What one ``m2i`` run does, in order: check paths, prepare the output and work dirs, validate, select the
data, check it before any long step, then build and run the nipype workflow (participant) or the group
summary (group)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from ..config import SETTINGS_FILE_HINT, Config, write_resolved_config
from ..errors import InputMissingError, OutputCreateError, UsageError
from ..utils.openmp import set_openmp_wait
from ..utils.paths import check_readable, is_inside

LOGGER = logging.getLogger("m2i.cli")


def check_roi_mask(path: Path) -> None:
    """--roi-mask must be a readable 3-D NIfTI with at least one voxel inside (exit 65), checked at startup:
    otherwise the run would stop only after preprocessing and the GLM, at the first decoding node."""
    import nibabel as nib
    import numpy as np

    from ..errors import BadDataError

    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj)
    except Exception as exc:  # nibabel raises several kinds for a file that is not an image
        raise BadDataError(f"--roi-mask {path} cannot be read as a NIfTI image ({exc})", path=path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadDataError(f"--roi-mask {path} is {data.ndim}-D (shape {data.shape}); a 3-D mask is needed",
                           path=path)
    if not np.any(data > 0):
        raise BadDataError(f"--roi-mask {path} is empty: no voxel is above 0", path=path,
                           hint="give a mask whose ROI voxels are 1 (or any value above 0) on the participant grid")


def check_is_folder_or_absent(path: Path, name: str) -> None:
    """OUTPUT_DIR or the work dir given as an existing regular file is a usage error (64); a path below a file
    cannot be created (73). Both said before anything is written, naming the file: mkdir's bare "File exists" /
    "Not a directory" did not say what was wrong."""
    path = Path(path)
    for candidate in (path, *path.absolute().parents):
        if candidate.is_dir():
            return
        if candidate.is_symlink() and not candidate.exists():
            # `ln -s /scratch/$USER/out out` before the scratch folder exists, or after a scratch purge: it was
            # called "an existing file, not a folder". Its target is not created: it may be a file system that
            # is not mounted on this node
            target = os.readlink(candidate)
            raise OutputCreateError(f"{name} {path} cannot be created: {candidate} is a symbolic link to {target}, "
                                    "which does not exist", path=path, hint="create the link's target first "
                                    f"(mkdir -p {target}), or give the folder itself")
        if candidate.exists() or candidate.is_symlink():
            hint = "give a folder (new or existing); m2i never replaces a file by a folder"
            if candidate == path:
                raise UsageError(f"{name} {path} is an existing file, not a folder", path=path, hint=hint)
            raise OutputCreateError(f"{name} {path} cannot be created: {candidate} is a file, not a folder",
                                    path=path, hint=hint)


def check_paths(config: Config) -> None:
    """Usage errors about folders, before anything is written (exit 64/66)."""
    from ..bids.layout import check_dataset_root

    bids_dir, output_dir = config.bids_dir, config.output_dir
    check_dataset_root(bids_dir)
    writes = not (config.print_trials and config.analysis_level == "participant")  # --print-trials writes nothing
    if writes:
        check_is_folder_or_absent(output_dir, "OUTPUT_DIR")
        check_is_folder_or_absent(Path(config.work_dir), "The work dir (-w/--work-dir)")
    if output_dir.resolve() == bids_dir.resolve():
        raise UsageError("OUTPUT_DIR is the same folder as BIDS_DIR: the input dataset is never modified",
                         hint="give another OUTPUT_DIR, e.g. BIDS_DIR/derivatives/m2i")
    if is_inside(bids_dir, output_dir):
        raise UsageError("BIDS_DIR is inside OUTPUT_DIR", hint="give an OUTPUT_DIR outside the input dataset")
    if is_inside(output_dir, bids_dir) and not is_inside(output_dir, bids_dir / "derivatives"):
        # BIDS_DIR/m2i_out or BIDS_DIR/sub-01/out: the run wrote into the input dataset, and the next run indexed
        # its desc-preproc_bold files as raw runs (65 "Two BOLD files of sub-01 have the same entities")
        raise UsageError(f"OUTPUT_DIR {output_dir} is inside BIDS_DIR {bids_dir}: the input dataset is never "
                         "modified", hint=f"give OUTPUT_DIR outside it, or under its derivatives/ folder "
                         f"({bids_dir / 'derivatives' / 'm2i'})")
    work_dir = Path(config.work_dir)
    if is_inside(work_dir, bids_dir) and not is_inside(work_dir, bids_dir / "derivatives"):
        raise UsageError(f"The work dir {work_dir} is inside BIDS_DIR {bids_dir}",
                         hint="use -w/--work-dir outside the input dataset (the input is never modified)")
    if work_dir.resolve() == output_dir.resolve():
        raise UsageError(f"The work dir is OUTPUT_DIR ({output_dir}): nipype's files would fill the derivatives "
                         "dataset", hint="give -w/--work-dir a folder of its own, e.g. OUTPUT_DIR/../work")
    if is_inside(work_dir, output_dir):
        # `-w OUTPUT_DIR/work`: its files (the pybids index, lock files, nipype's folders) made the derivatives
        # dataset fail the BIDS validator (NOT_INCLUDED, EMPTY_FILE), and a group level would read them
        raise UsageError(f"The work dir {work_dir} is inside OUTPUT_DIR {output_dir}: nipype's files would go "
                         "into the derivatives dataset", hint="give -w/--work-dir a folder beside it, e.g. "
                         f"{output_dir.parent / 'work'}")
    if config.clean_workdir:
        # --clean-workdir deletes the work dir: never with the input or the results inside it (`-w .` run from
        # the project folder deleted the dataset)
        for name, folder in (("BIDS_DIR", bids_dir), ("OUTPUT_DIR", output_dir)):
            if is_inside(folder, work_dir):
                raise UsageError(f"--clean-workdir would delete {name} ({folder}): it is inside the work dir "
                                 f"{work_dir}", hint="give -w/--work-dir a folder of its own (e.g. ./work)")
        if work_dir.is_dir():
            check_work_dir_is_ours(work_dir.absolute())
    for name in ("events_map", "bids_filter_file", "roi_mask", "captions"):
        value = config.values.get(name)
        if value is not None:
            check_readable(value, hint=SETTINGS_FILE_HINT)  # 66 "Cannot read", not 64 from the reader, nor "not found" behind a closed folder
            if not Path(value).exists():
                raise InputMissingError(f"--{name.replace('_', '-')} file not found: {value}", path=value)
            if name in ("roi_mask", "captions") and Path(value).is_dir():
                # as --config/--events-map/--bids-filter-file say (utils/text.py); their readers said 66 "file not
                # found" (the folder is there: the user checks the spelling) and 65 "Cannot work out file type"
                raise UsageError(f"--{name.replace('_', '-')} {value} is a folder, not a file", path=value,
                                 hint="give the path of the file itself")
    if config.values.get("roi_mask") is not None and config.values.get("stop_after", "decode") == "decode":
        check_roi_mask(Path(config.values["roi_mask"]))
    if config.values.get("captions") is not None and config.values.get("stop_after", "decode") == "decode":
        from ..decoding.text import read_caption_file

        read_caption_file(config.values["captions"])  # a binary file: 65 now, not at the decoding stage
    for folder in config.values.get("derivatives") or []:
        if Path(folder).is_file():
            # e.g. fMRIPrep's dataset_description.json or a .html report given for its folder: "folder not found"
            # sent the user to check the spelling of a path that is there
            raise UsageError(f"--derivatives {folder} is a file, not a folder", path=folder,
                             hint=f"give the fMRIPrep output folder holding it ({Path(folder).parent})")
        if not Path(folder).is_dir():
            raise InputMissingError(f"--derivatives folder not found: {folder}", path=folder,
                                    hint="give the fMRIPrep output folder (holding its dataset_description.json)")
        # fMRIPrep's outputs are an input too: OUTPUT_DIR given as that folder replaced fMRIPrep's
        # dataset_description.json by m2i's and wrote into its sub-*/func (exit 0); the work dir there filled it
        for name, path, option, example in (("OUTPUT_DIR", output_dir, "OUTPUT_DIR", "m2i"),
                                            ("The work dir (-w/--work-dir)", work_dir, "-w/--work-dir", "work")):
            if is_inside(path, folder):
                same = Path(path).resolve() == Path(folder).resolve()
                raise UsageError(f"{name} {path} is {'the' if same else 'inside the'} --derivatives folder {folder}: "
                                 "fMRIPrep's outputs are never modified",
                                 hint=f"give {option} a folder of its own, e.g. "
                                 f"{Path(folder).resolve().parent / example}")
    if "unclip" == config.values["generator"] and "clip" not in config.values["target"]:
        raise UsageError("--generator unclip needs --target clip (or `--target pixels clip`)")
    if (config.values.get("candidates") or 1) < 1:
        raise UsageError("--candidates must be 1 or more")
    if (config.values.get("permutations") or 0) < 0:
        raise UsageError("--permutations must be 0 or more")
    if writes:
        from ..bids.derivatives import check_output_dir_is_ours

        if output_dir.resolve() == (bids_dir / "derivatives").resolve():
            raise UsageError(f"OUTPUT_DIR {output_dir} is BIDS_DIR's derivatives folder, which holds the outputs of "
                             "every pipeline", hint=f"give m2i a folder of its own there: {output_dir / 'm2i'}")
        check_output_dir_is_ours(output_dir)


def redirect_caches(work_dir: Path) -> None:
    """Every cache (matplotlib, torch, HF, nipype) goes to the work dir; nothing is downloaded."""
    cache = work_dir / ".cache"
    for sub in ("matplotlib", "torch", "huggingface", "nipype", "xdg"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    os.environ["MPLCONFIGDIR"] = str(cache / "matplotlib")
    os.environ["TORCH_HOME"] = str(cache / "torch")
    os.environ["HF_HOME"] = str(cache / "huggingface")
    os.environ["XDG_CACHE_HOME"] = str(cache / "xdg")
    os.environ["NIPYPE_CONFIG_DIR"] = str(cache / "nipype")
    os.environ.setdefault("NIPYPE_NO_ET", "1")  # no version check over the network
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


#: what m2i itself puts in a work dir: --clean-workdir empties only a folder holding nothing else (or marked)
WORK_DIR_MARKER = ".m2i-workdir"
#: every run holds a shared lock on this file while it runs; --clean-workdir needs it exclusively
WORK_DIR_IN_USE = ".m2i-in-use"
#: a write probe per process (its pid in the name): jobs starting at once on one -w must not delete each
#: other's probe between its write and its unlink (that raced as "No such file or directory", exit 73)
WORK_DIR_PROBE_PREFIX = ".m2i-write-test"
#: one lock file per participant being processed (``locks/sub-<label>.lock``)
PARTICIPANT_LOCKS = "locks"
WORK_DIR_ENTRIES = {WORK_DIR_MARKER, WORK_DIR_IN_USE, WORK_DIR_PROBE_PREFIX, PARTICIPANT_LOCKS, ".cache", "m2i_wf", "pybids_db", "trials", "errors",
                    "features", "report", "candidates", "group", "shared"}


def _foreign_entries(work_dir: Path) -> set[str]:
    """Names in the work dir that m2i does not make (empty when the folder cannot be listed)."""
    try:
        entries = {p.name for p in work_dir.iterdir()}
    except OSError:
        return set()
    entries = {WORK_DIR_PROBE_PREFIX if name.startswith(WORK_DIR_PROBE_PREFIX) else name for name in entries}
    return entries - WORK_DIR_ENTRIES


def check_work_dir_is_ours(work_dir: Path) -> None:
    """--clean-workdir deletes the folder: refuse one that holds files m2i did not make (a home folder, a
    project folder given as ``-w .``), exit 64. The marker vouches for a folder m2i made (its later contents:
    m2i's only); it is never written into a folder that held other files (:func:`prepare_work_dir`)."""
    foreign = _foreign_entries(work_dir)
    if not foreign or (work_dir / WORK_DIR_MARKER).exists():
        return
    shown = ", ".join(sorted(foreign)[:5])
    raise UsageError(f"--clean-workdir: {work_dir} holds files m2i did not make ({shown}); not emptying it",
                     path=work_dir, hint="give -w/--work-dir a folder of its own (e.g. ./work), or delete "
                     "what you no longer need yourself")


#: work dir -> open file holding this process's lock on it (kept open for the process's lifetime)
_WORK_DIR_LOCKS: dict[Path, object] = {}


def lock_work_dir(work_dir: Path, *, exclusive: bool):
    """Take this process's lock on the work dir: shared for a run, exclusive (without waiting) to empty it.

    The jobs of a job array often share -w and pass --clean-workdir: a job starting later emptied the folder
    under a running one, which then failed in a step. flock is per host (and on NFS/Lustre mounted with
    locks, across nodes); where locks are not supported, the run goes on without one.
    """
    from ..utils.locks import LockBusy, try_lock

    previous = _WORK_DIR_LOCKS.pop(work_dir, None)
    if previous is not None:  # this process's own earlier run on this work dir
        previous.close()
    try:
        # shared: wait (only an emptying run holds it exclusively, for a moment); exclusive: never wait
        handle = try_lock(work_dir / WORK_DIR_IN_USE, shared=not exclusive, wait=not exclusive)
    except LockBusy:
        raise UsageError(f"--clean-workdir: another m2i run is using the work dir {work_dir}; not emptying it",
                         path=work_dir, hint="give each job its own -w (e.g. -w work/sub-$LABEL), or drop "
                         "--clean-workdir while other jobs run") from None
    if handle is None:  # not ours to lock (the checks below say why), or a file system without locks
        return None
    _WORK_DIR_LOCKS[work_dir] = handle
    return handle


def prepare_work_dir(config: Config) -> Path:
    work_dir = Path(config.work_dir).absolute()
    if config.clean_workdir and work_dir.exists():
        check_work_dir_is_ours(work_dir)
        handle = lock_work_dir(work_dir, exclusive=True)
        LOGGER.info("Emptying the work dir %s (--clean-workdir)", work_dir)
        for entry in work_dir.iterdir():
            if entry.name == WORK_DIR_IN_USE:
                continue  # the lock file stays: a new file would be a new, unlocked one
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if handle is not None:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_SH)  # emptied: other runs may use it with this one (a downgrade)
    try:
        # the marker lets --clean-workdir empty the folder later: never put it in a folder that already holds
        # files m2i did not make (`-w .` in a project folder; the files there would go with the next clean)
        foreign = work_dir.is_dir() and bool(_foreign_entries(work_dir))
        work_dir.mkdir(parents=True, exist_ok=True)
        if work_dir not in _WORK_DIR_LOCKS:
            lock_work_dir(work_dir, exclusive=False)
        probe = work_dir / f"{WORK_DIR_PROBE_PREFIX}-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink(missing_ok=True)
        marker = work_dir / WORK_DIR_MARKER
        if foreign and not marker.exists():
            LOGGER.warning("The work dir %s holds files m2i did not make: m2i uses it, but --clean-workdir will "
                           "not empty it (give -w a folder of its own, e.g. ./work)", work_dir)
        elif not marker.exists():
            marker.write_text("A work dir of m2i: --clean-workdir may empty this folder.\n")
    except OSError as exc:
        raise OutputCreateError(f"Cannot write to the work dir {work_dir}: {exc.strerror}", path=work_dir,
                                hint="choose a writable folder with -w/--work-dir") from exc
    return work_dir


@contextlib.contextmanager
def participants_locked(work_dir: Path, subjects: list[str]):
    """Hold an exclusive lock per participant in the work dir while its workflow runs.

    Two runs of one participant in one work dir at once (a job resubmitted while the first still runs, a label
    twice in an array, two --space runs sharing -w) run the same nipype nodes in the same folders: each
    deletes and rewrites the other's results, and both may publish a mix. The second run is refused (64) at
    start-up, naming the participant. Where the file system has no locks, runs go on without this check."""
    from ..utils.locks import LockBusy, release, try_lock

    folder = Path(work_dir) / PARTICIPANT_LOCKS
    handles = []
    try:
        try:
            folder.mkdir(exist_ok=True)
        except OSError:
            yield
            return
        for subject in subjects:
            try:
                handle = try_lock(folder / f"sub-{subject}.lock")
            except LockBusy:
                raise UsageError(
                    f"Another m2i run is processing sub-{subject} in the work dir {work_dir}",
                    path=work_dir, hint="wait for it to end (rerunning then reuses its finished steps), or give "
                    "this run its own -w/--work-dir; one job per participant (docs/hpc.md)") from None
            if handle is not None:  # None: a file system without locks
                handles.append(handle)
        yield
    finally:
        for handle in handles:
            # nipype's workers (forked while it was held) share this open file, and after a failed run they may
            # outlive it in this process: release() unlocks before closing
            release(handle)


def limit_threads(config: Config) -> None:
    """Threads per process never exceed --omp-nthreads (itself capped by --nprocs)."""
    n = str(config.n_threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = n
    set_openmp_wait()  # before torch loads: idle threads sleep instead of spinning on shared cores
    # torch reads OMP_NUM_THREADS when it loads; set it here only if this process has loaded it already
    # (importing torch just for this cost the main process seconds, the whole of a fully cached rerun)
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(config.n_threads)
            torch.set_num_interop_threads(1)
        except RuntimeError:  # interop threads can only be set once per process
            pass


# what a process needs before any data: python, numpy, torch and nipype imported
BASE_PROCESS_GB = 0.6
# copies of one run that motion correction and resampling hold at once (raw, resampled, float work arrays)
PREPROC_RUN_COPIES = 3


def check_memory_budget(config: Config, inputs: dict) -> None:
    """Say before starting when --mem-gb cannot hold the largest run (exit 64), instead of failing hours later.

    The single-trial GLM then keeps within the budget by processing voxels in chunks, and checks its own
    needs again with the exact design (``bids_m2i.glm.estimate.estimate_memory``).
    """
    budget = config.memory_gb
    largest, name = 0.0, ""
    for subject_inputs in inputs.values():
        for run in subject_inputs.runs:
            n_voxels = 1
            for size in run.shape:
                n_voxels *= int(size)
            gb = n_voxels * run.n_volumes * 4 / 1024**3
            if gb > largest:
                largest, name = gb, run.bold.path.name
    needed = BASE_PROCESS_GB + PREPROC_RUN_COPIES * largest
    if needed > budget:
        raise UsageError(
            f"--mem-gb {budget:g} is too small: preprocessing the largest run ({name}, {largest:.2f} GB as float32) "
            f"needs about {needed:.1f} GB",
            hint=f"raise --mem-gb to at least {needed:.1f} (or run on a machine with more memory)",
        )


def print_trials(config: Config) -> int:
    """``--print-trials``: read the events, print each participant's trials summary, exit 0.

    Writes nothing anywhere (no OUTPUT_DIR, logs, resolved config, work dir or pybids database): it is a look
    at the input, possible on a read-only or not-yet-existing output folder.
    """
    from ..bids.events import summarize_trials
    from ..bids.inputs import collect_inputs

    limit_threads(config)  # process settings only: nothing written
    inputs = collect_inputs(config, Path(config.work_dir).absolute())
    for subject, subject_inputs in inputs.items():
        print(f"sub-{subject}")
        print(summarize_trials(subject_inputs.trials))
    return 0


def check_participant_folders_writable(output_dir: Path, subjects: list[str]) -> None:
    """Folders of the selected participants left by an earlier run of another user (a shared project folder)
    must be writable now (exit 73), not when the first result is published after the preprocessing."""
    for subject in subjects:
        root = Path(output_dir) / f"sub-{subject}"
        if (root.exists() or root.is_symlink()) and not root.is_dir():
            # a file in its place failed only when the first result was published, after the preprocessing (74)
            raise OutputCreateError(f"Cannot write the results of sub-{subject}: {root} is a file, not a folder",
                                    path=root, hint="move it away (m2i writes sub-<label>/ folders in OUTPUT_DIR), "
                                    "or choose another OUTPUT_DIR")
        if not root.is_dir():
            continue
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OutputCreateError(
                    f"Cannot write into {folder} (made by an earlier run, not writable by uid {os.getuid()})",
                    path=folder, hint="make it writable for this user (or its group), remove it, or choose "
                    "another OUTPUT_DIR")


def check_generator_has_its_target(config: Config) -> None:
    """``--generator pixels`` (the default) draws the decoded pixels: without ``--target pixels`` (``--target
    clip`` alone) it stopped the decoding stage with 65, after the preprocessing and the GLM. A usage error
    (64), said before any step (after the models and inputs checks, whose messages come first)."""
    targets = list(config.values["target"])
    if config.values["generator"] == "pixels" and "pixels" not in targets and config.stop_after == "decode":
        raise UsageError(f"--generator pixels (the default) needs --target pixels; --target is {' '.join(targets)}",
                         hint=f"use `--target pixels {' '.join(targets)}`, or `--generator unclip` with --target "
                         "clip (needs --models-dir)")


def warn_about_unused_decoding_options(config: Config) -> None:
    """Say when a decoding option set by the user does nothing with the chosen generator or targets: ignored
    without a word, ``--candidates 4`` with ``--generator pixels`` let the user believe the images were the
    best of 4. A warning, not an error: a config file shared by several runs may set them for all."""
    if config.stop_after != "decode":
        return
    candidates = config.values.get("candidates") or 1
    if candidates > 1 and config.values["generator"] != "unclip":
        LOGGER.warning("--candidates %d applies to --generator unclip only: --generator %s makes one image per "
                       "item", candidates, config.values["generator"])
    if config.values.get("captions") is not None and not {"text", "clip-text"} & set(config.values["target"]):
        LOGGER.warning("--captions is read for --target text or clip-text only (the caption bank): ignored with "
                       "--target %s", " ".join(config.values["target"]))


# nipype plugins that name their cluster jobs after os.environ["LOGNAME"] (a KeyError without it)
PLUGINS_NEEDING_LOGNAME = {"slurm", "sge", "pbs", "lsf", "oar", "condor"}


def check_plugin_environment(config: Config) -> None:
    """Give nipype's batch plugins the LOGNAME they read, before anything runs.

    Batch jobs, containers and `env -i` often start without LOGNAME; nipype's SLURM (SGE, PBS, ...) plugin
    then fails on its first submission with a bare KeyError. LOGNAME is only the prefix of the job names,
    so USER or the account of this uid (the passwd database) is as good; exit 64 if neither is known.
    """
    if config.analysis_level != "participant" or str(config.plugin).lower() not in PLUGINS_NEEDING_LOGNAME:
        return
    if os.environ.get("LOGNAME"):
        return
    name = os.environ.get("USER")
    if not name:
        import pwd

        try:
            name = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:  # an arbitrary uid (docker run --user 12345) has no passwd entry
            name = None
    if not name:
        raise UsageError(
            f"nipype's {config.plugin} plugin needs LOGNAME (it names the jobs it submits after it), and neither "
            f"LOGNAME nor USER is set, nor has uid {os.getuid()} a user name",
            hint="export LOGNAME=<your user name> (or USER) before running m2i",
        )
    os.environ["LOGNAME"] = name
    LOGGER.info("LOGNAME was not set: using %r for the names of nipype's %s jobs", name, config.plugin)


def run_tag(config: Config) -> str:
    """The participants of a run, for its log and config file names: the tasks of a job array start in
    the same second and write to the same logs folder, so each must get files of its own."""
    labels = list(config.values.get("participant_label") or [])
    if config.analysis_level != "participant" or not labels:
        return ""
    shown = "+".join(labels[:3]) + ("+more" if len(labels) > 3 else "")
    return f"_sub-{shown}"


def reserve_run_names(logs_dir: Path, level: str, stamp: str, tag: str) -> tuple[Path, str]:
    """This run's log file, created empty under a name no other run holds, and the name part
    (``<stamp>[-n]<tag>``) its resolved config file shares.

    Jobs of one second with the same participants (an array over sessions or tasks, ``--bids-filter-file``
    per job, two group jobs) appended to one log and replaced each other's config: the second one gets
    ``<stamp>-2``, and so on. The name is taken with O_EXCL, so two processes cannot both get it."""
    for n in range(1, 1000):
        name = stamp if n == 1 else f"{stamp}-{n}"
        path = logs_dir / f"m2i-{level}-{name}{tag}.log"
        if (logs_dir / f"config-{name}{tag}.toml").exists():
            continue
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        except OSError:  # not writable: the log handler says so with its own error
            return path, f"{name}{tag}"
        return path, f"{name}{tag}"
    return logs_dir / f"m2i-{level}-{stamp}-{os.getpid()}{tag}.log", f"{stamp}-{os.getpid()}{tag}"


class RunFootprint:
    """What a group run finds in OUTPUT_DIR and the work dir before it writes, so that a failed one can take
    back what it created (its log and config, logs/, .bidsignore, a rewritten dataset_description.json, new
    files under group/, the summaries in group/ it replaced, a new work dir) and keep whatever existed: a failed
    group run left logs/ and partial files that looked like results."""

    def __init__(self, output_dir: Path, work_dir: Path, summaries: list[str] | None = None):
        self.output_dir, self.work_dir = Path(output_dir), Path(work_dir).absolute()
        self.existed = {path: path.exists() for path in (
            self.output_dir, self.output_dir / "logs", self.output_dir / ".bidsignore",
            self.output_dir / "group", self.work_dir)}
        description = self.output_dir / "dataset_description.json"
        try:
            self.description = description.read_bytes()
        except OSError:
            self.description = None
        self.group_files = set(self._files(self.output_dir / "group"))
        # the summaries of the last group run (tables and pages: small): a rerun rewrites them one after the
        # other, and one that failed half-way left a new metrics table beside the old page of fewer participants
        # (``summaries``: the names this run writes; a group run of another --space may rewrite its own meanwhile)
        self.summaries = {}
        for path in (self.output_dir / "group").glob("*"):
            if summaries is not None and path.name not in summaries:
                continue
            with contextlib.suppress(OSError):
                if path.is_file() and not path.is_symlink():
                    self.summaries[path] = path.read_bytes()
        self.run_files: list[Path] = []  # this run's log and resolved config

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        return [p for p in folder.rglob("*") if not p.is_dir()] if folder.is_dir() else []

    def undo(self, keep_log: bool = False) -> None:
        """Remove what this run created (best effort: never raises). ``keep_log`` keeps the log file (and its
        folder) of an unexpected failure: its traceback is what to report."""
        for path in self.run_files:
            if not (keep_log and path.suffix == ".log"):
                with contextlib.suppress(OSError):
                    path.unlink()
        for path in set(self._files(self.output_dir / "group")) - self.group_files:
            with contextlib.suppress(OSError):
                path.unlink()
        for path, content in self.summaries.items():
            with contextlib.suppress(OSError):
                if not path.is_file() or path.read_bytes() != content:
                    from ..utils.atomic import write_bytes

                    write_bytes(path, content)
        description = self.output_dir / "dataset_description.json"
        with contextlib.suppress(OSError):
            if self.description is not None and description.read_bytes() != self.description:
                from ..utils.atomic import write_bytes

                write_bytes(description, self.description)
        if not self.existed[self.output_dir / ".bidsignore"]:
            with contextlib.suppress(OSError):
                (self.output_dir / ".bidsignore").unlink()
        for folder in (self.output_dir / "group", self.output_dir / "logs"):
            if not self.existed[folder]:
                _remove_empty_tree(folder)
        if not self.existed[self.work_dir]:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if not self.existed[self.output_dir]:
            _remove_empty_tree(self.output_dir)


def _remove_empty_tree(folder: Path) -> None:
    """Remove a folder and the empty folders in it, bottom up; a folder still holding a file stays."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()),
                      key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def sweep_temporaries_of_killed_runs(output_dir: Path, folders: list[str]) -> None:
    """Remove the half-written temporaries that killed runs (SIGKILL, out of memory) left in OUTPUT_DIR: its
    top level, logs/ and the folders this run writes (``sub-<label>/``, ``group/``). Those of live jobs stay
    (``utils.atomic.remove_stale_temporaries``)."""
    from ..utils.atomic import remove_stale_temporaries

    removed = remove_stale_temporaries(output_dir, recursive=False)
    removed += remove_stale_temporaries(output_dir / "logs", recursive=False)
    for name in folders:
        removed += remove_stale_temporaries(output_dir / name)
    if removed:
        shown = ", ".join(str(path.relative_to(output_dir)) for path in removed[:3])
        LOGGER.info("Removed %d half-written temporary file(s) left by an interrupted run (%s%s)", len(removed),
                    shown, ", ..." if len(removed) > 3 else "")


def run(config: Config, on_log_file: Callable[[Path], None] | None = None,
        on_footprint: Callable[[RunFootprint], None] | None = None) -> int:
    from ..bids.derivatives import initialize_output_dataset
    from ..utils.logs import add_file_logging

    check_paths(config)
    if config.print_trials and config.analysis_level == "participant":
        return print_trials(config)
    check_plugin_environment(config)
    if config.analysis_level == "participant":
        from ..workflows.base import check_plugin

        check_plugin(config)
    if config.analysis_level == "participant" and config.shared_decoder:
        from ..workflows.shared import check_shared_decoders

        check_shared_decoders(config)  # mismatched feature spaces: exit 64 before anything is written
    output_dir = config.output_dir.absolute()
    if config.analysis_level == "group" and not (output_dir / "dataset_description.json").exists():
        raise InputMissingError(f"{output_dir} holds no participant results yet",
                                hint="run the participant level first")
    footprint = None
    if config.analysis_level == "group":
        from ..workflows.group import group_output_names

        footprint = RunFootprint(output_dir, Path(config.work_dir), group_output_names(config.space_entities))
        if on_footprint:
            on_footprint(footprint)
    initialize_output_dataset(output_dir, config.bids_dir)
    log_path, timestamp = reserve_run_names(output_dir / "logs", config.analysis_level,
                                            time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), run_tag(config))
    if footprint is not None:
        footprint.run_files += [log_path, output_dir / "logs" / f"config-{timestamp}.toml"]
    log_file = add_file_logging(log_path).baseFilename
    if on_log_file:
        on_log_file(Path(log_file))
    write_resolved_config(config, output_dir / "logs", timestamp)
    work_dir = prepare_work_dir(config)
    redirect_caches(work_dir)
    limit_threads(config)
    from .. import __version__

    LOGGER.info("m2i %s: %s level on %s -> %s (work dir %s)", __version__, config.analysis_level,
                config.bids_dir, output_dir, work_dir)

    if config.analysis_level == "group":
        from ..workflows.group import run_group_level

        sweep_temporaries_of_killed_runs(output_dir, ["group"])

        if config.train_shared_decoder:
            from ..workflows.shared import run_shared_training, summary_possible

            run_shared_training(config, work_dir)
            if not summary_possible(config):
                return 0
        return run_group_level(config)

    if not config.skip_bids_validation and not config.print_trials:
        from ..bids.validation import validate_input_dataset

        validate_input_dataset(config.bids_dir)

    from ..bids.inputs import collect_inputs

    inputs = collect_inputs(config, work_dir)
    check_memory_budget(config, inputs)
    check_participant_folders_writable(output_dir, list(inputs))
    check_generator_has_its_target(config)
    warn_about_unused_decoding_options(config)
    from ..workflows.base import run_participant_workflows

    with participants_locked(work_dir, list(inputs)):
        sweep_temporaries_of_killed_runs(output_dir, [f"sub-{subject}" for subject in inputs])
        run_participant_workflows(config, inputs, work_dir)
    LOGGER.info("Done: results in %s", output_dir)
    return 0


