"""Single-trial betas: ours beside GLMsingle itself, stage by stage, on several generators (issue 13).

Generators (``--generators``; parameters in docs/benchmarks.md):

* ``ours``        ``bids_m2i.glm.simulation`` (the generator ours was developed on; jittered onsets);
* ``dg-nsd``      the independent generator (``benchmarks/glm_generators.py``): per-voxel double-gamma HRFs,
                  6 runs × 200 volumes, 120 stimuli × 3 repeats, NSD-like noise;
* ``dg-low`` / ``dg-high``  the same with half / twice the noise;
* ``dg-2rep``     the same with 2 repeats (180 stimuli × 2);
* ``lib-nsd``     HRFs blended from GLMsingle's own 20-HRF library (read from the installed package);
* ``nsd-session`` one NSD-like session: 12 runs × 226 volumes, 250 stimuli × 3 = 750 trials.

Methods: ours as three stages, each a whole process (``fithrf``; ``fithrf-denoise`` = the full pipeline
with the ridge fraction fixed at 1; ``fithrf-denoise-rr``), and GLMsingle (Prince et al. 2022, eLife
11:e77599) with its defaults, run once in its own environment (``--glmsingle-python``), which returns its
type-B (FitHRF), type-C (+GLMdenoise) and type-D (+ridge) betas; the time at which each type is done is read
from GLMsingle's own progress messages. Optional further peers: ``lsa lss numpy-lsa nilearn-lsa naive-lss``.

Every method runs in a fresh process under the same thread limit; "process s" is the whole process (start of
the interpreter to exit), peak RSS its ``VmHWM``. What the process does (``--process``, default ``node``):

* ours: the app's GLM node (``bids_m2i.interfaces.glm.SingleTrialBetas``, set up as ``workflows/glm.py`` sets
  it up) on the session written as NIfTI (per run a 4-D float32 ``.nii.gz`` and an fMRIPrep-style confounds
  table, a brain mask, the trials table): the imports, reading and masking the runs, the fit, writing the
  statseries, statmaps, events table and the two figures, and publishing them under BIDS names. This is what
  a user's GLM step costs. ``fithrf-denoise`` (no node option) runs the engine on the arrays;
* GLMsingle: reading the same NIfTI runs (nibabel, masked), its fit with its defaults (its figures; in-memory
  type B, C, D), the betas saved as ``.npy``;
* ``--process engine`` (the measure before 2026-12-02 08:00 UTC): ours is the engine on the session's arrays
  (``.npz``), its betas saved as ``.npy``, no figures or NIfTI; GLMsingle reads the arrays.

"process CPU s" is the whole process' user + system CPU; ``startup_cpu_s`` the part before the step (the
interpreter and the libraries, which an m2i worker inherits from the main process) and ``step_cpu_s`` the step
itself (ours: the node's run; GLMsingle: reading the runs and its fit).

Metrics over responsive voxels: ``r_trial`` = median over voxels of the correlation over trials between the
estimated and the true single-trial betas; ``test-retest`` = median over voxels of the mean over pairs of
repeats of the across-stimulus correlation; ``carry-over previous / next`` = median over voxels of how much of
the previous / next trial's true amplitude a trial's beta carries (z-scored, within runs; :func:`carryover`),
an error r_trial barely sees and a decoder does.

    nice -n 10 .venv/bin/python benchmarks/bench_glm.py --voxels 20000 --threads 1 \\
        --glmsingle-python /work/.venv-glm13/bin/python [--generators ours dg-nsd ...] [--seed 1] \\
        [--glmsingle-cache /tmp/glmsingle-cache]

``--glmsingle-cache`` keeps GLMsingle's betas and timings per (generator, seed, V, hash of the session's arrays):
a later run on the same data reads them instead of rerunning the peer, and its rows say ``cached True`` (their
times are those of the run that filled the cache).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # GLMsingle's child runs in its own venv, with the project on PYTHONPATH only
    sys.path.insert(0, str(ROOT))
from bids_m2i.utils.openmp import set_openmp_wait  # noqa: E402  (no imports: safe in GLMsingle's venv)
GENERATORS = ("ours", "dg-nsd", "lib-nsd", "dg-low", "dg-high", "dg-2rep", "nsd-session")
STAGES = ("fithrf", "fithrf-denoise", "fithrf-denoise-rr")
EXTRA = ("lsa", "lss", "numpy-lsa", "nilearn-lsa", "naive-lss")
GLMSINGLE_MARKS = {"B": "DETERMINING GLMDENOISE REGRESSORS", "C": "FITTING TYPE-D MODEL"}


# ----------------------------------------------------------------------------------------------- data
def glmsingle_table(python: str) -> str:
    """Path of GLMsingle's HRF library table inside its installed package (read, never copied)."""
    code = ("import os, glmsingle.hrf.gethrf as g; "
            "print(os.path.join(os.path.dirname(g.__file__), 'getcanonicalhrflibrary.tsv'))")
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def make_session(name: str, n_voxels: int, seed: int, table: str | None) -> dict:
    """Arrays of one generator's session: runs, tr, onsets, durations, trial_run, stimulus, truth."""
    if name == "ours":
        sys.path.insert(0, str(ROOT))
        from bids_m2i.glm.simulation import simulate_session

        sim = simulate_session(n_voxels=n_voxels, seed=seed)
        rows = sim.trials[sim.trials["role"] == "trial"]
        run_labels = [r.run for r in sim.runs]
        return dict(runs=[r.data for r in sim.runs], tr=sim.runs[0].tr, onsets=rows["onset"].to_numpy(float),
                    durations=rows["duration"].to_numpy(float),
                    trial_run=np.array([run_labels.index(r) for r in rows["run"]]),
                    stimulus=rows["stimulus"].str[4:].astype(int).to_numpy(), true_betas=sim.true_betas,
                    responsive=sim.responsive, params={"generator": "bids_m2i.glm.simulation defaults"})
    sys.path.insert(0, str(HERE))
    from glm_generators import simulate

    kwargs = dict(n_voxels=n_voxels, seed=seed)
    kwargs.update({
        "dg-nsd": {}, "dg-low": {"noise": "low"}, "dg-high": {"noise": "high"},
        "dg-2rep": {"n_stimuli": 180, "n_repeats": 2},
        "lib-nsd": {"hrf_family": "glmsingle-library", "glmsingle_table": table},
        "nsd-session": {"n_runs": 12, "n_volumes": 226, "n_stimuli": 250, "n_repeats": 3},
    }[name])
    s = simulate(**kwargs)
    return dict(runs=s.runs, tr=s.tr, onsets=s.onsets, durations=s.durations, trial_run=s.trial_run,
                stimulus=s.stimulus, true_betas=s.true_betas, responsive=s.responsive, params=s.params)


