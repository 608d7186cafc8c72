"""Write the simulated raw BIDS dataset and its ``derivatives/simulation`` ground truth.

BOLD is stored as int16 without scaling (``scl_slope`` unset), as scanners export magnitude images: the
baseline is ~1000 units and the thermal noise sd ~10, so rounding to integers adds a negligible 0.3 units
of noise while halving the size of float32.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image

from .. import __version__
from ..utils.atomic import save_nifti, save_npy, save_png, write_json, write_text, write_tsv
from .motion import MOTION_COLUMNS
from .protocol import EVENT_COLUMNS, EVENTS_SIDECAR

BIDS_VERSION = "1.10.0"
TRUTH_DIR = Path("derivatives") / "simulation"


def prefix(subject: str, session: str | None) -> str:
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def func_dir(root: Path, subject: str, session: str | None) -> Path:
    path = root / f"sub-{subject}"
    if session:
        path = path / f"ses-{session}"
    return path / "func"


def run_stem(subject: str, session: str | None, task: str, run: str) -> str:
    return f"{prefix(subject, session)}_task-{task}_run-{run}"


def write_dataset_files(root: Path, cfg: dict, subjects: list[str], seed: int) -> None:
    """dataset_description.json, README, participants.tsv/json, task sidecars, .bidsignore."""
    write_json(root / "dataset_description.json", {
        "Name": f"bids_m2i simulated perception and imagery ({cfg['preset']})",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["bids_m2i simulator"],
        "GeneratedBy": [{"Name": "m2i-simulate", "Version": __version__,
                         "Description": f"preset {cfg['preset']}, seed {seed}"}],
    })
    write_text(root / "README", (
        f"Synthetic fMRI dataset of seeing and imagining, made by bids_m2i's simulator (preset "
        f"{cfg['preset']}, seed {seed}).\n\nTasks: perception (images shown ~3 s, NSD-like repeats) and "
        "imagery (a cue - the image flashed or a text description - then imagining it).\nThe ground truth "
        "(head motion, single-trial amplitudes, HRFs, voxel tuning, target images) is in "
        "derivatives/simulation/. See docs/simulator.md of bids_m2i for the model and its limits.\n"))
    participants = pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects], "species": "homo sapiens"})
    write_tsv(root / "participants.tsv", participants)
    write_json(root / "participants.json", {"species": {"Description": "Species of the (simulated) participant"}})
    for task, description in (("perception", "Viewing procedurally generated images (3 s each)"),
                              ("imagery", "Imagining an image after a cue: the image flashed (imagery from "
                                          "memory) or a text description (pure imagination)")):
        if task == "imagery" and not cfg.get("imagery_runs", 1):
            continue  # no imagery run: its top-level sidecars would fail the validator (SIDECAR_WITHOUT_DATAFILE)
        write_json(root / f"task-{task}_events.json", EVENTS_SIDECAR)
        write_json(root / f"task-{task}_bold.json", {"TaskName": task, "TaskDescription": description})
    # nothing non-standard in the raw dataset; derivatives/ is a dataset of its own
    write_text(root / ".bidsignore", "derivatives/\n")


def write_stimuli(root: Path, images: dict[str, np.ndarray], rows: list[dict], column_help: dict) -> None:
    for name, image in images.items():
        save_png(root / "stimuli" / f"{name}.png", Image.fromarray(image))
    write_tsv(root / "stimuli" / "stimuli.tsv", pd.DataFrame(rows))
    write_json(root / "stimuli" / "stimuli.json", {k: {"Description": v} for k, v in column_help.items()})


def bold_image(data: np.ndarray, affine: np.ndarray, tr: float) -> nib.Nifti1Image:
    """int16 NIfTI with both sform and qform set (scanner space) and TR in pixdim[4]."""
    values = np.clip(np.round(data), 0, np.iinfo(np.int16).max).astype(np.int16)
    image = nib.Nifti1Image(values, affine)
    header = image.header
    header.set_xyzt_units("mm", "sec")
    zooms = tuple(float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(0)))
    header.set_zooms(zooms + (float(tr),))
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    header["slice_end"] = data.shape[2] - 1
    return image


def write_run(root: Path, subject: str, run, data: np.ndarray, affine: np.ndarray, tr: float,
              slice_offsets: np.ndarray | None) -> Path:
    folder = func_dir(root, subject, run.session)
    stem = run_stem(subject, run.session, run.task, run.run)
    path = save_nifti(bold_image(data, affine, tr), folder / f"{stem}_bold.nii.gz")
    sidecar = {"RepetitionTime": tr, "TaskName": run.task}
    if slice_offsets is not None:
        sidecar["SliceTiming"] = [float(t) for t in slice_offsets]
        sidecar["SliceEncodingDirection"] = "k"
    write_json(folder / f"{stem}_bold.json", sidecar)
    write_tsv(folder / f"{stem}_events.tsv", run.events[EVENT_COLUMNS])
    return path


# ---------------------------------------------------------------------------------------------- truth
MOTION_SIDECAR = {
    "Description": "True head pose during each volume (at its mid-acquisition time). A head point p (RAS mm, "
                   "motion-free frame, grid centre = origin) is seen at x = R p + t, R = Rz(rot_z) Ry(rot_y) "
                   "Rx(rot_x). Poses include a small per-run (and per-session) repositioning offset.",
    **{c: {"Description": f"True {c.replace('_', ' ')}", "Units": "mm" if c.startswith("trans") else "rad"}
       for c in MOTION_COLUMNS},
}


def write_truth_description(root: Path, cfg: dict, seed: int) -> None:
    truth = root / TRUTH_DIR
    write_json(truth / "dataset_description.json", {
        "Name": "Ground truth of the bids_m2i simulation",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "m2i-simulate", "Version": __version__,
                         "CodeURL": "https://github.com/bids-m2i/bids_m2i",
                         "Description": f"preset {cfg['preset']}, seed {seed}"}],
        "SourceDatasets": [{"URL": "../../"}],
    })
    write_text(truth / "README", "Ground truth of a bids_m2i simulation: true head motion, single-event "
               "amplitudes, HRF parameters, voxel tuning and roles, target images (targets/ holds the "
               "pure-imagination targets). See docs/simulator.md of bids_m2i.\n")
    write_json(truth / "simulation.json", {"preset": cfg["preset"], "seed": seed, "version": __version__,
                                           "parameters": {k: v for k, v in cfg.items() if k != "preset"}})
    write_text(truth / ".bidsignore", "\n".join([
        "simulation.json", "targets", "*_statseries.nii.gz", "*_dseg.nii.gz", "*_table.tsv", "*_weights.npy",
        "*_weights.json", "*_mask.nii.gz", "*_events.tsv", "*_events.json", "*_timeseries.tsv",
        "*_timeseries.json", "*_statseries.json", "*_table.json", "*_dseg.tsv", "*_mask.json", "",
    ]))


def write_truth_run(root: Path, subject: str, run, pose: np.ndarray) -> None:
    folder = func_dir(root / TRUTH_DIR, subject, run.session)
    stem = run_stem(subject, run.session, run.task, run.run)
    write_tsv(folder / f"{stem}_desc-truemotion_timeseries.tsv",
              pd.DataFrame(np.round(pose, 8), columns=MOTION_COLUMNS))
    write_json(folder / f"{stem}_desc-truemotion_timeseries.json", MOTION_SIDECAR)


def write_truth_amplitudes(root: Path, subject: str, session: str | None, task: str, table: pd.DataFrame,
                           volume: np.ndarray, affine: np.ndarray) -> None:
    """4-D true amplitudes (one volume per modelled event, row i of the table = volume i)."""
    folder = func_dir(root / TRUTH_DIR, subject, session)
    stem = f"{prefix(subject, session)}_task-{task}"
    image = nib.Nifti1Image(volume.astype(np.float32), affine)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    save_nifti(image, folder / f"{stem}_stat-effect_desc-truth_statseries.nii.gz")
    write_json(folder / f"{stem}_stat-effect_desc-truth_statseries.json", {
        "Description": "True single-event amplitudes: peak % signal change of each event's response "
                       "(response = amplitude x (HRF * boxcar) scaled to peak 1). Volume i = row i of the "
                       "matching desc-truth_events.tsv (trials and cue events, all runs). Zero outside the "
                       "responsive (visual) voxels.",
        "Units": "percent signal change",
    })
    write_tsv(folder / f"{stem}_desc-truth_events.tsv", table)


def write_truth_subject(root: Path, subject: str, affine, brain_mask, roi, voxel_table: pd.DataFrame,
                        weights: np.ndarray, weight_names: list[str]) -> None:
    folder = func_dir(root / TRUTH_DIR, subject, None)
    for name, array in (("brain_mask", brain_mask.astype(np.uint8)), ("visual_dseg", roi.astype(np.uint8))):
        desc, suffix = name.split("_")
        image = nib.Nifti1Image(array, affine)
        image.set_sform(affine, code=1)
        image.set_qform(affine, code=1)
        save_nifti(image, folder / f"sub-{subject}_desc-{desc}_{suffix}.nii.gz")
    write_tsv(folder / f"sub-{subject}_desc-visual_dseg.tsv",
              pd.DataFrame({"index": [1, 2], "name": ["early", "higher"]}))
    write_tsv(folder / f"sub-{subject}_desc-voxels_table.tsv", voxel_table)
    save_npy(folder / f"sub-{subject}_desc-tuning_weights.npy", weights.astype(np.float32))
    write_json(folder / f"sub-{subject}_desc-tuning_weights.json", {
        "Description": "Tuning weights, one row per row of desc-voxels_table.tsv. Early voxels use the first 4 "
                       "columns (luminance, contrast energy, red-green, blue-yellow, pooled by the pRF); "
                       "higher voxels use all columns (image-level features).",
        "EarlyColumns": ["luminance", "contrast", "red_green", "blue_yellow"],
        "HigherColumns": weight_names,
    })
