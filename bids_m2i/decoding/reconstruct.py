"""One participant's decoding run, from betas to predictions, images, retrieval and metrics.

The engine pieces (features, splits, decoders, generators, metrics) are combined here on arrays and plain files;
the nipype interface only reads the statseries and writes what :func:`reconstruct_participant` returns.

Which target each test item has:

- perception test items: the seen image (``stim_file``);
- imagery from memory (``cue`` = ``image``): the remembered image (the cue's ``stim_file``);
- imagery from a text cue (pure imagination): no image exists; with a ``clip`` target the decoded embedding is
  compared with CLIP *text* embeddings of the cue texts (retrieval among the distinct cues); in pixel space
  nothing can be scored, and the metrics table says so;
- imagery whose target is a category (ds001246-like): the mean feature of that category's perception stimuli.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BadDataError, InputMissingError
from .decoder import BrainDecoder, rescale_to_training
from .features import PixelBasis, PixelExtractor, category_means, load_image, pixels_to_image
from .features import stimulus_features
from .splits import repeat_groups, split_trials

LOGGER = logging.getLogger("m2i.decoding")

# 32 x 32 RGB pixels, decoded directly (no PCA): on the simulator's demo, a PCA basis (k = 256) lost 0.1 of
# PixCorr once predictions are rescaled, because rescaling blows up the poorly predicted components.
PIXEL_SIZE = 32
PIXEL_COMPONENTS = 0
NA = "n/a"


@dataclass
class DecodingOptions:
    targets: tuple[str, ...] = ("pixels",)
    decoder: str = "ridge"
    generator: str = "pixels"
    average_repeats: bool = True
    top_k: int | None = None
    finetune_imagery: bool = False
    models_dir: Path | None = None
    seed: int = 0
    device: str = "cpu"
    n_threads: int = 1
    work_dir: Path | None = None
    # imagery betas standardised per voxel over the imagery trials before decoding (see standardise_like)
    standardise_imagery: bool = True
    # group-level shared decoders (one per target): only the participant's map is fitted (docs/decoding.md)
    shared_decoders: tuple[Path, ...] = ()


@dataclass
class DecodingResult:
    predictions: pd.DataFrame  # one row per test item
    features: np.ndarray  # rows = predictions rows, in the generation space
    feature_space: str
    images: list  # PIL images, rows = predictions rows
    image_metadata: list[dict]
    retrieval: pd.DataFrame
    metrics: pd.DataFrame
    decoders: dict[str, BrainDecoder] = field(default_factory=dict)
    pixel_basis: PixelBasis | None = None
    split_summary: dict = field(default_factory=dict)
    tiny_models: bool = False


def find_decoding_clip_dir(models_dir: Path) -> Path:
    """``open_clip/ViT-H-14`` (the unCLIP-H conditioning space), else the only other architecture present."""
    root = Path(models_dir) / "open_clip"
    preferred = root / "ViT-H-14"
    if preferred.is_dir():
        return preferred
    present = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    others = [p for p in present if not p.name.startswith("ViT-L-14")]
    if len(others) == 1:
        return others[0]
    raise InputMissingError(f"No open_clip model for the clip target in {root}",
                            hint="expected open_clip/ViT-H-14/ (open_clip_config.json + open_clip_model.safetensors); "
                            "see docs/models.md (`m2i-models check DIR --for clip`)")


def resolve_images(trials: pd.DataFrame, stimuli_dir: Path) -> list[Path | None]:
    """The image file of each row (None where ``stim_file`` is n/a)."""
    from ..bids.stimuli import resolve_stimulus_path

    out = []
    for stim_file in trials["stim_file"].astype(str):
        if stim_file in ("", NA):
            out.append(None)
            continue
        path = resolve_stimulus_path(stimuli_dir, stim_file)
        out.append(path if path is not None else Path(stimuli_dir) / stim_file)
    return out


def require_images(paths: list[Path | None], trials: pd.DataFrame, what: str) -> None:
    for path, (_, row) in zip(paths, trials.iterrows()):
        if path is None:
            raise InputMissingError(
                f"{what}: trial of stimulus {row['stimulus']} has no stimulus file (stim_file n/a)",
                hint="pixel and CLIP targets need the stimulus images under BIDS_DIR/stimuli/; run with "
                "--stop-after glm to stop before decoding")
        if not Path(path).is_file():
            raise InputMissingError(
                f"Stimulus image missing: {path}", path=path,
                hint="put the stimulus images under BIDS_DIR/stimuli/ (the events' stim_file paths), or run with "
                "--stop-after glm to stop before decoding")


def _items(trials: pd.DataFrame, rows: np.ndarray, average: bool) -> list[np.ndarray]:
    """Groups of trial rows that form one test item (repeats of a stimulus averaged when asked)."""
    if not average:
        return [np.array([r]) for r in rows]
    keys = trials.iloc[rows][["condition", "cue", "stimulus"]].astype(str).agg("|".join, axis=1).to_numpy()
    _, groups = repeat_groups(keys)
    return [rows[g] for g in groups]


def standardise_like(betas: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Give each voxel (column) of ``betas`` the mean and sd it has in ``reference``.

    Why, for imagery: the decoder is trained on perception betas, z-scored with perception statistics.
    Imagery betas of the same voxel have another offset (the task itself) and another scale (weaker,
    differently regularised responses, a different share of noise), so a voxel that is informative in
    perception can be swamped in imagery by voxels whose imagery variance is larger. Standardising each
    voxel over the imagery trials (no labels used) and mapping it onto its perception mean and sd puts both
    conditions on one scale, as NSD's per-session z-scoring of betas does for sessions (Allen et al. 2022).
    On the simulator's demo (4 runs of the pipeline, seeds 0-2) imagery-from-memory 2-way rose from
    0.58-0.81 to 0.84-0.89 (oracle 0.895).
    """
    # the same per-column mapping as the Brain-Diffuser rescaling of predictions
    return rescale_to_training(betas, reference.mean(0), reference.std(0), centre="items")


