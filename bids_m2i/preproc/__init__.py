"""Preprocessing engines on arrays (no nipype, no BIDS): head motion, one participant grid, masks, confounds.

Conventions (motion parameters, transforms, units): ``docs/preprocessing.md`` and
:mod:`bids_m2i.preproc.transforms`.

The names below are loaded on first use (PEP 562): importing one engine module (``bids_m2i.preproc.motion``)
does not import the others' dependencies (pandas for the confounds), which keeps a process that only
realigns and resamples ~0.2 s faster to start.
"""

from __future__ import annotations

_EXPORTS = {
    "MotionResult": "motion", "estimate_motion": "motion", "register_rigid": "motion",
    "resample_to_grid": "resample", "compose_transforms": "transforms", "compute_brain_mask": "masks",
    "register_runs_to_first": "grid", "participant_brain_mask": "grid", "references_on_grid": "grid",
    "compute_confounds": "confounds",
    "compute_dvars": "confounds", "confounds_sidecar": "confounds", "framewise_displacement": "confounds",
    "global_signal": "confounds", "detect_nonsteady_volumes": "nonsteady", "PARAM_NAMES": "transforms",
    "grid_centre": "transforms", "params_from_matrix": "transforms", "rigid_matrix": "transforms",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # the first access to a package-level name loads the engine modules (fixed names, no dynamic import);
    # ``import bids_m2i.preproc.motion`` alone never gets here
    from . import confounds, grid, masks, motion, nonsteady, resample, transforms

    modules = {"confounds": confounds, "grid": grid, "masks": masks, "motion": motion, "nonsteady": nonsteady,
               "resample": resample, "transforms": transforms}
    value = getattr(modules[_EXPORTS[name]], name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
