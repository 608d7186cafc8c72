"""Shared-subject decoder on BIDS derivatives: group-level training and the participant-level checks.

``m2i BIDS OUT group --train-shared-decoder`` reads every selected participant's betas (written by
``participant --stop-after glm``), takes each one's training perception trials (the same leak-free split as
the participant level) and trains one :class:`~bids_m2i.decoding.shared.SharedModel` per target, written to
``OUT/group/decoding/desc-shared<target>_model.safetensors`` (+ .json).

``m2i BIDS OUT participant --shared-decoder FILE [FILE ...]`` then fits only the participant's map into the
shared space (``bids_m2i.decoding.shared.participant_decoder``, called by ``bids_m2i.decoding.reconstruct``); :func:`check_shared_decoders` refuses mismatched feature
spaces before anything runs (exit 64).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..errors import BadDataError, InputMissingError, M2IError, OutputCreateError, ProcessingIOError, UsageError

LOGGER = logging.getLogger("m2i.group")


def shared_model_path(output_dir, target: str) -> Path:
    return Path(output_dir) / "group" / "decoding" / f"desc-shared{target}_model.safetensors"


def feature_info(target: str, models_dir=None) -> dict:
    """What, besides the dimension, must match between training and use of a shared decoder."""
    from ..decoding.reconstruct import PIXEL_COMPONENTS, PIXEL_SIZE, find_decoding_clip_dir

    if target == "pixels":
        return {"pixel_size": PIXEL_SIZE, "pixel_components": PIXEL_COMPONENTS}
    if models_dir is None:
        raise InputMissingError("--target clip needs a models folder",
                                hint="pass --models-dir or set M2I_MODELS_DIR (see docs/models.md)")
    return {"clip_model": find_decoding_clip_dir(models_dir).name}


def participant_betas(output_dir: Path, subject: str, glm_label: str, space: str | dict | None = None):
    """The brain mask and the (statseries, events) pairs of one participant's GLM outputs, or None.

    ``space`` is a label or the entities ``{"space", "cohort", "res"}`` (Config.space_entities): outputs of
    another resolution or cohort of the same template are another grid and are never mixed in. Without a
    cohort/res asked for, the first variant present (in name order) is used, as with fMRIPrep's files.
    """
    from ..bids.fmriprep import derivative_entities

    wanted = dict(space) if isinstance(space, dict) else ({"space": space} if space and space != "func" else {})
    sub_dir = Path(output_dir) / f"sub-{subject}"

    def variant(path: Path):
        ents = derivative_entities(path)
        if any(ents.get(k) != v for k, v in wanted.items()) or ("space" in ents) != ("space" in wanted):
            return None
        return tuple(ents.get(k, "") for k in ("cohort", "res"))

    masks: dict[tuple, Path] = {}
    for path in sorted(sub_dir.glob(f"func/sub-{subject}_*desc-brain_mask.nii.gz")):
        masks.setdefault(variant(path), path)
    series: dict[tuple, list] = {}
    for path in sorted(sub_dir.rglob(f"sub-{subject}_*stat-effect_desc-{glm_label}_statseries.nii.gz")):
        events = path.with_name(path.name.replace("_stat-effect_", "_").replace("_statseries.nii.gz", "_events.tsv"))
        if events.is_file():
            series.setdefault(variant(path), []).append((path, events))
        else:  # a job that died between the two writes: say why these trials are missing from the training
            LOGGER.warning("%s has no events table beside it (%s): its trials are left out; rerun the participant "
                           "level for sub-%s (--stop-after glm)", path.name, events.name, subject)
    for key in sorted(k for k in masks if k is not None and k in series):
        return masks[key], series[key]
    return None


def _participant_training(config, subject: str, found, extractors: dict, work_dir: Path) -> dict:
    """{target: ParticipantData} of one participant's training perception trials."""
    import nibabel as nib

    from ..decoding.features import stimulus_features
    from ..decoding.reconstruct import NA, require_images, resolve_images
    from ..decoding.shared import ParticipantData
    from ..decoding.splits import split_trials
    from ..interfaces.decoding import load_betas

    mask_path, pairs = found
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    betas, trials = load_betas([str(p) for p, _ in pairs], [str(e) for _, e in pairs], mask)
    for column in ("condition", "cue", "stimulus", "stim_file", "cue_text", "category"):
        if column not in trials:
            trials[column] = NA
        trials[column] = trials[column].astype(str).replace({"": NA, "nan": NA})
    split = split_trials(trials, seed=config.seed)
    train = trials.iloc[split.train]
    every_path = resolve_images(trials, Path(config.bids_dir) / "stimuli")
    paths = [every_path[i] for i in split.train]
    require_images(paths, train, f"sub-{subject} training perception trials")
    stimuli = train["stimulus"].to_numpy()
    out = {}
    for target, extractor in extractors.items():
        features = stimulus_features(paths, extractor, work_dir=work_dir)
        out[target] = ParticipantData(subject, betas[split.train], features, stimuli)
    return out


