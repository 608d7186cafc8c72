"""One grid per participant: register every run's reference to the first run's, then one brain mask.

Typical use (the workflow does these steps in separate nodes)::

    motion = [estimate_motion(data_r, affine_r) for each run r]
    to_run = register_runs_to_first([m.reference for m in motion], [affine_r ...])
    bold_r = resample_to_grid(data_r, affine_r, compose_transforms(motion_r.transforms, to_run[r]),
                              affines[0], motion[0].reference.shape)
    refs, coverage = references_on_grid([m.reference for m in motion], affines, to_run, affines[0], shape)
    mask = participant_brain_mask(refs, coverage)
"""

from __future__ import annotations

import logging

import numpy as np

from .masks import compute_brain_mask, dilate_mask, flatten_intensity
from .motion import register_rigid

log = logging.getLogger("m2i.preproc")

#: a run whose field of view leaves out more than this share of the other runs' brain mask is named in a warning
COVERAGE_WARNING_SHARE = 0.10


def register_runs_to_first(references, affines, *, device: str = "cpu") -> list[np.ndarray]:
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
    if len(references) == 1:
        return out
    # each reference with its smooth intensity field divided out (the coil sensitivity the head moved
    # through: masks.flatten_intensity); the cost mask is register_rigid's default (the brain dilated by 2
    # voxels), taken from the first reference as it is rather than flattened
    brain = compute_brain_mask(references[0])
    fixed = flatten_intensity(references[0], brain=brain)
    cost_mask = dilate_mask(brain, 2)
    for ref, aff in zip(references[1:], affines[1:]):
        out.append(register_rigid(flatten_intensity(ref), aff, fixed, affines[0], mask=cost_mask, device=device))
    return out


def participant_brain_mask(mean_images, coverage=None, run_names=None) -> np.ndarray:
    """One brain mask from all runs' mean (or reference) images on the participant grid -> (X, Y, Z) bool.

    Each image is scaled by its own typical in-head intensity first (runs of different sessions differ in
    scanner gain, and one bright run would otherwise decide the threshold alone). ``coverage``: optional
    per-run bool arrays of the grid voxels inside that run's field of view; the mask keeps only voxels every
    run covers, so that no masked voxel has a run of zeros in the GLM. A run whose field of view leaves out more
    than :data:`COVERAGE_WARNING_SHARE` of the brain is named in a warning (``run_names``, else its index): one
    short localizer-like or slab run otherwise shrank every session's mask without a word (QA pass 29).
    """
    images = [np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
              for m in mean_images]
    if not images:
        raise ValueError("participant_brain_mask needs at least one image")
    scaled = []
    for img in images:
        positive = img[img > 0]
        # mean of the voxels above the image mean: the head, whatever the field of view's share of air
        head = positive[positive > positive.mean()] if positive.size else positive
        scaled.append(img / head.mean() if head.size else img)
    brain = compute_brain_mask(np.mean(scaled, axis=0))
    mask = brain.copy()
    n_brain = int(brain.sum())
    for index, inside in enumerate(coverage or ()):
        inside = np.asarray(inside, dtype=bool)
        left_out = int((brain & ~inside).sum())
        if n_brain and left_out > COVERAGE_WARNING_SHARE * n_brain:
            name = run_names[index] if run_names and index < len(run_names) else f"run {index + 1}"
            log.warning("%s covers only %.0f%% of the participant's brain mask (%d of %d voxels): the mask keeps "
                        "only voxels every run covers, so every run's betas lose the rest; leave this run out "
                        "(--bids-filter-file) if it is a localizer or a partial acquisition", name,
                        100.0 * (n_brain - left_out) / n_brain, n_brain - left_out, n_brain)
        mask &= inside
    return mask


def references_on_grid(references, affines, run_to_reference, target_affine, target_shape, *,
                       n_threads: int = 1, device: str = "cpu") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every run's reference resampled onto the participant grid, and the grid voxels each run covers.

    ``run_to_reference``: the pull transforms of :func:`register_runs_to_first`.
    """
    from .resample import resample_to_grid

    on_grid, coverage = [], []
    for ref, aff, matrix in zip(references, affines, run_to_reference):
        # NaN marks the grid voxels outside the run's field of view (the run's own NaNs are zeroed first)
        values = resample_to_grid(np.asarray(ref, dtype=np.float32), aff, matrix, target_affine, target_shape,
                                  n_threads=n_threads, device=device, fill=np.nan)
        covered = np.isfinite(values)
        coverage.append(covered)
        on_grid.append(np.where(covered, values, 0.0).astype(np.float32))
    return on_grid, coverage