def save_session(session: dict, path: str) -> None:
    arrays = {f"run{i}": r for i, r in enumerate(session["runs"])}
    arrays.update({k: np.asarray(session[k]) for k in ("tr", "onsets", "durations", "trial_run", "stimulus")})
    np.savez(path, n_runs=len(session["runs"]), **arrays)


def load_session(path: str) -> dict:
    with np.load(path) as f:
        out = {k: f[k] for k in f.files}
    out["runs"] = [out.pop(f"run{i}") for i in range(int(out["n_runs"]))]
    out["tr"] = float(out["tr"])
    return out


# the app's GLM node (bids_m2i.interfaces.glm.SingleTrialBetas) runs these methods; ``fithrf-denoise`` (ridge
# fraction fixed at 1) is no option of the node: it runs the engine on the arrays instead
NODE_METHODS = ("fithrf-denoise-rr", "fithrf", "lss", "lsa")
NODE_MEM_GB = 4.0          # the node's memory budget (its trait's default); the plan is one chunk at V = 20,000


def node_grid(n_voxels: int) -> tuple[int, int, int]:
    """A grid of 50 slices that holds ``n_voxels`` (the mask: the first ``n_voxels`` voxels in C order)."""
    side = int(np.ceil(np.sqrt(n_voxels / 50)))
    return side, side, 50


def write_node_inputs(session: dict, folder: Path) -> dict:
    """The session as the GLM node reads it in the app: per run a 4-D float32 ``.nii.gz`` (fMRIPrep's format)
    and an fMRIPrep-style confounds table, a brain mask, the trials table (contracts' columns). Returns the
    node's other inputs (run labels, TRs) and the paths."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    n_voxels = session["runs"][0].shape[0]
    shape = node_grid(n_voxels)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    mask = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    mask[:n_voxels] = 1
    nib.save(nib.Nifti1Image(mask.reshape(shape), affine), folder / "mask.nii.gz")
    bold, confounds = [], []
    for i, run in enumerate(session["runs"]):
        grid = np.zeros((int(np.prod(shape)), run.shape[1]), dtype=np.float32)
        grid[:n_voxels] = run
        img = nib.Nifti1Image(grid.reshape(*shape, run.shape[1]), affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_zooms((2.0, 2.0, 2.0, float(session["tr"])))
        bold.append(folder / f"sub-01_task-sim_run-{i + 1}_desc-preproc_bold.nii.gz")
        nib.save(img, bold[-1])
        confounds.append(folder / f"sub-01_task-sim_run-{i + 1}_desc-confounds_timeseries.tsv")
        confounds[-1].write_text("framewise_displacement\nn/a\n" + "0.1\n" * (run.shape[1] - 1))
    _, trials = _ours_inputs(session)
    trials.to_csv(folder / "trials.tsv", sep="\t", index=False)
    spec = {"bold": [str(p) for p in bold], "confounds": [str(p) for p in confounds],
            "mask": str(folder / "mask.nii.gz"), "trials": str(folder / "trials.tsv"),
            "run_labels": [str(i + 1) for i in range(len(bold))], "trs": [float(session["tr"])] * len(bold)}
    (folder / "node.json").write_text(json.dumps(spec))
    return spec


def node_derivative_files(method: str) -> dict:
    """What the app's GLM workflow asks the node to publish (``workflows/glm.py``), for one subject and task."""
    ents = {"subject": "01", "session": None, "task": "sim"}
    files = {"statseries": dict(datatype="func", suffix="statseries", extension=".nii.gz",
                                entities={**ents, "stat": "effect", "desc": method}, metadata_from="statseries_meta"),
             "events": dict(datatype="func", suffix="events", extension=".tsv", entities={**ents, "desc": method})}
    for stat in ("ncsnr", "r2", "hrfindex", "pcs", "fracridge"):
        files[f"statmaps.{stat}"] = dict(datatype="func", suffix="statmap", extension=".nii.gz",
                                         entities={**ents, "stat": stat, "desc": method})
    for figure in ("ncsnr", "design"):
        files[f"figures.{figure}"] = dict(datatype="figures", suffix="statmap" if figure == "ncsnr" else "design",
                                          extension=".svg", entities={**ents, "desc": figure + method})
    return files


