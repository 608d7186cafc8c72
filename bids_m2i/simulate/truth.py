"""Read the ground truth of a simulated dataset (``derivatives/simulation``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ..errors import InputMissingError
from .motion import MOTION_COLUMNS

TRUTH_DIR = Path("derivatives") / "simulation"


def _read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def load_truth(dataset_dir, subject: str = "01") -> dict:
    """Ground truth of one participant.

    Returns
    -------
    dict with
      ``affine`` (4, 4); ``brain_mask`` (nx, ny, nz) bool; ``roi`` (nx, ny, nz) uint8 (1 early, 2 higher);
      ``voxels``: DataFrame, one row per responsive voxel (i j k role prf_* base spread imagery_gain
      trial_noise hrf_*); ``voxel_ijk`` (n_vox, 3) int; ``tuning_weights`` (n_vox, n_features);
      ``motion``: {(task, session, run): DataFrame trans_x..rot_z (mm, rad), one row per volume};
      ``design``: DataFrame of every modelled event (trials and cues) of every run, columns
      task session run trial_index onset duration trial_type stimulus stim_file cue cue_text category
      event_index role condition target_file split (strings except onset, duration);
      ``betas`` (n_design_rows, n_vox) float: true amplitude (peak % signal change) of each event in each
      responsive voxel, rows aligned with ``design``;
      ``target_files``: {stimulus: absolute Path of its image}; ``parameters``: the simulation parameters.
    """
    root = Path(dataset_dir)
    subject = str(subject).removeprefix("sub-")
    truth = root / TRUTH_DIR
    sub_dir = truth / f"sub-{subject}"
    if not sub_dir.is_dir():
        raise InputMissingError(f"No ground truth for sub-{subject} in {truth}", path=sub_dir,
                                hint="is this a dataset written by m2i-simulate? (derivatives/simulation/)")
    func = sub_dir / "func"
    result: dict = {}
    mask_img = nib.load(func / f"sub-{subject}_desc-brain_mask.nii.gz")
    result["affine"] = mask_img.affine
    result["brain_mask"] = np.asarray(mask_img.dataobj) > 0
    result["roi"] = np.asarray(nib.load(func / f"sub-{subject}_desc-visual_dseg.nii.gz").dataobj).astype(np.uint8)
    voxels = pd.read_csv(func / f"sub-{subject}_desc-voxels_table.tsv", sep="\t", na_values=["n/a"])
    result["voxels"] = voxels
    ijk = voxels[["i", "j", "k"]].to_numpy(int)
    result["voxel_ijk"] = ijk
    result["hrf"] = voxels[[c for c in voxels.columns if c.startswith("hrf_")]]
    result["tuning_weights"] = np.load(func / f"sub-{subject}_desc-tuning_weights.npy")

    motion = {}
    for path in sorted(sub_dir.rglob("*_desc-truemotion_timeseries.tsv")):
        entities = dict(part.split("-", 1) for part in path.name.split("_")[:-2] if "-" in part)
        key = (entities["task"], entities.get("ses"), entities["run"])
        motion[key] = pd.read_csv(path, sep="\t")[MOTION_COLUMNS]
    result["motion"] = motion

    tables, betas = [], []
    for path in sorted(sub_dir.rglob("*_desc-truth_events.tsv")):
        entities = dict(part.split("-", 1) for part in path.name.split("_")[:-2] if "-" in part)
        table = _read_tsv(path)
        table.insert(0, "task", entities["task"])
        table["onset"] = table["onset"].astype(float)
        table["duration"] = table["duration"].astype(float)
        stat = path.with_name(path.name.replace("_desc-truth_events.tsv", "_stat-effect_desc-truth_statseries.nii.gz"))
        data = np.asarray(nib.load(stat).dataobj)
        tables.append(table)
        betas.append(data[ijk[:, 0], ijk[:, 1], ijk[:, 2], :].T.astype(float))
    result["design"] = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    result["betas"] = np.concatenate(betas) if betas else np.zeros((0, len(ijk)))

    targets = {}
    for name in pd.unique(result["design"]["stimulus"]) if len(result["design"]) else []:
        rows = result["design"][result["design"]["stimulus"] == name]
        targets[name] = (root / rows["target_file"].iloc[0]).resolve()
    result["target_files"] = targets
    result["parameters"] = json.loads((truth / "simulation.json").read_text())
    return result


def load_image(path, size: int | None = None) -> np.ndarray:
    """An RGB image as float in [0, 1], shape ``(size, size, 3)`` (resized with a box filter if asked)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.BOX)
        return np.asarray(image, dtype=float) / 255.0