def reconstruct_participant(betas: np.ndarray, trials: pd.DataFrame, stimuli_dir: Path,
                            options: DecodingOptions) -> DecodingResult:
    """Train on perception, predict held-out perception and imagery, generate, retrieve and evaluate.

    Parameters
    ----------
    betas : (n_trials, n_voxels) in-mask single-trial betas, rows = ``trials`` rows
    trials : the statseries events tables of all tasks/sessions, concatenated (needs ``condition cue stimulus
        stim_file cue_text category``)
    stimuli_dir : BIDS_DIR/stimuli
    """
    trials = trials.reset_index(drop=True).copy()
    for column in ("condition", "cue", "stimulus", "stim_file", "cue_text", "category"):
        if column not in trials:
            trials[column] = NA
        trials[column] = trials[column].astype(str).replace({"": NA, "nan": NA})
    split = split_trials(trials, seed=options.seed, fine_tune_imagery=options.finetune_imagery)
    train_rows, test_rows, imagery_rows = split.train, split.test, split.imagery
    train = trials.iloc[train_rows]
    paths = resolve_images(trials, stimuli_dir)
    train_paths = [paths[i] for i in train_rows]
    require_images(train_paths, train, "training perception trials")
    test_paths = [paths[i] for i in test_rows]
    require_images(test_paths, trials.iloc[test_rows], "held-out perception trials")
    memory_rows = np.array([r for r in imagery_rows if trials.at[r, "cue"] != "text" and paths[r] is not None],
                           dtype=int)
    if len(memory_rows):
        require_images([paths[i] for i in memory_rows], trials.iloc[memory_rows], "imagery-from-memory cues")

    # --- imagery betas on the perception scale (per voxel, over all imagery trials; no labels) ------------------
    imagery_position = {int(r): i for i, r in enumerate(imagery_rows)}
    imagery_betas = None
    if options.standardise_imagery and len(imagery_rows) >= 2:
        imagery_betas = standardise_like(betas[imagery_rows], betas[train_rows])

    def trial_betas(rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=int)
        if imagery_betas is not None and len(rows) and int(rows[0]) in imagery_position:
            return imagery_betas[[imagery_position[int(r)] for r in rows]]
        return betas[rows]

    # --- targets of the training trials, in every space ----------------------------------------------------
    extractors = {}
    clip_dir = None
    for space in options.targets:
        if space == "pixels":
            extractors[space] = PixelExtractor(PIXEL_SIZE)
        else:
            if options.models_dir is None:
                raise InputMissingError("--target clip needs a models folder",
                                        hint="pass --models-dir or set M2I_MODELS_DIR (see docs/models.md)")
            clip_dir = find_decoding_clip_dir(options.models_dir)
            from .features import ClipExtractor

            extractors[space] = ClipExtractor(clip_dir, device=options.device)
    tiny = any(getattr(e, "is_tiny", False) for e in extractors.values())

    labels_train = train["stimulus"].to_numpy()
    decoders: dict[str, BrainDecoder] = {}
    basis = None
    train_targets = {}
    for space, extractor in extractors.items():
        features = stimulus_features(train_paths, extractor, work_dir=options.work_dir)
        if space == "pixels" and PIXEL_COMPONENTS:
            distinct = np.unique(labels_train, return_index=True)[1]
            basis = PixelBasis.fit(features[np.sort(distinct)], PIXEL_COMPONENTS)
            features = basis.transform(features)
        train_targets[space] = features
        if options.shared_decoders:
            from .shared import participant_decoder

            decoder = participant_decoder(options.shared_decoders, space, top_k=options.top_k, device=options.device,
                                          n_threads=options.n_threads, seed=options.seed)
        else:
            decoder = BrainDecoder(options.decoder, top_k=options.top_k, device=options.device,
                                   n_threads=options.n_threads, seed=options.seed)
        decoders[space] = decoder.fit(betas[train_rows], features, labels=labels_train)

    # --- test items --------------------------------------------------------------------------------------------
    finetuned: dict[str, np.ndarray] = {}
    if options.finetune_imagery and split.imagery_folds is not None and len(memory_rows):
        memory_mask = np.isin(imagery_rows, memory_rows)
        for space, extractor in extractors.items():
            feats = stimulus_features([paths[i] for i in memory_rows], extractor, work_dir=options.work_dir)
            if space == "pixels" and basis is not None:
                feats = basis.transform(feats)
            oof = decoders[space].fine_tune(trial_betas(memory_rows), feats, split.imagery_folds[memory_mask])
            finetuned[space] = dict(zip(memory_rows.tolist(), oof))
    items = _items(trials, test_rows, options.average_repeats) + _items(trials, imagery_rows, options.average_repeats)
    if not items:
        raise BadDataError("No test items: no held-out perception or imagery trials to reconstruct")
    predictions_by_space = {}
    for space, decoder in decoders.items():
        rows = []
        for group in items:
            if space in finetuned and all(int(r) in finetuned[space] for r in group):
                rows.append(np.mean([finetuned[space][int(r)] for r in group], axis=0))
            else:
                rows.append(decoder.predict(trial_betas(group).mean(axis=0, keepdims=True))[0])
        raw = np.stack(rows).astype(np.float32)
        # rescaled within each (condition, cue) group: imagery predictions are weaker than perception ones, and
        # standardising them together would shrink one group and inflate the other. Held-out perception items
        # share the training condition, so they are centred on the training mean; other conditions on their own
        rescaled = np.empty_like(raw)
        for (condition, _cue), index in _group_indices(trials, items).items():
            centre = "training" if condition == "perception" else "items"
            rescaled[index] = rescale_to_training(raw[index], decoder.feature_mean, decoder.feature_sd,
                                                  centre=centre)
        predictions_by_space[space] = rescaled

    table = _predictions_table(trials, items)

    # --- generation ------------------------------------------------------------------------------------------
    pixel_images = None
    if "pixels" in predictions_by_space:
        pixel_images = [pixels_to_image(v, (PIXEL_SIZE, PIXEL_SIZE, 3), basis) for v in predictions_by_space["pixels"]]
    common_meta = {"Decoder": "shared" if options.shared_decoders else options.decoder,
                   "Targets": list(options.targets), "Seed": options.seed}
    if options.generator == "pixels":
        if pixel_images is None:
            raise BadDataError("--generator pixels needs --target pixels")
        images = pixel_images
        how = (f"inverse PCA of decoded coefficients ({basis.n_components} components)" if basis is not None
               else "decoded pixel values")
        image_meta = [{**common_meta, "Generator": "pixels", "ModelsTiny": False,
                       "GeneratorDescription": f"{how}, {PIXEL_SIZE}x{PIXEL_SIZE} RGB, rescaled to the training "
                       "images' per-pixel mean and sd"} for _ in items]
        generation_space = "pixels"
    else:
        from .generate import generate_images

        if "clip" not in predictions_by_space:
            raise BadDataError("--generator unclip needs --target clip")
        images, image_meta = generate_images(options.models_dir, predictions_by_space["clip"], seed=options.seed,
                                             low_level_images=pixel_images, device=options.device,
                                             n_threads=options.n_threads)
        image_meta = [{**common_meta, **m} for m in image_meta]
        generation_space = "clip"
        tiny = tiny or any(m.get("ModelsTiny") for m in image_meta)

    # --- retrieval and metrics, per (condition, cue) group ----------------------------------------------------
    retrieval_rows, metric_frames = [], []
    table["top1"], table["top5"] = NA, NA
    from ..evaluation.feature_spaces import load_feature_extractors

    eval_extractors = load_feature_extractors(options.models_dir, device=options.device) if options.models_dir else {}
    note = "tiny random-weight models: numbers are meaningless" if tiny else ""
    primary = "clip" if "clip" in predictions_by_space else "pixels"
    for (condition, cue), part in table.groupby(["condition", "cue"], sort=True):
        index = part.index.to_numpy()
        first_rows = [items[i][0] for i in index]
        target_ids = part["stimulus"].tolist()
        target_feats: dict[str, np.ndarray] = {}
        target_images = None
        group_note = note
        if cue == "text" and condition == "imagery":
            categories = trials.iloc[first_rows]["category"].tolist()
            if "clip" in extractors and all(t != NA for t in part["cue_text"]):
                target_feats["clip"] = extractors["clip"].encode_texts(part["cue_text"].tolist())
                group_note = _join(note, "pure imagination: no target image; retrieval and identification against "
                                   "CLIP text embeddings of the distinct cue texts")
            cat_feats = _category_targets(trials, train_rows, categories, train_targets, labels_train)
            for space, feats in cat_feats.items():
                target_feats.setdefault(space, feats)
            if cat_feats:
                target_ids = categories
                group_note = _join(group_note, "targets are categories: mean feature of the category's training "
                                   "stimuli")
            if not target_feats:
                group_note = _join(note, "pure imagination with pixel targets: the imagined image does not exist, "
                                   "so nothing can be scored")
        else:
            item_paths = [paths[r] for r in first_rows]
            target_images = [load_image(p) for p in item_paths]
            for space, extractor in extractors.items():
                feats = stimulus_features(item_paths, extractor, work_dir=options.work_dir)
                target_feats[space] = basis.transform(feats) if (space == "pixels" and basis is not None) else feats
        preds = {s: predictions_by_space[s][index] for s in target_feats}
        if "pixels" in target_feats and basis is None:
            # cosine similarity of raw pixel vectors is dominated by overall brightness: centre both on the
            # training stimuli's mean image first
            centre = decoders["pixels"].feature_mean
            preds["pixels"] = preds["pixels"] - centre
            target_feats["pixels"] = target_feats["pixels"] - centre
        recon = [images[i] for i in index]
        frame = _evaluate(recon, target_images, preds, target_feats, target_ids, condition, cue, eval_extractors,
                          options.seed, group_note)
        metric_frames.append(frame)
        if primary in target_feats:
            hits, ranking = _retrieval(preds[primary], target_feats[primary], target_ids)
            table.loc[index, "top1"] = [str(h).lower() for h in hits[1]]
            table.loc[index, "top5"] = [str(h).lower() for h in hits[5]]
            candidate_files = {}
            for r, t in zip(first_rows, target_ids):
                candidate_files.setdefault(t, trials.at[r, "stim_file"] if cue != "text" else NA)
            for pos, i in enumerate(index):
                row = {"row": int(i), "condition": condition, "cue": cue, "stimulus": target_ids[pos]}
                for k, name in enumerate(ranking[pos][:5], start=1):
                    row[f"rank{k}"] = name
                    row[f"rank{k}_file"] = candidate_files.get(name, NA)
                retrieval_rows.append(row)
    metrics = pd.concat([f for f in metric_frames if not f.empty], ignore_index=True) if any(
        not f.empty for f in metric_frames) else pd.DataFrame()
    retrieval = pd.DataFrame(retrieval_rows)
    return DecodingResult(predictions=table, features=predictions_by_space[generation_space],
                          feature_space=generation_space, images=images, image_metadata=image_meta,
                          retrieval=retrieval, metrics=metrics, decoders=decoders, pixel_basis=basis,
                          split_summary={**split.summary(), "imagery_betas": (
                              "standardised per voxel over the imagery trials, onto the training trials' mean and sd"
                              if imagery_betas is not None else "as estimated")}, tiny_models=tiny)


