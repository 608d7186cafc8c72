"""One grid per participant: register every run's reference to the first run's, then one brain mask.

Typical use (the workflow does these steps in separate nodes)::

    motion = [estimate_motion(data_r, affine_r) for each run r]
    to_run = register_runs_to_first([m.reference for m in motion], [affine_r ...])
    bold_r = resample_to_grid(data_r, affine_r, compose_transforms(motion_r.transforms, to_run[r]),
                              affines[0], motion[0].reference.shape)
    mask = participant_brain_mask([bold_r.mean(axis=3) for each run])
"""

from __future__ import annotations

import numpy as np

from .masks import compute_brain_mask
from .motion import register_rigid


def register_runs_to_first(references, affines, *, n_threads: int = 1, device: str = "cpu") -> list[np.ndarray]:
    """Rigid transforms from the participant grid (first run's reference) to every run's reference.

    Parameters
    ----------
    references : sequence of (X_r, Y_r, Z_r) run references (e.g. ``MotionResult.reference``), first = target.
    affines : matching (4, 4) affines.

    Returns
    -------
    list of (4, 4) pull transforms participant world -> run-reference world; the first is the identity.
    """
    if len(references) != len(affines) or not references:
        raise ValueError("need one affine per reference and at least one reference")
    out = [np.eye(4)]
    for ref, aff in zip(references[1:], affines[1:]):
        out.append(register_rigid(ref, aff, references[0], affines[0], n_threads=n_threads, device=device))
    return out


def participant_brain_mask(mean_images) -> np.ndarray:
    """One brain mask from the mean of the runs' mean images (all on the participant grid) -> (X, Y, Z) bool."""
    stack = np.stack([np.nan_to_num(np.asarray(m, dtype=np.float64)) for m in mean_images], axis=0)
    return compute_brain_mask(stack.mean(axis=0))
