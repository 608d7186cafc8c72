"""Single-trial betas for one task and session: ``statseries``, its events table and statmaps."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.derivatives import write_tsv_if_changed
from ..interfaces.glm import STATMAPS, SingleTrialBetas
from .base import collect_derivatives, node_name
from .preproc import _device


def glm_node_budget_gb(memory_gb: float, n_procs: int, n_threads: int, n_glm_nodes: int,
                       need_gb: float = 0.0) -> float:
    """Memory budget of one single-trial GLM node: its share of --mem-gb under MultiProc.

    MultiProc runs up to ``n_procs // n_threads`` nodes at once; when as many GLM nodes run together each may
    use only its share of the budget. The node declares this share as its ``mem_gb``, so MultiProc never
    starts more GLMs (or other nodes) than the budget holds, and the engine plans its voxel chunks against
    the same figure (less the process' own baseline, measured in the node). A node that needs more than its
    share (``need_gb``, a coarse upper bound from the grid) gets what it needs, up to the whole budget:
    MultiProc then runs fewer nodes beside it."""
    slots = max(1, int(n_procs) // max(1, int(n_threads)))
    concurrent = max(1, min(slots, int(n_glm_nodes)))
    share = float(memory_gb) / concurrent
    return float(min(float(memory_gb), max(share, float(need_gb))))


def glm_need_gb(runs, n_trials: int, n_threads: int = 1) -> float:
    """Coarse upper bound of a GLM node's needs from the grid (the brain mask is a part of it): the process,
    every run's voxels, the betas, one raw run read whole, and the designs (every library kernel's regressors
    and factorisations grow as volumes × trials per run: ~40 bytes per kernel, volume and trial, the engine's
    ``design_memory_bytes`` rounded up; 60 MB for 6 runs × 200 volumes × 60 trials, 0.8 GB for 4 × 800 × 300),
    and 16 bytes more for each thread beyond the first (its PC count's factorisations and one run's while it
    builds them: the engine's estimate rose by 238 MB from 1 to 2 threads on 4 × 800 × 316)."""
    n_voxels = 1
    for size in runs[0].shape:
        n_voxels *= int(size)
    volumes = sum(int(r.n_volumes) for r in runs)
    largest = max(int(r.n_volumes) for r in runs) * n_voxels * 4
    per_entry = DESIGN_BYTES + DESIGN_BYTES_PER_EXTRA_THREAD * max(int(n_threads) - 1, 0)
    designs = DESIGN_KERNELS * volumes * (n_trials / max(len(runs), 1)) * per_entry
    return BASE_PROCESS_GB + (n_voxels * volumes * 4 + n_voxels * n_trials * 8 + largest + designs) / 1e9


# what a process holds before any data: python, numpy, torch and nipype imported (cli.runner says the same)
BASE_PROCESS_GB = 0.6
# kernels of the largest HRF library and the assumed HRF (glm/hrf_library.py), for glm_need_gb's designs
DESIGN_KERNELS = 21
# bytes per kernel, volume and trial of the designs, and what each thread beyond the first adds (glm_need_gb)
DESIGN_BYTES = 40
DESIGN_BYTES_PER_EXTRA_THREAD = 16


def frame_timing(config, runs) -> dict:
    """The GLM node's timing inputs: each run's frame reference within its volumes (the raw run's median slice
    time, :func:`bids_m2i.bids.inputs.slice_time_reference`, or fMRIPrep's slice-timing reference,
    :func:`bids_m2i.bids.fmriprep.fmriprep_frame_start`), and ``--dummy-scans`` for fMRIPrep's runs (our own
    preprocessing lists them in its confounds)."""
    if not runs or any(r.start_time is None for r in runs):
        return {}
    inputs = {"start_times": [float(r.start_time) for r in runs]}
    if config.dummy_scans is not None and all(r.preproc_bold is not None for r in runs):
        inputs["dummy_scans"] = int(config.dummy_scans)
    return inputs


def init_single_trial_wf(config, subject_inputs, task: str, session: str | None, output_dir: str,
                         trials_dir: Path, n_glm_nodes: int = 1):
    """Betas of every trial of ``task`` (and ``session``), all runs together.

    Inputs (``inputnode``): ``bold_<i>``, ``confounds_<i>`` for the i-th run of this task/session, and
    ``brain_mask``. Outputs: ``statseries``, ``events``, ``ncsnr``, ``statmaps``, ``figures``.
    ``n_glm_nodes``: how many GLM nodes the whole run has (for each one's share of the memory budget).

    One node estimates the betas and publishes its outputs itself (no sink and pick nodes per file).
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
    # rewritten only when its content changes: nipype hashes file inputs by path and mtime, and a new mtime
    # would recompute the GLM (and the decoding after it) on every rerun
    write_tsv_if_changed(trials_file, selected)

    merge_bold = pe.Node(niu.Merge(len(runs)), name="merge_bold", run_without_submitting=True)
    merge_conf = pe.Node(niu.Merge(len(runs)), name="merge_confounds", run_without_submitting=True)
    for i in range(len(runs)):
        workflow.connect([(inputnode, merge_bold, [(f"bold_{i}", f"in{i + 1}")]),
                          (inputnode, merge_conf, [(f"confounds_{i}", f"in{i + 1}")])])
    n_trials = int((selected["role"] == "trial").sum()) if "role" in selected else len(selected)
    budget_gb = glm_node_budget_gb(config.memory_gb, config.n_procs, config.n_threads, n_glm_nodes,
                                   glm_need_gb(runs, n_trials, config.n_threads))

    ents = {"subject": subject_inputs.subject, "session": session, "task": task}
    ents.update(config.space_entities)  # space (+ cohort, res) of fMRIPrep inputs; none for func
    method = config.glm_label
    sources = [str(r.bold.path) for r in runs]
    files = {
        "statseries": dict(datatype="func", suffix="statseries", extension=".nii.gz",
                           entities={**ents, "stat": "effect", "desc": method}, metadata={"Sources": sources},
                           metadata_from="statseries_meta"),
        "events": dict(datatype="func", suffix="events", extension=".tsv", entities={**ents, "desc": method}),
    }
    for stat in STATMAPS:
        files[f"statmaps.{stat}"] = dict(datatype="func", suffix="statmap", extension=".nii.gz",
                                         entities={**ents, "stat": stat, "desc": method})
    for figure in ("ncsnr", "design"):
        files[f"figures.{figure}"] = dict(datatype="figures", suffix="statmap" if figure == "ncsnr" else "design",
                                          extension=".svg", entities={**ents, "desc": figure + method})

    # what the events reading assumed for n/a times of these runs (BIDS allows n/a durations): kept in the sidecar
    notes = [relative_note(note, run.get("source"), config.bids_dir) for run in trials.attrs.get("runs", [])
             if run.get("task") == task and run.get("session") == (session or "n/a") for note in run.get("notes", [])]
    glm = pe.Node(SingleTrialBetas(
        trials=str(trials_file), run_labels=[r.bold.run or "n/a" for r in runs], trs=[r.tr for r in runs],
        slice_timings=[r.bold.slice_timing for r in runs], method=config.glm, lss_split=config.lss_split,
        zscore=config.zscore_betas, noise_model=config.glm_noise_model, hrf_library=config.hrf_library,
        mem_gb=budget_gb, n_threads=config.n_threads, device=_device(config),
        seed=config.seed, derivatives={"base_directory": output_dir, "files": files},
        **({"events_notes": notes} if notes else {}), **frame_timing(config, runs),
        # unset: the interface's default (1)
        **({"fraction_pooling": config.fraction_pooling} if config.fraction_pooling is not None else {})),
        name="estimate_betas", n_procs=config.n_threads, mem_gb=budget_gb)
    workflow.connect([(merge_bold, glm, [("out", "bold_files")]), (merge_conf, glm, [("out", "confounds_files")]),
                      (inputnode, glm, [("brain_mask", "mask")]),
                      (glm, outputnode, [("statseries", "statseries"), ("events", "events"), ("ncsnr", "ncsnr"),
                                         ("statmaps", "statmaps"), ("figures", "figures"),
                                         ("statseries_meta", "meta")])])
    collect_derivatives(workflow, outputnode)
    return workflow


def relative_note(note: str, source: str | None, bids_dir) -> str:
    """An events note with its file named relative to BIDS_DIR (``sub-01/func/..._events.tsv``): the sidecars
    are shared with the derivatives, and this machine's paths (home folders, scratch mounts) must not leak."""
    if not source:
        return note
    try:
        shown = Path(source).absolute().relative_to(Path(bids_dir).absolute()).as_posix()
    except ValueError:
        shown = Path(source).name
    return note.replace(str(source), shown)
