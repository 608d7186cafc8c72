"""nipype glue for decoding: one interface per stage of :mod:`bids_m2i.decoding.reconstruct`.

``DecodingFeatures`` -> ``FitDecoders`` -> ``PredictFeatures`` -> ``GenerateImages`` -> ``EvaluateReconstructions``.
Each reads the files of the stages before it (``bids_m2i.decoding.stage_files``), loads the model components
it needs (``bids_m2i.models``), calls its stage function and writes its results into its node directory, then
publishes those that are derivatives (models, images, tables) with the derivatives writer. nipype's cache then
reruns only the stages whose inputs changed: another ``--generator`` reruns generate and evaluate, the fitted
decoders are reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from nipype.interfaces.base import File, InputMultiObject, TraitedSpec, isdefined, traits

from .base import M2IInputSpec, M2IInterface, device_trait

NA = "n/a"


def load_betas(statseries: list[str], events: list[str], mask: np.ndarray, chunk_volumes: int = 32, *,
               top_k: int | None = None, seed: int = 0, fine_tune_imagery: bool = False,
               memory_gb: float | None = None):
    """Stack the in-mask betas of several statseries; their events tables become one trials table.

    Streams: the output (n_trials, n_voxels) float32 is allocated once, and each statseries is decompressed
    once, ``chunk_volumes`` volumes at a time, keeping only the mask's voxels. Peak memory is the output plus
    one chunk of volumes, so the voxel mask, not the grid, sets the cost: 40 sessions x 750 trials x 200k
    voxels is 24 GB in float32 whatever the reader.

    ``top_k`` (``--top-k-voxels``; with the split's ``seed`` and ``fine_tune_imagery``): return only the
    columns of the voxels the decoder keeps (the ``top_k`` of highest training ncsnr), chosen from statistics
    streamed session by session before any column is kept (:mod:`bids_m2i.decoding.streaming`; the per-stimulus
    sums of a voxel block use at most ``memory_gb``). The decoder's own selection then keeps all of them.
    """
    from ..decoding import streaming

    mask = np.asarray(mask, dtype=bool)
    if top_k:
        selected = streaming.load_selected_betas(
            statseries, events, mask, int(top_k), seed=seed, fine_tune_imagery=fine_tune_imagery,
            memory_gb=memory_gb or streaming.DEFAULT_MEMORY_GB, chunk_volumes=chunk_volumes)
        return selected.betas, selected.trials
    series, trials = streaming.read_series(statseries, events, mask)
    return streaming.read_columns(series, streaming.fortran_indices(mask), chunk_volumes), trials


def source_names(events: list[str], names: list[str]) -> np.ndarray:
    """The ``source`` column of the stacked trials table: statseries ``i``'s derivative name on each of its rows.

    By position, not by file name: every GLM node writes ``statseries.nii.gz`` in its own folder, so a map
    from basenames would give every row the last series' name (all sessions and tasks but one mislabelled).
    """
    counts = [len(pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)) for path in events]
    if len(names) != len(counts):
        raise ValueError(f"{len(names)} statseries names for {len(counts)} events tables")
    return np.repeat(np.asarray(names, dtype=object), counts)


#: fewer ROI voxels than this inside the brain mask get a warning (the decoder still runs)
FEW_ROI_VOXELS = 20


def check_roi_overlap(brain: np.ndarray, roi: np.ndarray, roi_path) -> int:
    """Voxels of ``roi`` inside ``brain``: none stops with exit 65 and says why, very few warn."""
    import logging

    from ..errors import BadDataError

    inside = int(np.count_nonzero(brain & roi))
    if inside == 0:
        raise BadDataError(f"--roi-mask {roi_path} leaves no voxel to decode from: its {int(roi.sum())} voxels "
                           f"all lie outside the participant's brain mask ({int(brain.sum())} voxels)",
                           path=roi_path, hint="check that the ROI is on the participant grid "
                           "(same affine as sub-XX_desc-brain_mask.nii.gz) and overlaps the brain")
    if inside < FEW_ROI_VOXELS:
        logging.getLogger("m2i.decoding").warning(
            "--roi-mask leaves only %d voxel(s) inside the brain mask: decoding from so few voxels is rarely "
            "above chance", inside)
    return inside


class _StageInputSpec(M2IInputSpec):
    """What every stage needs: the run's settings that are not data."""

    seed = traits.Int(0, usedefault=True)
    device = device_trait()
    n_threads = traits.Int(1, usedefault=True)
    work_dir = traits.Str(mandatory=True, desc="the run's work dir (feature cache)")


class _PreparedInputSpec(_StageInputSpec):
    """The ``features`` stage's files."""

    betas = File(exists=True, mandatory=True, desc="betas.npy (trials x voxels)")
    trials = File(exists=True, mandatory=True, desc="trials.tsv")
    targets = File(exists=True, mandatory=True, desc="targets.npz")
    prepared = File(exists=True, mandatory=True, desc="prepared.json")


def _options(inputs, **values):
    """The engine's options from a node's inputs (only the settings this node has)."""
    from ..decoding.reconstruct import DecodingOptions

    names = inputs.trait_names()
    common = {"seed": inputs.seed, "device": inputs.device, "n_threads": inputs.n_threads,
              "work_dir": Path(inputs.work_dir)}
    if "models_dir" in names:
        common["models_dir"] = Path(inputs.models_dir) if inputs.models_dir else None
    if "shared_decoders" in names:
        common["shared_decoders"] = tuple(Path(p) for p in inputs.shared_decoders)
    return DecodingOptions(**{**common, **values})


def _prepared(inputs):
    from ..decoding.stage_files import load_betas_file, load_prepared

    return load_betas_file(inputs.betas), load_prepared(inputs.trials, inputs.targets, inputs.prepared)


def _clip(options, targets):
    """The decoding CLIP model, loaded once per node, when a target needs it."""
    from ..decoding.reconstruct import needs_clip
    from ..models.loading import load_decoding_clip

    return load_decoding_clip(options.models_dir, options.device) if needs_clip(targets) else None


def _derivative(output_dir, subject, **kw):
    from ..bids.derivatives import derivative_path

    return derivative_path(Path(output_dir), subject=subject, **kw)


def _name_entities(inputs, **entities) -> dict:
    """The entities of an output's name: subject, the space entities of the betas decoded (so that runs with
    another --space into one OUTPUT_DIR keep their own decoding outputs, as the GLM outputs do), then these."""
    space = inputs.space_entities if isdefined(inputs.space_entities) else {}
    return {"subject": inputs.subject, **space, **entities}


# --- features ----------------------------------------------------------------------------------------------------
class _FeaturesInputSpec(_StageInputSpec):
    statseries = InputMultiObject(File(exists=True), mandatory=True)
    events = InputMultiObject(File(exists=True), mandatory=True)
    statseries_names = traits.List(traits.Str(), desc="derivative names of the statseries (for the tables)")
    mask = File(exists=True, mandatory=True)
    roi_mask = File(exists=True, desc="voxel-selection mask on the participant grid")
    stimuli_dir = traits.Str(mandatory=True)
    targets = traits.List(traits.Str(), mandatory=True)
    finetune_imagery = traits.Bool(False, usedefault=True)
    models_dir = traits.Str("", usedefault=True)
    top_k = traits.Int(-1, usedefault=True, desc="--top-k-voxels k > 0: read only the k chosen voxels "
                       "(decoding/streaming.py); -1 (count chosen by CV) and 0 (every voxel) read the whole mask")


class _FeaturesOutputSpec(TraitedSpec):
    betas = File(exists=True)
    trials = File(exists=True)
    targets = File(exists=True)
    prepared = File(exists=True)


class DecodingFeatures(M2IInterface):
    """Stage ``features``: in-mask betas of every statseries, the leak-free split, training targets."""

    input_spec = _FeaturesInputSpec
    output_spec = _FeaturesOutputSpec

    def _run(self, runtime):
        import nibabel as nib

        from ..decoding.reconstruct import prepare_features
        from ..decoding.stage_files import save_betas, save_prepared
        from ..utils.torch_runtime import blas_threads

        inputs = self.inputs
        mask = np.asarray(nib.load(inputs.mask).dataobj) > 0
        if inputs.roi_mask:
            roi = nib.load(inputs.roi_mask)
            if roi.shape[:3] != mask.shape:
                from ..errors import BadDataError

                raise BadDataError(f"--roi-mask {inputs.roi_mask} is not on the participant grid "
                                   f"({roi.shape[:3]} vs {mask.shape})", path=inputs.roi_mask,
                                   hint="resample the ROI onto the participant grid (sub-XX_desc-brain_mask.nii.gz)")
            check_roi_overlap(mask, np.asarray(roi.dataobj).reshape(mask.shape) > 0, inputs.roi_mask)
            mask &= np.asarray(roi.dataobj).reshape(mask.shape) > 0
        # with --top-k-voxels only the chosen voxels are read (chosen from streamed statistics, same split)
        top_k = inputs.top_k if inputs.top_k > 0 else None
        betas, trials = load_betas(list(inputs.statseries), list(inputs.events), mask, top_k=top_k,
                                   seed=inputs.seed, fine_tune_imagery=inputs.finetune_imagery)
        if inputs.statseries_names:
            trials["source"] = source_names(list(inputs.events), list(inputs.statseries_names))
        options = _options(inputs, targets=tuple(inputs.targets), finetune_imagery=inputs.finetune_imagery)
        with blas_threads(inputs.n_threads):
            prepared = prepare_features(trials, Path(inputs.stimuli_dir), options,
                                        clip=_clip(options, options.targets))
        cwd = Path(runtime.cwd)
        files = save_prepared(cwd, prepared)
        self._results.update({"betas": str(save_betas(cwd, betas)), **{k: str(v) for k, v in files.items()}})


# --- fit ---------------------------------------------------------------------------------------------------------
class _FitInputSpec(_PreparedInputSpec):
    decoder = traits.Str("ridge", usedefault=True)
    top_k = traits.Int(-1, usedefault=True, desc="-1: count chosen by CV; 0: every voxel; k: k of highest ncsnr")
    # File traits: nipype hashes the files, so a retrained shared model refits
    shared_decoders = traits.List(File(exists=True), desc="shared decoder files (group level) fitted instead of new "
                                  "decoders")
    subject = traits.Str(mandatory=True)
    output_dir = traits.Str(mandatory=True)
    space_entities = traits.Dict(traits.Str(), traits.Str(), desc="space (+ cohort, res) of the outputs' names "
                                 "(fMRIPrep inputs); not set for the participant's own grid")
    statseries_names = traits.List(traits.Str(), desc="derivative names of the statseries (model sidecars)")


class _FitOutputSpec(TraitedSpec):
    models = traits.List(File(exists=True), desc="one fitted decoder per target (.safetensors + .json), in order")
    finetuned = File(exists=True, desc="out-of-fold predictions of the fine-tuning trials")
    out_derivatives = traits.List(File(), desc="files published in the derivatives dataset")


class FitDecoders(M2IInterface):
    """Stage ``fit``: one decoder per target (``sub-<label>_desc-<target><decoder>_model.safetensors``)."""

    input_spec = _FitInputSpec
    output_spec = _FitOutputSpec

    def _run(self, runtime):
        from ..decoding.reconstruct import fit_decoders, split_summary
        from ..decoding.stage_files import save_fitted
        from ..utils.torch_runtime import blas_threads
        from .derivatives import publish_derivative

        inputs = self.inputs
        betas, prepared = _prepared(inputs)
        options = _options(inputs, targets=prepared.targets, decoder=inputs.decoder,
                           top_k=None if inputs.top_k < 0 else inputs.top_k)
        with blas_threads(inputs.n_threads):
            fitted = fit_decoders(betas, prepared, options)
        files = save_fitted(Path(runtime.cwd), fitted, prepared)
        label = "shared" if inputs.shared_decoders else inputs.decoder
        written = []
        for space, model in zip(fitted.decoders, files["models"]):
            sidecar = model.with_suffix(".json")
            meta = json.loads(sidecar.read_text())
            meta.update({"Target": space, "Split": split_summary(prepared, options),
                         "Sources": list(inputs.statseries_names)})
            # entity values are alphanumeric: clip-text -> cliptext
            written += publish_derivative(model, inputs.output_dir, entities=_name_entities(
                inputs, desc=f"{space.replace('-', '')}{label}"), datatype="decoding",
                suffix="model", extension=".safetensors", metadata=meta)
        self._results.update({"models": [str(p) for p in files["models"]], "finetuned": str(files["finetuned"]),
                              "out_derivatives": written})


class _FittedInputSpec(_PreparedInputSpec):
    models = traits.List(File(exists=True), mandatory=True)
    finetuned = File(exists=True, mandatory=True)
    shared_decoders = traits.List(File(exists=True), desc="the group models the fitted maps belong to")
    models_dir = traits.Str("", usedefault=True)


def _fitted(inputs, prepared):
    from ..decoding.stage_files import load_fitted

    return load_fitted(list(inputs.models), inputs.finetuned, prepared.targets, device=inputs.device,
                       shared_decoders=tuple(inputs.shared_decoders))


# --- predict -----------------------------------------------------------------------------------------------------
class _PredictInputSpec(_FittedInputSpec):
    average_repeats = traits.Bool(True, usedefault=True)
    captions = traits.Str("", usedefault=True, desc="--captions FILE (extra bank captions)")


class _PredictOutputSpec(TraitedSpec):
    predictions = File(exists=True, desc="predictions.npz: decoded features per space, items")
    table = File(exists=True, desc="items.tsv: one row per test item, with the retrieved caption")


class PredictFeatures(M2IInterface):
    """Stage ``predict``: decoded (rescaled) features of every test item, and its retrieved caption."""

    input_spec = _PredictInputSpec
    output_spec = _PredictOutputSpec

    def _run(self, runtime):
        from ..decoding.reconstruct import predict_items
        from ..decoding.stage_files import save_predictions
        from ..utils.torch_runtime import blas_threads

        inputs = self.inputs
        betas, prepared = _prepared(inputs)
        options = _options(inputs, targets=prepared.targets, average_repeats=inputs.average_repeats,
                           captions_file=Path(inputs.captions) if inputs.captions else None)
        clip = _clip(options, [t for t in prepared.targets if t == "clip-text"])
        with blas_threads(inputs.n_threads):
            predictions = predict_items(betas, prepared, _fitted(inputs, prepared), options, clip=clip)
        files = save_predictions(Path(runtime.cwd), predictions)
        self._results.update({k: str(v) for k, v in files.items()})


# --- generate ----------------------------------------------------------------------------------------------------
class _GenerateInputSpec(_StageInputSpec):
    trials = File(exists=True, mandatory=True)
    targets = File(exists=True, mandatory=True)
    prepared = File(exists=True, mandatory=True)
    predictions = File(exists=True, mandatory=True)
    table = File(exists=True, mandatory=True)
    generator = traits.Str("pixels", usedefault=True)
    candidates = traits.Int(1, usedefault=True, desc="best of N generated images per item")
    decoder = traits.Str("ridge", usedefault=True, desc="for the sidecars")
    shared_decoders = traits.List(File(exists=True), desc="the group models of the decoders (sidecars say shared)")
    models_dir = traits.Str("", usedefault=True)
    subject = traits.Str(mandatory=True)
    output_dir = traits.Str(mandatory=True)
    space_entities = traits.Dict(traits.Str(), traits.Str(), desc="space (+ cohort, res) of the outputs' names "
                                 "(fMRIPrep inputs); not set for the participant's own grid")


class _GenerateOutputSpec(TraitedSpec):
    images = traits.List(File(exists=True), desc="one PNG per item, rows of the predictions table")
    image_meta = File(exists=True, desc="reconstructions.json: the images' sidecar metadata")
    features = File(exists=True, desc="the decoded features that conditioned the generator")
    out_derivatives = traits.List(File(), desc="files published in the derivatives dataset")


class GenerateImages(M2IInterface):
    """Stage ``generate``: ``sub-<label>_trial-<NNNN>_desc-recon_image.png`` (+ .json) per item and the decoded
    features of the generation space (``sub-<label>_desc-predictions_features.npy``)."""

    input_spec = _GenerateInputSpec
    output_spec = _GenerateOutputSpec

    def _run(self, runtime):
        from ..decoding.reconstruct import generate_reconstructions
        from ..decoding.stage_files import load_predictions, load_prepared, save_reconstructions
        from ..utils.torch_runtime import blas_threads
        from .derivatives import publish_derivative

        inputs = self.inputs
        prepared = load_prepared(inputs.trials, inputs.targets, inputs.prepared)
        predictions = load_predictions(inputs.predictions, inputs.table)
        # best-of-N candidates in this node's folder: under the shared work dir their names (item, candidate,
        # seed) were the same for every participant, and one participant's overwrote another's
        options = _options(inputs, targets=prepared.targets, generator=inputs.generator,
                           candidates=inputs.candidates, decoder=inputs.decoder,
                           candidates_dir=Path(runtime.cwd) / "candidates")
        clip, pipeline = None, None
        if inputs.generator == "unclip":
            from ..models.loading import load_unclip_pipeline

            if options.models_dir is None:
                from ..errors import InputMissingError

                raise InputMissingError("--generator unclip needs a models folder",
                                        hint="pass --models-dir or set M2I_MODELS_DIR (see docs/models.md)")
            if "clip" in prepared.targets:
                pipeline = load_unclip_pipeline(options.models_dir, device=options.device)
            if inputs.candidates > 1:
                clip = _clip(options, prepared.targets)
        with blas_threads(inputs.n_threads):
            recon = generate_reconstructions(predictions, prepared, options, clip=clip, pipeline=pipeline)
        files = save_reconstructions(Path(runtime.cwd), recon, predictions.features[recon.feature_space])
        out, table, written = inputs.output_dir, predictions.table, []
        for row, (image, meta) in enumerate(zip(files["images"], recon.metadata)):
            item = table.iloc[row]
            sidecar = {**meta, "SourceVolumes": item["trial_index"], "Statseries": item["source"],
                       "Stimulus": item["stimulus"], "Condition": item["condition"], "Cue": item["cue"],
                       "Target": item["stim_file"] if item["cue"] != "text" else item["cue_text"],
                       "PredictionsRow": row}
            written += publish_derivative(image, out, entities=_name_entities(inputs, trial=f"{row:04d}",
                                                                              desc="recon"),
                                          datatype="images", suffix="image", extension=".png", metadata=sidecar)
        written += publish_derivative(files["features"], out, entities=_name_entities(inputs, desc="predictions"),
                                      datatype="decoding", suffix="features", extension=".npy", metadata={
                                          "FeatureSpace": recon.feature_space, "Rows": "rows of the predictions table",
                                          "Description": "decoded features rescaled to the training features' "
                                          "spread by one factor for all dimensions (held-out perception items: "
                                          "around the training mean; imagery items: around their own mean)"})
        self._results.update({"images": [str(p) for p in files["images"]], "image_meta": str(files["meta"]),
                              "features": str(files["features"]), "out_derivatives": written})


# --- evaluate ----------------------------------------------------------------------------------------------------
class _EvaluateInputSpec(_FittedInputSpec):
    predictions = File(exists=True, mandatory=True)
    table = File(exists=True, mandatory=True)
    images = traits.List(File(exists=True), mandatory=True)
    image_meta = File(exists=True, mandatory=True)
    n_perm = traits.Int(1000, usedefault=True, desc="permutations of every metric's p-value")
    subject = traits.Str(mandatory=True)
    output_dir = traits.Str(mandatory=True)
    space_entities = traits.Dict(traits.Str(), traits.Str(), desc="space (+ cohort, res) of the outputs' names "
                                 "(fMRIPrep inputs); not set for the participant's own grid")


class _EvaluateOutputSpec(TraitedSpec):
    metrics = File(desc="the metrics table (in the derivatives)")
    out_derivatives = traits.List(File(), desc="files published in the derivatives dataset")


class EvaluateReconstructions(M2IInterface):
    """Stage ``evaluate``: the predictions table (with retrieval top-1/top-5), retrieval, metrics and
    conditions tables."""

    input_spec = _EvaluateInputSpec
    output_spec = _EvaluateOutputSpec

    def _run(self, runtime):
        from ..decoding.reconstruct import evaluate_items
        from ..decoding.stage_files import load_predictions, load_reconstructions
        from ..evaluation.table import conditions_side_by_side, write_metrics_table
        from ..utils.atomic import write_tsv
        from ..utils.torch_runtime import blas_threads
        from .derivatives import publish_derivative

        inputs = self.inputs
        betas, prepared = _prepared(inputs)
        options = _options(inputs, targets=prepared.targets, n_perm=inputs.n_perm)
        eval_extractors = {}
        if options.models_dir is not None:
            from ..evaluation.feature_spaces import load_feature_extractors

            eval_extractors = load_feature_extractors(options.models_dir, device=options.device)
        with blas_threads(inputs.n_threads):
            evaluation = evaluate_items(
                betas, prepared, _fitted(inputs, prepared), load_predictions(inputs.predictions, inputs.table),
                load_reconstructions(inputs.images, inputs.image_meta), options,
                clip=_clip(options, prepared.targets), eval_extractors=eval_extractors)
        cwd, out = Path(runtime.cwd), inputs.output_dir
        table = evaluation.table.copy()
        table["image"] = [_derivative(out, **_name_entities(inputs, trial=f"{row:04d}", desc="recon"),
                                      datatype="images", suffix="image", extension=".png")
                          .relative_to(Path(out)).as_posix()
                          for row in range(len(table))]
        columns = ["trial_index", "source", "condition", "cue", "stimulus", "category", "stim_file", "cue_text",
                   "n_repeats", "image", "top1", "top5", "caption", "caption_source"]
        write_tsv(cwd / "predictions_table.tsv", table[columns])
        write_tsv(cwd / "retrieval_table.tsv", evaluation.retrieval if not evaluation.retrieval.empty else
                  pd.DataFrame(columns=["row", "condition", "cue", "stimulus"]))
        write_metrics_table(evaluation.metrics, cwd / "metrics_table.tsv")
        # vision and imagery side by side (one row per metric and feature space, one column per condition)
        write_tsv(cwd / "conditions_table.tsv", conditions_side_by_side(evaluation.metrics))
        written = []
        for name in ("conditions", "predictions", "retrieval", "metrics"):
            written += publish_derivative(cwd / f"{name}_table.tsv", out, entities=_name_entities(inputs, desc=name),
                                          datatype="decoding", suffix="table", extension=".tsv")
        self._results.update({"metrics": written[-1], "out_derivatives": written})
