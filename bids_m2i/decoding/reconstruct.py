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
from ..models.loading import find_decoding_clip_dir, load_decoding_clip  # noqa: F401 (find_...: re-exported)
from .decoder import BrainDecoder, rescale_items, rescale_to_training
from .features import PixelBasis, PixelExtractor, category_means, center_square, load_image, pixels_to_image
from .features import stimulus_features
from .splits import DecodingSplit, repeat_groups, split_trials, stimulus_identity

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
    candidates_dir: Path | None = None  # where best-of-N candidates go (the generate node's own folder)
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


# ---------------------------------------------------------------------------------------------------------------
# The stages. Each is a function on arrays and loaded objects; the workflow runs each as its own node (features ->
# fit -> predict -> generate -> evaluate), passing the results as files (``decoding/stage_files.py``), so that
# a rerun that changes only the generator or the evaluation reuses the fitted decoders.


@dataclass
class PreparedTrials:
    """The ``features`` stage: trials, the leak-free split and the training targets in every space."""

    trials: pd.DataFrame  # normalised (condition cue stimulus stim_file cue_text category are strings), + caption
    split: DecodingSplit
    stimuli_dir: Path
    train_targets: dict[str, np.ndarray]  # space -> (n_train, d), rows = split.train
    memory_rows: np.ndarray  # imagery-from-memory rows that have a cue image
    memory_targets: dict[str, np.ndarray] = field(default_factory=dict)  # rows = memory_rows (fine-tuning only)
    text_spaces: dict = field(default_factory=dict)  # fitted weight-free text spaces (``text``: TF-IDF)
    pixel_basis: PixelBasis | None = None
    tiny: bool = False

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.train_targets)

    @property
    def paths(self) -> list[Path | None]:
        return resolve_images(self.trials, self.stimuli_dir)

    @property
    def labels_train(self) -> np.ndarray:
        return self.trials.iloc[self.split.train]["stimulus"].to_numpy()

    @property
    def train_captions(self) -> list[str]:
        return self.trials.iloc[self.split.train]["caption"].tolist()


@dataclass
class FittedDecoders:
    """The ``fit`` stage: one decoder per target space (fine-tuned on imagery when asked)."""

    decoders: dict  # space -> BrainDecoder (or a shared-model decoder)
    finetuned: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # space -> memory row -> oof pred


@dataclass
class ItemPredictions:
    """The ``predict`` stage: test items, their decoded features (rescaled) and retrieved captions."""

    items: list[np.ndarray]  # trial rows of each item (repeats averaged)
    features: dict[str, np.ndarray]  # space -> (n_items, d), rescaled to the training features
    table: pd.DataFrame  # one row per item (the predictions table, without image / top1 / top5)


@dataclass
class Reconstructions:
    """The ``generate`` stage: one image per item (and its sidecar metadata)."""

    images: list  # PIL images, rows = items
    metadata: list[dict]
    feature_space: str  # the space whose decoded features condition the generator
    tiny: bool = False


@dataclass
class Evaluation:
    """The ``evaluate`` stage."""

    table: pd.DataFrame  # predictions table with top1 / top5
    retrieval: pd.DataFrame
    metrics: pd.DataFrame


class ItemBetas:
    """Betas of trial rows, imagery rows put on the perception scale first (see :func:`standardise_like`)."""

    def __init__(self, betas: np.ndarray, split: DecodingSplit, standardise_imagery: bool = True):
        self.betas = betas
        self.position = {int(r): i for i, r in enumerate(split.imagery)}
        self.imagery = None
        if standardise_imagery and len(split.imagery) >= 2:
            self.imagery = standardise_like(betas[split.imagery], betas[split.train])

    def __call__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=int)
        if self.imagery is not None and len(rows) and int(rows[0]) in self.position:
            return self.imagery[[self.position[int(r)] for r in rows]]
        return self.betas[rows]

    def describe(self) -> str:
        return ("standardised per voxel over the imagery trials, onto the training trials' mean and sd"
                if self.imagery is not None else "as estimated")


