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
    captions_file: Path | None = None  # extra captions for the retrieval bank (--captions)
    candidates: int = 1  # best-of-N (--candidates)
    n_perm: int = 1000  # permutations for the metrics' p-values
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
    text_spaces: dict = field(default_factory=dict)  # fitted text feature spaces (``text``: TF-IDF)
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
    from .text import TEXT_SPACES, caption_of, read_captions

    captions = read_captions(stimuli_dir)
    trials["caption"] = [caption_of(row, captions) for _, row in trials.iterrows()]
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
    clip_extractor = None
    train_captions = train["caption"].tolist() if "caption" in train else []
    if set(options.targets) & set(TEXT_SPACES):
        missing = sorted({s for s, c in zip(train["stimulus"], train_captions) if c == NA})
        if missing:
            raise InputMissingError(
                f"--target text/clip-text needs a caption for every training stimulus; {len(missing)} have none "
                f"(e.g. {missing[0]})", path=Path(stimuli_dir) / "stimuli.tsv",
                hint="add a `caption` (or `description`) column to stimuli/stimuli.tsv, or drop the text targets")
    for space in options.targets:
        if space == "pixels":
            extractors[space] = PixelExtractor(PIXEL_SIZE)
        elif space == "text":
            from .text import TfidfTextSpace

            extractors[space] = TfidfTextSpace.fit(dict.fromkeys(train_captions))  # training captions only
        elif space in ("clip", "clip-text"):
            if options.models_dir is None:
                raise InputMissingError(f"--target {space} needs a models folder",
                                        hint="pass --models-dir or set M2I_MODELS_DIR (see docs/models.md)")
            if clip_extractor is None:
                from .features import ClipExtractor

                clip_extractor = ClipExtractor(find_decoding_clip_dir(options.models_dir), device=options.device)
            if space == "clip":
                extractors[space] = clip_extractor
            else:
                from .text import ClipTextSpace

                extractors[space] = ClipTextSpace(clip_extractor)
        else:
            raise BadDataError(f"unknown target feature space {space!r}",
                               hint="use pixels, clip, clip-text or text")
    tiny = any(getattr(e, "is_tiny", False) for e in extractors.values())

    def item_features(space: str, rows) -> np.ndarray:
        """Targets of trials in one space: image features of their stim_file, or text features of their
        caption (cue text for pure-imagination rows)."""
        rows = list(rows)
        if space in TEXT_SPACES:
            texts = [trials.at[r, "cue_text"] if (trials.at[r, "cue"] == "text" and trials.at[r, "cue_text"] != NA)
                     else trials.at[r, "caption"] for r in rows]
            distinct = list(dict.fromkeys(texts))
            encoded = dict(zip(distinct, extractors[space].encode_texts(distinct)))
            return np.stack([encoded[t] for t in texts]).astype(np.float32)
        feats = stimulus_features([paths[r] for r in rows], extractors[space], work_dir=options.work_dir)
        return basis.transform(feats) if (space == "pixels" and basis is not None) else feats

    labels_train = train["stimulus"].to_numpy()
    decoders: dict[str, BrainDecoder] = {}
    basis = None
    train_targets = {}
    for space, extractor in extractors.items():
        if space in TEXT_SPACES:
            features = item_features(space, train_rows)
        else:
            features = stimulus_features(train_paths, extractor, work_dir=options.work_dir)
        if space == "pixels" and PIXEL_COMPONENTS:
            distinct = np.unique(labels_train, return_index=True)[1]
            basis = PixelBasis.fit(features[np.sort(distinct)], PIXEL_COMPONENTS)
            features = basis.transform(features)
        train_targets[space] = features
        if options.shared_decoders:  # a group-level model: only this participant's map is fitted
            from .shared import participant_decoder

            decoder = participant_decoder(options.shared_decoders, space, top_k=options.top_k, device=options.device,
                                          n_threads=options.n_threads, seed=options.seed)
            decoders[space] = decoder.fit(betas[train_rows], features, labels=labels_train)
        else:
            decoders[space] = fit_decoder(options, betas[train_rows], features, labels_train)

    # --- test items --------------------------------------------------------------------------------------------
    finetuned: dict[str, np.ndarray] = {}
    if options.finetune_imagery and split.imagery_folds is not None and len(memory_rows):
        memory_mask = np.isin(imagery_rows, memory_rows)
        for space in extractors:
            feats = item_features(space, memory_rows)
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

    # --- the text channel: the bank caption closest to each item's decoded text features ---------------------
    text_space = next((s for s in ("clip-text", "text") if s in predictions_by_space), None)
    table["caption"], table["caption_source"] = NA, NA
    if text_space is not None:
        from .text import CaptionBank, read_caption_file

        bank_texts = list(train_captions) + trials["cue_text"].tolist()
        bank_sources = ["training"] * len(train_captions) + ["cue"] * len(trials)
        if options.captions_file is not None:
            extra = read_caption_file(options.captions_file)
            bank_texts += extra
            bank_sources += ["file"] * len(extra)
        bank = CaptionBank(bank_texts, bank_sources)
        best = bank.retrieve(predictions_by_space[text_space], extractors[text_space],
                             centre=decoders[text_space].feature_mean)
        table["caption"] = [bank.captions[i] for i in best]
        table["caption_source"] = [bank.sources[i] for i in best]
        LOGGER.info("captions retrieved from a bank of %d (%s space)", len(bank), text_space)

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
        image_meta = [{**common_meta, "Generator": "pixels", "ModelsTiny": False, "Prompt": "",
                       "Candidates": 1, "CandidateIndex": 0, "CandidateSeed": options.seed,
                       "GeneratorDescription": f"{how}, {PIXEL_SIZE}x{PIXEL_SIZE} RGB, rescaled to the training "
                       "images' per-pixel mean and sd"} for _ in items]
        generation_space = "pixels"
    else:
        from .generate import generate_images

        if "clip" not in predictions_by_space:
            raise BadDataError("--generator unclip needs --target clip")
        from .select import candidate_seeds, save_candidates

        n_items, n_cand = len(items), max(1, int(options.candidates))
        seeds = candidate_seeds(options.seed, n_items, n_cand)
        decoded = predictions_by_space["clip"]
        prompts = table["caption"].tolist() if text_space is not None else None
        repeat = (lambda values: [v for v in values for _ in range(n_cand)])
        flat_images, flat_meta = generate_images(
            options.models_dir, np.repeat(decoded, n_cand, axis=0), seeds=seeds.ravel().tolist(),
            low_level_images=repeat(pixel_images) if pixel_images is not None else None,
            prompts=repeat(prompts) if prompts is not None else None, device=options.device,
            n_threads=options.n_threads)
        candidates = [flat_images[i * n_cand:(i + 1) * n_cand] for i in range(n_items)]
        chosen, similarity = np.zeros(n_items, dtype=int), np.ones((n_items, 1))
        candidate_paths = None
        if n_cand > 1:
            from .components import SELECTORS

            chosen, similarity = SELECTORS.create("clip-cosine", clip=clip_extractor).select(candidates, decoded)
            if options.work_dir is not None:
                candidate_paths = save_candidates(Path(options.work_dir) / "candidates", candidates, seeds)
        images, image_meta = [], []
        for i in range(n_items):
            k = int(chosen[i])
            images.append(candidates[i][k])
            meta = {**common_meta, **flat_meta[i * n_cand + k], "Prompt": prompts[i] if prompts is not None else "",
                    "Candidates": n_cand, "CandidateIndex": k, "CandidateSeed": int(seeds[i, k]),
                    "CandidateSelector": "clip-cosine: cosine of the candidate's CLIP image embedding with the "
                    "decoded embedding" if n_cand > 1 else "none (one candidate)"}
            if n_cand > 1:
                meta["CandidateSimilarities"] = [round(float(v), 6) for v in similarity[i]]
                meta["CandidateSeeds"] = [int(v) for v in seeds[i]]
                if candidate_paths is not None:
                    meta["CandidateFiles"] = candidate_paths[i]
            image_meta.append(meta)
        generation_space = "clip"
        tiny = tiny or any(m.get("ModelsTiny") for m in image_meta)

    # --- retrieval and metrics, per (condition, cue) group ----------------------------------------------------
    retrieval_rows, metric_frames = [], []
    table["top1"], table["top5"] = NA, NA
    from ..evaluation.feature_spaces import load_feature_extractors

    eval_extractors = load_feature_extractors(options.models_dir, device=options.device) if options.models_dir else {}
    note = "tiny random-weight models: numbers are meaningless" if tiny else ""
    brain = _brain_correlation_inputs(images, items, trial_betas, betas[train_rows], train_paths, labels_train,
                                      decoders, clip_extractor, options)
    primary = "clip" if "clip" in predictions_by_space else "pixels"
    for (condition, cue), part in table.groupby(["condition", "cue"], sort=True):
        index = part.index.to_numpy()
        first_rows = [items[i][0] for i in index]
        target_ids = part["stimulus"].tolist()
        target_feats: dict[str, np.ndarray] = {}
        target_images = None
        group_note = note
        if cue == "text" and condition == "imagery":
            # pure imagination: scored (a) against the distinct cue texts in text spaces (and the CLIP text
            # embedding of the cue for a decoded image embedding), (b) against category means when the
            # targets are categories (ds001246-like), each with its own set of distinct targets
            categories = trials.iloc[first_rows]["category"].tolist()
            evaluations = []
            cue_feats: dict[str, np.ndarray] = {}
            if all(t != NA for t in part["cue_text"]):
                if "clip" in extractors:
                    cue_feats["clip"] = extractors["clip"].encode_texts(part["cue_text"].tolist())
                for space in (s for s in extractors if s in TEXT_SPACES):
                    cue_feats[space] = item_features(space, first_rows)  # the cue texts' text features
            if cue_feats:
                evaluations.append((cue_feats, part["cue_text"].tolist(), _join(
                    note, "pure imagination: no target image; retrieval and identification against the distinct "
                    "cue texts (clip: CLIP text embeddings of the cues)")))
            cat_feats = {space: feats for space, feats in _category_targets(
                trials, train_rows, categories, train_targets, labels_train).items() if space not in cue_feats
                and space not in TEXT_SPACES}
            if cat_feats:
                evaluations.append((cat_feats, categories, _join(
                    note, "targets are categories: mean feature of the category's training stimuli")))
            if not evaluations:
                evaluations.append(({}, target_ids, _join(
                    note, "pure imagination with pixel targets: the imagined image does not exist, so nothing can "
                    "be scored")))
        else:
            item_paths = [paths[r] for r in first_rows]
            target_images = [load_image(p) for p in item_paths]
            for space in extractors:
                if space in TEXT_SPACES and any(trials.at[r, "caption"] == NA for r in first_rows):
                    continue  # no caption for some of these stimuli: the text space cannot be scored
                target_feats[space] = item_features(space, first_rows)
            evaluations = [(target_feats, target_ids, group_note)]
        recon = [images[i] for i in index]
        group_brain = {space: (pred[index], measured[index]) for space, (pred, measured) in brain.items()}
        for k, (feats, ids, evaluation_note) in enumerate(evaluations):
            preds = {s: predictions_by_space[s][index] for s in feats}
            feats = dict(feats)
            for space in [s for s in ("pixels", *TEXT_SPACES) if s in feats]:
                if space == "pixels" and basis is not None:
                    continue
                # cosine similarity of raw pixel vectors is dominated by overall brightness, that of TF-IDF
                # vectors by the words every caption has: centre both on the training targets' mean first
                centre = decoders[space].feature_mean
                preds[space] = preds[space] - centre
                feats[space] = feats[space] - centre
            frame = _evaluate(recon, target_images, preds, feats, ids, condition, cue, eval_extractors, options,
                              evaluation_note, group_brain if k == 0 else None)
            metric_frames.append(frame)
            if k == 0:
                target_feats, target_ids, first_preds = feats, ids, preds
        preds = first_preds
        table_space = primary if primary in target_feats else next((s for s in TEXT_SPACES if s in target_feats), None)
        if table_space is not None:
            hits, ranking = _retrieval(preds[table_space], target_feats[table_space], target_ids)
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