def read_node_betas(statseries: str, events: str, session: dict) -> np.ndarray:
    """The node's betas (trials, voxels) in the session's trial order (matched on run and onset)."""
    import csv

    import nibabel as nib

    n_voxels = session["runs"][0].shape[0]
    volume = np.asarray(nib.load(statseries).dataobj, dtype=np.float32)
    betas = volume.reshape(-1, volume.shape[-1])[:n_voxels].T
    with open(events, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    row_of = {(row["run"], round(float(row["onset"]), 4)): i for i, row in enumerate(rows)}
    order = [row_of[(str(r + 1), round(float(o), 4))]
             for r, o in zip(np.asarray(session["trial_run"]), np.asarray(session["onsets"]))]
    return betas[order]


# ----------------------------------------------------------------------------------------------- children
def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024
    return float("nan")


def _limit_threads(threads: int) -> None:
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    set_openmp_wait()  # as m2i does (cli/runner.py)


def _ours_inputs(data):
    """RunData list and trials table (contracts.md columns) of the session arrays."""
    import pandas as pd

    from bids_m2i.glm.design import RunData

    runs = [RunData(data=d, tr=data["tr"], run=str(i + 1)) for i, d in enumerate(data["runs"])]
    trials = pd.DataFrame({
        "onset": data["onsets"], "duration": data["durations"], "task": "sim", "session": "01",
        "run": [str(r + 1) for r in data["trial_run"]], "role": "trial", "event_type": "stimulus",
        "condition": "perception", "cue": "image", "stimulus": [f"img-{s:04d}" for s in data["stimulus"]],
        "category": "n/a", "stim_file": "n/a", "cue_text": "n/a"})
    return runs, trials


def child_ours(method: str, data_path: str, out: str, threads: int, hrf_library: str | None = None,
               fraction_pooling: float | None = None) -> dict:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from bids_m2i.glm.estimate import estimate_single_trial_betas

    data = load_session(data_path)
    runs, trials = _ours_inputs(data)
    start = time.perf_counter()
    info = {}
    if method in STAGES or method in ("lsa", "lss"):
        kwargs = {"fractions": (1.0,)} if method == "fithrf-denoise" else {}
        if hrf_library is not None:       # None: the engine's default ("two-width")
            kwargs["hrf_library"] = hrf_library
        if fraction_pooling is not None:  # None: the engine's default (1)
            kwargs["fraction_pooling"] = fraction_pooling
        name = "fithrf-denoise-rr" if method == "fithrf-denoise" else method
        result = estimate_single_trial_betas(runs, trials, method=name, n_threads=threads, **kwargs)
        betas = result.betas
        info = {"n_pcs": result.metadata["n_pcs"], "median_frac": result.metadata["median_ridge_fraction"]}
        if result.metadata.get("hrf_library_choice"):
            info["hrf_library_choice"] = result.metadata["hrf_library_choice"]
    else:
        from types import SimpleNamespace

        sim = SimpleNamespace(runs=runs, trials=trials)
        by_trial = {"numpy-lsa": run_numpy_lsa, "nilearn-lsa": run_nilearn_lsa, "naive-lss": run_naive_lss}[method](sim)
        betas = np.stack([by_trial[i] for i in sorted(by_trial)])
    info["fit_s"] = time.perf_counter() - start
    info["process"] = "engine"
    np.save(out, np.asarray(betas, dtype=np.float32))
    return {"betas": {"": out}, "info": info}


def child_node(method: str, folder: str, out: str, threads: int, hrf_library: str | None = None,
               fraction_pooling: float | None = None) -> dict:
    """The app's GLM node (``SingleTrialBetas``, as ``workflows/glm.py`` sets it up) in this fresh process: it
    reads the NIfTI runs, mask, confounds and trials, fits, writes the statseries, statmaps, events table and
    figures, and publishes them into a derivatives folder. Only the module that defines the node is imported
    here; the node imports the rest itself. The parent reads the betas back after this process has ended."""
    from bids_m2i.interfaces.glm import SingleTrialBetas

    _preload_node_libraries()
    import gc

    gc.freeze()      # as m2i's MultiProc plugin does once the libraries are loaded (workflows/base.py)
    loaded_cpu = time.process_time()
    spec = json.loads((Path(folder) / "node.json").read_text())
    work = Path(out + ".node")
    work.mkdir()
    node = SingleTrialBetas(
        bold_files=spec["bold"], confounds_files=spec["confounds"], mask=spec["mask"], trials=spec["trials"],
        run_labels=spec["run_labels"], trs=spec["trs"], slice_timings=[None] * len(spec["bold"]), method=method,
        mem_gb=NODE_MEM_GB, n_threads=threads, seed=0,
        **({"hrf_library": hrf_library} if hrf_library is not None else {}),
        **({"fraction_pooling": fraction_pooling} if fraction_pooling is not None else {}),
        derivatives={"base_directory": str(work / "derivatives"), "files": node_derivative_files(method)})
    start = time.perf_counter()
    outputs = node.run(cwd=str(work)).outputs
    node_s, node_cpu = time.perf_counter() - start, time.process_time() - loaded_cpu
    meta = json.loads(Path(outputs.statseries_meta).read_text())
    info = {"fit_s": node_s, "engine_s": meta.get("elapsed_s"), "n_pcs": meta.get("n_pcs"),
            "median_frac": meta.get("median_ridge_fraction"), "process": "node", "startup_cpu_s": loaded_cpu,
            "step_cpu_s": node_cpu}
    if meta.get("hrf_library_choice"):
        info["hrf_library_choice"] = meta["hrf_library_choice"]
    return {"betas": {}, "node": {"statseries": outputs.statseries, "events": outputs.events}, "info": info}


def _preload_node_libraries() -> None:
    """What an m2i worker holds before its GLM node starts (the main process loaded them: torch for the
    engines, nibabel; the node's figures need no matplotlib and its output names no pybids): imported here,
    before the node's CPU time is read, so that ``step_cpu_s`` is the GLM step's own cost in an m2i run. The process'
    total is the same either way. The caller then freezes the heap for the garbage collector, as m2i's
    MultiProc plugin does after loading torch (its workers inherit the frozen heap): without it, the collections
    during the step and at the interpreter's exit walk torch's objects (about 0.4 CPU s at exit alone)."""
    import nibabel  # noqa: F401

    from bids_m2i.utils.process import gc_paused

    with gc_paused():    # as m2i's main process loads torch (workflows/base.py) and the node the engine
        import bids_m2i.glm.estimate  # noqa: F401


def read_glmsingle_runs(folder: str) -> list[np.ndarray]:
    """The same NIfTI runs the node reads, as GLMsingle's user would pass them: (voxels, volumes) in the mask."""
    import nibabel as nib

    spec = json.loads((Path(folder) / "node.json").read_text())
    mask = np.asarray(nib.load(spec["mask"]).dataobj) > 0
    return [np.asarray(nib.load(path).dataobj, dtype=np.float32)[mask] for path in spec["bold"]]


def child_glmsingle(data_path: str, out: str, threads: int, node_folder: str | None = None,
                    figures: bool = True) -> dict:
    """GLMsingle with its defaults (its figures; only the in-memory outputs asked: type B, C, D, saved here
    as .npy). With ``node_folder`` it reads the BOLD runs from the same NIfTI files as ours' node (timed: it is
    part of its process), else from the session's arrays."""
    import io

    from glmsingle.glmsingle import GLM_single

    if node_folder:
        import nibabel  # noqa: F401
    loaded_cpu = time.process_time()
    with np.load(data_path) as f:       # the design's arrays only
        data = {k: f[k] for k in ("tr", "onsets", "durations", "trial_run", "stimulus", "n_runs")}
    data["tr"] = float(data["tr"])
    data["runs"] = (read_glmsingle_runs(node_folder) if node_folder
                    else load_session(data_path)["runs"])
    stimuli = np.unique(data["stimulus"])
    column = {s: j for j, s in enumerate(stimuli)}
    designs = []
    for r, run in enumerate(data["runs"]):
        design = np.zeros((run.shape[1], stimuli.size))
        for onset, s in zip(data["onsets"][data["trial_run"] == r], data["stimulus"][data["trial_run"] == r]):
            design[int(round(onset / data["tr"])), column[s]] = 1  # GLMsingle's designs are on the TR grid
        designs.append(design)

    marks = {}

    class Clock(io.TextIOBase):
        """Notes when GLMsingle announces each stage (its progress messages go to stdout)."""

        def write(self, text):
            for key, mark in GLMSINGLE_MARKS.items():
                if mark in text and key not in marks:
                    marks[key] = time.perf_counter() - start
            return len(text)

    stdout = sys.stdout
    start = time.perf_counter()
    sys.stdout = Clock()
    try:
        with tempfile.TemporaryDirectory() as folder:
            os.chdir(folder)     # without figuredir GLMsingle still makes (and empties) a figure folder in cwd
            glm = GLM_single({"wantmemoryoutputs": [0, 1, 1, 1], "wantfileoutputs": [0, 0, 0, 0], "seed": 0})
            results = glm.fit(designs, data["runs"], float(data["durations"][0]), data["tr"],
                              outputdir=os.path.join(folder, "outputs"),
                              figuredir=os.path.join(folder, "figures") if figures else None)
    finally:
        sys.stdout = stdout
    marks["D"] = time.perf_counter() - start
    step_cpu = time.process_time() - loaded_cpu
    betas = {}
    for key, name in (("B", "typeb"), ("C", "typec"), ("D", "typed")):
        if results.get(name) is not None:
            path = f"{out}.{key}.npy"
            np.save(path, np.squeeze(results[name]["betasmd"]).T.astype(np.float32))
            betas[key] = path
    typed = results.get("typed") or {}
    # GLMsingle's per-voxel choices, kept beside its betas (benchmarks/glm_ablation.py feeds them one at a time
    # into ours): its HRF index (type B/D), noise pool, PC-selection voxels and curve, PC count, ridge fractions
    # and its candidate noise regressors per run
    extras = {}
    for key, name in (("typeb", "HRFindex"), ("typed", "HRFindex"), ("typed", "noisepool"), ("typed", "pcvoxels"),
                      ("typed", "xvaltrend"), ("typed", "pcnum"), ("typed", "FRACvalue")):
        value = (results.get(key) or {}).get(name)
        if value is not None:
            extras[f"{key}_{name}"] = np.squeeze(np.asarray(value))
    for r, regressors in enumerate(typed.get("pcregressors") or []):
        extras[f"pcregressors_{r}"] = np.asarray(regressors, dtype=np.float32)
    extras_path = None
    if extras:
        extras_path = f"{out}.extras.npz"
        np.savez(extras_path, **extras)
    info = {"stage_s": marks, "startup_cpu_s": loaded_cpu, "step_cpu_s": step_cpu, "n_pcs": int(np.squeeze(typed["pcnum"])) if "pcnum" in typed else None,
            "median_frac": float(np.median(typed["FRACvalue"])) if "FRACvalue" in typed else None}
    return {"betas": betas, "info": info, "extras": extras_path}


# --- optional classic peers (nilearn designs) ---------------------------------------------------------
def _nilearn_design(run, events, hrf_model="glover"):
    from nilearn.glm.first_level import make_first_level_design_matrix

    return make_first_level_design_matrix(run.model_frame_times(), events, hrf_model=hrf_model,
                                          drift_model="cosine", high_pass=0.01)


def _run_events(sim, run):
    rows = sim.trials[sim.trials["run"] == run.run]
    events = rows[["onset", "duration"]].copy()
    events["trial_type"] = [f"t{i:04d}" for i in rows.index]
    return events, rows.index.to_numpy()


def _percent(data):
    return 100.0 * (data / data.mean(1, keepdims=True) - 1.0)


def run_numpy_lsa(sim):
    betas = {}
    for run in sim.runs:
        frame = _nilearn_design(run, _run_events(sim, run)[0])
        solution = np.linalg.pinv(frame.to_numpy()) @ _percent(run.data).T
        for name, row in zip(frame.columns, solution):
            if name.startswith("t"):
                betas[int(name[1:])] = row
    return betas


def run_nilearn_lsa(sim):
    import warnings

    import nibabel as nib
    from nilearn.glm.first_level import FirstLevelModel

    n_voxels = sim.runs[0].data.shape[0]
    shape = (n_voxels // 100, 100, 1) if n_voxels % 100 == 0 else (n_voxels, 1, 1)
    mask = nib.Nifti1Image(np.ones(shape, dtype=np.uint8), np.eye(4))
    betas = {}
    for run in sim.runs:
        events, index = _run_events(sim, run)
        img = nib.Nifti1Image(run.data.reshape(*shape, -1), np.eye(4))
        model = FirstLevelModel(t_r=run.tr, hrf_model="glover", drift_model="cosine", high_pass=0.01,
                                noise_model="ols", mask_img=mask, minimize_memory=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(img, events=events)
            for i in index:
                effect = model.compute_contrast(f"t{i:04d}", output_type="effect_size")
                betas[int(i)] = effect.get_fdata().reshape(-1)
    return betas


def run_naive_lss(sim):
    """Mumford's LSS-1 as a loop: one design and one lstsq (all voxels) per trial."""
    from nilearn.glm.first_level import compute_regressor

    betas = {}
    for run in sim.runs:
        events, index = _run_events(sim, run)
        frame_times = run.model_frame_times()
        drift = _nilearn_design(run, None).to_numpy()
        data = _percent(run.data).T
        regressors = {i: compute_regressor([[o], [d], [1.0]], "glover", frame_times)[0][:, 0]
                      for i, o, d in zip(index, events["onset"], events["duration"])}
        total = sum(regressors.values())
        for i in index:
            design = np.column_stack([regressors[i], total - regressors[i], drift])
            betas[int(i)] = np.linalg.lstsq(design, data, rcond=None)[0][0]
    return betas


# ----------------------------------------------------------------------------------------------- parent
def r_trial(estimated, truth, voxels):
    est = estimated[:, voxels] - estimated[:, voxels].mean(0)
    tru = truth[:, voxels] - truth[:, voxels].mean(0)
    return (est * tru).sum(0) / np.maximum(np.sqrt((est ** 2).sum(0) * (tru ** 2).sum(0)), 1e-30)


def carryover(estimated, truth, onsets, trial_run, voxels):
    """Per voxel, how much of the previous and of the next trial's true amplitude each trial's beta carries.

    Within each run, trials in onset order; for every trial with a neighbour on both sides, the z-scored beta is
    regressed on the z-scored true amplitudes of the trial itself, the previous and the next trial (one least
    squares per voxel). Returns the (previous, next) coefficients, shape (2, n_voxels). r_trial barely sees
    this error (a neighbour's amplitude is independent of the trial's), but a decoder does: it reads the
    neighbour's stimulus into the trial's pattern in every voxel alike (docs/glm.md, "Carry-over between
    neighbouring trials"). Zero when the betas are unbiased by their neighbours.
    """
    onsets, trial_run = np.asarray(onsets, dtype=float), np.asarray(trial_run)
    rows = []
    for run in np.unique(trial_run):
        order = np.flatnonzero(trial_run == run)
        order = order[np.argsort(onsets[order], kind="stable")]
        rows.extend((order[k], order[k - 1], order[k + 1]) for k in range(1, len(order) - 1))
    if not rows:
        return np.full((2, len(voxels)), np.nan)
    rows = np.asarray(rows)

    def zscored(a):
        a = np.asarray(a, dtype=np.float64)[:, voxels]
        return (a - a.mean(0)) / np.maximum(a.std(0), 1e-30)

    est, tru = zscored(estimated), zscored(truth)
    design = tru[rows].transpose(0, 2, 1)   # (n_rows, n_voxels, 3): the trial's, the previous and the next truth
    target = est[rows[:, 0]]                                                          # (n_rows, n_voxels)
    gram = np.einsum("rvi,rvj->vij", design, design)
    moment = np.einsum("rvi,rv->vi", design, target)
    coef = np.linalg.solve(gram + 1e-9 * np.eye(3), moment[..., None])[..., 0]        # (n_voxels, 3)
    return coef[:, 1:].T


def test_retest(betas, stimulus):
    """Per voxel, mean over pairs of repeats (in trial order) of the across-stimulus correlation."""
    labels, counts = np.unique(stimulus, return_counts=True)
    n_repeats = int(np.bincount(counts[counts >= 2]).argmax())
    groups = [np.flatnonzero(stimulus == s) for s, c in zip(labels, counts) if c == n_repeats]
    stacked = np.stack([betas[g] for g in groups], axis=1).astype(np.float64)   # (repeats, stimuli, voxels)
    centred = stacked - stacked.mean(1, keepdims=True)
    unit = centred / np.maximum(np.sqrt((centred ** 2).sum(1, keepdims=True)), 1e-30)
    pairs = [(a, b) for a in range(n_repeats) for b in range(a + 1, n_repeats)]
    return np.mean([(unit[a] * unit[b]).sum(0) for a, b in pairs], axis=0)


def run_child(python: str, args: list[str], env_threads: int) -> tuple[dict, float, float, float]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(env_threads)
    set_openmp_wait(env)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["NIPYPE_NO_ET"] = "1"      # as m2i sets it (cli/runner.py): no nipype version check over the network
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([python, __file__, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-3:])
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    return payload, wall, payload["peak_rss_mb"], cpu


def _cache_folder(root: Path, generator: str, seed: int, n_voxels: int, data_path: str) -> Path:
    """One folder per (generator, seed, V), named with a hash of the session's arrays: other data, other folder."""
    digest = hashlib.sha256()
    with np.load(data_path) as arrays:        # the arrays, not the file: a zip's member times differ per save
        for name in sorted(arrays.files):
            digest.update(name.encode() + np.ascontiguousarray(arrays[name]).tobytes())
    digest = digest.hexdigest()[:16]
    return root / f"{generator}-seed{seed}-v{n_voxels}-{digest}"


def _write_cache(folder: Path, payload: dict, wall: float, peak: float, cpu: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    betas = {}
    for key, path in payload["betas"].items():
        target = folder / f"betas{key}.npy"
        np.save(target, np.load(path))
        betas[key] = str(target)
    extras = payload.get("extras")
    if extras:
        target = folder / "extras.npz"
        with open(extras, "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())
        extras = str(target)
    record = {"payload": {**payload, "betas": betas, "extras": extras}, "wall": wall, "peak": peak, "cpu": cpu,
              "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    tmp = folder / "run.json.tmp"
    tmp.write_text(json.dumps(record))
    tmp.rename(folder / "run.json")


def _read_cache(folder: Path) -> tuple[dict, float, float, float]:
    record = json.loads((folder / "run.json").read_text())
    return record["payload"], record["wall"], record["peak"], record["cpu"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=GENERATORS)
    parser.add_argument("--methods", nargs="+", default=list(STAGES), choices=STAGES + EXTRA)
    parser.add_argument("--glmsingle-python", default=None,
                        help="python of an environment with GLMsingle installed (omit to skip GLMsingle)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--glmsingle-cache", type=Path, default=None,
                        help="folder keeping GLMsingle's betas and timings per (generator, seed, V, data hash); "
                             "a later run on the same data reads them instead of rerunning the peer (the table "
                             "says 'cached')")
    parser.add_argument("--hrf-library", default=None, choices=("two-width", "broad", "narrow", "medium", "auto"),
                        help="ours' HRF library (bids_m2i.glm.hrf_library; default: the engine's default "
                             "'two-width'; 'auto': one per session, bids_m2i.glm.library_choice)")
    parser.add_argument("--fraction-pooling", type=float, default=None,
                        help="ours' fraction_pooling (the engine's and m2i's --fraction-pooling; default: the "
                             "engine's, 1)")
    parser.add_argument("--glmsingle-figures", default="on", choices=("on", "off"),
                        help="GLMsingle's figures: 'on' (default, as every run of this benchmark so far: its fit is "
                             "given a figuredir) or 'off' (its fit without figuredir: no figures)")
    parser.add_argument("--process", default="node", choices=("node", "engine"),
                        help="what ours' process runs: 'node' (default) the app's GLM node on NIfTI inputs (reading "
                             "them, the fit, writing and publishing every output; GLMsingle then reads the same "
                             "NIfTI runs), 'engine' the engine on the session's arrays, betas saved as .npy (the "
                             "measure before 2026-12-02 08:00 UTC). fithrf-denoise always runs the engine")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each of ours' methods this many times and report the run of median wall time "
                             "(GLMsingle runs once)")
    parser.add_argument("--json", type=Path, default=None, help="write all rows here")
    parser.add_argument("--node-inputs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _limit_threads(args.threads)
        method, data_path, out = args.child
        if method == "glmsingle":
            payload = child_glmsingle(data_path, out, args.threads, args.node_inputs, args.glmsingle_figures == "on")
        elif args.node_inputs and method in NODE_METHODS:
            payload = child_node(method, args.node_inputs, out, args.threads, args.hrf_library,
                                 args.fraction_pooling)
        else:
            payload = child_ours(method, data_path, out, args.threads, args.hrf_library, args.fraction_pooling)
        payload["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(payload))
        return 0

    table = glmsingle_table(args.glmsingle_python) if args.glmsingle_python else None
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.1f}, threads per method {args.threads}, python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    all_rows = []
    # ours' options for the child processes: only those given (the others stay the engine's defaults)
    ours_options = [*(["--hrf-library", args.hrf_library] if args.hrf_library is not None else []),
                    *(["--fraction-pooling", str(args.fraction_pooling)] if args.fraction_pooling is not None else [])]
    for generator in args.generators:
        if generator == "lib-nsd" and table is None:
            print("\nlib-nsd skipped: needs --glmsingle-python (its HRF table)")
            continue
        session = make_session(generator, args.voxels, args.seed, table)
        truth, responsive, stimulus = session["true_betas"], session["responsive"], session["stimulus"]
        ceiling = float(np.median(test_retest(truth[:, responsive], stimulus)))
        print(f"\n{generator}: V = {args.voxels}, {len(session['runs'])} runs x {session['runs'][0].shape[1]} vols, "
              f"{truth.shape[0]} trials; truth test-retest {ceiling:.3f}")
        print("| method | stage done at s | process s | process CPU s | peak RSS MB | r_trial | test-retest "
              "| carry-over previous / next | notes |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            data_path = os.path.join(tmp, "session.npz")
            save_session(session, data_path)
            node_inputs = []
            if args.process == "node":
                write_node_inputs(session, Path(tmp) / "inputs")
                node_inputs = ["--node-inputs", str(Path(tmp) / "inputs")]
            methods = list(args.methods) + (["glmsingle"] if args.glmsingle_python else [])
            ours_total = None
            for method in methods:
                python = args.glmsingle_python if method == "glmsingle" else sys.executable
                out = os.path.join(tmp, f"{method}.npy")
                cache = (_cache_folder(args.glmsingle_cache, generator, args.seed, args.voxels, data_path)
                         if method == "glmsingle" and args.glmsingle_cache else None)
                cached = cache is not None and (cache / "run.json").exists()
                try:
                    if cached:
                        payload, wall, peak, cpu = _read_cache(cache)
                    else:
                        # ours' few seconds are more exposed to a moment's load than GLMsingle's minutes: with
                        # --repeats, ours runs that many times (fresh processes) and the run of median wall time is
                        # reported, every run's wall time beside it; GLMsingle always runs once
                        samples = []
                        for repeat in range(1 if method == "glmsingle" else args.repeats):
                            target = out if repeat == 0 else f"{out[:-4]}.{repeat}.npy"
                            samples.append(run_child(
                                python, ["--threads", str(args.threads), *ours_options,
                                         "--glmsingle-figures", args.glmsingle_figures,
                                         *node_inputs, "--child", method, data_path, target], args.threads))
                        walls = [sample[1] for sample in samples]
                        payload, wall, peak, cpu = samples[int(np.argsort(walls)[(len(walls) - 1) // 2])]
                        if len(samples) > 1:
                            payload["info"]["process_s_runs"] = " / ".join(f"{w:.1f}" for w in walls)
                        if "node" in payload:     # read back here, outside the measured process
                            np.save(out, read_node_betas(payload["node"]["statseries"], payload["node"]["events"],
                                                         session))
                            payload["betas"] = {"": out}
                        if cache is not None:
                            _write_cache(cache, payload, wall, peak, cpu)
                except RuntimeError as error:
                    print(f"| {method} | failed: {error} |", flush=True)
                    continue
                info = payload["info"]
                if method == "fithrf-denoise-rr":
                    ours_total = (wall, cpu, info.get("step_cpu_s"))
                for key, path in payload["betas"].items():
                    betas = np.load(path)
                    stage_s = info.get("stage_s", {}).get(key, info.get("fit_s"))
                    row = {"generator": generator, "method": method + (f" type-{key}" if key else ""),
                           "stage_s": stage_s, "process_s": wall, "process_cpu_s": cpu, "peak_rss_mb": peak,
                           "r_trial": float(np.median(r_trial(betas, truth, responsive))),
                           "test_retest": float(np.median(test_retest(betas[:, responsive], stimulus))),
                           **dict(zip(("carryover_previous", "carryover_next"), np.median(carryover(
                               betas, truth, session["onsets"], session["trial_run"], responsive), axis=1).tolist())),
                           "n_voxels": args.voxels, "truth_ceiling": ceiling,
                           **{k: v for k, v in info.items()
                              if k in ("n_pcs", "median_frac", "hrf_library_choice", "process", "engine_s",
                                       "startup_cpu_s", "step_cpu_s", "process_s_runs")}}
                    if cached:
                        row["cached"] = True
                    if method == "glmsingle" and ours_total:
                        row["glmsingle_over_ours"] = wall / ours_total[0]
                        row["glmsingle_over_ours_cpu"] = cpu / ours_total[1]
                        if ours_total[2] and info.get("step_cpu_s"):
                            row["glmsingle_over_ours_step_cpu"] = info["step_cpu_s"] / ours_total[2]
                    all_rows.append(row)
                    keys = ("process", "process_s_runs", "engine_s", "startup_cpu_s", "step_cpu_s", "n_pcs", "median_frac",
                            "glmsingle_over_ours", "glmsingle_over_ours_cpu", "glmsingle_over_ours_step_cpu",
                            "cached")
                    notes = ", ".join(f"{k} {row[k]:.3g}" if isinstance(row[k], float) else f"{k} {row[k]}"
                                      for k in keys if row.get(k) is not None)
                    print(f"| {row['method']} | {stage_s:.1f} | {wall:.1f} | {cpu:.1f} | {peak:.0f} | "
                          f"{row['r_trial']:.3f} | {row['test_retest']:.3f} | {row['carryover_previous']:+.3f} / "
                          f"{row['carryover_next']:+.3f} | {notes} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