class TargetFeatures:
    """Targets of trials in one space: image features of their ``stim_file`` (cached in the work dir), or
    text features of their caption (the cue text for pure-imagination rows)."""

    def __init__(self, prepared: PreparedTrials, extractors: dict, work_dir=None):
        self.trials = prepared.trials
        self.paths = prepared.paths
        self.extractors = extractors
        self.basis = prepared.pixel_basis
        self.work_dir = work_dir

    def __call__(self, space: str, rows) -> np.ndarray:
        from .text import TEXT_SPACES

        rows, trials = list(rows), self.trials
        if space in TEXT_SPACES:
            texts = [trials.at[r, "cue_text"] if (trials.at[r, "cue"] == "text" and trials.at[r, "cue_text"] != NA)
                     else trials.at[r, "caption"] for r in rows]
            distinct = list(dict.fromkeys(texts))
            encoded = dict(zip(distinct, self.extractors[space].encode_texts(distinct)))
            return np.stack([encoded[t] for t in texts]).astype(np.float32)
        feats = stimulus_features([self.paths[r] for r in rows], self.extractors[space], work_dir=self.work_dir)
        return self.basis.transform(feats) if (space == "pixels" and self.basis is not None) else feats


def feature_extractors(targets, clip=None, text_spaces: dict | None = None) -> dict:
    """The target spaces' extractors from loaded components: ``clip`` (a loaded open_clip model, for ``clip``
    and ``clip-text``) and fitted weight-free text spaces (``text``)."""
    from .text import ClipTextSpace

    out = {}
    for space in targets:
        if space == "pixels":
            out[space] = PixelExtractor(PIXEL_SIZE)
        elif space == "text":
            out[space] = (text_spaces or {})["text"]
        elif space in ("clip", "clip-text"):
            if clip is None:
                raise InputMissingError(f"--target {space} needs a models folder",
                                        hint="pass --models-dir or set M2I_MODELS_DIR (see docs/models.md)")
            out[space] = clip if space == "clip" else ClipTextSpace(clip)
        else:
            raise BadDataError(f"unknown target feature space {space!r}", hint="use pixels, clip, clip-text or text")
    return out


def needs_clip(targets) -> bool:
    """Whether a run needs the decoding CLIP model (``clip``/``clip-text`` targets; unCLIP's selector)."""
    return bool({"clip", "clip-text"} & set(targets))


def normalise_trials(trials: pd.DataFrame, stimuli_dir: Path) -> pd.DataFrame:
    """String columns the decoder reads (``n/a`` for missing) and each trial's caption."""
    from .text import caption_of, read_captions

    trials = trials.reset_index(drop=True).copy()
    for column in ("condition", "cue", "stimulus", "stim_file", "cue_text", "category"):
        if column not in trials:
            trials[column] = NA
        trials[column] = trials[column].astype(str).replace({"": NA, "nan": NA})
    captions = read_captions(stimuli_dir)
    trials["caption"] = [caption_of(row, captions) for _, row in trials.iterrows()]
    return trials


