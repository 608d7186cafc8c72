"""Top-level entry point: single-trial betas for one task of one session (all runs together).

See ``docs/glm.md`` for the methods. The nipype workflow only has to read the runs, call
:func:`estimate_single_trial_betas` and write :class:`GLMResult` (betas as a 4-D image, ``trial_rows`` as the
events table, the per-voxel maps, ``metadata`` as the sidecar).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..errors import BadDataError, UsageError
from .denoise import (POOL_EXCLUSIONS, NoisePCAccumulator, _ols_trial_betas, brain_voxels, choose_n_pcs,
                      drift_residuals, noise_pool, onoff_residuals, reliable_in_pool, signal_voxel_sample)
from .design import MIN_ONSET, RunData, build_run_designs, polynomial_degree
from .fithrf import (HRF_NOISE_CORRECTION, NoiseExplainedByKernel, drift_sum_of_squares, grouped_trial_betas,
                     library_fitted_ss, r2_beyond_drift, r2_from, total_sum_of_squares)
from .fracridge import (DEFAULT_FRACTIONS, FRACTION_BATCH_ROWS, N_ALPHAS, fraction_loss_curves, fraction_order,
                        fractional_ridge_cv)
from .hrf_library import DEFAULT_LIBRARY, check_library, describe_library
from .library_choice import AUTO, choose_library
from .session_library import SESSION, BasisFit, derive_library
from .lss import lss_betas
from .model import SessionModel
from ..utils.parallel import group_map, group_workers
from .reliability import RepeatStructure, ncsnr
from ..utils.torch_runtime import device_working_gb, resolve_device
from .solvers import orthonormal_basis, percent_signal, torch_threads, zscore_rows
from .units import check_beta_units, kernel_peak_responses, reference_duration, to_peak_units, voxel_peak_scale
from .whitening import (AR1_STEP, RHO_MAX, RHO_MIN, estimate_ar1, quantise, whitened_bins,
                        whitened_trial_betas)

LOGGER = logging.getLogger("m2i.glm")

METHODS = ("lsa", "lss", "fithrf", "fithrf-denoise-rr")
METHOD_LABELS = {"lsa": "lsa", "lss": "lss", "fithrf": "fithrf", "fithrf-denoise-rr": "fithrfdenoiserr"}
DEFAULT_WORKING_GB = 1.0
# what each voxel-group worker beyond the first adds besides its share of the chunk (its thread's allocator
# arena, torch's per-thread state). Measured at V = 20,000 (lib-nsd, one chunk): the fit's peak rose by 286, 413
# and 500 MB with 1, 2 and 4 threads, against plans of 724, 797 and 942 MB (the second worker runs the two
# largest HRF groups together, which the chunk's working set covers; each further worker added ~44 MB)
PER_WORKER_BYTES = 64e6


@dataclass
class GLMResult:
    """Single-trial betas of one task and session.

    Attributes
    ----------
    betas : ndarray, shape (n_trials, n_voxels), float32
        % signal change (or per-voxel z-scores when ``metadata["zscored"]``); row i = ``trial_rows`` row i.
        ``metadata["beta_units"]``: ``"peak"`` (default; 1 = a trial response peaking at 1 %, GLMsingle's
        scaling) or ``"plateau"`` (unit-sum kernels); :mod:`bids_m2i.glm.units`.
    trial_rows : DataFrame
        The trials (role == trial) in session order: runs in the given order, then onset.
    r2 : ndarray, shape (n_voxels,)
        Variance explained (0–1) by the full unregularised model, all runs.
    ncsnr : ndarray, shape (n_voxels,)
        NSD's noise-ceiling SNR of the betas (NaN without repeats).
    hrf_index : ndarray of int16, shape (n_voxels,)
        Chosen library HRF (``metadata["hrf_library"]``); -1 = the assumed HRF (``lsa``, ``lss``).
    n_pcs : ndarray of int16, shape (n_voxels,)
        Noise PCs per run in the model (one number for the whole session, as in GLMsingle).
    frac : ndarray, shape (n_voxels,)
        Chosen ridge fraction (1 = unregularised).
    metadata : dict
        JSON-ready description for the sidecar.
    beta_scale : ndarray, shape (n_voxels,), optional
        The per-voxel factor applied to the plateau-unit betas (``beta_units="peak"``; None otherwise): dividing
        by it gives the plateau units back. Not written to disk (the sidecar's ``peak_scaling`` and the
        ``hrfindex`` map reproduce it).
    """

    betas: np.ndarray
    trial_rows: pd.DataFrame
    r2: np.ndarray
    ncsnr: np.ndarray
    hrf_index: np.ndarray
    n_pcs: np.ndarray
    frac: np.ndarray
    metadata: dict = field(default_factory=dict)
    beta_scale: np.ndarray | None = None

    def stat_maps(self) -> dict[str, np.ndarray]:
        """Per-voxel maps keyed by their BIDS ``stat`` entity (DESIGN.md derivatives), each (n_voxels,)."""
        return {"r2": self.r2, "ncsnr": self.ncsnr, "hrfindex": self.hrf_index, "pcs": self.n_pcs,
                "fracridge": self.frac}

    def events_table(self, fd_mean=None) -> pd.DataFrame:
        """The ``_events.tsv`` of the betas: row i = volume i (DESIGN.md), ``fd_mean`` optional per trial."""
        columns = ["onset", "duration", "run", "session", "condition", "cue", "stimulus", "category",
                   "stim_file", "cue_text"]
        table = self.trial_rows.reindex(columns=columns).fillna("n/a")
        table.insert(0, "trial_index", np.arange(len(table)))
        table["fd_mean"] = "n/a" if fd_mean is None else np.asarray(fd_mean, dtype=float)
        return table


def _check_runs(runs: list[RunData]) -> tuple[int, list[int]]:
    if not runs:
        raise BadDataError("No BOLD runs given for the single-trial GLM", hint="pass at least one RunData")
    n_voxels = runs[0].data.shape[0]
    lengths = []
    for run in runs:
        if run.data.ndim != 2:
            raise BadDataError(f"Run {run.run}: data must be (voxels, volumes), got shape {run.data.shape}",
                               hint="mask the 4-D image to a 2-D array (voxels × volumes)")
        if run.data.shape[0] != n_voxels:
            raise BadDataError(f"Run {run.run} has {run.data.shape[0]} voxels, run {runs[0].run} has {n_voxels}",
                               hint="resample all runs of a participant onto one grid and one mask")
        if not np.isfinite(run.tr) or run.tr <= 0:
            raise BadDataError(f"Run {run.run}: invalid repetition time {run.tr}", hint="check RepetitionTime")
        if run.data.shape[1] < 10:
            raise BadDataError(f"Run {run.run} has only {run.data.shape[1]} volumes", hint="check the BOLD file")
        if not np.isfinite(run.data).all():
            raise BadDataError(f"Run {run.run} contains NaN or infinite values",
                               hint="mask out voxels with invalid values before the GLM")
        lengths.append(run.data.shape[1])
    return n_voxels, lengths


#: variance inflation above which a trial's regressor is called collinear with the other trials' (R² > 0.9999
#: with them). Ordinary designs stay far below: a trial every 4-5 s gives at most ~300 with the assumed HRF (NSD
#: timing at TR 1.6 s and 1 s), trials 0.5-1 s apart ~1e13.
COLLINEAR_VIF = 1e4


def _collinear_trials(model: SessionModel, labels: list[str]) -> dict | None:
    """Runs where some trials' regressors (assumed HRF, after drift, confounds and nuisance events) are nearly
    linear combinations of the other trials': their all-at-once betas (lsa, fithrf, fithrf-denoise-rr) are then
    not determined by the data (trials 0.5 s apart gave lsa betas of 1e5 %, uncorrelated with the truth, without
    a word). A warning and the sidecar's ``collinear_trials``, not an error: the betas are still written."""
    found = {}
    for run, design in enumerate(model.designs):
        trials = model.trial_regressors[run][model.canonical_index]
        if trials.shape[1] < 2:
            continue
        nuisance = np.concatenate([design.fixed_nuisance, model.nuisance_regressors[run][model.canonical_index]],
                                  axis=1)
        basis = orthonormal_basis(nuisance)
        reduced = trials - basis @ (basis.T @ trials)
        gram = reduced.T @ reduced
        with np.errstate(all="ignore"):
            inflation = np.diag(np.linalg.pinv(gram, hermitian=True)) * np.diag(gram)
        bad = np.flatnonzero(~(inflation < COLLINEAR_VIF))
        if bad.size:
            gaps = np.diff(np.sort(design.trial_onsets))
            found[labels[run]] = {
                "n_trials": int(bad.size), "of": int(trials.shape[1]),
                "shortest_onset_gap_s": round(float(gaps.min()), 3) if gaps.size else None}
    if not found:
        return None
    LOGGER.warning("nearly collinear trial regressors (variance inflation > %g: trials too close together for "
                   "their responses to be told apart) in %s: their single-trial betas are not determined by the "
                   "data; for such rapid designs use --glm lss", COLLINEAR_VIF,
                   "; ".join(f"run {run}: {v['n_trials']} of {v['of']} trials (onsets as close as "
                             f"{v['shortest_onset_gap_s']} s)" for run, v in found.items()))
    return {"variance_inflation_above": COLLINEAR_VIF, "runs": found}


