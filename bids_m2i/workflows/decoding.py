"""Decoding: betas of every task and session -> features -> images, retrieval and metrics."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.decoding import ReconstructImages
from .preproc import _device


def init_decoding_wf(config, subject_inputs, task_sessions, output_dir: str, work_dir, name: str = "decoding_wf"):
    """Inputs: ``statseries_<i>``, ``events_<i>``, ``ncsnr_<i>`` for each (task, session) and ``brain_mask``.
    Outputs: ``metrics`` and ``derivatives`` (every file written)."""
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

    space = config.resolved_space if config.resolved_space != "func" else None
    names = [derivative_path(output_dir, subject=subject_inputs.subject, session=s, task=t, space=space, stat="effect",
                             desc=config.glm_label, suffix="statseries", extension=".nii.gz").name
             for t, s in task_sessions]
    models_dir = config.resolved_models_dir
    reconstruct = pe.Node(ReconstructImages(
        subject=subject_inputs.subject, output_dir=output_dir, stimuli_dir=str(subject_inputs.stimuli_dir),
        work_dir=str(work_dir), targets=list(config.target), decoder=config.decoder, generator=config.generator,
        average_repeats=config.average_repeats, top_k=config.top_k_voxels or 0,
        finetune_imagery=config.finetune_imagery, models_dir=str(models_dir) if models_dir else "",
        seed=config.seed, device=_device(config), n_threads=config.n_threads, statseries_names=names,
        captions=str(config.captions) if config.captions else "", candidates=config.candidates or 1,
        shared_decoders=[str(p) for p in config.shared_decoder]),
        name="reconstruct", n_procs=config.n_threads)
    if config.roi_mask:
        reconstruct.inputs.roi_mask = str(config.roi_mask)
    workflow.connect([(merge_series, reconstruct, [("out", "statseries")]),
                      (merge_events, reconstruct, [("out", "events")]),
                      (inputnode, reconstruct, [("brain_mask", "mask")]),
                      (reconstruct, outputnode, [("metrics", "metrics"), ("derivatives", "derivatives")])])
    return workflow