def prepare_features(trials: pd.DataFrame, stimuli_dir: Path, options: DecodingOptions,
                     clip=None) -> PreparedTrials:
    """Stage ``features``: the split, checks of the stimuli, and the training targets in every target space.

    ``clip``: the loaded decoding CLIP model (:func:`load_decoding_clip`) when a target needs it.
    """
    from .text import TEXT_SPACES, TfidfTextSpace

    trials = normalise_trials(trials, stimuli_dir)
    split = split_trials(trials, seed=options.seed, fine_tune_imagery=options.finetune_imagery)
    train_rows, test_rows, imagery_rows = split.train, split.test, split.imagery
    train = trials.iloc[train_rows]
    paths = resolve_images(trials, stimuli_dir)
    require_images([paths[i] for i in train_rows], train, "training perception trials")
    require_images([paths[i] for i in test_rows], trials.iloc[test_rows], "held-out perception trials")
    memory_rows = np.array([r for r in imagery_rows if trials.at[r, "cue"] != "text" and paths[r] is not None],
                           dtype=int)
    if len(memory_rows):
        require_images([paths[i] for i in memory_rows], trials.iloc[memory_rows], "imagery-from-memory cues")

    train_captions = train["caption"].tolist()
    if set(options.targets) & set(TEXT_SPACES):
        missing = sorted({s for s, c in zip(train["stimulus"], train_captions) if c == NA})
        if missing:
            raise InputMissingError(
                f"--target text/clip-text needs a caption for every training stimulus; {len(missing)} have none "
                f"(e.g. {missing[0]})", path=Path(stimuli_dir) / "stimuli.tsv",
                hint="add a `caption` (or `description`) column to stimuli/stimuli.tsv, or drop the text targets")
    text_spaces = {}
    if "text" in options.targets:
        text_spaces["text"] = TfidfTextSpace.fit(dict.fromkeys(train_captions))  # training captions only
    extractors = feature_extractors(options.targets, clip, text_spaces)
    prepared = PreparedTrials(trials=trials, split=split, stimuli_dir=Path(stimuli_dir), train_targets={},
                              memory_rows=memory_rows, text_spaces=text_spaces,
                              tiny=any(getattr(e, "is_tiny", False) for e in extractors.values()))
    labels_train = prepared.labels_train
    for space, extractor in extractors.items():
        if space in TEXT_SPACES:
            features = TargetFeatures(prepared, extractors, options.work_dir)(space, train_rows)
        else:
            features = stimulus_features([paths[i] for i in train_rows], extractor, work_dir=options.work_dir)
        if space == "pixels" and PIXEL_COMPONENTS:
            distinct = np.unique(labels_train, return_index=True)[1]
            prepared.pixel_basis = PixelBasis.fit(features[np.sort(distinct)], PIXEL_COMPONENTS)
            features = prepared.pixel_basis.transform(features)
        prepared.train_targets[space] = features
    if options.finetune_imagery and not len(memory_rows):
        LOGGER.warning("--finetune-imagery: no imagery-from-memory trial with a cue image (%d imagery trials, all "
                       "text-cued or without an image): the decoders are not fine-tuned", len(imagery_rows))
    if options.finetune_imagery and split.imagery_folds is not None and len(memory_rows):
        targets = TargetFeatures(prepared, extractors, options.work_dir)
        prepared.memory_targets = {space: targets(space, memory_rows) for space in extractors}
    return prepared


def memory_folds(trials: pd.DataFrame, memory_rows: np.ndarray, folds: np.ndarray) -> np.ndarray | None:
    """The fine-tuning folds of the imagery-from-memory rows, or None (with a warning) when they cannot be
    cross-validated.

    The split assigns folds over every imagery item, text-cued ones included; the memory items alone may then
    fall into a single fold (always so with one memory item), which would leave nothing to fine-tune on for
    that fold. Two or more memory items in one fold are spread over folds of their own (by item, so that the
    repeats of an item stay together); a single memory item cannot be held out from itself.
    """
    if len(np.unique(folds)) >= 2:
        return folds
    identity = trials["stimulus"].where(trials["stimulus"] != NA, trials["stim_file"]).to_numpy()[memory_rows]
    items, item_of_row = np.unique(identity.astype(str), return_inverse=True)
    if len(items) < 2:
        LOGGER.warning("--finetune-imagery: the imagery-from-memory trials show %d item: fine-tuning needs 2 or "
                       "more to hold one out; the decoders are not fine-tuned", len(items))
        return None
    return (item_of_row % min(len(items), 5)).astype(np.int64)