def _group_indices(trials: pd.DataFrame, items: list[np.ndarray]) -> dict[tuple, np.ndarray]:
    keys = [(trials.at[g[0], "condition"], trials.at[g[0], "cue"]) for g in items]
    return {k: np.array([i for i, key in enumerate(keys) if key == k]) for k in dict.fromkeys(keys)}


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _predictions_table(trials: pd.DataFrame, items: list[np.ndarray]) -> pd.DataFrame:
    """One row per test item; ``trial_index`` lists the source volumes (``;``-separated when repeats are
    averaged) of the statseries named in ``source``."""
    records = []
    for group in items:
        part = trials.iloc[group]
        first = part.iloc[0]
        indices = part["trial_index"].astype(str) if "trial_index" in part else pd.Series(group).astype(str)
        records.append({
            "trial_index": ";".join(indices),
            "source": first["source"] if "source" in part else NA,
            "condition": first["condition"], "cue": first["cue"], "stimulus": first["stimulus"],
            "category": first["category"], "stim_file": first["stim_file"], "cue_text": first["cue_text"],
            "n_repeats": len(group),
        })
    return pd.DataFrame.from_records(records)


def _category_targets(trials, train_rows, categories, train_targets, labels_train) -> dict[str, np.ndarray]:
    """Mean training feature of each item's category, when every item's category has training stimuli."""
    train_categories = trials.iloc[train_rows]["category"].astype(str).to_numpy()
    if any(c == NA for c in categories) or not set(categories) <= set(train_categories):
        return {}
    out = {}
    for space, feats in train_targets.items():
        labels, means = category_means(feats, train_categories)
        lookup = dict(zip(labels, means))
        out[space] = np.stack([lookup[c] for c in categories])
    return out


def _retrieval(predictions: np.ndarray, target_features: np.ndarray, target_ids: list[str]):
    from ..evaluation.retrieval import distinct_targets, rank_candidates

    distinct = distinct_targets(target_ids, target_features)
    ranks = rank_candidates(predictions, distinct.features, metric="cosine")
    names = np.asarray(distinct.ids)
    ranking = [names[r].tolist() for r in ranks]
    true = np.asarray(distinct.true_index)
    hits = {k: np.array([true[i] in ranks[i][:k] for i in range(len(true))]) for k in (1, 5)}
    return hits, ranking


def _evaluate(recon, target_images, preds, target_feats, target_ids, condition, cue, extractors, seed, note):
    from ..evaluation.table import evaluate_reconstructions

    return evaluate_reconstructions(recon, target_images, preds, target_feats, target_ids, condition, cue,
                                    feature_extractors=extractors, n_perm=1000, seed=seed, note=note, device="cpu")
