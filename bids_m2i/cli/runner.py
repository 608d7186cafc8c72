"""What one ``m2i`` run does, in order: check paths, prepare the output and work dirs, validate, select the
data, check it before any long step, then build and run the nipype workflow (participant) or the group
summary (group)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from ..config import Config, write_resolved_config
from ..errors import InputMissingError, OutputCreateError, UsageError

LOGGER = logging.getLogger("m2i.cli")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_paths(config: Config) -> None:
    """Usage errors about folders, before anything is written (exit 64/66)."""
    from ..bids.layout import check_dataset_root

    bids_dir, output_dir = config.bids_dir, config.output_dir
    check_dataset_root(bids_dir)
    if output_dir.resolve() == bids_dir.resolve():
        raise UsageError("OUTPUT_DIR is the same folder as BIDS_DIR: the input dataset is never modified",
                         hint="give another OUTPUT_DIR, e.g. BIDS_DIR/derivatives/m2i")
    if _inside(bids_dir, output_dir):
        raise UsageError("BIDS_DIR is inside OUTPUT_DIR", hint="give an OUTPUT_DIR outside the input dataset")
    work_dir = Path(config.work_dir)
    if _inside(work_dir, bids_dir) and not _inside(work_dir, bids_dir / "derivatives"):
        raise UsageError(f"The work dir {work_dir} is inside BIDS_DIR {bids_dir}",
                         hint="use -w/--work-dir outside the input dataset (the input is never modified)")
    for name in ("events_map", "bids_filter_file", "roi_mask"):
        value = config.values.get(name)
        if value is not None and not Path(value).exists():
            raise InputMissingError(f"--{name.replace('_', '-')} file not found: {value}", path=value)
    for folder in config.values.get("derivatives") or []:
        if not Path(folder).is_dir():
            raise InputMissingError(f"--derivatives folder not found: {folder}", path=folder,
                                    hint="give the fMRIPrep output folder (holding its dataset_description.json)")
    if "unclip" == config.values["generator"] and "clip" not in config.values["target"]:
        raise UsageError("--generator unclip needs --target clip (or `--target pixels clip`)")


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


def prepare_work_dir(config: Config) -> Path:
    work_dir = Path(config.work_dir).absolute()
    if config.clean_workdir and work_dir.exists():
        LOGGER.info("Emptying the work dir %s (--clean-workdir)", work_dir)
        shutil.rmtree(work_dir, ignore_errors=True)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        probe = work_dir / ".m2i-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise OutputCreateError(f"Cannot write to the work dir {work_dir}: {exc.strerror}", path=work_dir,
                                hint="choose a writable folder with -w/--work-dir") from exc
    return work_dir


def limit_threads(config: Config) -> None:
    """Threads per process never exceed --omp-nthreads (itself capped by --nprocs)."""
    n = str(config.n_threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = n
    try:
        import torch

        torch.set_num_threads(config.n_threads)
        torch.set_num_interop_threads(1)
    except (ImportError, RuntimeError):  # interop threads can only be set once per process
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


def run(config: Config, on_log_file: Callable[[Path], None] | None = None) -> int:
    from ..bids.derivatives import initialize_output_dataset
    from ..utils.logs import add_file_logging

    check_paths(config)
    if config.analysis_level == "participant" and config.shared_decoder:
        from ..workflows.shared import check_shared_decoders

        check_shared_decoders(config)  # mismatched feature spaces: exit 64 before anything is written
    output_dir = config.output_dir.absolute()
    if config.analysis_level == "group" and not (output_dir / "dataset_description.json").exists():
        raise InputMissingError(f"{output_dir} holds no participant results yet",
                                hint="run the participant level first")
    initialize_output_dataset(output_dir, config.bids_dir)
    timestamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    log_file = add_file_logging(output_dir / "logs" / f"m2i-{config.analysis_level}-{timestamp}.log").baseFilename
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
    if config.print_trials:
        from ..bids.events import summarize_trials

        for subject, subject_inputs in inputs.items():
            print(f"sub-{subject}")
            print(summarize_trials(subject_inputs.trials))
        return 0

    check_memory_budget(config, inputs)
    from ..workflows.base import run_participant_workflows

    run_participant_workflows(config, inputs, work_dir)
    LOGGER.info("Done: results in %s", output_dir)
    return 0


