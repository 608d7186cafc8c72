"""Single-trial betas for one task and session: ``statseries``, its events table and statmaps."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.derivatives import DerivativesDataSink
from ..interfaces.glm import STATMAPS, SingleTrialBetas
from ..utils.atomic import write_tsv
from .base import collect_derivatives, node_name
from .preproc import _device


def init_single_trial_wf(config, subject_inputs, task: str, session: str | None, output_dir: str,
                         trials_dir: Path):
    """Betas of every trial of ``task`` (and ``session``), all runs together.

    Inputs (``inputnode``): ``bold_<i>``, ``confounds_<i>`` for the i-th run of this task/session, and
    ``brain_mask``. Outputs: ``statseries``, ``events``, ``ncsnr``, ``statmaps``, ``figures``.
    """
    runs = subject_inputs.runs_of(task, session)
    label = f"task_{node_name(task)}" + (f"_ses_{node_name(session)}" if session else "")
    workflow = pe.Workflow(name=f"single_trial_{label}_wf")
    fields = ["brain_mask"] + [f"bold_{i}" for i in range(len(runs))] + [f"confounds_{i}" for i in range(len(runs))]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["statseries", "events", "ncsnr", "statmaps", "figures",
                                                       "meta", "derivatives"]), name="outputnode")

    trials = subject_inputs.trials
    selected = trials[(trials["task"] == task) & (trials["session"] == (session or "n/a"))]
    trials_file = Path(trials_dir) / f"{label}_trials.tsv"
    write_tsv(trials_file, selected)

    merge_bold = pe.Node(niu.Merge(len(runs)), name="merge_bold", run_without_submitting=True)
    merge_conf = pe.Node(niu.Merge(len(runs)), name="merge_confounds", run_without_submitting=True)
    for i in range(len(runs)):
        workflow.connect([(inputnode, merge_bold, [(f"bold_{i}", f"in{i + 1}")]),
                          (inputnode, merge_conf, [(f"confounds_{i}", f"in{i + 1}")])])
    n_voxels = 1
    for s in runs[0].shape:
        n_voxels *= s
    mem_gb = min(config.memory_gb, max(0.5, n_voxels * sum(r.n_volumes for r in runs) * 4 / 1024**3 * 4))
    glm = pe.Node(SingleTrialBetas(
        trials=str(trials_file), run_labels=[r.bold.run or "n/a" for r in runs], trs=[r.tr for r in runs],
        slice_timings=[r.bold.slice_timing for r in runs], method=config.glm, lss_split=config.lss_split,
        zscore=config.zscore_betas, mem_gb=config.memory_gb, n_threads=config.n_threads, device=_device(config),
        seed=config.seed), name="estimate_betas", n_procs=config.n_threads, mem_gb=mem_gb)
    workflow.connect([(merge_bold, glm, [("out", "bold_files")]), (merge_conf, glm, [("out", "confounds_files")]),
                      (inputnode, glm, [("brain_mask", "mask")]),
                      (glm, outputnode, [("statseries", "statseries"), ("events", "events"), ("ncsnr", "ncsnr"),
                                         ("statmaps", "statmaps"), ("figures", "figures"),
                                         ("statseries_meta", "meta")])])

    ents = {"subject": subject_inputs.subject, "session": session, "task": task}
    if config.resolved_space != "func":
        ents["space"] = config.resolved_space
    method = config.glm_label
    sources = [str(r.bold.path) for r in runs]
    ds_series = pe.Node(DerivativesDataSink(base_directory=output_dir, datatype="func", suffix="statseries",
                                            extension=".nii.gz", entities={**ents, "stat": "effect", "desc": method},
                                            metadata={"Sources": sources}),
                        name="ds_statseries", run_without_submitting=True)
    ds_events = pe.Node(DerivativesDataSink(base_directory=output_dir, datatype="func", suffix="events",
                                            extension=".tsv", entities={**ents, "desc": method}),
                        name="ds_events", run_without_submitting=True)
    workflow.connect([(glm, ds_series, [("statseries", "in_file"), ("statseries_meta", "metadata_file")]),
                      (glm, ds_events, [("events", "in_file")])])
    for stat in STATMAPS:
        pick = pe.Node(niu.Function(function=_pick, input_names=["mapping", "key"], output_names=["out"]),
                       name=f"pick_{stat}", run_without_submitting=True)
        pick.inputs.key = stat
        ds_map = pe.Node(DerivativesDataSink(base_directory=output_dir, datatype="func", suffix="statmap",
                                             extension=".nii.gz", entities={**ents, "stat": stat, "desc": method}),
                         name=f"ds_{stat}", run_without_submitting=True)
        workflow.connect([(glm, pick, [("statmaps", "mapping")]), (pick, ds_map, [("out", "in_file")])])
    for figure in ("ncsnr", "design"):
        pick = pe.Node(niu.Function(function=_pick, input_names=["mapping", "key"], output_names=["out"]),
                       name=f"pick_fig_{figure}", run_without_submitting=True)
        pick.inputs.key = figure
        ds_fig = pe.Node(DerivativesDataSink(base_directory=output_dir, datatype="figures", suffix="statmap"
                                             if figure == "ncsnr" else "design", extension=".svg",
                                             entities={**ents, "desc": figure + method}),
                         name=f"ds_fig_{figure}", run_without_submitting=True)
        workflow.connect([(glm, pick, [("figures", "mapping")]), (pick, ds_fig, [("out", "in_file")])])
    collect_derivatives(workflow, outputnode)
    return workflow


def _pick(mapping, key):
    return mapping[key]