def fit_decoders(betas: np.ndarray, prepared: PreparedTrials, options: DecodingOptions) -> FittedDecoders:
    """Stage ``fit``: one decoder per target space on the training perception trials (``--decoder``, or the
    participant's map on a group ``--shared-decoder``); with ``--finetune-imagery`` each is then fine-tuned on
    imagery from memory, and the out-of-fold predictions of those trials are kept."""
    from .components import DECODERS

    split = prepared.split
    train_betas = betas[split.train]
    labels_train = prepared.labels_train
    decoders = {}
    for space, features in prepared.train_targets.items():
        if options.shared_decoders:  # a group-level model: only this participant's map is fitted
            from .shared import participant_decoder

            # no --top-k-voxels: the count is chosen by cross-validation (top_k="auto"); 0: every voxel (None)
            top_k = "auto" if options.top_k is None else (options.top_k or None)
            decoder = participant_decoder(options.shared_decoders, space, top_k=top_k,
                                          device=options.device, n_threads=options.n_threads, seed=options.seed)
        else:
            top_k = "auto" if options.top_k is None else (options.top_k or None)
            decoder = DECODERS.create(options.decoder, top_k=top_k, device=options.device,
                                      n_threads=options.n_threads, seed=options.seed)
        decoders[space] = decoder.fit(train_betas, features, labels=labels_train)
    finetuned: dict[str, dict[int, np.ndarray]] = {}
    if prepared.memory_targets:
        memory_rows = prepared.memory_rows
        memory_mask = np.isin(split.imagery, memory_rows)
        item_betas = ItemBetas(betas, split, options.standardise_imagery)
        folds = memory_folds(prepared.trials, memory_rows, split.imagery_folds[memory_mask])
        if folds is not None:
            for space in decoders:
                oof = decoders[space].fine_tune(item_betas(memory_rows), prepared.memory_targets[space], folds)
                finetuned[space] = dict(zip(memory_rows.tolist(), oof))
    return FittedDecoders(decoders, finetuned)


def predict_items(betas: np.ndarray, prepared: PreparedTrials, fitted: FittedDecoders, options: DecodingOptions,
                  clip=None) -> ItemPredictions:
    """Stage ``predict``: decoded features of every test item (held-out perception, imagery), rescaled to the
    training features per (condition, cue) group, and, with a text target, each item's caption retrieved from
    the bank. ``clip``: the loaded decoding CLIP model when ``clip-text`` is a target."""
    trials, split = prepared.trials, prepared.split
    item_betas = ItemBetas(betas, split, options.standardise_imagery)
    items = _items(trials, split.test, options.average_repeats) + _items(trials, split.imagery,
                                                                         options.average_repeats)
    if not items:
        raise BadDataError("No test items: no held-out perception or imagery trials to reconstruct")
    features = {}
    held_out_perception = set(int(r) for r in split.test)
    for space, decoder in fitted.decoders.items():
        finetuned = fitted.finetuned.get(space)
        rows = []
        for group in items:
            if finetuned is not None and all(int(r) in finetuned for r in group):
                rows.append(np.mean([finetuned[int(r)] for r in group], axis=0))
            else:
                # held-out perception items: the penalties chosen for them (BrainDecoder penalty="joint")
                rows.append(decoder.predict(item_betas(group).mean(axis=0, keepdims=True),
                                            perception=int(group[0]) in held_out_perception)[0])
        raw = np.stack(rows).astype(np.float32)
        # a NaN beta of one test trial (in a voxel the decoder uses) makes its item's prediction NaN, and the
        # per-group rescaling below then turned *every* item of its group into the training mean, silently:
        # identical reconstructions scored as if decoded. Training betas are checked when the decoder is fitted.
        bad = np.flatnonzero(~np.isfinite(raw).all(axis=1))
        if len(bad):
            first = trials.iloc[items[bad[0]]]
            raise BadDataError(
                f"the betas of {len(bad)} test item(s) contain NaN or infinite values in the voxels the decoder "
                f"uses (e.g. {first['condition'].iloc[0]} stimulus {first['stimulus'].iloc[0]}, trial row(s) "
                f"{', '.join(str(r) for r in items[bad[0]])})",
                hint="check the GLM outputs (statseries) or restrict the mask to voxels with finite betas")
        # rescaled within each (condition, cue) group: imagery predictions are weaker than perception ones, and
        # standardising them together would shrink one group and inflate the other. Held-out perception items
        # share the training condition, so they are centred on the training mean; other conditions on their own
        # mean; every group by one factor (the decoder's balance between dimensions kept)
        rescaled = np.empty_like(raw)
        for (condition, _cue), index in _group_indices(trials, items).items():
            rescaled[index] = rescale_items(raw[index], decoder.feature_mean, decoder.feature_sd,
                                            perception=condition == "perception")
        features[space] = rescaled

    table = _predictions_table(trials, items)
    # --- the text channel: the bank caption closest to each item's decoded text features ---------------------
    text_space = next((s for s in ("clip-text", "text") if s in features), None)
    table["caption"], table["caption_source"] = NA, NA
    if text_space is not None:
        from .text import CaptionBank, read_caption_file

        extractor = feature_extractors([text_space], clip, prepared.text_spaces)[text_space]
        train_captions = prepared.train_captions
        bank_texts = list(train_captions) + trials["cue_text"].tolist()
        bank_sources = ["training"] * len(train_captions) + ["cue"] * len(trials)
        if options.captions_file is not None:
            extra = read_caption_file(options.captions_file)
            bank_texts += extra
            bank_sources += ["file"] * len(extra)
        bank = CaptionBank(bank_texts, bank_sources)
        best = bank.retrieve(features[text_space], extractor, centre=fitted.decoders[text_space].feature_mean)
        table["caption"] = [bank.captions[i] for i in best]
        table["caption_source"] = [bank.sources[i] for i in best]
        LOGGER.info("captions retrieved from a bank of %d (%s space)", len(bank), text_space)
    return ItemPredictions(items=items, features=features, table=table)


