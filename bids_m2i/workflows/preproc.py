"""Preprocessing workflows: our own head-motion correction onto one participant grid, or fMRIPrep's outputs.

Both end in the same ``outputnode``: ``bold_<run key>`` and ``confounds_<run key>`` for every run, and one
``brain_mask`` for the participant.
"""

from __future__ import annotations

import functools
import logging

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.derivatives import DerivativesDataSink
from ..interfaces.preproc import BuildParticipantGrid, EstimateHeadMotion, ResampleRun
from .base import collect_derivatives, node_name

LOGGER = logging.getLogger("m2i.workflow")

FIGURES = ("motion", "fd", "carpet", "beforeafter")


def _run_entities(run) -> dict:
    ents = {k: v for k, v in run.bold.entities.items() if k in ("subject", "session", "task", "acquisition",
                                                                "run", "echo")}
    return ents


def _outputnode(runs, name="outputnode"):
    fields = ["brain_mask", "reference", "summaries", "figures", "derivatives"]
    for run in runs:
        key = node_name(run.bold.key)
        fields += [f"bold_{key}", f"confounds_{key}"]
    return pe.Node(niu.IdentityInterface(fields=fields), name=name)


def init_bold_preproc_wf(config, subject_inputs, output_dir: str, name: str = "bold_preproc_wf"):
    """Head-motion correction of every run, one participant grid, confounds, figures and derivatives.

    Each run is realigned to its own reference; each reference is registered rigidly to the first run's;
    every volume is then resampled once (raw -> participant grid) with the composed transform.
    """
    workflow = pe.Workflow(name=name)
    runs = subject_inputs.runs
    outputnode = _outputnode(runs)
    threads = config.n_threads
    device = _device(config)
    dummy = -1 if config.dummy_scans is None else int(config.dummy_scans)

    merge_refs = pe.Node(niu.Merge(len(runs)), name="merge_boldrefs", run_without_submitting=True)
    grid = pe.Node(BuildParticipantGrid(n_threads=threads, device=device, run_names=[r.bold.path.name for r in runs]),
                   name="participant_grid", n_procs=threads)
    workflow.connect(merge_refs, "out", grid, "boldrefs")
    ds_mask = pe.Node(DerivativesDataSink(base_directory=output_dir, entities={"subject": subject_inputs.subject,
                                          "desc": "brain"}, suffix="mask", extension=".nii.gz", datatype="func",
                                          metadata={"Type": "Brain", "RawSources": [str(r.bold.path) for r in runs]}),
                      name="ds_brain_mask", run_without_submitting=True)
    workflow.connect([(grid, ds_mask, [("out_mask", "in_file")]),
                      (grid, outputnode, [("out_mask", "brain_mask"), ("out_reference", "reference")])])

    merge_summaries = pe.Node(niu.Merge(len(runs)), name="merge_summaries", run_without_submitting=True)
    merge_figures = pe.Node(niu.Merge(len(runs)), name="merge_figures", run_without_submitting=True)
    workflow.connect([(merge_summaries, outputnode, [("out", "summaries")]),
                      (merge_figures, outputnode, [("out", "figures")])])

    for index, run in enumerate(runs):
        key = node_name(run.bold.key)
        hmc_files, resample_files = _run_derivatives(run)
        hmc = pe.Node(EstimateHeadMotion(in_file=str(run.bold.path), dummy_scans=dummy, n_threads=threads,
                                         device=device, derivatives={"base_directory": output_dir,
                                                                     "files": hmc_files}),
                      name=f"hmc_{key}", n_procs=threads, mem_gb=_run_mem_gb(run))
        resample = pe.Node(ResampleRun(in_file=str(run.bold.path), run_index=index, tr=run.tr,
                                       fd_threshold=config.fd_threshold, n_threads=threads, device=device,
                                       derivatives={"base_directory": output_dir, "files": resample_files}),
                           name=f"resample_{key}", n_procs=threads, mem_gb=3 * _run_mem_gb(run))
        workflow.connect([
            (hmc, merge_refs, [("out_boldref", f"in{index + 1}")]),
            (hmc, resample, [("out_transforms", "transforms"), ("out_info", "info")]),
            (grid, resample, [("out_run_to_reference", "run_to_reference"), ("out_reference", "reference"),
                              ("out_mask", "mask")]),
            (resample, outputnode, [("out_file", f"bold_{key}"), ("out_confounds", f"confounds_{key}")]),
            (resample, merge_summaries, [("out_summary", f"in{index + 1}")]),
            (resample, merge_figures, [("out_figures", f"in{index + 1}")]),
        ])
    collect_derivatives(workflow, outputnode)
    return workflow


