"""Named parameter sets of the simulator: ``tiny`` (tests), ``demo`` (README), ``nsd-like`` (benchmarks).

Every key can be overridden by keyword in :func:`bids_m2i.simulate.simulate_dataset`.
Noise levels of ``demo`` are calibrated so that its visual voxels have an NSD-like median ncsnr
(measured values in ``docs/simulator.md``).
"""

from __future__ import annotations

import copy

from ..errors import UsageError

_COMMON = {
    # design (s)
    "tr": 2.0,
    "sessions": 1,
    "stim_duration": 3.0,
    "isi": 1.0,
    "blank_probability": 0.08,
    "lead_in": 8.0,
    "lead_out": 14.0,
    "cue_duration": 1.0,
    "cue_gap": 0.5,
    "imagery_duration": 4.0,
    "imagery_rest": (3.0, 6.0),
    "slice_timing": True,
    # brain model
    "brain_size_sd": 0.05,  # log-sd of a participant's linear head/brain size (participant 01 keeps 1.0)
    "response_base": 2.0,  # % signal change of a 3-s perception trial (median voxel)
    "response_spread": 0.8,  # stimulus-specific sd as a fraction of the base
    "trial_noise_ratio": 0.5,  # trial-to-trial sd as a fraction of the stimulus-specific sd
    "trial_gain_sd": 0.15,  # shared (attention) gain fluctuation across trials
    "imagery_gain_early": 0.20,
    "imagery_gain_higher": 0.50,
    "imagery_noise_factor": 0.6,  # x perception trial noise (absolute): imagery SNR is still 2-3x lower
    # noise (% signal change unless said)
    "n_global": 3,
    "physio_sd": 0.5,
    "ar_sd": 0.7,
    "ar_phi": 0.4,
    "thermal_sd": 8.0,  # scanner units (grey matter ~1150)
    "drift_pct": 1.5,
    "coil_sd": 0.12,  # log-sd of the coil sensitivity (bias field)
    # motion
    "drift_mm": 0.6,
    "drift_deg": 0.5,
    "jerk_mm": 1.5,
    "jerk_deg": 1.0,
    "jerks_per_minute": 0.5,
    "run_offset_mm": 0.3,
    "run_offset_deg": 0.2,
    "session_offset_mm": 2.0,
    "session_offset_deg": 2.0,
}

PRESETS = {
    "tiny": {
        **_COMMON,
        "shape": (16, 16, 10),
        "voxel_mm": 4.0,
        "image_size": 32,
        "feature_resolution": 16,
        "subjects": 1,
        "n_early": 60,
        "n_higher": 40,
        "n_train": 36,
        "train_repeats": 1,
        "n_test": 6,
        "test_repeats": 2,
        "perception_runs": 2,
        "imagery_runs": 1,
        "memory_trials": 4,
        "text_trials": 4,
        "n_novel": 4,
        "lead_in": 6.0,
        "lead_out": 12.0,
    },
    "demo": {
        **_COMMON,
        "shape": (32, 32, 20),
        "voxel_mm": 3.0,
        "image_size": 64,
        "feature_resolution": 32,
        "subjects": 1,
        "n_early": 400,
        "n_higher": 250,
        "n_train": 200,
        "train_repeats": 2,
        "n_test": 20,
        "test_repeats": 3,
        "perception_runs": 6,
        "imagery_runs": 2,
        "memory_trials": 20,
        "text_trials": 20,
        "n_novel": 10,
    },
    "nsd-like": {
        **_COMMON,
        "tr": 1.6,
        "shape": (80, 80, 56),
        "voxel_mm": 2.0,
        "image_size": 128,
        "feature_resolution": 32,
        "subjects": 1,
        "sessions": 2,
        "n_early": 2500,
        "n_higher": 2000,
        "n_train": 700,
        "train_repeats": 1,
        "n_test": 50,
        "test_repeats": 3,
        "perception_runs": 6,
        "imagery_runs": 2,
        "memory_trials": 50,
        "text_trials": 50,
        "n_novel": 25,
        "thermal_sd": 14.0,  # smaller voxels: lower thermal SNR (not calibrated)
    },
}


def get_preset(name: str, **overrides) -> dict:
    """The parameters of preset ``name`` with ``overrides`` applied (unknown keys are a usage error)."""
    if name not in PRESETS:
        raise UsageError(f"Unknown simulator preset {name!r}", hint=f"choose one of {', '.join(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[name])
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in cfg:
            raise UsageError(f"Unknown simulator parameter {key!r}",
                             hint=f"known parameters: {', '.join(sorted(cfg))}")
        cfg[key] = value
    cfg["preset"] = name
    return cfg