def generate_reconstructions(predictions: ItemPredictions, prepared: PreparedTrials, options: DecodingOptions,
                             clip=None, pipeline=None) -> Reconstructions:
    """Stage ``generate``: one image per item, by ``--generator`` (``pixels``: the decoded pixels; ``unclip``:
    Stable unCLIP from the decoded CLIP embedding, the retrieved caption as prompt and the pixel image as
    low-level start), best of ``--candidates`` by the ``clip-cosine`` selector.

    ``clip``: the loaded decoding CLIP model (the selector's encoder); ``pipeline``: a loaded unCLIP pipeline
    and its info ``(pipeline, info)``, else it is loaded from ``options.models_dir``.
    """
    decoded_by_space, basis = predictions.features, prepared.pixel_basis
    n_items = len(predictions.items)
    pixel_images = None
    if "pixels" in decoded_by_space:
        pixel_images = [pixels_to_image(v, (PIXEL_SIZE, PIXEL_SIZE, 3), basis) for v in decoded_by_space["pixels"]]
    common_meta = {"Decoder": "shared" if options.shared_decoders else options.decoder,
                   "Targets": list(options.targets), "Seed": options.seed}
    if options.generator == "pixels":
        if pixel_images is None:
            raise BadDataError("--generator pixels needs --target pixels")
        how = (f"inverse PCA of decoded coefficients ({basis.n_components} components)" if basis is not None
               else "decoded pixel values")
        image_meta = [{**common_meta, "Generator": "pixels", "ModelsTiny": False, "Prompt": "",
                       "Candidates": 1, "CandidateIndex": 0, "CandidateSeed": options.seed,
                       "GeneratorDescription": f"{how}, {PIXEL_SIZE}x{PIXEL_SIZE} RGB, rescaled to the training "
                       "images' spread by one factor for all pixels (held-out perception: around the training "
                       "mean; imagery: around the items' own mean)"} for _ in range(n_items)]
        return Reconstructions(pixel_images, image_meta, "pixels", tiny=prepared.tiny)

    from .generate import generate_images
    from .select import candidate_seeds, save_candidates

    if "clip" not in decoded_by_space:
        raise BadDataError("--generator unclip needs --target clip")
    n_cand = max(1, int(options.candidates))
    seeds = candidate_seeds(options.seed, n_items, n_cand)
    decoded = decoded_by_space["clip"]
    text_space = next((s for s in ("clip-text", "text") if s in decoded_by_space), None)
    prompts = predictions.table["caption"].tolist() if text_space is not None else None
    repeat = (lambda values: [v for v in values for _ in range(n_cand)])
    loaded, info = pipeline if pipeline is not None else (None, None)
    flat_images, flat_meta = generate_images(
        options.models_dir, np.repeat(decoded, n_cand, axis=0), seeds=seeds.ravel().tolist(),
        low_level_images=repeat(pixel_images) if pixel_images is not None else None,
        prompts=repeat(prompts) if prompts is not None else None, device=options.device,
        n_threads=options.n_threads, pipeline=loaded, info=info)
    candidates = [flat_images[i * n_cand:(i + 1) * n_cand] for i in range(n_items)]
    chosen, similarity = np.zeros(n_items, dtype=int), np.ones((n_items, 1))
    candidate_paths = None
    if n_cand > 1:
        from .components import SELECTORS

        chosen, similarity = SELECTORS.create("clip-cosine", clip=clip).select(candidates, decoded)
        if options.work_dir is not None:
            candidate_paths = save_candidates(options.candidates_dir or Path(options.work_dir) / "candidates",
                                              candidates, seeds)
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
    tiny = prepared.tiny or any(m.get("ModelsTiny") for m in image_meta)
    return Reconstructions(images, image_meta, "clip", tiny=tiny)