def fit_decoder(options: DecodingOptions, train_betas: np.ndarray, features: np.ndarray, labels) -> BrainDecoder:
    """The ``--decoder`` component fitted on training perception, or the same fit from the work dir's cache.

    The cache key hashes everything the fit depends on (training betas, target features, labels, decoder
    name and settings), so a rerun that changes only the generator, the candidates or the evaluation reuses
    the fitted decoder instead of refitting (``WORK/decoders/<key>.safetensors``).
    """
    import hashlib

    from .components import DECODERS

    # no --top-k-voxels: the voxel count is chosen by cross-validation (BrainDecoder top_k="auto")
    decoder = DECODERS.create(options.decoder, top_k=options.top_k or "auto", device=options.device,
                              n_threads=options.n_threads, seed=options.seed)
    cache = None
    if options.work_dir is not None and hasattr(decoder, "save") and hasattr(type(decoder), "load"):
        digest = hashlib.sha256()
        for array in (np.ascontiguousarray(train_betas, dtype=np.float32),
                      np.ascontiguousarray(features, dtype=np.float32)):
            digest.update(str(array.shape).encode())
            digest.update(array.tobytes())
        digest.update("\x00".join(map(str, labels)).encode())
        mlp_config = vars(decoder.mlp_config) if hasattr(decoder, "mlp_config") else None
        digest.update(repr((options.decoder, decoder.top_k, options.seed, getattr(decoder, "alphas", None),
                            mlp_config)).encode())
        cache = Path(options.work_dir) / "decoders" / f"{options.decoder}-{digest.hexdigest()[:16]}.safetensors"
        if cache.is_file() and cache.with_suffix(".json").is_file():
            LOGGER.info("decoder reused from %s", cache)
            return type(decoder).load(cache, device=options.device)
    decoder.fit(train_betas, features, labels=labels)
    if cache is not None:
        decoder.save(cache)
    return decoder