def _n_regressors(design) -> int:
    """A run's columns in the all-trials-at-once model: its trials, nuisance event types, drift and confounds."""
    return design.trial_onsets.size + len(design.nuisance_types) + design.fixed_nuisance.shape[1]


def _check_degrees_of_freedom(designs, runs: list[RunData]) -> None:
    """Stop when a run has at least as many regressors (its trials, nuisance event types, drift and confounds)
    as volumes, for the methods that fit every trial of a run at once (all but ``lss``).

    Such a model fits the run's data exactly: r² = 1 and minimum-norm betas of thousands of % signal change
    (a 12-volume run with 14 trials gave ±15,000), written without a word as if they were responses. LSS fits
    one trial against the others' sum, so it still has degrees of freedom left."""
    saturated = []
    for design, run in zip(designs, runs):
        if _n_regressors(design) >= design.frame_times.size:
            saturated.append(f"run {run.run}: {design.trial_onsets.size} trials + {len(design.nuisance_types)} "
                             f"nuisance event type(s) + {design.fixed_nuisance.shape[1]} drift/confound "
                             f"regressors >= {design.frame_times.size} volumes")
    if saturated:
        raise BadDataError("The single-trial model has no degrees of freedom left in "
                           + "; ".join(saturated) + ": its betas would fit the noise exactly",
                           hint="use --glm lss (one trial at a time), or leave these runs out "
                                "(--bids-filter-file); check that the events file belongs to this BOLD run")


def design_memory_bytes(model: SessionModel, itemsize: int, max_pcs: int, n_workers: int = 1) -> float:
    """What the session's designs and their factorisations hold, besides the voxels' data (bytes).

    Per run, every kernel's trial regressors (float64, ``T × n``), and its factorised model (left vectors,
    nuisance basis and right vectors in ``itemsize``) for three numbers of PCs (none, and the counts the PC
    search keeps for the final fit: usually one or two) plus one per worker (``n_workers``: the PC search
    tries that many counts side by side, utils/parallel.py); while a worker factorises one run's kernels, their
    reduced designs, Gram matrices and left vectors in float64. Small for usual runs (~60 MB for 6 runs × 200
    volumes × 60 trials, within the 64 MB always kept), it grows as ``T × n`` per run: on 4 runs × 800 volumes
    × 300 trials (2,000 voxels) the fit's peak rose by 786–819 MiB (824–859 MB) where the plan had counted
    254 MB; with this estimate (749 MB) the plan is 940 MB (docs/glm.md, Solvers). Two workers: the peak rose
    by 1,011 MiB, the estimate is ~990 MB and the plan ~1.27 GB."""
    total, building = 0.0, 0.0
    counts = 3 + max(int(n_workers), 1)
    for run, trials in enumerate(model.trial_regressors):
        n_kernels, n_volumes, n_trials = trials.shape
        n_nuisance = model.nuisance_regressors[run].shape[2] + model.designs[run].fixed_nuisance.shape[1] + max_pcs
        total += n_kernels * n_volumes * n_trials * 8
        total += counts * n_kernels * (n_volumes * (n_trials + n_nuisance) + n_trials * n_trials) * itemsize
        building = max(building, 3 * n_kernels * n_volumes * n_trials * 8)
    return total + max(int(n_workers), 1) * building