def evaluate_items(betas: np.ndarray, prepared: PreparedTrials, fitted: FittedDecoders,
                   predictions: ItemPredictions, recon: Reconstructions, options: DecodingOptions, clip=None,
                   eval_extractors: dict | None = None) -> Evaluation:
    """Stage ``evaluate``: retrieval (top-1/top-5 in the predictions table, the retrieval table) and the metrics
    table, per (condition, cue) group, with ``options.n_perm`` permutations on ``options.device``.

    ``clip``: the loaded decoding CLIP model (targets in CLIP space, brain correlation); ``eval_extractors``:
    the loaded evaluation networks (``bids_m2i.evaluation.feature_spaces.load_feature_extractors``)."""
    from .text import TEXT_SPACES

    trials, split, items = prepared.trials, prepared.split, predictions.items
    decoders, predictions_by_space = fitted.decoders, predictions.features
    paths = prepared.paths
    extractors = feature_extractors(prepared.targets, clip, prepared.text_spaces)
    item_features = TargetFeatures(prepared, extractors, options.work_dir)
    item_betas = ItemBetas(betas, split, options.standardise_imagery)
    images, basis = recon.images, prepared.pixel_basis
    table = predictions.table.copy()
    train_rows, labels_train = split.train, prepared.labels_train
    retrieval_rows, metric_frames = [], []
    table["top1"], table["top5"] = NA, NA
    eval_extractors = eval_extractors or {}
    from ..models.tiny import TINY_MODELS_NOTE

    note = TINY_MODELS_NOTE if recon.tiny else ""
    brain = _brain_correlation_inputs(images, items, item_betas, betas[train_rows],
                                      [paths[i] for i in train_rows], labels_train, decoders, clip, options)
    primary = "clip" if "clip" in predictions_by_space else "pixels"
    # a target is what was seen: stimulus names of one image file are one candidate (splits.stimulus_identity),
    # else the two names would tie with each other and a perfect decoder could retrieve neither
    identity = stimulus_identity(trials).to_numpy()
    for (condition, cue), part in table.groupby(["condition", "cue"], sort=True):
        index = part.index.to_numpy()
        first_rows = [items[i][0] for i in index]
        target_ids = [str(identity[r]) for r in first_rows]
        target_feats: dict[str, np.ndarray] = {}
        target_images = None
        group_note = note
        # imagery without a target image (pure imagination; or an imagined item named without a stim_file, cue
        # "none", e.g. a trial_type naming it): no image metrics, scored like pure imagination. Such a group used
        # to go to the image branch and stop with a TypeError (exit 1) on its missing file
        no_image = any(paths[r] is None for r in first_rows)
        if condition == "imagery" and (cue == "text" or no_image):
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
                trials, train_rows, categories, prepared.train_targets, labels_train).items()
                if space not in cue_feats and space not in TEXT_SPACES}
            if cat_feats:
                evaluations.append((cat_feats, categories, _join(
                    note, "targets are categories: mean feature of the category's training stimuli")))
            if not evaluations:
                # this note goes on the brain_corr row, which is scored: say what is missing, not "nothing"
                missing = sum(t == NA for t in part["cue_text"])
                text_targets = [s for s in extractors if s in TEXT_SPACES or s == "clip"]
                if cue != "text":
                    why = ("imagery without a target image (stim_file n/a) and without categories of the training "
                           "stimuli: no image or feature target to score against")
                elif missing and text_targets:
                    why = (f"pure imagination: {missing} of {len(part)} items have no cue_text, so the "
                           f"{', '.join(text_targets)} target cannot be scored against the cues")
                else:
                    why = "pure imagination with pixel targets: the imagined image does not exist"
                evaluations.append(({}, target_ids, _join(note, why + "; only brain_corr (it needs no target) is "
                                                          "scored")))
        else:
            item_paths = [paths[r] for r in first_rows]
            # the centre square, as the decoder's targets (pixels: features.pixel_vector; CLIP's centre crop) and
            # every reconstruction are: a non-square stimulus squeezed whole into the metrics' 425 x 425 square put
            # its margins where the reconstruction has the centre, and a perfect reconstruction scored low
            target_images = [center_square(load_image(p)) for p in item_paths]
            for space in extractors:
                if space in TEXT_SPACES and any(trials.at[r, "caption"] == NA for r in first_rows):
                    # no caption for some of these stimuli: the text space cannot be scored. Say so: the rows
                    # used to be missing from the metrics table without a word
                    lacking = sorted({trials.at[r, "stimulus"] for r in first_rows if trials.at[r, "caption"] == NA})
                    LOGGER.warning("%s/%s: %d test stimulus(es) have no caption in stimuli/stimuli.tsv (e.g. %s): "
                                   "the %s target is not scored for this group", condition, cue, len(lacking),
                                   lacking[0], space)
                    continue
                target_feats[space] = item_features(space, first_rows)
            evaluations = [(target_feats, target_ids, group_note)]
        group_recon = [images[i] for i in index]
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
            frame = _evaluate(group_recon, target_images, preds, feats, ids, condition, cue, eval_extractors,
                              options, evaluation_note, group_brain if k == 0 else None)
            metric_frames.append(frame)
            if k == 0:
                target_feats, target_ids, first_preds = feats, ids, preds
        preds = first_preds
        table_space = primary if primary in target_feats else next((s for s in TEXT_SPACES if s in target_feats), None)
        if table_space is not None:
            hits, ranking = _retrieval(preds[table_space], target_feats[table_space], target_ids)
            table.loc[index, "top1"] = list(hits[1])
            table.loc[index, "top5"] = list(hits[5])
            candidate_files = {}
            for r, t in zip(first_rows, target_ids):
                candidate_files.setdefault(t, trials.at[r, "stim_file"] if cue != "text" else NA)
            for pos, i in enumerate(index):
                row = {"row": int(i), "condition": condition, "cue": cue, "stimulus": target_ids[pos]}
                for k, name in enumerate(ranking[pos][:5], start=1):
                    row[f"rank{k}"] = name
                    row[f"rank{k}_file"] = candidate_files.get(name, NA)
                retrieval_rows.append(row)
    frames = [f for f in metric_frames if not f.empty]
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Evaluation(table=table, retrieval=pd.DataFrame(retrieval_rows), metrics=metrics)


