"""Assemble a simulated dataset: stimuli, protocol, brain, acquisition, BIDS files and ground truth."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import OutputCreateError, UsageError
from . import bids_writer as writer
from . import brain as brain_mod
from . import stimuli as stim_mod
from .motion import MovingHeadSampler
from ..utils.atomic import save_png, write_tsv
from .presets import get_preset
from .protocol import build_protocol, target_path
from .scanner import simulate_run, slice_times

log = logging.getLogger("m2i.simulate")

# independent random streams: switching motion or noise off leaves every other draw unchanged
_STREAMS = {"stimuli": 0, "brain": 1, "design": 2, "amplitudes": 3, "noise": 4, "motion": 5, "offsets": 6,
            "anatomy": 7}

# a participant's brain scale stays within these bounds: the head must still fit in the field of view
BRAIN_SCALE_RANGE = (0.88, 1.12)


def brain_scale(cfg: dict, seed: int, index: int) -> float:
    """Linear size of participant ``index``'s head and brain relative to the preset's.

    Brains differ in size (and visual areas in extent) between people, so a shared-subject decoder must map
    differing voxel counts without a common template. Participant 01 (index 0) keeps the preset's size, so a
    one-participant dataset is unchanged; the others draw ``exp(N(0, brain_size_sd))`` (clipped to
    ``BRAIN_SCALE_RANGE``) from their own stream, leaving every other random draw unchanged. The brain mask
    then holds ``scale**3`` times as many voxels and the visual regions ``scale**3`` times as many responsive
    voxels.
    """
    sd = float(cfg.get("brain_size_sd", 0.0))
    if index == 0 or sd <= 0:
        return 1.0
    draw = float(np.exp(_rng(seed, "anatomy", index).normal(0.0, sd)))
    return float(np.clip(draw, *BRAIN_SCALE_RANGE))


def _rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAMS[stream], *keys]))


def simulate_dataset(output_dir, preset: str = "tiny", subjects=None, seed: int = 0, runs: int | None = None,
                     *, motion: bool = True, noise: bool = True, overwrite: bool = False, **overrides) -> Path:
    """Write a simulated BIDS dataset with its ground truth; return its path.

    Parameters
    ----------
    output_dir : folder to create (must be empty or absent, or a previous simulator output with
        ``overwrite=True``).
    preset : ``tiny`` | ``demo`` | ``nsd-like``.
    subjects : number of participants (labels ``01``...) or a list of labels; default from the preset.
    seed : same seed and parameters -> byte-identical files.
    runs : perception runs per session (default from the preset).
    motion, noise : switch head motion / all noise off (the other random draws stay the same).
    overrides : any preset parameter (see ``presets.py``), e.g. ``imagery_runs=2, slice_timing=False``.
    """
    cfg = get_preset(preset, perception_runs=runs, **overrides)
    if subjects is None:
        subjects = cfg["subjects"]
    labels = [f"{s + 1:02d}" for s in range(int(subjects))] if isinstance(subjects, (int, np.integer)) else [
        str(s).removeprefix("sub-") for s in subjects]
    if not labels:
        raise UsageError("No participants to simulate", hint="use --subjects 1 or more")
    root = _prepare_output(Path(output_dir), overwrite)

    stim = _make_stimuli(cfg, seed)
    writer.write_dataset_files(root, cfg, labels, seed)
    writer.write_stimuli(root, {n: stim["images"][n] for n in stim["seen"]},
                         [stim["rows"][n] for n in stim["seen"]], stim_mod.STIMULI_COLUMNS_HELP)
    writer.write_truth_description(root, cfg, seed)
    truth = root / writer.TRUTH_DIR
    for name in stim["novel"]:
        save_png(truth / "targets" / f"{name}.png", _to_pil(stim["images"][name]))
    targets = pd.DataFrame([{**stim["rows"][n], "target_file": target_path(n), "kind": "novel"}
                            for n in stim["novel"]])
    write_tsv(truth / "targets" / "targets.tsv", targets)
    for index, label in enumerate(labels):
        _simulate_subject(root, cfg, seed, index, label, stim, motion=motion, noise=noise)
    log.info("simulated dataset written to %s", root)
    return root


def _to_pil(array):
    """uint8 array -> PIL image (for save_png)."""
    from PIL import Image

    return Image.fromarray(array)


def _prepare_output(root: Path, overwrite: bool) -> Path:
    if root.exists() and any(root.iterdir()):
        description = root / "dataset_description.json"
        is_ours = False
        if description.exists():
            try:
                generated = json.loads(description.read_text()).get("GeneratedBy", [])
                is_ours = any(g.get("Name") == "m2i-simulate" for g in generated)
            except (ValueError, AttributeError):
                is_ours = False
        if not overwrite or not is_ours:
            raise UsageError(f"Output folder {root} is not empty", path=root,
                             hint="choose a new folder" + (", or pass --overwrite to replace this simulated "
                                                           "dataset" if is_ours else ""))
        shutil.rmtree(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputCreateError(f"Cannot create the output folder {root}: {exc.strerror or exc}", path=root,
                                hint="choose a folder you can write to") from exc
    return root


def _make_stimuli(cfg: dict, seed: int) -> dict:
    """Draw and render every image: seen (train + test) and novel (pure-imagination targets)."""
    rng = _rng(seed, "stimuli")
    n_seen = cfg["n_train"] + cfg["n_test"]
    seen = [f"img-{k + 1:04d}" for k in range(n_seen)]
    novel = [f"nov-{k + 1:04d}" for k in range(cfg["n_novel"])]
    params = {name: stim_mod.draw_image_params(rng, name) for name in seen + novel}
    images = {name: stim_mod.render_image(p, cfg["image_size"], noise_seed=seed * 100003 + i)
              for i, (name, p) in enumerate(params.items())}
    order = rng.permutation(n_seen)
    test = sorted(seen[i] for i in order[: cfg["n_test"]])
    train = sorted(seen[i] for i in order[cfg["n_test"]:])
    rows = {name: stim_mod.params_row(p) for name, p in params.items()}
    return {"params": params, "images": images, "rows": rows, "seen": seen, "novel": novel,
            "train": train, "test": test}


def _simulate_subject(root: Path, cfg: dict, seed: int, index: int, label: str, stim: dict, *,
                      motion: bool, noise: bool) -> None:
    rng_brain = _rng(seed, "brain", index)
    geometry = brain_mod.Geometry(tuple(cfg["shape"]), float(cfg["voxel_mm"]))
    affine = geometry.affine
    scale = brain_scale(cfg, seed, index)
    head = brain_mod.HeadModel(geometry, rng_brain, scale=scale)
    brain_mask = head.brain_mask(geometry)
    volume = scale ** 3  # visual areas grow with the brain
    roi, pole = brain_mod.visual_regions(geometry, head, brain_mask, int(round(cfg["n_early"] * volume)),
                                         int(round(cfg["n_higher"] * volume)))
    model = brain_mod.build_voxel_model(rng_brain, geometry, roi, pole, cfg)
    kernels = brain_mod.hrf_kernels(model.hrf)
    coil = np.exp(cfg["coil_sd"] * brain_mod.smooth_field(rng_brain, geometry.shape, sigma_vox=6.0)[0])
    sampler = MovingHeadSampler(affine, geometry.shape, head.psf_fine_grid(geometry), brain_mask)

    # stimulus drive of every voxel by every image, standardised over all images
    names = stim["seen"] + stim["novel"]
    images = np.stack([stim["images"][n] for n in names])
    features = brain_mod.stimulus_features_for([stim["params"][n] for n in names])
    text_cue = stim_mod.render_text_cue(cfg["image_size"])
    raw = brain_mod.stimulus_drive(model, np.concatenate([images, text_cue[None]]),
                                   np.concatenate([features, features.mean(0, keepdims=True)]),
                                   cfg["feature_resolution"])
    z = brain_mod.standardise_drive(raw, raw[: len(names)])
    z_by_name = dict(zip(names, z[: len(names)]))

    stim_info = {n: {"category": stim["rows"][n]["category"], "description": stim["rows"][n]["description"]}
                 for n in names}
    runs = build_protocol(_rng(seed, "design", index), cfg, stim["train"], stim["test"], stim["novel"], stim_info)
    tr = float(cfg["tr"])
    offsets = slice_times(geometry.shape[2], tr) if cfg["slice_timing"] else None
    rng_amp = _rng(seed, "amplitudes", index)
    rng_offsets = _rng(seed, "offsets", index)
    session_offset: dict = {}
    amplitude_tables: dict = {}
    for run_index, run in enumerate(runs):
        if run.session not in session_offset:
            first = not session_offset
            scale = np.array([cfg["session_offset_mm"]] * 3 + [np.deg2rad(cfg["session_offset_deg"])] * 3)
            session_offset[run.session] = np.zeros(6) if first else rng_offsets.normal(0, 1, 6) * scale
            run_offset = np.zeros(6)
        else:
            scale = np.array([cfg["run_offset_mm"]] * 3 + [np.deg2rad(cfg["run_offset_deg"])] * 3)
            run_offset = rng_offsets.normal(0, 1, 6) * scale
        drives = brain_mod.event_drives(rng_amp, model, run.events, z_by_name, z[-1], cfg)
        data, pose = simulate_run(
            run=run, geometry=geometry, sampler=sampler, brain_mask=brain_mask, model=model, kernels=kernels,
            drives=drives, coil=coil, cfg=cfg, tr=tr, slice_offsets=offsets,
            rng_noise=_rng(seed, "noise", index, run_index), rng_motion=_rng(seed, "motion", index, run_index),
            motion_offset=session_offset[run.session] + run_offset, with_motion=motion, with_noise=noise)
        writer.write_run(root, label, run, data, affine, tr, offsets)
        writer.write_truth_run(root, label, run, pose)
        amplitudes = brain_mod.true_amplitudes(kernels, drives, run.events["duration"].to_numpy())
        table = run.events.copy()
        table.insert(0, "run", run.run)
        table.insert(1, "session", run.session or "n/a")
        amplitude_tables.setdefault((run.session, run.task), []).append((table, amplitudes))

    for (session, task), parts in amplitude_tables.items():
        table = pd.concat([p[0] for p in parts], ignore_index=True)
        table.insert(0, "trial_index", np.arange(len(table)))
        # which decoding split the target belongs to: training image, held-out test image, novel target
        table["split"] = np.where(table["stimulus"].isin(stim["test"]), "test",
                                  np.where(table["stimulus"].str.startswith("nov-"), "novel", "train"))
        values = np.concatenate([p[1] for p in parts])
        volume = np.zeros((*geometry.shape, len(table)), dtype=np.float32)
        volume[model.ijk[:, 0], model.ijk[:, 1], model.ijk[:, 2]] = values.T
        writer.write_truth_amplitudes(root, label, session, task, table, volume, affine)
    writer.write_truth_subject(root, label, affine, brain_mask, roi, _voxel_table(model), model.weights,
                               brain_mod.HIGHER_FEATURE_NAMES)


def _voxel_table(model) -> pd.DataFrame:
    table = pd.DataFrame({"i": model.ijk[:, 0], "j": model.ijk[:, 1], "k": model.ijk[:, 2], "role": model.role,
                          "prf_x": model.prf_x, "prf_y": model.prf_y, "prf_size": model.prf_size,
                          "base": model.base, "spread": model.spread, "imagery_gain": model.imagery_gain,
                          "trial_noise": model.trial_noise})
    for key, values in model.hrf.items():
        table[f"hrf_{key}"] = values
    return table.round(6)