def estimate_memory(n_voxels: int, n_volumes: int, n_trials: int, itemsize: int, input_itemsize: int,
                    n_kernels: int, mem_gb: float | None, device_gb: float | None = None, n_workers: int = 1,
                    design_bytes: float = 0.0):
    """Memory plan: bytes needed and the voxel chunk size that fits ``mem_gb``.

    The budget counts the caller's input arrays, the outputs and the per-chunk working set (python/torch
    libraries themselves are not counted). ``device_gb``: what the working set may take on a GPU
    (:func:`~bids_m2i.utils.torch_runtime.device_working_gb`); the inputs and outputs stay in host memory, so
    on a GPU only the chunk is bounded by it (``--mem-gb`` is host memory: a 24 GB budget made one chunk of
    ~22 GB, more than many GPUs hold).

    ``n_workers``: voxel groups fitted side by side (utils/parallel.py). Their per-voxel copies still sum to at
    most the chunk's (the groups split it), but each worker holds its own fixed-size buffers (a batch of
    fraction candidates, :data:`~bids_m2i.glm.fracridge.FRACTION_BATCH_ROWS` rows) and the allocator keeps an
    arena per thread: :data:`PER_WORKER_BYTES` plus three batches for each worker beyond the first.

    ``design_bytes``: :func:`design_memory_bytes`; counted where it exceeds the 64 MB kept for designs,
    factorisations and bookkeeping (long runs of many trials).

    Returns
    -------
    chunk : int
    plan : dict (GB figures for the sidecar)
    """
    input_bytes = n_voxels * n_volumes * input_itemsize
    output_bytes = n_voxels * (n_trials * 4 + 6 * 8)
    per_voxel = itemsize * (3 * n_volumes + 8 * n_trials + N_ALPHAS + 2 * n_kernels + 32)
    batch_bytes = 3 * FRACTION_BATCH_ROWS * n_trials * itemsize
    fixed = (input_bytes + output_bytes + max(64e6, design_bytes)   # designs, factorisations, bookkeeping
             + max(int(n_workers) - 1, 0) * (PER_WORKER_BYTES + batch_bytes))
    if mem_gb is None:
        chunk = max(256, int(DEFAULT_WORKING_GB * 1e9 // per_voxel))
    else:
        available = mem_gb * 1e9 - fixed
        chunk = int(available // per_voxel) if available > 0 else 0
        minimum = min(n_voxels, 256)
        if chunk < minimum:
            need = (fixed + minimum * per_voxel) / 1e9
            raise UsageError(
                f"--mem-gb {mem_gb:g} is too small for the single-trial GLM of {n_voxels} voxels × {n_volumes} "
                f"volumes and {n_trials} trials: it needs at least {need:.2f} GB (input {input_bytes / 1e9:.2f} "
                f"GB, outputs {output_bytes / 1e9:.2f} GB, working set)",
                hint="raise --mem-gb, or use a tighter brain mask")
    if device_gb is not None:
        chunk = min(chunk, max(256, int(device_gb * 1e9 // per_voxel)))
    chunk = min(chunk, n_voxels)
    plan = {"input_gb": round(input_bytes / 1e9, 3), "output_gb": round(output_bytes / 1e9, 3),
            "working_gb": round(chunk * per_voxel / 1e9, 3),
            "total_gb": round((fixed + chunk * per_voxel) / 1e9, 3), "chunk_voxels": chunk,
            "mem_gb": mem_gb, "n_workers": int(n_workers), "design_gb": round(max(64e6, design_bytes) / 1e9, 3)}
    if device_gb is not None:
        plan["device_gb"] = round(device_gb, 3)
    return chunk, plan


def estimate_single_trial_betas(runs: list[RunData], trials: pd.DataFrame, method: str = "fithrf-denoise-rr",
                                hrf_model: str = "glover", drift_model: str | None = "auto",
                                high_pass: float = 0.01, drift_order: int | None = None, lss_split: str | None = None,
                                zscore: bool = False, data_units: str = "raw", mem_gb: float | None = None,
                                n_threads: int = 1, seed: int = 0, device: str | None = "cpu",
                                precision: str = "single", max_pcs: int = 10,
                                fractions=DEFAULT_FRACTIONS, oversampling: int = 50, min_onset: float = MIN_ONSET,
                                brain_threshold: tuple[float, float] = (99.0, 0.1),
                                noise_pool_r2: float | None = None, max_pc_voxels: int = 2000,
                                hrf_selection: str = "full", ridge_criterion: str = "consistency",
                                pc_criterion: str = "ridge", hrf_library: str = DEFAULT_LIBRARY,
                                noise_model: str = "auto",
                                hrf_noise_correction: float = HRF_NOISE_CORRECTION,
                                selection_r2: str = "beyond-drift",
                                pc_source: str = "drift-residuals", pool_exclusion: str = "none",
                                pool_alpha: float = 0.05, pool_exclude=None, beta_units: str = "peak",
                                n_pcs: int | None = None, fraction_pooling: float = 1.0) -> GLMResult:
    """Single-trial betas of one task of one session, all runs modelled together.

    Parameters
    ----------
    runs : list of RunData
        The session's runs of this task (data (n_voxels, n_volumes) each, one voxel set for all runs).
    trials : DataFrame
        Trials-table rows of this task and session (contracts.md): ``onset duration run role event_type
        condition stimulus ...``. ``role == "trial"`` rows get a beta each; ``nuisance`` rows get one regressor
        per ``event_type`` and run; ``ignore`` rows are skipped. Repeats = trials sharing ``stimulus``.
    method : {"fithrf-denoise-rr", "fithrf", "lss", "lsa"}
    hrf_model : {"glover", "spm"}
        Assumed HRF (``lsa``, ``lss``, and the ON-OFF model that selects the noise pool).
    drift_model, high_pass, drift_order : nilearn's drift settings, per run. ``drift_model="auto"`` (default):
        ``lsa``/``lss`` use nilearn's cosine set (``high_pass``); ``fithrf``/``fithrf-denoise-rr`` use
        polynomials of degree round(run minutes / 2) as GLMdenoise/GLMsingle do (fewer drift regressors leave
        closely spaced single trials more degrees of freedom; issue 13 ablation). ``drift_order=None`` with
        ``"polynomial"`` takes that degree; with ``"auto"`` it is ignored.
    lss_split : None or "condition"
        None = LSS-1; "condition" = LSS-N with the "others" regressor split by ``condition``.
    zscore : bool
        z-score every voxel's betas across the session's trials.
    data_units : {"raw", "percent"}
        "raw": data are scaled to % signal change around each voxel's run mean; "percent": used as given.
    mem_gb : float, optional
        Memory budget (GB) including the input arrays; voxels are processed in chunks that fit.
    n_threads : int
        torch threads for the solves (restored afterwards).
    seed : int
        Seeds the choice of voxels used to select the number of PCs when there are more than
        ``max_pc_voxels``.
    device : {"cpu", "cuda", "auto"}
    precision : {"single", "double"}
    max_pcs : int
        Largest number of noise PCs tried (0..max_pcs).
    fractions : sequence of float
        Ridge fractions tried (1 = OLS).
    oversampling, min_onset : nilearn's regressor settings.
    brain_threshold : (percentile, fraction)
        Noise-pool voxels must have a mean intensity above fraction × that percentile (raw data only).
    noise_pool_r2 : float, optional
        ON-OFF R² below which a brain voxel joins the noise pool; default Otsu's threshold on log10 R².
    max_pc_voxels : int
        At most this many signal voxels (random, ``seed``) choose the number of PCs.
    hrf_selection : {"full", "onoff"}
        Library HRF chosen by R² of the full single-trial model (GLMsingle) or of the ON-OFF model.
    ridge_criterion : {"consistency", "ols-target"}
        Cross-validation criterion of the ridge fraction (``bids_m2i.glm.fracridge``).
    fraction_pooling : float
        ``fithrf-denoise-rr``: each voxel's ridge fraction is chosen on its own loss curve plus this weight
        times the session's median curve (the median over the voxels that choose the number of PCs, each with
        its HRF and the chosen PCs). 0: each voxel's own curve alone (the default until issue 13's thirteenth
        pass); 1 (default): docs/glm.md, "The ridge fraction pooled over the session" and "One library of two
        widths".
    pc_criterion : {"ols-target", "consistency", "ridge", "condition-r2"}
        How the number of noise PCs is cross-validated (:func:`bids_m2i.glm.denoise.choose_n_pcs`): by the
        loss of the betas the method returns, the ridge stage's leave-one-repeat-out loss at each voxel's best
        fraction (``"ridge"``, default since issue 13's seventh pass), by the unregularised betas
        (``"ols-target"``, the default before) or by the leave-one-run-out time-series R² of a condition-level
        model (``"condition-r2"``). docs/glm.md, "The number of PCs by the ridge stage's loss".
    hrf_library : {"two-width", "broad", "narrow", "medium", "auto", "session"}
        The HRF library of the fitted-HRF methods (:mod:`bids_m2i.glm.hrf_library`; docs/glm.md): the default
        ``"two-width"`` (ten latencies in two widths, FWHM 4–5 s and 5–6.5 s; issue 13's thirteenth pass), the
        ``"broad"`` library (the default before), or the latency-ordered ``"narrow"`` (FWHM 2.5–3.5 s) or
        ``"medium"`` (FWHM 4–5 s) family (issue-13 options; docs/glm.md gives what each costs), or
        ``"auto"``: one of the three per session, the one whose unregularised betas best predict held-out runs
        (:mod:`bids_m2i.glm.library_choice`; broad when no stimulus is shown in two runs), or ``"session"``: a
        20-member latency-ordered library derived from this session's own response shapes
        (:mod:`bids_m2i.glm.session_library`; broad, said in ``hrf_library_choice``, when the shapes of the odd
        and even runs do not agree). Issue 13, ninth pass: measured, not the default (docs/glm.md).
    noise_model : {"auto", "ols", "ar1"}
        "ar1": the final betas (and the ridge stage) are fitted after AR(1) prewhitening of each voxel's data
        and design, ρ from the OLS residuals, quantised (``bids_m2i.glm.whitening``); not for ``lss``.
        "auto" (default): "ar1" for ``fithrf`` and ``fithrf-denoise-rr``, "ols" for ``lsa`` and ``lss``.
    hrf_noise_correction : float
        With ``hrf_selection="full"``: each kernel's explained sum of squares minus this weight times the
        expected explained sum of squares of the voxel's own noise under that kernel
        (:class:`~bids_m2i.glm.fithrf.NoiseExplainedByKernel`) chooses the HRF; 0 = the plain R² (before
        issue 13's fourth pass). Default 0.5 (docs/glm.md, "The HRF choice corrected for noise").
    selection_r2 : {"with-drift", "beyond-drift"}
        The R² that picks the noise pool (ON-OFF model) and the signal voxels that choose the number of PCs
        (full model): "beyond-drift" (default) the share of the variance left after drift and confounds, as
        GLMdenoise/GLMsingle threshold it (:func:`~bids_m2i.glm.fithrf.r2_beyond_drift`); "with-drift" the
        plain R², drift counted as explained (the default before issue 13's seventh pass). The ``r2`` map is
        the plain R² either way.
    pc_source : {"onoff-residuals", "drift-residuals"}
        What the noise PCs are taken from: the pool's data with only drift and confounds projected out
        (default; GLMdenoise's and GLMsingle's way) or the pool's residuals of the ON-OFF model (the default
        before issue 13's seventh pass). With ``selection_r2="beyond-drift"`` this raised r_trial on 31 of the
        35 benchmark pairs of seeds 0-4, but with the unregularised-beta count (``pc_criterion="ols-target"``)
        the count fell to 0-1 PCs on ``nsd-session``; with the ridge-loss count the three defaults together
        pass the benchmark's rule (docs/glm.md, "The noise pool's R² and the PCs' source" and "The number of
        PCs by the ridge stage's loss").
    pool_exclusion : {"none", "repeat-reliable"}
        ``"repeat-reliable"``: pool voxels whose OLS betas (0 PCs) differ by stimulus reliably across repeats
        leave the noise pool (:func:`~bids_m2i.glm.denoise.reliable_in_pool`: between/within-stimulus variance
        ratio above its permutation null's ``1 - pool_alpha`` quantile). Imagery responses are weak and
        stimulus-specific, so the ON-OFF R² leaves most visual voxels in the pool and its PCs carry imagery signal
        (docs/decoding.md, "A noise pool without stimulus-driven voxels").
    pool_alpha : float
        The rule's false-exclusion rate among pure-noise voxels (0 < pool_alpha < 1).
    pool_exclude : ndarray of bool, shape (n_voxels,), optional
        Voxels (True) that never enter the noise pool, in the runs' voxel order, e.g. the voxels another task of
        the participant found responsive: imagery engages perception's visual voxels too weakly for its own ON-OFF
        R² to keep them out (docs/decoding.md, "issue 14, eighth pass"). A boolean mask rather than indices so
        that its shape is checked against the data. Applied after the ON-OFF pool (and before
        ``pool_exclusion``); like ``pool_exclusion`` it changes where the PCs come from, not which voxels choose
        their number. ``None`` (default): the pool is the ON-OFF pool, bit for bit.
    beta_units : {"peak", "plateau"}
        "peak" (default): a beta of 1 is a trial response whose peak is 1 % signal change (GLMsingle's scaling):
        each voxel's betas are multiplied by the peak of its own kernel's response to one trial of the session's
        median trial duration (:mod:`bids_m2i.glm.units`; a per-voxel rescale, correlations unchanged).
        "plateau": the unit-sum kernels' amplitude, the level a sustained response would reach (the units
        before issue 14; for benchmarks). Ignored with ``zscore`` (z-scores have no units to convert).

    n_pcs : int, optional
        ``fithrf-denoise-rr`` only: use this many noise PCs instead of choosing the count (GLMsingle's ``pcstop =
        -B``), e.g. one count for every session of a study. The cross-validation curve is still computed and
        written to the sidecar (``pc_selection``, with ``fixed``), so a fixed count can be compared with the one
        the data would have chosen. 0 <= n_pcs <= max_pcs; None (default): the count is chosen.

    Returns
    -------
    GLMResult
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise UsageError(f"Unknown GLM method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    if lss_split not in (None, "condition"):
        raise UsageError(f"Unknown lss_split {lss_split!r}", hint="use None (LSS-1) or 'condition' (LSS-N)")
    if data_units not in ("raw", "percent"):
        raise UsageError(f"Unknown data_units {data_units!r}", hint="use 'raw' or 'percent'")
    if hrf_selection not in ("full", "onoff"):
        raise UsageError(f"Unknown hrf_selection {hrf_selection!r}", hint="use 'full' or 'onoff'")
    if pc_criterion not in ("ols-target", "consistency", "ridge", "condition-r2"):
        raise UsageError(f"Unknown pc_criterion {pc_criterion!r}",
                         hint="use 'ols-target', 'consistency', 'ridge' or 'condition-r2'")
    if ridge_criterion not in ("consistency", "ols-target"):
        raise UsageError(f"Unknown ridge_criterion {ridge_criterion!r}", hint="use 'consistency' or 'ols-target'")
    if (isinstance(fraction_pooling, bool) or not isinstance(fraction_pooling, (int, float, np.floating))
            or not (np.isfinite(fraction_pooling) and fraction_pooling >= 0)):
        raise UsageError(f"fraction_pooling must be a number >= 0, got {fraction_pooling!r}",
                         hint="0 chooses each voxel's ridge fraction on its own cross-validation loss")
    if n_pcs is not None and (isinstance(n_pcs, bool) or not isinstance(n_pcs, (int, np.integer))
                              or not 0 <= n_pcs <= max_pcs):
        raise UsageError(f"n_pcs must be a whole number from 0 to max_pcs ({max_pcs}), got {n_pcs!r}")
    if hrf_library not in (AUTO, SESSION):
        check_library(hrf_library)
    if not (np.isfinite(hrf_noise_correction) and hrf_noise_correction >= 0):
        raise UsageError(f"hrf_noise_correction must be a number >= 0, got {hrf_noise_correction!r}",
                         hint="0 chooses the HRF by plain R²")
    if pc_source not in ("onoff-residuals", "drift-residuals"):
        raise UsageError(f"Unknown pc_source {pc_source!r}", hint="use 'onoff-residuals' or 'drift-residuals'")
    if selection_r2 not in ("beyond-drift", "with-drift"):
        raise UsageError(f"Unknown selection_r2 {selection_r2!r}", hint="use 'beyond-drift' or 'with-drift'")
    if pool_exclusion not in POOL_EXCLUSIONS:
        raise UsageError(f"Unknown pool_exclusion {pool_exclusion!r}", hint=f"use one of {', '.join(POOL_EXCLUSIONS)}")
    if not 0.0 < pool_alpha < 1.0:
        raise UsageError(f"pool_alpha must be between 0 and 1, got {pool_alpha!r}", hint="e.g. 0.05")
    if noise_model not in ("auto", "ols", "ar1"):
        raise UsageError(f"Unknown noise_model {noise_model!r}", hint="use 'auto', 'ols' or 'ar1'")
    if noise_model == "auto":
        noise_model = "ar1" if method in ("fithrf", "fithrf-denoise-rr") else "ols"
    if noise_model == "ar1" and method == "lss":
        raise UsageError("noise_model='ar1' is not implemented for lss", hint="use noise_model='ols' with lss")
    if precision not in ("single", "double"):
        raise UsageError(f"Unknown precision {precision!r}", hint="use 'single' or 'double'")
    check_beta_units(beta_units)
    n_voxels, lengths = _check_runs(runs)
    if pool_exclude is not None:
        pool_exclude = np.asarray(pool_exclude)
        if pool_exclude.dtype != bool or pool_exclude.shape != (n_voxels,):
            raise UsageError(f"pool_exclude must be a boolean mask of the {n_voxels} voxels, got "
                             f"{pool_exclude.dtype} of shape {pool_exclude.shape}",
                             hint="one True/False per voxel, in the runs' voxel order")
    trial_runs = set(trials.loc[trials["role"] == "trial", "run"].astype(str))
    if len(runs) > 1 and any(str(r.run) not in trial_runs for r in runs):
        # a run without trials carries no information on any beta (runs are separate blocks)
        LOGGER.warning("runs without trials are left out of the single-trial GLM: %s",
                       [str(r.run) for r in runs if str(r.run) not in trial_runs])
        runs = [r for r in runs if str(r.run) in trial_runs] or runs
        lengths = [r.data.shape[1] for r in runs]
        trials = trials[trials["run"].astype(str).isin([str(r.run) for r in runs])]
    dtype = torch.float32 if precision == "single" else torch.float64
    torch_device = resolve_device(device)
    if drift_model == "auto":
        fitted_hrf = method in ("fithrf", "fithrf-denoise-rr")
        drift_model, drift_order = ("polynomial", None) if fitted_hrf else ("cosine", 1)
    elif drift_model == "polynomial" and drift_order is None:
        pass  # degree from each run's duration
    elif drift_order is None:
        drift_order = 1

    designs, trial_rows = build_run_designs(runs, trials, drift_model, high_pass, drift_order)
    if method != "lss":
        _check_degrees_of_freedom(designs, runs)
    n_trials = len(trial_rows)
    stimulus = trial_rows["stimulus"].astype(str).to_numpy() if "stimulus" in trial_rows else \
        np.array(["n/a"] * n_trials)
    repeats = RepeatStructure.from_labels(stimulus)

    effective = method
    fallback = None
    if method == "fithrf-denoise-rr" and not repeats.has_repeats:
        effective = "fithrf"
        fallback = ("no stimulus is shown more than once in this task and session, so the number of noise PCs "
                    "and the ridge fractions cannot be cross-validated: fell back to fithrf")
        LOGGER.warning(fallback)
    elif method == "fithrf-denoise-rr" and repeats.n_stimuli == 1 and ridge_criterion == "consistency":
        # one stimulus is all the repeats there are (a one-condition task, or a single image shown twice among
        # unrepeated ones): the "consistency" loss (fracridge._criterion), which the ridge fraction and, by
        # default, the number of PCs are chosen by, measures how well the pattern *across stimuli* agrees
        # between repeats. With one stimulus it is a constant (every trial of one stimulus: (n / (n-1))² for
        # every fraction) or one stimulus's scatter, so the fractions came out of rounding (0.05-1 spread over
        # the voxels, different in single and double precision) and the PC scores were all 0, yet the sidecar
        # called them cross-validated. Nothing can be cross-validated here either: fall back as above.
        effective = "fithrf"
        fallback = ("only one stimulus is shown more than once in this task and session, so the number of noise "
                    "PCs and the ridge fractions cannot be cross-validated (their criterion compares the pattern "
                    "across stimuli between repeats): fell back to fithrf")
        LOGGER.warning(fallback)
    use_library = effective in ("fithrf", "fithrf-denoise-rr")

    library_choice = None
    requested_library = hrf_library
    with torch_threads(n_threads):
        def load(voxels):
            """Data of some voxels in % signal change, one tensor per run, and their mean intensity."""
            pieces = [percent_signal(run.data[voxels], dtype, torch_device, data_units) for run in runs]
            return [p[0] for p in pieces], sum(p[1] for p in pieces) / len(pieces)

        models = {}
        if hrf_library == AUTO and use_library:
            # one library for the whole session, by leave-one-run-out prediction (glm/library_choice.py)
            choice_started = time.perf_counter()
            hrf_library, library_choice, models = _choose_session_library(
                designs, runs, load, trial_rows, stimulus, n_voxels, hrf_model, oversampling, min_onset, dtype,
                torch_device, data_units, brain_threshold, max_pc_voxels, seed, mem_gb)
            library_choice["elapsed_s"] = round(time.perf_counter() - choice_started, 3)
            LOGGER.info("HRF library chosen for the session: %s (%s)", hrf_library,
                        library_choice.get("median_score", library_choice.get("reason")))
        elif hrf_library == SESSION and use_library:
            # a library derived from this session's response shapes, or broad when they are too noisy
            choice_started = time.perf_counter()
            hrf_library, library_choice = _derive_session_library(
                designs, runs, load, n_voxels, len(trial_rows), hrf_model, oversampling, min_onset, dtype,
                torch_device, data_units, brain_threshold, mem_gb, max_pcs)
            library_choice["elapsed_s"] = round(time.perf_counter() - choice_started, 3)
            LOGGER.info("HRF library of the session: %s", "derived" if library_choice["fallback"] is None
                        else library_choice["reason"])
        elif hrf_library in (AUTO, SESSION):
            hrf_library = DEFAULT_LIBRARY  # assumed HRF methods: no library used
        model = models.get(hrf_library) or SessionModel(
            designs, hrf_model, with_library=use_library, oversampling=oversampling, min_onset=min_onset,
            dtype=dtype, device=torch_device, library=hrf_library)
        del models
        collinear = None if effective == "lss" else _collinear_trials(model, [str(r.run) for r in runs])
        itemsize = torch.finfo(dtype).bits // 8
        workers = group_workers(torch_device)
        chunk, memory_plan = estimate_memory(n_voxels, sum(lengths), n_trials, itemsize,
                                             runs[0].data.dtype.itemsize, model.n_kernels, mem_gb,
                                             device_working_gb(torch_device), n_workers=workers,
                                             design_bytes=design_memory_bytes(model, itemsize, max_pcs, workers))
        chunks = [slice(start, min(start + chunk, n_voxels)) for start in range(0, n_voxels, chunk)]

        betas = np.zeros((n_trials, n_voxels), dtype=np.float32)
        r2 = np.zeros(n_voxels, dtype=np.float32)
        hrf_index = np.full(n_voxels, -1, dtype=np.int16)
        n_pcs_map = np.zeros(n_voxels, dtype=np.int16)
        frac = np.ones(n_voxels, dtype=np.float32)
        onoff_r2 = np.zeros(n_voxels, dtype=np.float32)
        ar1 = np.zeros(n_voxels, dtype=np.float32)  # quantised AR(1) coefficient (noise_model="ar1")
        intensity = np.zeros(n_voxels, dtype=np.float32)
        pc_search_hrf = np.full(n_voxels, -1, dtype=np.int16)
        pc_search_r2 = np.zeros(n_voxels, dtype=np.float32)
        groups = None
        if effective == "lss" and lss_split == "condition":
            _, groups = np.unique(trial_rows["condition"].astype(str).to_numpy(), return_inverse=True)
        library = list(range(model.n_kernels - 1)) if use_library else []

        noise_correction = None
        if use_library and hrf_selection == "full" and hrf_noise_correction > 0:
            noise_correction = NoiseExplainedByKernel(model, library)
        timing = {"design_s": time.perf_counter() - started}
        # pass 1: HRF choice (fitted methods) or the final betas (lsa, lss, fithrf)
        for voxels in chunks:
            data_runs, mean = load(voxels)
            intensity[voxels] = mean.cpu().numpy()
            total = total_sum_of_squares(data_runs)
            if effective in ("lsa", "lss"):
                kernel_of_voxel = np.full(voxels.stop - voxels.start, model.canonical_index)
                if noise_model == "ar1" and effective == "lsa":
                    ols, fitted, rho = whitened_trial_betas(model, data_runs, kernel_of_voxel, n_trials)
                    ar1[voxels] = rho
                else:
                    ols, fitted = grouped_trial_betas(model, data_runs, kernel_of_voxel, n_trials)
                chunk_betas = ols if effective == "lsa" else lss_betas(model, data_runs, n_trials, groups)
                r2[voxels] = r2_from(fitted, total).cpu().numpy()
                betas[:, voxels] = chunk_betas.T.cpu().numpy()
                continue
            fitted_all = library_fitted_ss(model, data_runs, library, hrf_selection)
            best = plain = torch.argmax(fitted_all, 0)
            if noise_correction is not None:  # less the noise each kernel would explain (fithrf.py)
                best = torch.argmax(fitted_all - hrf_noise_correction * noise_correction.expected(data_runs), 0)
            hrf_index[voxels] = best.cpu().numpy()
            # R² of the selecting model; for "onoff" selection it measures the mean evoked response
            r2[voxels] = r2_from(fitted_all.gather(0, best[None])[0], total).cpu().numpy()
            # the number of noise PCs is searched with the plain choice's HRFs and R² (what it was validated on;
            # docs/glm.md "The HRF choice corrected for noise": its score is too flat to absorb another change)
            pc_search_hrf[voxels] = plain.cpu().numpy()
            # selection_r2="beyond-drift" (the default) picks the pool and the PC-search voxels by the R² beyond
            # drift (fithrf.r2_beyond_drift: the plain R² counts a large drift as signal; docs/glm.md, "The noise
            # pool's R² and the PCs' source")
            drift = drift_sum_of_squares(model, data_runs) if selection_r2 == "beyond-drift" else None
            plain_fitted = fitted_all.gather(0, plain[None])[0]
            pc_search_r2[voxels] = (r2_beyond_drift(plain_fitted, drift) if drift is not None
                                    else r2_from(plain_fitted, total)).cpu().numpy()
            if effective == "fithrf":
                if noise_model == "ar1":
                    chunk_betas, fitted, rho = whitened_trial_betas(model, data_runs, hrf_index[voxels], n_trials)
                    ar1[voxels] = rho
                else:
                    chunk_betas, fitted = grouped_trial_betas(model, data_runs, hrf_index[voxels], n_trials)
                betas[:, voxels] = chunk_betas.T.cpu().numpy()
                r2[voxels] = r2_from(fitted, total).cpu().numpy()
            else:
                onoff = sum(model.onoff_operators(r).fitted_sum_of_squares(d) for r, d in enumerate(data_runs))
                onoff_r2[voxels] = (r2_beyond_drift(onoff, drift) if drift is not None
                                    else r2_from(onoff, total)).cpu().numpy()

        metadata_denoise = {}
        if effective == "fithrf-denoise-rr":
            metadata_denoise = _denoise_and_ridge(
                model, runs, chunks, load, betas, r2, hrf_index, n_pcs_map, frac, onoff_r2, intensity,
                repeats, n_trials, data_units, brain_threshold, noise_pool_r2, max_pcs, max_pc_voxels,
                fractions, seed, ridge_criterion, pc_criterion, ar1 if noise_model == "ar1" else None,
                pc_search=(pc_search_hrf, pc_search_r2), pc_source=pc_source,
                pool_exclusion=(pool_exclusion, pool_alpha), pool_exclude=pool_exclude, fixed_pcs=n_pcs,
                fraction_pooling=float(fraction_pooling),
                retained=(chunks[-1], data_runs, total) if chunks else None)

        # the units of the betas: one per-voxel factor, after every fit and before z-scoring (glm/units.py)
        peak_scaling, beta_scale = None, None
        if beta_units == "peak" and not zscore:
            peak_scaling, beta_scale = _peak_scaling(model, trial_rows, hrf_index)
            to_peak_units(betas, beta_scale)

        if zscore:
            for voxels in chunks:
                block = torch.as_tensor(betas[:, voxels].T.copy())
                betas[:, voxels] = zscore_rows(block.double()).float().T.numpy()

    timing["fit_s"] = time.perf_counter() - started - timing["design_s"]
    snr = np.empty(n_voxels, dtype=np.float32)
    for voxels in chunks:  # chunked: ncsnr works on copies of the betas
        snr[voxels] = ncsnr(betas[:, voxels], stimulus)
    metadata = {
        "method": method,
        "method_label": METHOD_LABELS[method],
        "effective_method": effective,
        "fallback_reason": fallback,
        "units": "z-score per voxel within session" if zscore else "percent signal change",
        "beta_units": "z-score" if zscore else beta_units,
        "beta_definition": BETA_DEFINITIONS["z-score" if zscore else beta_units],
        "peak_scaling": peak_scaling,
        "zscored": bool(zscore),
        "hrf_model": hrf_model,
        "hrf_library": describe_library(name=hrf_library) if use_library else None,
        "hrf_library_name": (hrf_library if isinstance(hrf_library, str) else hrf_library.name)
                            if use_library else None,
        "hrf_library_requested": requested_library if use_library else None,
        "hrf_library_choice": library_choice,
        "hrf_choice": (f"max R² of the {'full single-trial' if hrf_selection == 'full' else 'ON-OFF'} model"
                       + (f", less {hrf_noise_correction:g} × the expected R² of the voxel's noise (autocovariance "
                          f"at lags 0-{noise_correction.lags} from the assumed-HRF model's residuals)"
                          if noise_correction is not None else "")
                       if use_library else "assumed"),
        "hrf_noise_correction": hrf_noise_correction if noise_correction is not None else 0.0,
        "selection_r2": selection_r2 if effective == "fithrf-denoise-rr" else None,
        "ridge_criterion": ridge_criterion if effective == "fithrf-denoise-rr" else None,
        "fraction_pooling": None,    # fithrf-denoise-rr: its weight and median curve (_denoise_and_ridge)
        "noise_model": noise_model,
        "ar1": ({"estimate": "lag-1 autocorrelation of the OLS residuals (chosen HRF and PCs), pooled over runs, "
                            "bias-corrected for the model (Worsley et al. 2002)", "bin_step": AR1_STEP,
                 "clip": [RHO_MIN, RHO_MAX], "median": float(np.median(ar1)), "n_bins": int(np.unique(ar1).size),
                 "applies_to": ("final betas and the ridge stage" if effective == "fithrf-denoise-rr" else
                                "final betas") + "; HRF choice, noise pool and number of PCs are OLS"}
                if noise_model == "ar1" else None),
        "drift_model": drift_model, "high_pass": high_pass if drift_model == "cosine" else None,
        "drift_order": ([polynomial_degree(d.frame_times) for d in designs] if drift_model == "polynomial"
                        and drift_order is None else drift_order),
        "oversampling": oversampling,
        "lss_split": lss_split if effective == "lss" else None,
        "runs": [str(r.run) for r in runs],
        "frame_time_offset_s": [float(d.frame_times[0]) for d in designs],
        "nuisance_event_types": sorted({t for d in designs for t in d.nuisance_types}),
        "n_trials": n_trials,
        "collinear_trials": collinear,
        "n_repeated_stimuli": repeats.n_stimuli,
        "r2_definition": "1 - SS_residual / SS_total around each run's mean, all runs, unregularised model",
        "ncsnr_definition": "NSD (Allen et al. 2022): betas z-scored per voxel in the session; noise variance = "
                            "mean over stimuli with the design's number of repeats of the across-repeat "
                            "variance (n-1); signal sd = sqrt(max(0, 1 - noise variance)); ncsnr = signal sd / "
                            "noise sd",
        "n_pcs": int(n_pcs_map.max()) if effective == "fithrf-denoise-rr" else 0,
        "ridge_fractions": list(fractions) if effective == "fithrf-denoise-rr" else None,
        "median_ridge_fraction": float(np.median(frac)),
        "data_units": data_units,
        "n_voxels_not_scalable": int((intensity <= 0).sum()) if data_units == "raw" else 0,
        "memory": memory_plan,
        "device": str(torch_device), "precision": precision, "n_threads": int(n_threads), "seed": int(seed),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
        **metadata_denoise,
    }
    return GLMResult(betas=betas, trial_rows=trial_rows, r2=r2, ncsnr=snr, hrf_index=hrf_index,
                     n_pcs=n_pcs_map, frac=frac, metadata=metadata, beta_scale=beta_scale)


# the sidecar's ``beta_definition`` per ``beta_units`` (docs/glm.md, "Units of the betas")
BETA_DEFINITIONS = {
    "peak": "peak % signal change (of the voxel's run mean) of the response to one trial of the reference duration "
            "(peak_scaling.reference_duration_s; GLMsingle's scaling): the amplitude of the trial's regressor (trial "
            "boxcar convolved with the voxel's unit-sum HRF) times that HRF's peak response to one such trial",
    "plateau": "amplitude of a regressor made of the trial boxcar convolved with a unit-sum HRF (nilearn's "
               "convention): the plateau a sustained response would reach, in % of the voxel's run mean",
    "z-score": "the betas z-scored per voxel over the session's trials (no units: the same whatever the scaling)",
}


def _peak_scaling(model: SessionModel, trial_rows: pd.DataFrame, hrf_index: np.ndarray):
    """The sidecar's ``peak_scaling`` and the per-voxel factor from plateau to peak units (glm/units.py).

    The kernels of the first run are used: the factor is a fraction of the kernel's area, the same on every
    run's grid but for the grid's discretisation (runs of one session normally share their TR)."""
    duration = reference_duration(trial_rows["duration"])
    peaks = kernel_peak_responses(model.kernels[0], duration, model.kernel_dt[0])
    scale = voxel_peak_scale(peaks, hrf_index, model.canonical_index)
    library = [round(float(p), 6) for p in peaks[:model.canonical_index]]
    info = {
        "reference_duration_s": duration,
        "reference": "median duration of the task and session's trials",
        "kernel_peak_responses": library or None,
        "assumed_hrf_peak_response": round(float(peaks[model.canonical_index]), 6),
        "how": "betas = unit-sum (plateau) betas x the peak of the voxel's kernel's response to a boxcar of "
               "reference_duration_s, on the model's grid (TR / oversampling): kernel_peak_responses[hrfindex] "
               "(hrfindex -1: assumed_hrf_peak_response). A trial of another duration d peaks at beta x "
               "peak(d) / peak(reference_duration_s)",
        "median_factor": float(np.median(scale)) if scale.size else None,
    }
    return info, scale


def _choose_session_library(designs, runs, load, trial_rows, stimulus, n_voxels, hrf_model, oversampling,
                            min_onset, dtype, device, data_units, brain_threshold, max_voxels, seed, mem_gb):
    """``hrf_library="auto"``: signal voxels by the ON-OFF model's R² (assumed HRF), then
    :func:`bids_m2i.glm.library_choice.choose_library` on at most ``max_voxels`` of them (random, ``seed``)."""
    canonical = SessionModel(designs, hrf_model, with_library=False, oversampling=oversampling,
                             min_onset=min_onset, dtype=dtype, device=device)
    chunk, _ = estimate_memory(n_voxels, sum(r.data.shape[1] for r in runs), len(trial_rows),
                               torch.finfo(dtype).bits // 8, runs[0].data.dtype.itemsize, 1, mem_gb,
                               device_working_gb(device))
    onoff_r2 = np.zeros(n_voxels, dtype=np.float32)
    intensity = np.zeros(n_voxels, dtype=np.float32)
    for start in range(0, n_voxels, chunk):
        voxels = slice(start, min(start + chunk, n_voxels))
        data_runs, mean = load(voxels)
        intensity[voxels] = mean.cpu().numpy()
        onoff = sum(canonical.onoff_operators(r).fitted_sum_of_squares(d) for r, d in enumerate(data_runs))
        onoff_r2[voxels] = r2_from(onoff, total_sum_of_squares(data_runs)).cpu().numpy()
    brain = brain_voxels(intensity, *brain_threshold) if data_units == "raw" else np.ones(n_voxels, dtype=bool)
    if not brain.any():
        brain = np.ones(n_voxels, dtype=bool)
    data_runs, _ = load(signal_voxel_sample(onoff_r2, brain, max_voxels, seed))
    run_of_trial = trial_rows["run"].astype(str).to_numpy()
    name, info, models = choose_library(designs, data_runs, stimulus, run_of_trial, hrf_model, oversampling,
                                        min_onset, dtype, device)
    info["voxels"] = "signal voxels: ON-OFF R² (assumed HRF) above Otsu's threshold of log10 R² among brain voxels"
    return name, info, models


def _derive_session_library(designs, runs, load, n_voxels, n_trials, hrf_model, oversampling, min_onset, dtype,
                            device, data_units, brain_threshold, mem_gb, max_pcs):
    """``hrf_library="session"``: GLMdenoise's noise pool and PCs (the ON-OFF model with the assumed HRF, PCs of
    the pool's drift-free data: nothing here needs a library), then the basis model's fits of every voxel with
    ``max_pcs`` PCs among its nuisance regressors, chunk by chunk, then
    :func:`bids_m2i.glm.session_library.derive_library`. Returns the library (a
    :class:`~bids_m2i.glm.session_library.SampledFamily`, or the fallback's name) and the sidecar's info."""
    canonical = SessionModel(designs, hrf_model, with_library=False, oversampling=oversampling,
                             min_onset=min_onset, dtype=dtype, device=device)
    chunk, _ = estimate_memory(n_voxels, sum(r.data.shape[1] for r in runs), n_trials,
                               torch.finfo(dtype).bits // 8, runs[0].data.dtype.itemsize, 1, mem_gb,
                               device_working_gb(device))
    chunks = [slice(start, min(start + chunk, n_voxels)) for start in range(0, n_voxels, chunk)]
    intensity = np.zeros(n_voxels, dtype=np.float32)
    onoff_r2 = np.zeros(n_voxels, dtype=np.float32)
    for voxels in chunks:
        data_runs, mean = load(voxels)
        intensity[voxels] = mean.cpu().numpy()
        onoff = sum(canonical.onoff_operators(r).fitted_sum_of_squares(d) for r, d in enumerate(data_runs))
        onoff_r2[voxels] = r2_beyond_drift(onoff, drift_sum_of_squares(canonical, data_runs)).cpu().numpy()
    brain = _brain(intensity, data_units, brain_threshold)
    if not brain.any():
        brain = np.ones(n_voxels, dtype=bool)
    pool, _ = noise_pool(onoff_r2, brain)
    pcs = None
    if max_pcs > 0 and pool.sum() >= _min_pool(max_pcs):
        pcs = _pool_components(canonical, chunks, load, pool, max_pcs, drift_residuals)
    fit = BasisFit(designs, hrf_model, oversampling, min_onset, dtype, device, noise_pcs=pcs)
    cross, left = [], []
    for voxels in chunks:
        part = fit.project(load(voxels)[0])
        cross.append(part[0])
        left.append(part[1])
    family, info = derive_library(fit, np.concatenate(cross, 1), np.concatenate(left, 1), brain)
    info["noise_pcs_in_shape_model"] = 0 if pcs is None else int(pcs[0].shape[1])
    return (family if family is not None else info["fallback"]), info


def _brain(intensity: np.ndarray, data_units: str, brain_threshold) -> np.ndarray:
    """Brain voxels by their mean intensity (raw data); every voxel when the data have no intensities."""
    if data_units == "raw":
        return brain_voxels(intensity, *brain_threshold)
    return np.ones(intensity.size, dtype=bool)


def _min_pool(max_pcs: int) -> int:
    """The fewest pool voxels from which ``max_pcs`` noise PCs are taken."""
    return max(3 * max_pcs, 50)


def _pool_components(model: SessionModel, chunks, load, pool: np.ndarray, max_pcs: int, residuals):
    """GLMdenoise's noise PCs (``max_pcs`` per run) of ``residuals(model, run, data)`` of the pool's voxels,
    read chunk by chunk."""
    accumulator = NoisePCAccumulator([d.frame_times.size for d in model.designs])
    for voxels in chunks:
        members = np.arange(voxels.start, voxels.stop)[pool[voxels]]
        if members.size:
            for run, data in enumerate(load(members)[0]):
                accumulator.add(run, residuals(model, run, data))
    return accumulator.components(max_pcs)


# what each PC-count criterion's median_cv_score is (sidecar ``pc_selection.score``)
PC_SCORES = {
    "ridge": "median over the signal voxels of the decrease from 0 PCs of the ridge stage's leave-one-repeat-out "
             "loss at each voxel's best fraction (the loss of the betas the method returns)",
    "ols-target": "median over the signal voxels of 1 - leave-one-repeat-out error of the OLS betas / their sum "
                  "of squares at 0 PCs",
    "consistency": "median over the signal voxels of 1 - leave-one-repeat-out error of the mean-centred OLS "
                   "betas / their sum of squares",
    "condition-r2": "median over the signal voxels of the leave-one-run-out time-series R² of a condition-level "
                    "model",
}


def _exclude_reliable(model, chunks, load, pool, hrf_index, n_trials, repeats, alpha, seed) -> dict:
    """``pool_exclusion="repeat-reliable"``: drop the pool's stimulus-driven voxels from ``pool`` (in place)."""
    if repeats.n_stimuli < 3 or repeats.trials.size <= repeats.n_stimuli:
        return {"rule": "repeat-reliable", "skipped": f"{repeats.n_stimuli} repeated stimuli (< 3)"}
    where = [np.arange(v.start, v.stop)[pool[v]] for v in chunks]

    def pool_betas():
        for columns in where:
            if columns.size:
                data_runs, _ = load(columns)
                yield _ols_trial_betas(model, data_runs, hrf_index[columns], n_trials, 0)

    reliable, info = reliable_in_pool(pool_betas(), repeats, alpha, seed=seed)
    pool[np.concatenate(where)[reliable]] = False
    return info


def _denoise_and_ridge(model, runs, chunks, load, betas, r2, hrf_index, n_pcs_map, frac, onoff_r2, intensity,
                       repeats, n_trials, data_units, brain_threshold, noise_pool_r2, max_pcs, max_pc_voxels,
                       fractions, seed, ridge_criterion="consistency", pc_criterion="ridge",
                       ar1=None, pc_search=None, pc_source="drift-residuals", pool_exclusion=("none", 0.05),
                       retained=None, pool_exclude=None, fixed_pcs=None, fraction_pooling=0.0) -> dict:
    """GLMdenoise PCs, their number by cross-validation, then cross-validated fractional ridge (in place).

    ``pc_search``: (HRF index, R²) per voxel for the search over the number of PCs (default: ``hrf_index``,
    ``r2``). ``retained``: ``(chunk, data_runs, total)``, the last chunk's ``load`` and
    ``total_sum_of_squares`` from the HRF pass, still in memory: the ridge stage uses them instead of loading
    that chunk again (the same values, computed once; one chunk in memory instead of two).
    """
    search_hrf, search_r2 = pc_search if pc_search is not None else (hrf_index, r2)
    brain = _brain(intensity, data_units, brain_threshold)
    pool, pool_threshold = noise_pool(onoff_r2, brain, noise_pool_r2)
    info = {"pc_source": pc_source,
            "noise_pool": {"n_voxels": int(pool.sum()), "onoff_r2_threshold": pool_threshold,
                           "brain_threshold": {"percentile": brain_threshold[0], "fraction": brain_threshold[1],
                                               "applied": data_units == "raw"}}}
    # the voxels that choose the number of PCs are drawn outside the ON-OFF pool, with or without the exclusion
    # below: the rule changes where the PCs come from, not who judges them
    outside_pool = brain & ~pool
    if pool_exclude is not None:  # voxels known to respond from elsewhere (e.g. the perception task)
        removed = pool & pool_exclude
        pool &= ~pool_exclude
        info["noise_pool"]["excluded_by_mask"] = {"n_mask": int(pool_exclude.sum()),
                                                  "n_removed": int(removed.sum())}
        info["noise_pool"]["n_voxels"] = int(pool.sum())
    rule, alpha = pool_exclusion
    if rule == "repeat-reliable" and max_pcs > 0:
        info["noise_pool"]["exclusion"] = _exclude_reliable(model, chunks, load, pool, hrf_index, n_trials,
                                                            repeats, alpha, seed)
        info["noise_pool"]["n_voxels"] = int(pool.sum())
    n_pcs, sample = 0, None
    # PCs are regressors too: a count that leaves a run no residual degrees of freedom fits that run exactly
    # (r² = 1), and the search rewarded such saturated models (short runs of many trials chose 10 PCs where the
    # counts that still fit chose 0). Only counts that leave every run at least one degree of freedom are tried.
    room = min(d.frame_times.size - 1 - _n_regressors(d) for d in model.designs)
    if room < max_pcs:
        LOGGER.warning("noise PCs limited to %d (of max_pcs %d): more would leave a run without residual degrees "
                       "of freedom", max(room, 0), max_pcs)
        info["max_pcs_limited"] = {"max_pcs": int(max_pcs), "used": int(max(room, 0)),
                                   "reason": "more PCs would leave a run without residual degrees of freedom"}
        if fixed_pcs is not None and fixed_pcs > max(room, 0):
            LOGGER.warning("n_pcs=%d asked for, but only %d fit: %d PCs used", fixed_pcs, max(room, 0),
                           max(room, 0))
            fixed_pcs = max(room, 0)
        max_pcs = max(room, 0)
    min_pool = _min_pool(max_pcs)
    if max_pcs > 0 and pool.sum() >= min_pool:
        model.noise_pcs = _pool_components(model, chunks, load, pool, max_pcs,
                                           onoff_residuals if pc_source == "onoff-residuals" else drift_residuals)

        # voxels that carry signal choose the number of PCs
        candidates = signal_voxel_sample(search_r2, brain, max_pc_voxels, seed, eligible=outside_pool)
        data_runs, _ = load(candidates)
        if fraction_pooling > 0:   # the same voxels give the session's median loss curve below
            sample = (candidates, data_runs)
        n_pcs, scores = choose_n_pcs(model, data_runs, search_hrf[candidates], n_trials, repeats, max_pcs,
                                     criterion=pc_criterion, fractions=fractions)
        info["pc_selection"] = {"candidates": list(range(max_pcs + 1)), "median_cv_score": scores,
                                "n_voxels": int(candidates.size), "criterion": pc_criterion,
                                "score": PC_SCORES[pc_criterion],
                                "rule": ("GLMsingle's: at least one PC, the first whose improvement x 1.05 reaches "
                                         "the best" if pc_criterion == "condition-r2" else
                                         "smallest number of PCs reaching 95% of the best median improvement")}
        if fixed_pcs is not None:  # the user's count; the curve above says what the data would have chosen
            info["pc_selection"]["fixed"] = {"n_pcs": int(fixed_pcs), "chosen_by_the_rule": int(n_pcs)}
            n_pcs = int(fixed_pcs)
    else:
        info["pc_selection"] = {"skipped": f"noise pool has {int(pool.sum())} voxels (< {min_pool})"
                                if max_pcs > 0 else "max_pcs = 0"}
        if fixed_pcs:  # asked for PCs that cannot be taken: say so rather than fit a different model silently
            LOGGER.warning("n_pcs=%d asked for, but no noise PCs could be taken (%s): 0 PCs used", fixed_pcs,
                        info["pc_selection"]["skipped"])
            info["pc_selection"]["fixed"] = {"n_pcs": int(fixed_pcs), "used": 0}
    n_pcs_map[:] = n_pcs

    pooling = None
    info["fraction_pooling"] = {"weight": fraction_pooling}
    if fraction_pooling > 0:
        # the session's median loss curve, from the voxels that judged the PC count (drawn here when no PCs were
        # searched), each with its HRF and the chosen PCs
        if sample is None:
            voxels = signal_voxel_sample(search_r2, brain, max_pc_voxels, seed, eligible=outside_pool)
            sample = (voxels, load(voxels)[0])
        median = _median_loss_curve(model, *sample, hrf_index, n_pcs, repeats, fractions, ridge_criterion)
        info["fraction_pooling"].update(n_voxels=int(sample[0].size), fractions=fraction_order(fractions),
                                        median_loss=None if median is None else [float(v) for v in median])
        if median is not None:
            pooling = fraction_pooling * median

    for voxels in chunks:
        if retained is not None and voxels == retained[0]:
            data_runs, total = retained[1], retained[2]
        else:
            data_runs, _ = load(voxels)
            total = total_sum_of_squares(data_runs)
        kernels = hrf_index[voxels]
        present, sizes = np.unique(kernels, return_counts=True)
        model.build_operators(present, n_pcs)   # the groups below only read them

        def fit_group(kernel):
            """The ridge stage of the chunk's voxels with this HRF; writes only their columns."""
            local = np.flatnonzero(kernels == kernel)
            index = torch.as_tensor(local, device=model.device)
            operators = [model.operators(run, int(kernel), n_pcs) for run in range(model.n_runs)]
            group_data = [data.index_select(0, index) for data in data_runs]
            columns = voxels.start + local
            if ar1 is not None:  # GLS: each AR(1) bin refitted on whitened data and design
                rho, fitted = estimate_ar1(operators, group_data)
                bins = quantise(rho)
                ar1[columns] = bins
                r2[columns] = r2_from(fitted, total.index_select(0, index)).cpu().numpy()
                for in_bin, white_ops, white_data in whitened_bins(model, group_data, int(kernel), n_pcs, bins):
                    final, chosen, _, _ = fractional_ridge_cv(white_ops, white_data, repeats, fractions,
                                                              ridge_criterion, with_fitted=False, pooling=pooling)
                    betas[:, columns[in_bin]] = final.T.cpu().numpy()
                    frac[columns[in_bin]] = chosen.cpu().numpy()
                return
            final, chosen, _, fitted = fractional_ridge_cv(
                operators, group_data, repeats, fractions, ridge_criterion, pooling=pooling)
            betas[:, columns] = final.T.cpu().numpy()
            frac[columns] = chosen.cpu().numpy()
            r2[columns] = r2_from(fitted, total.index_select(0, index)).cpu().numpy()

        # the HRF groups side by side (utils/parallel.py); the largest first, so that no thread is left with one
        # large group at the end
        with group_map(model.device) as map_groups:
            map_groups(fit_group, present[np.argsort(-sizes, kind="stable")])
    return info


def _median_loss_curve(model, sample, data_runs, hrf_index, n_pcs, repeats, fractions, criterion):
    """Median over ``sample``'s voxels (their data: ``data_runs``) of their ridge-stage loss at every fraction
    (:func:`fraction_order`), as a tensor on the model's device; None for an empty sample.

    The voxels are fitted with their HRF and the chosen PCs by OLS, whatever the noise model: the PC search has
    just built those designs (one pass over 2,000 voxels, ~0.2 CPU s at V = 20,000), while the AR(1)-whitened
    ones would be built twice (~1.2 s); the two medians differ by < 0.02 and have the same shape (docs/glm.md).
    Each voxel's curve depends on its own data and HRF only, so the median does not depend on how the ridge
    stage chunks the session."""
    if sample.size == 0:
        return None
    kernels = hrf_index[sample]
    curves = []
    for kernel in np.unique(kernels):
        index = torch.as_tensor(np.flatnonzero(kernels == kernel), device=model.device)
        operators = [model.operators(run, int(kernel), n_pcs) for run in range(model.n_runs)]
        curves.append(fraction_loss_curves(operators, [data.index_select(0, index) for data in data_runs], repeats,
                                           fractions, criterion))
    return torch.cat(curves, dim=1).median(dim=1).values