def run_shared_training(config, work_dir: Path) -> list[Path]:
    """Train and write one shared decoder per ``--target``; return the model paths."""
    import zlib

    import pandas as pd
    from nibabel.filebasedimages import ImageFileError

    from ..decoding.features import ClipExtractor, PixelExtractor
    from ..decoding.reconstruct import PIXEL_SIZE
    from ..decoding.shared import train_shared_model
    from .group import expected_participants

    start = time.monotonic()
    output_dir = Path(config.output_dir).absolute()
    participants = expected_participants(config)
    found, missing = {}, []
    for subject in participants:
        betas = participant_betas(output_dir, subject, config.glm_label, config.space_entities)
        if betas is None:
            missing.append(subject)
        else:
            found[subject] = betas
    if missing:
        LOGGER.warning("Shared decoder without %d participant(s) that have no %s betas yet: %s", len(missing),
                       config.glm, ", ".join(f"sub-{m}" for m in missing))
    if len(found) < 2:
        raise InputMissingError(
            f"A shared decoder needs the betas of at least 2 participants; found {len(found)} in {output_dir} "
            f"(sub-*/func/*_stat-effect_desc-{config.glm_label}_statseries.nii.gz)",
            hint="run `m2i BIDS OUT participant --stop-after glm` for each participant first (same --glm)")
    device = _engine_device(config)  # once, before any betas are read: --device cuda without a GPU is 64 now
    extractors, infos = {}, {}
    for target in config.target:
        infos[target] = feature_info(target, config.resolved_models_dir)
        if target == "pixels":
            extractors[target] = PixelExtractor(PIXEL_SIZE)
        else:
            from ..decoding.reconstruct import find_decoding_clip_dir

            extractors[target] = ClipExtractor(find_decoding_clip_dir(config.resolved_models_dir),
                                               device=device)
    data: dict[str, list] = {t: [] for t in config.target}
    failures: list[M2IError] = []
    for subject, betas in list(found.items()):
        # one participant's damaged outputs (a job killed half-way, a copy cut short) stopped everyone's training
        # with a message naming no one (or exit 1): it is left out as one without betas is
        try:
            items = _participant_training(config, subject, betas, extractors, work_dir)
        except (OutputCreateError, ProcessingIOError):
            raise  # our own writes (a full disk): nothing wrong with this participant
        except (BadDataError, InputMissingError) as exc:
            exc.message = f"sub-{subject}: {exc.message}"
            failures.append(exc)
        except (OSError, EOFError, zlib.error, ImageFileError, pd.errors.ParserError, pd.errors.EmptyDataError,
                UnicodeDecodeError) as exc:
            failures.append(BadDataError(
                f"sub-{subject}: its betas cannot be read ({type(exc).__name__}: {exc}) from "
                + ", ".join(p.relative_to(output_dir).as_posix() for p, _ in betas[1]),
                path=output_dir / f"sub-{subject}",
                hint=f"rerun the participant level for sub-{subject} (--stop-after glm, same --glm)"))
        else:
            for target, item in items.items():
                data[target].append(item)
            LOGGER.info("Shared decoder: sub-%s, %d training trials, %d voxels", subject,
                        len(data[config.target[0]][-1].betas), data[config.target[0]][-1].betas.shape[1])
            continue
        LOGGER.warning("Shared decoder without sub-%s: %s; rerun the participant level for sub-%s "
                       "(--stop-after glm)", subject, failures[-1].message, subject)
        del found[subject]
        missing.append(subject)
    if failures and len(found) < 2:
        raise failures[0]  # its own exit code and hint, naming the participant
    written = []
    for target in config.target:
        # no --top-k-voxels: each participant's count is chosen by CV ("auto"); 0: every voxel (None)
        top_k = "auto" if config.top_k_voxels is None else (config.top_k_voxels or None)
        model = train_shared_model(data[target], target, feature_info=infos[target], top_k=top_k,
                                   seed=config.seed, device=device,
                                   n_threads=config.n_threads, imagery=config.shared_imagery)
        model.settings["glm"] = config.glm
        model.info["missing_participants"] = missing
        # which trials: each participant's statseries (the rows are its training perception trials, split as
        # at the participant level)
        model.info["sources"] = {f"sub-{subject}": [p.relative_to(output_dir).as_posix() for p, _ in betas[1]]
                                 for subject, betas in found.items()}
        model.info["split_seed"] = config.seed
        path = model.save(shared_model_path(output_dir, target))
        written.append(path)
        LOGGER.info("Shared %s decoder of %d participants -> %s", target, len(data[target]), path)
    LOGGER.info("Shared decoder training: %.1f s", time.monotonic() - start)
    return written


