"""nipype glue for decoding: read the statseries, call :func:`bids_m2i.decoding.reconstruct
.reconstruct_participant`, write models, predictions, images and metrics into the derivatives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from nipype.interfaces.base import BaseInterfaceInputSpec, File, InputMultiObject, TraitedSpec, traits

from .base import M2IInterface

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


class _ReconstructInputSpec(BaseInterfaceInputSpec):
    statseries = InputMultiObject(File(exists=True), mandatory=True)
    events = InputMultiObject(File(exists=True), mandatory=True)
    statseries_names = traits.List(traits.Str(), desc="derivative names of the statseries (for the tables)")
    mask = File(exists=True, mandatory=True)
    roi_mask = File(exists=True, desc="voxel-selection mask on the participant grid")
    subject = traits.Str(mandatory=True)
    output_dir = traits.Str(mandatory=True)
    stimuli_dir = traits.Str(mandatory=True)
    work_dir = traits.Str(mandatory=True)
    targets = traits.List(traits.Str(), mandatory=True)
    decoder = traits.Str("ridge", usedefault=True)
    generator = traits.Str("pixels", usedefault=True)
    average_repeats = traits.Bool(True, usedefault=True)
    top_k = traits.Int(0, usedefault=True)
    finetune_imagery = traits.Bool(False, usedefault=True)
    models_dir = traits.Str("", usedefault=True)
    seed = traits.Int(0, usedefault=True)
    device = traits.Str("cpu", usedefault=True)
    n_threads = traits.Int(1, usedefault=True)
    captions = traits.Str("", usedefault=True, desc="--captions FILE (extra bank captions)")
    candidates = traits.Int(1, usedefault=True, desc="best of N generated images per item")
    # File traits: nipype hashes the files, so a retrained shared model reruns the decoding
    shared_decoders = traits.List(File(exists=True), desc="shared decoder files (group level) fitted instead of new "
                                  "decoders")


class _ReconstructOutputSpec(TraitedSpec):
    derivatives = traits.List(File(), desc="every file written into the derivatives")
    metrics = File(desc="the metrics table")


class ReconstructImages(M2IInterface):
    input_spec = _ReconstructInputSpec
    output_spec = _ReconstructOutputSpec

    def _run(self, runtime):
        import nibabel as nib

        from ..bids.derivatives import derivative_path
        from ..decoding.reconstruct import DecodingOptions, reconstruct_participant
        from ..utils.atomic import link_identical_copies, save_npy, save_png, write_json, write_tsv

        inputs = self.inputs
        mask = np.asarray(nib.load(inputs.mask).dataobj) > 0
        if inputs.roi_mask:
            roi = nib.load(inputs.roi_mask)
            if roi.shape[:3] != mask.shape:
                from ..errors import BadDataError

                raise BadDataError(f"--roi-mask {inputs.roi_mask} is not on the participant grid "
                                   f"({roi.shape[:3]} vs {mask.shape})", path=inputs.roi_mask,
                                   hint="resample the ROI onto the participant grid (sub-XX_desc-brain_mask.nii.gz)")
            mask &= np.asarray(roi.dataobj) > 0
        # with --top-k-voxels only the chosen voxels are read (chosen from streamed statistics, same split)
        betas, trials = load_betas(list(inputs.statseries), list(inputs.events), mask, top_k=inputs.top_k or None,
                                   seed=inputs.seed, fine_tune_imagery=inputs.finetune_imagery)
        if inputs.statseries_names:
            names = dict(zip([Path(p).name for p in inputs.statseries], inputs.statseries_names))
            trials["source"] = trials["source"].map(lambda n: names.get(n, n))
        options = DecodingOptions(
            targets=tuple(inputs.targets), decoder=inputs.decoder, generator=inputs.generator,
            average_repeats=inputs.average_repeats, top_k=inputs.top_k or None,
            finetune_imagery=inputs.finetune_imagery, models_dir=Path(inputs.models_dir) if inputs.models_dir else None,
            seed=inputs.seed, device=inputs.device, n_threads=inputs.n_threads, work_dir=Path(inputs.work_dir),
            captions_file=Path(inputs.captions) if inputs.captions else None, candidates=inputs.candidates,
            shared_decoders=tuple(Path(p) for p in inputs.shared_decoders),
        )
        from ..utils.torch_runtime import blas_threads

        # numpy's BLAS pool as --omp-nthreads says, whatever process runs the node (MultiProc with one process
        # runs it in the main one): float sums, and so the metrics, are then the same bytes on every rerun
        with blas_threads(inputs.n_threads):
            result = reconstruct_participant(betas, trials, Path(inputs.stimuli_dir), options)

        out, subject, written = Path(inputs.output_dir), inputs.subject, []

        def path(**kw):
            return derivative_path(out, subject=subject, **kw)

        for space, decoder in result.decoders.items():
            label = "shared" if inputs.shared_decoders else inputs.decoder
            # entity values are alphanumeric: clip-text -> cliptext
            model_path = path(datatype="decoding", desc=f"{space.replace('-', '')}{label}", suffix="model",
                              extension=".safetensors")
            extra = result.pixel_basis.to_arrays() if space == "pixels" and result.pixel_basis is not None else None
            decoder.save(model_path, extra_arrays=extra)  # the PCA basis (if any) travels with the pixel decoder
            # the fit's cache in WORK/decoders holds the same bytes: keep them once on disk (issue 16)
            link_identical_copies(model_path, Path(inputs.work_dir) / "decoders", "*.safetensors")
            sidecar = model_path.with_suffix(".json")
            meta = json.loads(sidecar.read_text())
            meta.update({"Target": space, "Split": result.split_summary, "Sources": list(inputs.statseries_names or
                                                                                          inputs.statseries)})
            write_json(sidecar, meta)
            written += [str(model_path), str(sidecar)]

        table = result.predictions.copy()
        image_names = []
        for row, (image, meta) in enumerate(zip(result.images, result.image_metadata)):
            image_path = path(datatype="images", trial=f"{row:04d}", desc="recon", suffix="image", extension=".png")
            save_png(image_path, image)
            item = table.iloc[row]
            sidecar = {**meta, "SourceVolumes": item["trial_index"], "Statseries": item["source"],
                       "Stimulus": item["stimulus"], "Condition": item["condition"], "Cue": item["cue"],
                       "Target": item["stim_file"] if item["cue"] != "text" else item["cue_text"],
                       "PredictionsRow": row}
            write_json(image_path.with_suffix(".json"), sidecar)
            image_names.append(image_path.relative_to(out).as_posix())
            written += [str(image_path), str(image_path.with_suffix(".json"))]
        table["image"] = image_names
        columns = ["trial_index", "source", "condition", "cue", "stimulus", "category", "stim_file", "cue_text",
                   "n_repeats", "image", "top1", "top5", "caption", "caption_source"]
        table_path = path(datatype="decoding", desc="predictions", suffix="table", extension=".tsv")
        write_tsv(table_path, table[columns])
        features_path = path(datatype="decoding", desc="predictions", suffix="features", extension=".npy")
        save_npy(features_path, result.features)
        write_json(features_path.with_suffix(".json"), {
            "FeatureSpace": result.feature_space, "Rows": "rows of the predictions table",
            "Description": "decoded features rescaled to the training features' mean and sd"})
        retrieval_path = path(datatype="decoding", desc="retrieval", suffix="table", extension=".tsv")
        write_tsv(retrieval_path, result.retrieval if not result.retrieval.empty else pd.DataFrame(
            columns=["row", "condition", "cue", "stimulus"]))
        metrics_path = path(datatype="decoding", desc="metrics", suffix="table", extension=".tsv")
        from ..evaluation.table import write_metrics_table

        write_metrics_table(result.metrics, metrics_path)
        # vision and imagery side by side (one row per metric and feature space, one column per condition)
        from ..evaluation.table import conditions_side_by_side

        conditions_path = path(datatype="decoding", desc="conditions", suffix="table", extension=".tsv")
        write_tsv(conditions_path, conditions_side_by_side(result.metrics))
        written.append(str(conditions_path))
        written += [str(table_path), str(features_path), str(features_path.with_suffix(".json")),
                    str(retrieval_path), str(metrics_path)]
        self._results["derivatives"] = written
        self._results["metrics"] = str(metrics_path)