def _brain_correlation_inputs(images, items, trial_betas, train_betas, train_paths, labels_train, decoders,
                              clip_extractor, options) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per encoding space: (betas predicted from each reconstruction, the item's measured betas), both in the
    decoder's voxels, z-scored with the training statistics."""
    from .encoding import EncodingModel

    scaler = next(iter(decoders.values())).scaler
    measured = np.stack([scaler.transform(trial_betas(g).mean(axis=0, keepdims=True))[0] for g in items])
    train_scaled = scaler.transform(train_betas)
    spaces = {"pixels": PixelExtractor(PIXEL_SIZE)}
    if clip_extractor is not None:
        spaces["clip"] = clip_extractor
    out = {}
    for space, extractor in spaces.items():
        model = EncodingModel(device=options.device, n_threads=options.n_threads, seed=options.seed)
        model.fit(stimulus_features(train_paths, extractor, work_dir=options.work_dir), train_scaled,
                  labels=labels_train)
        out[space] = (model.predict(extractor.encode_images(list(images))), measured)
    return out


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


def _evaluate(recon, target_images, preds, target_feats, target_ids, condition, cue, extractors, options, note,
              brain=None):
    from ..evaluation.table import evaluate_reconstructions

    return evaluate_reconstructions(recon, target_images, preds, target_feats, target_ids, condition, cue,
                                    feature_extractors=extractors, n_perm=options.n_perm, seed=options.seed,
                                    note=note, device=options.device, brain_betas=brain)