def _engine_device(config) -> str:
    """``--device`` for the group's engines: ``auto`` is a CUDA GPU when torch sees one, as at the participant
    level (docs/usage.md); it used to mean the CPU here, so a GPU job trained the shared model on its CPU."""
    from ..utils.torch_runtime import resolve_device

    return str(resolve_device(config.device))


def check_shared_decoders(config) -> dict[str, Path]:
    """{target: file} of ``--shared-decoder``; usage error (exit 64) on a missing target or a mismatch."""
    from ..decoding.shared import read_shared_sidecar

    files = list(config.values.get("shared_decoder") or [])
    if not files:
        return {}
    by_target: dict[str, Path] = {}
    for path in files:
        path = Path(path)
        meta = read_shared_sidecar(path)
        _check_weights_complete(path)
        target = meta.get("FeatureSpace")
        if target in by_target:
            raise UsageError(f"two --shared-decoder files decode '{target}': {by_target[target]} and {path}")
        if target not in config.target:
            raise UsageError(f"--shared-decoder {path.name} decodes '{target}' features but --target is "
                             f"{' '.join(config.target)}", path=path,
                             hint=f"add --target {target}, or pass the shared decoder of each target")
        expected = feature_info(target, config.resolved_models_dir)
        mismatch = [f"{k}: {meta['FeatureInfo'].get(k)} in the model, {v} here" for k, v in expected.items()
                    if k in meta.get("FeatureInfo", {}) and meta["FeatureInfo"][k] != v]
        if mismatch:
            raise UsageError(f"--shared-decoder {path.name} was trained on other {target} features ("
                             + "; ".join(mismatch) + ")", path=path,
                             hint="retrain it at the group level with this version and the same models")
        by_target[target] = path
    absent = [t for t in config.target if t not in by_target]
    if absent:
        raise UsageError(f"--target {' '.join(absent)} has no shared decoder among --shared-decoder "
                         f"({', '.join(str(f) for f in files)})",
                         hint=f"pass OUT/group/decoding/desc-shared{absent[0]}_model.safetensors too, or drop "
                         f"--target {absent[0]}")
    return by_target


def _check_weights_complete(path: Path) -> None:
    """The weights file's header and size agree (a copy cut short passed the sidecar-only check and failed at
    the decoding stage, hours later): 65 now, naming the file."""
    from ..errors import BadDataError
    from ..models.store import safetensors_shapes

    try:
        safetensors_shapes(path)
    except BadDataError as exc:
        raise BadDataError(f"The shared decoder {path.name} is damaged or incomplete ({path.stat().st_size} bytes): "
                           f"{exc.message}", path=path,
                           hint="copy it again from the group level's OUT/group/decoding/ (with its .json), or "
                           "retrain it with `m2i BIDS OUT group --train-shared-decoder`") from exc


def summary_possible(config) -> bool:
    """Whether some participant has finished decoding (the group summary needs one): after
    ``participant --stop-after glm`` only the shared decoder is trained."""
    from .group import expected_participants, metrics_path

    return any(metrics_path(config.output_dir, s, config.space_entities).exists()
               for s in expected_participants(config))
