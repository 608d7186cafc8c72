"""Simulated BIDS datasets of seeing and imagining, with ground truth (``m2i-simulate``).

Python API
----------
``simulate_dataset(output_dir, preset="tiny", subjects=None, seed=0, runs=None, *, motion=True, noise=True,
overwrite=False, **overrides) -> Path``
    Write a raw BIDS dataset (participants ``01``..., tasks ``perception`` and ``imagery``, events in the
    m2i native format, ``stimuli/`` with ``stimuli.tsv``) and its ground truth in
    ``derivatives/simulation/``. ``overrides`` are preset parameters (``presets.PRESETS``), e.g.
    ``slice_timing=False``, ``imagery_runs=2``, ``sessions=2``. Same arguments -> byte-identical files.
    ``motion=False`` / ``noise=False`` switch those parts off while every other random draw stays the same
    (so a motion-free twin of a dataset can be made).
``load_truth(dataset_dir, subject="01") -> dict``
    True motion per run, the design (every trial and cue event with role, condition, split), true
    amplitudes (``betas``: events x responsive voxels, peak % signal change), voxel table (roles, pRFs,
    HRF parameters, gains), tuning weights, brain mask, visual ROI, target image files.
``oracle_scores(dataset_dir, subject="01", image_size=32) -> dict``
    Ridge decoder from true amplitudes to pixels: PixCorr and 2-way identification on held-out perception,
    imagery from memory and pure imagination (the reference a decoder on estimated betas can approach).
``ncsnr(betas, labels)``, ``undo_motion(volume, affine, pose)``, ``rigid_matrix(pose)``: helpers.

Modules: ``stimuli`` (procedural images), ``protocol`` (runs and events), ``brain`` (head, voxels, HRFs,
amplitudes), ``motion`` (trajectories and resampling), ``scanner`` (acquisition of a run), ``bids_writer``,
``presets``, ``truth``, ``oracle``, ``cli``. Model and limits: ``docs/simulator.md``.
"""

from .dataset import simulate_dataset
from .motion import rigid_matrix, undo_motion
from .oracle import ncsnr, oracle_scores
from .truth import load_truth

__all__ = ["simulate_dataset", "load_truth", "oracle_scores", "ncsnr", "undo_motion", "rigid_matrix"]
