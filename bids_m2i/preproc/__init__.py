"""Preprocessing engines on arrays (no nipype, no BIDS): head motion, one participant grid, masks, confounds.

Conventions (motion parameters, transforms, units): ``docs/preprocessing.md`` and
:mod:`bids_m2i.preproc.transforms`.
"""

from .confounds import compute_confounds, compute_dvars, confounds_sidecar, framewise_displacement, global_signal
from .grid import participant_brain_mask, register_runs_to_first
from .masks import compute_brain_mask
from .motion import MotionResult, estimate_motion, register_rigid
from .nonsteady import detect_nonsteady_volumes
from .resample import resample_to_grid
from .transforms import PARAM_NAMES, compose_transforms, grid_centre, params_from_matrix, rigid_matrix

__all__ = [
    "MotionResult", "estimate_motion", "register_rigid", "resample_to_grid", "compose_transforms",
    "compute_brain_mask", "register_runs_to_first", "participant_brain_mask", "compute_confounds", "compute_dvars", "confounds_sidecar", "framewise_displacement",
    "global_signal", "detect_nonsteady_volumes", "PARAM_NAMES", "grid_centre", "params_from_matrix", "rigid_matrix",
]