def split_summary(prepared: PreparedTrials, options: DecodingOptions) -> dict:
    """The split as the model sidecars record it."""
    standardised = options.standardise_imagery and len(prepared.split.imagery) >= 2
    return {**prepared.split.summary(), "imagery_betas": (
        "standardised per voxel over the imagery trials, onto the training trials' mean and sd"
        if standardised else "as estimated")}


def reconstruct_participant(betas: np.ndarray, trials: pd.DataFrame, stimuli_dir: Path,
                            options: DecodingOptions) -> DecodingResult:
    """All stages in one process: train on perception, predict held-out perception and imagery, generate,
    retrieve and evaluate (the workflow runs the same stages as separate nodes).

    Parameters
    ----------
    betas : (n_trials, n_voxels) in-mask single-trial betas, rows = ``trials`` rows
    trials : the statseries events tables of all tasks/sessions, concatenated (needs ``condition cue stimulus
        stim_file cue_text category``)
    stimuli_dir : BIDS_DIR/stimuli
    """
    clip = load_decoding_clip(options.models_dir, options.device) if needs_clip(options.targets) else None
    prepared = prepare_features(trials, stimuli_dir, options, clip=clip)
    fitted = fit_decoders(betas, prepared, options)
    predictions = predict_items(betas, prepared, fitted, options, clip=clip)
    recon = generate_reconstructions(predictions, prepared, options, clip=clip)
    eval_extractors = {}
    if options.models_dir:
        from ..evaluation.feature_spaces import load_feature_extractors

        eval_extractors = load_feature_extractors(options.models_dir, device=options.device)
    evaluation = evaluate_items(betas, prepared, fitted, predictions, recon, options, clip=clip,
                                eval_extractors=eval_extractors)
    return DecodingResult(predictions=evaluation.table, features=predictions.features[recon.feature_space],
                          feature_space=recon.feature_space, images=recon.images, image_metadata=recon.metadata,
                          retrieval=evaluation.retrieval, metrics=evaluation.metrics, decoders=fitted.decoders,
                          text_spaces=prepared.text_spaces, pixel_basis=prepared.pixel_basis,
                          split_summary=split_summary(prepared, options), tiny_models=recon.tiny)


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
    """Each item's top-1 / top-5 hit (``true``/``false``, ``n/a`` with fewer than 2 distinct targets) and its
    ranking of the distinct targets, best first.

    The hits follow the metrics table's rules (``evaluation.retrieval.topk_hits``): a candidate as similar as
    the true one counts against it, and one candidate retrieves nothing. Taking them from the ranking instead
    (a stable sort, ties in candidate order) made the predictions table say ``true`` where the metrics table
    scores a miss: with constant predictions or identical target features (every stimulus the same gray
    image) the first-listed target "won", and with a single distinct target every item was ``true``.
    """
    from ..evaluation.retrieval import distinct_targets, rank_candidates, topk_hits

    distinct = distinct_targets(target_ids, target_features)
    ranks = rank_candidates(predictions, distinct.features, metric="cosine")
    names = np.asarray(distinct.ids)
    ranking = [names[r].tolist() for r in ranks]
    if distinct.n_candidates < 2:
        hits = {k: np.full(len(ranks), NA, dtype=object) for k in (1, 5)}
    else:
        found = topk_hits(predictions, distinct.features, distinct.true_index, (1, 5), metric="cosine")
        hits = {k: np.array([str(bool(h)).lower() for h in found[k]], dtype=object) for k in (1, 5)}
    return hits, ranking


def _evaluate(recon, target_images, preds, target_feats, target_ids, condition, cue, extractors, options, note,
              brain=None):
    from ..evaluation.table import evaluate_reconstructions

    return evaluate_reconstructions(recon, target_images, preds, target_feats, target_ids, condition, cue,
                                    feature_extractors=extractors, n_perm=options.n_perm, seed=options.seed,
                                    note=note, device=options.device, brain_betas=brain)