def _run_derivatives(run) -> tuple[dict, dict]:
    """What the motion and resampling nodes of ``run`` publish: {output name: derivative name and sidecar}.

    Each node publishes its own results (hard links into OUTPUT_DIR): two nodes per run instead of two plus
    twelve sink and pick nodes, which made nipype's scheduler, not the work, the cost of many-run datasets."""
    ents = _run_entities(run)
    sources = [str(run.bold.path)]
    hmc_files = {
        "out_boldref": dict(entities={**ents, "desc": "hmc"}, suffix="boldref", extension=".nii.gz",
                            datatype="func", metadata={"Sources": sources}),
        "out_transforms": dict(entities={**ents, "desc": "hmc"}, suffix="xfm", extension=".npy", datatype="func"),
    }
    resample_files = {
        "out_file": dict(entities={**ents, "desc": "preproc"}, suffix="bold", extension=".nii.gz", datatype="func",
                         metadata={"RepetitionTime": run.tr, "TaskName": run.bold.task, "SkullStripped": False,
                                   "Sources": sources, "Description": "head-motion corrected and resampled once "
                                   "onto the participant grid (the first run's reference)"}),
        "out_confounds": dict(entities={**ents, "desc": "confounds"}, suffix="timeseries", extension=".tsv",
                              datatype="func", metadata_from="out_confounds_meta"),
    }
    for figure in FIGURES:
        resample_files[f"out_figures.{figure}"] = dict(entities={**ents, "desc": figure}, suffix="bold",
                                                       extension=".svg", datatype="figures")
    return hmc_files, resample_files


def init_fmriprep_inputs_wf(config, subject_inputs, output_dir: str, name: str = "fmriprep_inputs_wf"):
    """fMRIPrep's preprocessed BOLD, masks and confounds, presented like our own preprocessing outputs.

    fMRIPrep writes one brain mask per run; in T1w space they share a grid, and the participant mask is their
    intersection (a voxel must be in the brain in every run to get betas from all of them).
    """
    from ..interfaces.fmriprep import ParticipantMaskFromRuns

    workflow = pe.Workflow(name=name)
    runs = subject_inputs.runs
    outputnode = _outputnode(runs)
    mask = pe.Node(ParticipantMaskFromRuns(in_files=[str(r.brain_mask) for r in runs],
                                           bold_files=[str(r.preproc_bold) for r in runs]),
                   name="participant_mask")
    ds_mask = pe.Node(DerivativesDataSink(base_directory=output_dir, entities={"subject": subject_inputs.subject,
                                          **config.space_entities, "desc": "brain"}, suffix="mask",
                                          extension=".nii.gz", datatype="func",
                                          metadata={"Type": "Brain", "Description": "intersection of fMRIPrep's "
                                                    "run masks"}),
                      name="ds_brain_mask", run_without_submitting=True)
    workflow.connect([(mask, outputnode, [("out_file", "brain_mask"), ("out_reference", "reference")]),
                      (mask, ds_mask, [("out_file", "in_file")])])
    for run in runs:
        key = node_name(run.bold.key)
        setattr(outputnode.inputs, f"bold_{key}", str(run.preproc_bold))
        setattr(outputnode.inputs, f"confounds_{key}", str(run.confounds))
    outputnode.inputs.summaries = []
    outputnode.inputs.figures = []
    collect_derivatives(workflow, outputnode)
    return workflow


def _device(config) -> str:
    """--device, with ``auto`` resolved. Without an NVIDIA driver on the machine it is ``cpu`` without
    importing torch: the main process then never loads torch (seconds on a busy machine, and the whole cost
    of a rerun that finds every step finished); only the worker processes that compute load it. With a
    driver, the GPU is looked for in a child process
    (:func:`~bids_m2i.utils.torch_runtime.cuda_available_in_a_child`)."""
    if config.device != "auto":
        return config.device
    if not _nvidia_driver_present():
        return "cpu"
    from ..utils.torch_runtime import cuda_available_in_a_child

    # not torch.cuda.is_available() here: it would make CUDA unusable in the workers forked from this process
    found = cuda_available_in_a_child()
    if found is not None:  # None: the child could not answer, and said so itself
        _say_device_once(found)
    return "cuda" if found else "cpu"


@functools.lru_cache(maxsize=2)
def _say_device_once(found: bool) -> None:
    """One log line per run on a machine with an NVIDIA driver: whether the engines run on its GPU."""
    if found:
        LOGGER.info("--device auto: a CUDA GPU is usable; the engines run on it (--device cpu to keep them off)")
    else:
        # a container started without the GPU sees the host's driver too (Apptainer binds /dev and /proc)
        LOGGER.warning("--device auto: an NVIDIA driver is installed but torch sees no usable CUDA GPU; the "
                       "engines run on the CPU (check the driver version against torch's CUDA, "
                       "CUDA_VISIBLE_DEVICES, and in a container Apptainer's --nv or Docker's --gpus all)")


def _nvidia_driver_present() -> bool:
    import os

    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl"):
        return True
    # Windows' WSL2 (and Docker Desktop's GPU containers, which run in it) has neither: the GPU is /dev/dxg and
    # the Windows driver's CUDA library is in /usr/lib/wsl/lib. Without this, --device auto ran every engine on
    # the CPU there without a word. /dev/dxg alone is any Windows GPU (DirectX), hence the CUDA library too.
    return os.path.exists("/dev/dxg") and any(os.path.exists(f"/usr/lib/wsl/lib/{name}")
                                              for name in ("libcuda.so.1", "libcuda.so"))


def _run_mem_gb(run) -> float:
    n_voxels = 1
    for s in run.shape:
        n_voxels *= s
    return max(0.1, n_voxels * run.n_volumes * 4 / 1024**3 * 3)
