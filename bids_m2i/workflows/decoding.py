"""Decoding: betas of every task and session -> features -> fit -> predict -> generate -> evaluate.

One node per stage of :mod:`bids_m2i.decoding.reconstruct`, each passing files to the next (see
``docs/decoding.md``). Every setting goes to the first stage that uses it, so nipype's cache reruns only what
a changed setting affects: ``--generator`` / ``--candidates`` rerun generate and evaluate, the evaluation's
settings only evaluate; the fitted decoders are reused.

```
inputnode ─► decode_features ─► decode_fit ─► decode_predict ─► decode_generate ─► decode_evaluate ─► outputnode
             betas, split,      decoders       decoded features  images (+ sidecars) tables (predictions,
             training targets   (models)       + captions        predictions features retrieval, metrics)
```
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.decoding import (DecodingFeatures, EvaluateReconstructions, FitDecoders, GenerateImages,
                                   PredictFeatures)
from .preproc import _device

PREPARED = ["betas", "trials", "targets", "prepared"]


def init_decoding_wf(config, subject_inputs, task_sessions, output_dir: str, work_dir, name: str = "decoding_wf"):
    """Inputs: ``statseries_<i>``, ``events_<i>``, ``ncsnr_<i>`` for each (task, session) and ``brain_mask``.
    Outputs: ``metrics`` and ``derivatives`` (every file written)."""
    from .base import collect_derivatives

    workflow = pe.Workflow(name=name)
    n = len(task_sessions)
    fields = ["brain_mask"] + [f"{kind}_{i}" for i in range(n) for kind in ("statseries", "events", "ncsnr")]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["metrics", "derivatives"]), name="outputnode")
    merge_series = pe.Node(niu.Merge(n), name="merge_statseries", run_without_submitting=True)
    merge_events = pe.Node(niu.Merge(n), name="merge_events", run_without_submitting=True)
    for i in range(n):
        workflow.connect([(inputnode, merge_series, [(f"statseries_{i}", f"in{i + 1}")]),
                          (inputnode, merge_events, [(f"events_{i}", f"in{i + 1}")])])
    # the statseries' derivative names (with the GLM method): the tables' `source` column, read by the group level
    from ..bids.derivatives import derivative_path

    names = [derivative_path(output_dir, subject=subject_inputs.subject, session=s, task=t, **config.space_entities,
                             stat="effect", desc=config.glm_label, suffix="statseries", extension=".nii.gz").name
             for t, s in task_sessions]
    models_dir = str(config.resolved_models_dir) if config.resolved_models_dir else ""
    shared = [str(p) for p in config.shared_decoder]
    common = dict(seed=config.seed, device=_device(config), n_threads=config.n_threads, work_dir=str(work_dir))
    publish = dict(subject=subject_inputs.subject, output_dir=output_dir)
    if config.space_entities:  # set only when there are some: the func runs' node hashes stay as they were
        publish["space_entities"] = dict(config.space_entities)

    def node(interface, name):
        return pe.Node(interface, name=name, n_procs=config.n_threads)

    top_k = -1 if config.top_k_voxels is None else config.top_k_voxels  # -1: count chosen by CV; 0: every voxel
    # with --top-k-voxels k the features stage reads only the k chosen voxels (streamed choice, issue 16)
    features = node(DecodingFeatures(
        stimuli_dir=str(subject_inputs.stimuli_dir), targets=list(config.target), statseries_names=names,
        finetune_imagery=config.finetune_imagery, models_dir=models_dir, top_k=top_k, **common), "decode_features")
    if config.roi_mask:
        features.inputs.roi_mask = str(config.roi_mask)
    fit = node(FitDecoders(decoder=config.decoder, top_k=top_k, shared_decoders=shared,
                           statseries_names=names, **publish, **common), "decode_fit")
    predict = node(PredictFeatures(average_repeats=config.average_repeats, shared_decoders=shared,
                                   captions=str(config.captions) if config.captions else "", models_dir=models_dir,
                                   **common), "decode_predict")
    generate = node(GenerateImages(generator=config.generator, candidates=config.candidates or 1,
                                   decoder=config.decoder, shared_decoders=shared, models_dir=models_dir, **publish,
                                   **common), "decode_generate")
    evaluate = node(EvaluateReconstructions(n_perm=config.permutations, shared_decoders=shared,
                                            models_dir=models_dir, **publish, **common), "decode_evaluate")
    prepared = [(f, f) for f in PREPARED]
    workflow.connect([
        (merge_series, features, [("out", "statseries")]),
        (merge_events, features, [("out", "events")]),
        (inputnode, features, [("brain_mask", "mask")]),
        (features, fit, prepared),
        (features, predict, prepared),
        (fit, predict, [("models", "models"), ("finetuned", "finetuned")]),
        (features, generate, [(f, f) for f in ("trials", "targets", "prepared")]),
        (predict, generate, [("predictions", "predictions"), ("table", "table")]),
        (features, evaluate, prepared),
        (fit, evaluate, [("models", "models"), ("finetuned", "finetuned")]),
        (predict, evaluate, [("predictions", "predictions"), ("table", "table")]),
        (generate, evaluate, [("images", "images"), ("image_meta", "image_meta")]),
        (evaluate, outputnode, [("metrics", "metrics")]),
    ])
    collect_derivatives(workflow, outputnode)
    return workflow
