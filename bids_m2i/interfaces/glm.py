"""nipype glue for the single-trial GLM engine (:mod:`bids_m2i.glm`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from nipype.interfaces.base import File, InputMultiObject, TraitedSpec, isdefined, traits

from ..config import HRF_LIBRARIES
from ..errors import BadDataError, UsageError
from .base import M2IInputSpec, M2IInterface, device_trait
from .derivatives import derivatives_trait, publish_node_outputs
from .images import load_bold, read_ahead, save_like

LOGGER = logging.getLogger("m2i.glm")

STATMAPS = ("ncsnr", "r2", "hrfindex", "pcs", "fracridge")
# ``split``: train/test/none from the events rules (decoding/splits.py reads it), n/a when they set none
EVENTS_COLUMNS = ["trial_index", "onset", "duration", "run", "session", "condition", "cue", "stimulus",
                  "category", "stim_file", "cue_text", "fd_mean", "split"]


def read_confounds(path: str | Path) -> tuple[pd.DataFrame, list[int]]:
    """A confounds table (ours or fMRIPrep's) and its non-steady-state volumes."""
    from ..bids.fmriprep import normalize_confound_columns

    path = Path(path)
    table = normalize_confound_columns(pd.read_csv(path, sep="\t", na_values=["n/a"]))  # fMRIPrep < 1.2 names
    nonsteady: list[int] = []
    meta_path = path.with_suffix("").with_suffix(".json") if path.name.endswith(".tsv") else None
    if meta_path is not None and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            nonsteady = [int(v) for v in meta.get("NonSteadyStateVolumes", {}).get("Volumes", [])]
        except (ValueError, AttributeError):
            nonsteady = []
    outlier_columns = [c for c in table.columns if c.startswith("non_steady_state_outlier")]
    for column in outlier_columns:  # fMRIPrep: one indicator column per non-steady-state volume
        nonsteady += [int(i) for i in np.flatnonzero(table[column].fillna(0).to_numpy() > 0)]
    return table, sorted(set(nonsteady))


def run_name(trials: pd.DataFrame, run_label: str) -> str:
    """``ses-X_task-Y_run-Z`` of a run, from its rows in the trials table, for messages."""
    rows = trials[trials["run"].astype(str) == str(run_label)] if "run" in trials else trials.iloc[:0]
    parts = []
    for key, column in (("ses", "session"), ("task", "task")):
        values = set(rows[column]) - {"n/a", ""} if column in rows else set()
        if len(values) == 1:
            parts.append(f"{key}-{values.pop()}")
    parts.append(f"run-{run_label}")
    return "_".join(parts)


def trial_fd_mean(trials: pd.DataFrame, fd_by_run: dict[str, np.ndarray], tr_by_run: dict[str, float]) -> list:
    """Mean framewise displacement over the volumes acquired during each trial."""
    out = []
    # plain column values, not DataFrame.iterrows (a Series per row: 0.1 s of the GLM step at 360 trials)
    for run, onset, duration in zip(trials["run"].tolist(), trials["onset"].tolist(), trials["duration"].tolist()):
        fd = fd_by_run.get(str(run))
        if fd is None or not len(fd):
            out.append(float("nan"))
            continue
        tr = tr_by_run[str(run)]
        first = int(np.floor(float(onset) / tr))
        last = int(np.ceil((float(onset) + max(float(duration), tr)) / tr))
        window = fd[max(first, 0):min(max(last, first + 1), len(fd))]
        window = window[np.isfinite(window)]
        out.append(float(window.mean()) if window.size else float("nan"))
    return out


def masked_series(data: np.ndarray, mask: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``data[mask][:, keep]``: the kept volumes of the brain voxels (voxels x volumes), with the same values
    and the same memory layout (the engine's sums must not change).

    nibabel returns a run in Fortran order (each volume contiguous): the 4-D boolean index gathers each voxel's
    series across the whole run, twice as slow as taking the voxels from each volume in turn (0.08 against
    0.035 s for a run of 16 MB)."""
    if not data.flags.f_contiguous or data.ndim != 4:
        return data[mask][:, keep]
    volumes = data.reshape(-1, data.shape[3], order="F").T                  # (volumes, grid), no copy
    voxels = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")  # the mask's C order, as data[mask]
    series = np.take(volumes, voxels, axis=1)
    if not keep.all():
        series = series[keep]
    return series.T


def process_rss_gb() -> float:
    """Resident memory of this process now (GB; 0 where the system does not say)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss / 1e9
    except Exception:  # pragma: no cover - no /proc and no psutil
        return 0.0


def reading_threads(bold_files, n_mask_voxels: int, n_threads: int, room_gb: float) -> int:
    """How many runs the node reads at once (``read_ahead``): up to ``n_threads``, while those runs read whole
    (float32, from their headers) plus the one being masked, plus every run's masked copy, fit in ``room_gb``
    (the node's budget less the process' baseline). Reading in turn holds one raw run, the engine's plan
    leaves room for one (:func:`engine_memory_gb`); fewer than two threads would not read faster than one."""
    import nibabel as nib

    if n_threads < 2 or len(bold_files) < 2:
        return 1
    shapes = [nib.load(str(path)).shape for path in bold_files]
    raw_gb = max(float(np.prod(shape)) for shape in shapes) * 4 / 1e9
    masked_gb = sum(n_mask_voxels * (shape[3] if len(shape) == 4 else 1) for shape in shapes) * 4 / 1e9
    fits = int((room_gb - masked_gb) // max(raw_gb, 1e-9)) - 1     # runs read ahead beside the one being masked
    threads = min(int(n_threads), len(bold_files), fits)
    return threads if threads >= 2 else 1


def engine_memory_gb(node_budget_gb: float, baseline_gb: float, largest_run_gb: float) -> float:
    """What the GLM engine may plan its voxel chunks against: the node's budget less what the process holds
    before any data (python, numpy, torch, nipype: measured at the node's start) and less one raw run read
    whole while the runs are masked (freed before the engine starts, but the chunk plan must leave room for it
    when the input arrays are already loaded).

    The engine's plan counts its arrays, not torch's allocator slack, temporaries of library calls or the
    figures drawn after it: measured at 40,000 voxels x 450 volumes the process went ~20 % over the plan, so
    the engine gets ``ENGINE_SHARE`` of what is left.

    Never below 0.05 GB: the engine then says itself, with the sizes, that the budget is too small."""
    left = float(node_budget_gb) - float(baseline_gb) - float(largest_run_gb)
    return max(0.05, ENGINE_SHARE * left)


# share of the node's free budget the engine plans against (see engine_memory_gb)
ENGINE_SHARE = 0.8


def display_design_matrix(run, trials: pd.DataFrame) -> pd.DataFrame:
    """The first run's LSA design (one column per trial, one per nuisance event type, drifts), for the
    report's design-matrix figure and its collinearity summary. The engine builds its own designs.

    The matrix nilearn's ``make_first_level_design_matrix`` returns (Glover HRF, cosine drift below 0.01 Hz,
    its column names and order), built from the engine's own pieces, which equal nilearn's (tests): importing
    nilearn's GLM module (it pulls in scikit-learn and scipy.stats) cost the GLM step about 1.7 s of CPU, more
    than half of the fit at 20,000 voxels. Where nilearn would do something the pieces do not (an event more
    than 24 s before the first volume: nilearn keeps it at the first high-resolution sample; a design that is
    singular at working precision: nilearn regularises it), nilearn itself builds the matrix."""
    kept = trials[trials["role"].isin(["trial", "nuisance"])].reset_index(drop=True)
    names = [f"trial_{i:03d}" if role == "trial" else f"nuis_{etype}"
             for i, (role, etype) in enumerate(zip(kept["role"], kept["event_type"]))]
    events = pd.DataFrame({"onset": kept["onset"].astype(float), "duration": kept["duration"].astype(float),
                           "trial_type": names})
    frame_times = np.asarray(run.frame_times, dtype=float)
    design = _glover_cosine_design(frame_times, events)
    if design is not None:
        return design
    from nilearn.glm.first_level import make_first_level_design_matrix

    return make_first_level_design_matrix(frame_times, events, hrf_model="glover", drift_model="cosine",
                                          high_pass=0.01)


# nilearn's defaults for make_first_level_design_matrix (and its full-rank check's largest condition number)
_OVERSAMPLING, _MAX_CONDITION = 50, 1e15


def _glover_cosine_design(frame_times: np.ndarray, events: pd.DataFrame) -> pd.DataFrame | None:
    """nilearn's design (``hrf_model="glover"``, ``drift_model="cosine"``, ``high_pass=0.01``) from the
    engine's convolution and drift, or None where nilearn's result would differ from them (see the caller).

    nilearn, per condition (``trial_type``, in sorted order): all its events on one oversampled boxcar,
    convolved with the Glover kernel sampled at the smallest frame interval / 50, linearly interpolated at the
    frame times; then the cosine drift set with the constant last."""
    from ..glm.design import MIN_ONSET, convolve_events, cosine_drift
    from ..glm.hrf_library import canonical_kernel

    onsets, durations = events["onset"].to_numpy(dtype=float), events["duration"].to_numpy(dtype=float)
    if (frame_times.size < 2 or not (np.isfinite(onsets).all() and np.isfinite(durations).all())
            or (onsets < frame_times[0] + MIN_ONSET).any()):
        return None
    t_r = float(np.min(np.diff(frame_times)))
    kernel = canonical_kernel("glover", t_r, _OVERSAMPLING)[None]
    single = convolve_events(onsets, durations, frame_times, kernel, _OVERSAMPLING, MIN_ONSET)[0]
    labels = events["trial_type"].to_numpy()
    conditions = list(np.unique(labels))
    columns = [single[:, labels == c].sum(axis=1) for c in conditions]
    drift = cosine_drift(frame_times, 0.01)
    n_drift = drift.shape[1] - 1
    matrix = np.column_stack(columns + [drift]) if columns else drift
    singular = np.linalg.svd(matrix, compute_uv=False)
    if not singular.min() > 0 or singular.max() / singular.min() >= _MAX_CONDITION:
        return None
    names = [str(c) for c in conditions] + [f"drift_{k}" for k in range(1, n_drift + 1)] + ["constant"]
    return pd.DataFrame(matrix, columns=names, index=frame_times)


class _SingleTrialInputSpec(M2IInputSpec):
    bold_files = InputMultiObject(File(exists=True), mandatory=True, desc="runs of one task and session")
    confounds_files = InputMultiObject(File(exists=True), mandatory=True)
    mask = File(exists=True, mandatory=True)
    trials = File(exists=True, mandatory=True, desc="trials table of these runs (TSV)")
    run_labels = traits.List(traits.Str(), mandatory=True, desc="run label of each BOLD file (trials' run column)")
    trs = traits.List(traits.Float(), mandatory=True)
    slice_timings = traits.List(traits.Any(), desc="SliceTiming of each run (list or None)")
    # fMRIPrep inputs only (unset otherwise: earlier runs' nodes keep their hash)
    start_times = traits.List(traits.Float(), desc="time (s) from the start of each volume that each run's frames "
                              "stand for (fMRIPrep's slice-timing reference); wins over slice_timings")
    dummy_scans = traits.Int(desc="--dummy-scans: the first volumes left out, instead of the confounds' own")
    method = traits.Enum("fithrf-denoise-rr", "fithrf", "lss", "lsa", usedefault=True)
    lss_split = traits.Str("none", usedefault=True)
    zscore = traits.Bool(False, usedefault=True)
    noise_model = traits.Enum("auto", "ols", "ar1", usedefault=True)
    hrf_library = traits.Enum(*HRF_LIBRARIES, usedefault=True)   # the first is the default, as on the CLI
    # a default that is hashed: a work dir of the versions whose default was 0 recomputes its betas
    fraction_pooling = traits.Range(low=0.0, value=1.0, usedefault=True, desc="--fraction-pooling: weight of the "
                                    "session's median ridge loss curve in each voxel's fraction choice")
    # not hashed: the budget changes the voxel chunks, not the betas, and depends on --nprocs and on how many
    # GLM nodes the run has (a run of one more participant must not recompute the finished ones)
    mem_gb = traits.Float(4.0, usedefault=True, nohash=True,
                          desc="this node's memory budget (GB), the process included")
    n_threads = traits.Int(1, usedefault=True)
    device = device_trait()
    seed = traits.Int(0, usedefault=True)
    # set only when there is something to say (an unset input keeps the hash of earlier runs' nodes)
    events_notes = traits.List(traits.Str(), desc="what was assumed for events with n/a times (for the sidecar)")
    derivatives = derivatives_trait()


class _SingleTrialOutputSpec(TraitedSpec):
    statseries = File(desc="4-D betas, one volume per trial (% BOLD)")
    statseries_meta = File(desc="JSON sidecar")
    events = File(desc="row-aligned events table")
    statmaps = traits.Dict(desc="stat name -> 3-D map")
    ncsnr = File(desc="ncsnr map")
    figures = traits.Dict(desc="figure name -> SVG")
    out_derivatives = traits.List(File(), desc="files published in the derivatives dataset")


class SingleTrialBetas(M2IInterface):
    """Estimate one response per trial and voxel for one task and session (all runs together)."""

    input_spec = _SingleTrialInputSpec
    output_spec = _SingleTrialOutputSpec

    def _run(self, runtime):
        import nibabel as nib

        from ..glm.design import RunData
        from ..reports.figures import plot_design_matrix, plot_ncsnr_histogram
        from ..utils.atomic import write_json, write_tsv
        from ..utils.process import gc_paused

        with gc_paused():  # torch, where this process has not loaded it yet (utils/process.py)
            from ..glm.estimate import estimate_single_trial_betas

        cwd = Path(runtime.cwd)
        baseline_gb = process_rss_gb()  # python + libraries, before any data
        mask_img = nib.load(self.inputs.mask)
        mask = np.asarray(mask_img.dataobj) > 0
        if not mask.any():  # the engine would fail on zero voxels with a bare ValueError (exit 1)
            raise BadDataError(
                "The participant's brain mask has no voxel: no betas can be estimated", path=self.inputs.mask,
                hint="the BOLD images show no brain against background (a phantom, data already masked to a "
                "constant, or a wrong scaling), or fMRIPrep's run masks do not overlap; check the mean images in "
                "the report (OUTPUT_DIR/sub-*.html) and the BOLD files")
        trials = pd.read_csv(self.inputs.trials, sep="\t", dtype=str, keep_default_na=False)
        trials["onset"] = trials["onset"].astype(float)
        trials["duration"] = trials["duration"].astype(float)
        runs, fd_by_run, tr_by_run = [], {}, {}
        slice_timings = list(self.inputs.slice_timings) if self.inputs.slice_timings else [None] * len(
            self.inputs.bold_files)
        # one per run, or none given (an empty list, as nodes saved by older versions hold, means none)
        start_times = list(self.inputs.start_times) if isdefined(self.inputs.start_times) else None
        if start_times and len(start_times) != len(self.inputs.bold_files):
            raise ValueError(f"start_times has {len(start_times)} values for {len(self.inputs.bold_files)} runs")
        affine = None
        largest_run_gb = 0.0
        readers = reading_threads(self.inputs.bold_files, int(mask.sum()), self.inputs.n_threads,
                                  self.inputs.mem_gb - baseline_gb)
        for (path, confounds_path, label, tr, slice_timing), (data, affine_run, _) in zip(
                zip(self.inputs.bold_files, self.inputs.confounds_files, self.inputs.run_labels, self.inputs.trs,
                    slice_timings),
                read_ahead(load_bold, self.inputs.bold_files, readers)):
            name = run_name(trials, label)  # the run, not the work dir's intermediate file name
            largest_run_gb = max(largest_run_gb, data.nbytes / 1e9)
            if data.shape[:3] != mask.shape:
                raise BadDataError(f"{name}: the preprocessed BOLD is not on the brain mask's grid", path=path)
            affine = affine_run if affine is None else affine
            confounds, nonsteady = read_confounds(confounds_path)
            if isdefined(self.inputs.dummy_scans):  # our own preprocessing listed them in its confounds already
                nonsteady = list(range(min(self.inputs.dummy_scans, data.shape[3] - 1)))
            if len(confounds) != data.shape[3]:
                raise BadDataError(f"{name}: the confounds table has {len(confounds)} rows for {data.shape[3]} "
                                   "volumes", path=confounds_path)
            if "framewise_displacement" in confounds:
                fd_by_run[label] = confounds["framewise_displacement"].to_numpy(dtype=float)
            tr_by_run[label] = tr
            if start_times:
                start = start_times.pop(0)
            else:
                if slice_timing and len(slice_timing) != data.shape[2]:
                    LOGGER.warning("%s: SliceTiming has %d entries for %d slices; ignored (frame times at the "
                                   "start of each volume)", name, len(slice_timing), data.shape[2])
                    slice_timing = None
                start = float(np.median(slice_timing)) if slice_timing else 0.0
            frame_times = start + tr * np.arange(data.shape[3])
            keep = np.ones(data.shape[3], dtype=bool)
            keep[[i for i in nonsteady if i < data.shape[3]]] = False
            runs.append(RunData(data=masked_series(data, mask, keep), tr=tr, run=label,
                                frame_times=frame_times[keep]))
            del data  # the whole-grid run: only its masked copy stays
        engine_gb = engine_memory_gb(self.inputs.mem_gb, baseline_gb, largest_run_gb)
        LOGGER.info("GLM memory: node budget %.2f GB, process baseline %.2f GB, largest raw run %.2f GB -> the "
                    "engine plans against %.2f GB", self.inputs.mem_gb, baseline_gb, largest_run_gb, engine_gb)
        try:
            result = estimate_single_trial_betas(
                runs, trials, method=self.inputs.method,
                lss_split=None if self.inputs.lss_split == "none" else self.inputs.lss_split,
                zscore=self.inputs.zscore, mem_gb=engine_gb, n_threads=self.inputs.n_threads,
                device=self.inputs.device, seed=self.inputs.seed, noise_model=self.inputs.noise_model,
                hrf_library=self.inputs.hrf_library,
                fraction_pooling=self.inputs.fraction_pooling,
            )
        except UsageError as exc:
            # the engine names the budget it was given, which is not the figure the user passed: say how it came
            raise UsageError(
                f"{exc.message}. The {engine_gb:.2f} GB are what this GLM step keeps for the engine from its share "
                f"of --mem-gb ({self.inputs.mem_gb:.2f} GB), after the process' own {baseline_gb:.2f} GB and "
                f"{largest_run_gb:.2f} GB for reading one raw run", hint=exc.hint) from exc
        first_run = SimpleNamespace(run=runs[0].run, frame_times=runs[0].frame_times)
        del runs  # the input arrays: the whole-grid betas below take their place
        betas = np.zeros(mask.shape + (result.betas.shape[0],), dtype=np.float32)
        betas[mask] = result.betas.T
        self._results["statseries"] = str(save_like(betas, affine, cwd / "statseries.nii.gz"))
        meta = dict(result.metadata)
        meta.setdefault("Units", "percent signal change" if not self.inputs.zscore else "z (per voxel, session)")
        if self.inputs.events_notes:  # Undefined and [] are both false
            meta["events_warnings"] = list(self.inputs.events_notes)
        self._results["statseries_meta"] = str(write_json(cwd / "statseries.json", meta))

        rows = result.trial_rows.reset_index(drop=True).copy()
        rows.insert(0, "trial_index", np.arange(len(rows)))
        rows["fd_mean"] = trial_fd_mean(rows, fd_by_run, tr_by_run)
        for column in EVENTS_COLUMNS:
            if column not in rows:
                rows[column] = "n/a"
        self._results["events"] = str(write_tsv(cwd / "events.tsv", rows[EVENTS_COLUMNS]))

        maps = {"ncsnr": result.ncsnr, "r2": result.r2, "hrfindex": result.hrf_index, "pcs": result.n_pcs,
                "fracridge": result.frac}
        statmaps = {}
        for name, values in maps.items():
            volume = np.zeros(mask.shape, dtype=np.float32)
            if values is not None:
                volume[mask] = np.asarray(values, dtype=np.float32)
            statmaps[name] = str(save_like(volume, affine, cwd / f"{name}.nii.gz"))
        self._results["statmaps"] = statmaps
        self._results["ncsnr"] = statmaps["ncsnr"]
        design = display_design_matrix(first_run, trials[trials["run"] == first_run.run])
        self._results["figures"] = {
            "ncsnr": str(plot_ncsnr_histogram(result.ncsnr, cwd / "ncsnr.svg")),
            "design": str(plot_design_matrix(design, cwd / "design.svg")),
        }
        self._results["out_derivatives"] = publish_node_outputs(self._results, self.inputs.derivatives)
