"""An HRF library derived from the session's own data (``hrf_library="session"``; issue 13, ninth pass).

GLMsingle's library is a one-parameter family of 20 HRFs that Kay et al. derived from NSD data: the responses
of many voxels, summarised by a 1-D manifold ordered by latency (Prince et al. 2022, eLife 11:e77599). This
module applies that *method* to the session being fitted; no shape is taken from elsewhere:

1. **Shapes.** Every voxel's mean trial response (all trials as one condition, GLMsingle's ON-OFF model) is fitted
   with a smooth impulse-response basis instead of an assumed HRF: :data:`N_BASIS` cubic B-splines, 2 s apart,
   each minus its mirror image about t = 0 so that every shape starts at 0. The trials' boxcars are convolved
   with each basis function exactly as with a library kernel (``RunDesign.event_regressors``); drift,
   confounds and nuisance events are projected out first. The fit is the sum of per-run normal equations, so
   the odd and the even runs give two independent fits at no extra cost.
2. **Voxels.** The top :data:`TOP_FRACTION` (a quarter) of brain voxels (at least :data:`MIN_VOXELS`, at most
   :data:`MAX_VOXELS`) by the basis model's R² beyond drift, the model holding GLMdenoise's noise PCs as well
   (:class:`BasisFit`). Each voxel's shape is signed by its main lobe (a deactivation has the shape of an
   activation) and scaled to peak 1; shapes whose peak is outside 1–10 s, or with anything larger than
   :data:`MAX_LATE` of the peak after the main lobe (:func:`single_lobe`), are dropped.
3. **Evidence check.** Two mean shapes that share no data must agree (correlation over 0–24 s at least
   :data:`MIN_SPLIT_HALF`, and its sign-flip null's p below :data:`MAX_SPLIT_HALF_P`): the even runs' shapes of
   the voxels that the odd runs select (and sign), and the odd runs' shapes of those the even runs select
   (:func:`cross_half_agreement`); and at least :data:`MIN_VOXELS`
   shapes must be kept. Otherwise the session has too little signal to say what its HRFs look like and the
   ``broad`` library is used (the sidecar says why). A per-voxel split-half correlation was tried first and
   rejected: on the benchmark's ``dg-high`` its median is 0.24 although the mean shape is clear (r 0.97).
4. **The family** (:func:`summarise_family`): a template and a spread, each estimated so that noise does not
   pass for HRF variation. The spread of the true times to peak is the covariance of the odd-run and the
   even-run times to peak (independent noises); the growth of the main lobe's width with latency is the
   cross-fitted slope of log width on log latency, corrected for the latency's unreliability; the template
   is the shapes moved to a common time to peak (by that growth) and averaged. The :data:`N_MEMBERS` members
   are the template moved to times to peak ``median + sd · z_i``, ``z_i`` evenly spaced normal quantiles from
   5 % to 95 %. Members are ordered by time to peak (index 0 the earliest, as the ``narrow`` library).

Every member is a function of time on a 0.05 s grid; :meth:`SampledFamily.kernels` samples it on a run's
oversampled grid and normalises it to unit sum, like the fixed libraries (:mod:`bids_m2i.glm.hrf_library`).
Nothing is random: the same data give the same library.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import torch

from .hrf_library import KERNEL_SECONDS, canonical_kernel, kernel_times
from .solvers import orthonormal_basis

SESSION = "session"
FALLBACK = "broad"
FINE_DT = 0.05
FINE_TIMES = np.arange(0.0, KERNEL_SECONDS + FINE_DT / 2, FINE_DT)
BASIS_SPACING = 2.0                                            # s between B-spline centres
N_BASIS = 12                                                   # centres 2, 4, ..., 24 s (support to 28 s)
SHAPE_SECONDS = 24.0                                           # shapes are compared on 0-24 s
N_MEMBERS = 20
TOP_FRACTION = 0.25
MIN_VOXELS = 30
MAX_VOXELS = 1000
MIN_SPLIT_HALF = 0.8
MAX_SPLIT_HALF_P = 0.01
N_NULL = 199
MAX_LATE = 0.5
PEAK_RANGE = (1.0, 10.0)
N_SHAPE_PCS = 3


def _cubic_bspline(u: np.ndarray) -> np.ndarray:
    """The uniform cubic B-spline centred at 0 (support −2..2, peak 2/3)."""
    a = np.abs(u)
    return np.where(a < 1, 2.0 / 3.0 - a ** 2 + a ** 3 / 2.0, np.where(a < 2, (2.0 - a) ** 3 / 6.0, 0.0))


def basis_values(times: np.ndarray) -> np.ndarray:
    """The impulse-response basis at ``times`` (s), shape (N_BASIS, n_times); each function is 0 at t = 0."""
    centres = BASIS_SPACING * np.arange(1, N_BASIS + 1)
    t = np.asarray(times, dtype=float)[None]
    c = centres[:, None]
    return _cubic_bspline((t - c) / BASIS_SPACING) - _cubic_bspline((-t - c) / BASIS_SPACING)


class SampledFamily:
    """A library given as functions of time (rows of ``values`` on :data:`FINE_TIMES`).

    ``kernels(t_r, oversampling)`` samples them on a run's grid: unit sum (as the fixed libraries) when
    ``unit_sum``, else times the grid step (the basis: regressors then do not depend on the TR's grid)."""

    def __init__(self, values: np.ndarray, unit_sum: bool = True, name: str = SESSION):
        self.values = np.asarray(values, dtype=float)
        self.unit_sum = unit_sum
        self.name = name

    def __len__(self) -> int:
        return self.values.shape[0]

    def kernels(self, t_r: float, oversampling: int = 50) -> np.ndarray:
        grid = kernel_times(t_r, oversampling)
        sampled = np.stack([np.interp(grid, FINE_TIMES, v, right=0.0) for v in self.values])
        if self.unit_sum:
            return sampled / sampled.sum(1, keepdims=True)
        return sampled * (t_r / oversampling)

    def describe(self) -> list[dict]:
        """One dict per member for the sidecar: time to peak, FWHM of the main lobe, undershoot / peak."""
        out = []
        for index, v in enumerate(self.values):
            peak = int(np.argmax(v))
            above = np.flatnonzero(v >= v[peak] / 2)
            out.append({"index": index, "time_to_peak_s": round(float(FINE_TIMES[peak]), 2),
                        "fwhm_s": round(float((above[-1] - above[0]) * FINE_DT), 2),
                        "undershoot_ratio": round(float(-min(v[peak:].min(), 0.0) / v[peak]), 3)})
        return out


def valid_kernels(kernels: np.ndarray) -> bool:
    """Finite, positive sum, a positive main lobe larger than any negative part (each row)."""
    kernels = np.atleast_2d(kernels)
    return bool(np.isfinite(kernels).all() and (kernels.sum(1) > 0).all()
                and (kernels.max(1) > np.abs(kernels.min(1))).all())


class BasisFit:
    """Per-voxel fits of the basis ON-OFF model, accumulated chunk by chunk (odd and even runs apart).

    ``noise_pcs`` (one (n_volumes, k) array per run, optional) join drift and nuisance events in the model. Noise
    shared by many voxels with voxel-specific loadings (global fluctuations) adds to every voxel's shape the
    same distortion in proportion to its loading, in the odd and in the even runs alike: across voxels it then
    looks like true, reliable variation of the HRF (on the benchmark's ``dg-nsd`` the halves' times to peak
    covaried as if their SD were 1.3 s where the truth's is 0.9 s)."""

    def __init__(self, designs, hrf_model: str, oversampling: int, min_onset: float, dtype, device,
                 noise_pcs=None):
        self.dtype, self.device = dtype, device
        basis = SampledFamily(basis_values(FINE_TIMES), unit_sum=False, name="basis")
        self.reduced, self.nuisance, self.gram = [], [], np.zeros((2, N_BASIS, N_BASIS))
        for run, design in enumerate(designs):
            kernels = np.concatenate([basis.kernels(design.tr, oversampling),
                                      canonical_kernel(hrf_model, design.tr, oversampling)[None]])
            trials, events = design.event_regressors(kernels, oversampling, min_onset)
            onoff = trials[:N_BASIS].sum(2).T                                       # (T, N_BASIS)
            parts = [design.fixed_nuisance, events[-1]]
            if noise_pcs is not None:  # GLMdenoise's PCs: noise shared by voxels would pass for response shape
                parts.append(noise_pcs[run])
            nuisance = orthonormal_basis(np.concatenate(parts, axis=1))
            reduced = onoff - nuisance @ (nuisance.T @ onoff)
            self.gram[run % 2] += reduced.T @ reduced
            self.reduced.append(torch.as_tensor(reduced, dtype=dtype, device=device))
            self.nuisance.append(torch.as_tensor(nuisance, dtype=dtype, device=device))

    def project(self, data_runs: list[torch.Tensor]):
        """Per voxel: ``Xᵀy`` summed over the odd and over the even runs, shape (2, n_voxels, N_BASIS), and the
        sums of squares left after drift and nuisance (2, n_voxels); float64 numpy."""
        cross = np.zeros((2, data_runs[0].shape[0], N_BASIS))
        left = np.zeros((2, data_runs[0].shape[0]))
        for run, data in enumerate(data_runs):
            cross[run % 2] += (data @ self.reduced[run]).double().cpu().numpy()
            left[run % 2] += (torch.linalg.vector_norm(data, dim=1) ** 2
                     - torch.linalg.vector_norm(data @ self.nuisance[run], dim=1) ** 2).double().cpu().numpy()
        return cross, left


def _solve(gram: np.ndarray, cross: np.ndarray) -> np.ndarray:
    return cross @ np.linalg.pinv(gram).T


def _signed_peak_shapes(coefs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shapes on the fine grid signed by their main lobe and scaled to peak 1, and their peak's value before."""
    shapes = coefs @ basis_values(FINE_TIMES)
    early = FINE_TIMES <= PEAK_RANGE[1]
    index = np.argmax(np.abs(shapes[:, early]), 1)
    signed = shapes[np.arange(len(shapes)), index]
    scale = np.where(signed != 0, signed, 1.0)
    return shapes / scale[:, None], signed


def _move_peak(shape: np.ndarray, peak: float, target: float, exponent: float) -> np.ndarray:
    """``shape`` (time to peak ``peak``) moved to time to peak ``target``, its width scaled by
    ``(target / peak) ** exponent`` about the peak (1: the dilation about t = 0 that keeps the rise starting at
    0; 0: a shift), 0 before t = 0 and beyond the shape's end."""
    factor = (target / peak) ** exponent
    source = peak + (FINE_TIMES - target) / factor
    return np.interp(source, FINE_TIMES, shape, left=0.0, right=0.0)


def summarise_family(shapes: np.ndarray, halves: tuple, weights: np.ndarray, n_members: int = N_MEMBERS):
    """The latency-ordered family (module docstring, step 4), shape (n_members, n_fine), peak 1 each, and a
    dict of what it was made from.

    ``shapes`` (n, n_fine): the voxels' whole-session shapes, peak 1; ``halves``: the same voxels' odd-run and
    even-run shapes on the same scale; ``weights``: the template's (R²). Each estimate is made so that noise does
    not pass for HRF variation:

    * the spread of the true times to peak: the covariance over voxels of the two halves' times to peak (their
      noises are independent, so it estimates the true variance; the whole session's spread adds the noise's);
    * how the main lobe's width grows with the time to peak (:func:`_width_exponent`, cross-fitted too);
    * one template: the shapes moved to a common time to peak (the median, by that growth) and averaged.
      Averaging without aligning would blur the template by the latency spread (tried first: FWHM 5.1–6.7 s on
      ``dg-high``, where the voxels' own are 4.2–6.0 s).

    Member ``i`` is the template moved to the time to peak ``median + sd · z_i``, ``z_i`` evenly spaced normal
    quantiles from 5 % to 95 %."""
    w = weights / weights.sum()
    mean = w @ shapes
    # the basis ends at 28 s, so the shapes' components on the whole grid are those of their response
    _, _, vt = np.linalg.svd((shapes - mean) * np.sqrt(w)[:, None], full_matrices=False)
    components = vt[:N_SHAPE_PCS]

    def latency(x):  # time to peak of the shapes' projection on the components (denoised)
        smooth = mean + ((x - mean) @ components.T) @ components
        return _peak_times(smooth)

    whole = latency(shapes)
    # the halves' latencies and widths are read from their own shapes: projected on components that both halves'
    # noise made, their noises would no longer be independent and their covariance would count noise as spread
    first, second = _peak_times(halves[0]), _peak_times(halves[1])
    # a noisy half's peak can jump to a side lobe: voxels whose halves disagree by more than 3 robust SDs of the
    # disagreement are left out of the spread and the width's growth (both are covariances: outliers rule them)
    diff = first - second
    agree = np.abs(diff - np.median(diff)) <= 3.0 * 1.4826 * max(np.median(np.abs(diff - np.median(diff))), FINE_DT)
    first, second = first[agree], second[agree]
    # the latencies' centre and spread count every kept voxel once: weighting by R² (or keeping only the very
    # best voxels) favours the early, narrow responses, whose peaks are higher for the same area
    centre = float(np.median(whole))
    covariance = float(np.mean((first - first.mean()) * (second - second.mean())))
    spread = float(np.sqrt(max(covariance, 0.0)))
    exponent = _width_exponent(tuple(h[agree] for h in halves), (first, second))
    template = w @ np.stack([_move_peak(x, t, centre, exponent) for x, t in zip(shapes, whole)])
    template /= template.max()
    z = np.array([NormalDist().inv_cdf(q) for q in np.linspace(0.05, 0.95, n_members)])  # 5 % to 95 %
    targets = np.clip(centre + spread * z, PEAK_RANGE[0], PEAK_RANGE[1])
    peak_time = FINE_TIMES[np.argmax(template)]
    members = np.stack([_move_peak(template, peak_time, t, exponent) for t in targets])
    members /= members.max(1, keepdims=True)
    return members, {"time_to_peak_median_s": round(centre, 3), "time_to_peak_sd_s": round(spread, 3),
                     "width_exponent": round(exponent, 3),
                     "time_to_peak_sd_whole_session_s": round(float(whole.std()), 3)}


def _peak_times(shapes: np.ndarray) -> np.ndarray:
    """Time to peak (s) of each shape within 0-24 s, clipped to the plausible range."""
    window = FINE_TIMES <= SHAPE_SECONDS
    return np.clip(FINE_TIMES[np.argmax(np.where(window, shapes, -np.inf), 1)], PEAK_RANGE[0], PEAK_RANGE[1])


def _widths(shapes: np.ndarray) -> np.ndarray:
    """Full width at half maximum (s) of each shape's main lobe (the run above half the peak around it)."""
    out = np.empty(len(shapes))
    for row, x in enumerate(shapes):
        peak = int(np.argmax(np.where(FINE_TIMES <= SHAPE_SECONDS, x, -np.inf)))
        below = x < x[peak] / 2
        left = np.flatnonzero(below[:peak])
        right = np.flatnonzero(below[peak:])
        start = left[-1] + 1 if left.size else 0
        stop = peak + right[0] if right.size else x.size
        out[row] = max(stop - start, 1) * FINE_DT
    return out


def _width_exponent(halves: tuple, latencies: tuple) -> float:
    """How the main lobe's width grows with latency: the slope of log width on log time to peak, 0..1.

    Cross-fitted as the spread is: one half's log latency against the other half's log width (independent
    noises), divided by the latency's reliability (the covariance of the two halves' log latencies over the
    variance of one), which the noise in the regressor would otherwise take off the slope (errors in
    variables). 1 scales the width with the latency (the template is dilated), 0 keeps it (shifted)."""
    slopes = []
    for a in (0, 1):
        x = np.log(latencies[a])
        x_other = np.log(latencies[1 - a])
        y = np.log(_widths(halves[1 - a]))
        variance = float(np.var(x))
        reliability = float(np.mean((x - x.mean()) * (x_other - x_other.mean()))) / max(variance, 1e-12)
        if variance <= 0 or reliability < 0.1:      # no reliable latency variation: the exponent is moot
            return 1.0
        slopes.append(float(np.mean((x - x.mean()) * (y - y.mean()))) / variance / reliability)
    return float(np.clip(np.mean(slopes), 0.0, 1.0))


def single_lobe(shapes: np.ndarray) -> np.ndarray:
    """Which peak-1 shapes look like an HRF: finite, peak within :data:`PEAK_RANGE`, and once the main lobe has
    fallen below half its peak nothing after it exceeds :data:`MAX_LATE` in size (an undershoot, not a second
    response). On the benchmark's generators with global oscillations many top voxels' ON-OFF shapes carry a
    second lobe as large as the first at 12-20 s (the periodic trial train leaves such ripples poorly
    determined); their times to peak would count as HRF spread."""
    keep = np.isfinite(shapes).all(1)
    for row, x in enumerate(shapes):
        if not keep[row]:
            continue
        peak = int(np.argmax(np.where(FINE_TIMES <= SHAPE_SECONDS, x, -np.inf)))
        fallen = np.flatnonzero(x[peak:] < 0.5 * x[peak])
        keep[row] = (PEAK_RANGE[0] <= FINE_TIMES[peak] <= PEAK_RANGE[1] and fallen.size > 0
                     and np.abs(x[peak + fallen[0]:]).max() <= MAX_LATE * x[peak])
    return keep


def _top_voxels(gram, cross, left, brain, n_top):
    """Basis coefficients and R² beyond drift of every voxel, and the ``n_top`` brain voxels of highest R²."""
    coefs = _solve(gram, cross)
    explained = np.einsum("vj,vj->v", coefs, cross)
    r2 = np.where(left > 0, explained / np.clip(left, 1e-30, None), 0.0)
    return coefs, r2, np.argsort(-np.where(brain, r2, -np.inf), kind="stable")[:n_top]


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation of the rows of ``a`` and ``b`` (last axis), 0 where either is constant."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    norm = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return np.where(norm > 0, (a * b).sum(-1) / np.where(norm > 0, norm, 1.0), 0.0)


def cross_half_agreement(fit: BasisFit, cross: np.ndarray, left: np.ndarray, brain: np.ndarray,
                         n_top: int) -> tuple[float, float]:
    """Correlation (0–24 s) of two mean response shapes that share no data, and its p-value.

    The shapes: the even runs' shapes of the voxels that the odd runs select (top R², signed by the odd runs'
    main lobe), and the odd runs' shapes of those the even runs select. Selecting and signing on the same data as
    the shapes would make pure noise agree. Even so, noise that voxels share (global fluctuations with
    voxel-specific loadings) gives both means a shape of its own, and two such smooth shapes correlate by
    chance more often than white noise would (r 0.81 on one of four pure-noise sessions tried). The p-value is
    therefore the share of :data:`N_NULL` sign flips of the voxels (the same flips in both means; a fixed
    seed: deterministic) whose correlation reaches the observed one: a response common to the voxels agrees
    only with its own signs, shared noise with any."""
    window = FINE_TIMES <= SHAPE_SECONDS
    parts = []
    for chooser in (0, 1):
        other = 1 - chooser
        _, _, top = _top_voxels(fit.gram[chooser], cross[chooser], left[chooser], brain, n_top)
        _, sign = _signed_peak_shapes(_solve(fit.gram[chooser], cross[chooser][top]))
        shapes = _solve(fit.gram[other], cross[other][top]) @ basis_values(FINE_TIMES[window])
        parts.append(np.sign(sign)[:, None] * shapes)
    observed = float(_correlation(parts[0].mean(0), parts[1].mean(0)))
    flips = np.random.default_rng(0).choice([-1.0, 1.0], size=(N_NULL, 2, n_top))
    null = _correlation(flips[:, 0] @ parts[0] / n_top, flips[:, 1] @ parts[1] / n_top)
    return observed, float((1 + np.sum(null >= observed)) / (1 + N_NULL))


def derive_library(fit: BasisFit, cross: np.ndarray, left: np.ndarray, brain: np.ndarray):
    """The session's family (:class:`SampledFamily`) or None (too little signal), and the sidecar's info.

    Parameters
    ----------
    cross, left : from :meth:`BasisFit.project` on all voxels (their odd/even cross products, residual SS)
    brain : ndarray of bool, shape (n_voxels,)
    """
    info = {"method": "ON-OFF model with a cubic B-spline impulse-response basis (2 s spacing, 0-28 s) on the "
                      "top voxels by its R² beyond drift; shapes summarised by a latency-ordered family "
                      "(docs/glm.md, issue 13 ninth pass)", "fallback": None}

    def fallback(reason):
        info.update(fallback=FALLBACK, reason=reason)
        return None, info

    if fit.gram[1].trace() == 0:
        return fallback("one run only: no independent halves to check the shapes; used the broad library")
    n_brain = int(brain.sum())
    n_top = int(min(MAX_VOXELS, max(MIN_VOXELS, np.ceil(TOP_FRACTION * n_brain)), n_brain))
    coefs, r2, top = _top_voxels(fit.gram.sum(0), cross.sum(0), left.sum(0), brain, n_top)
    half_coefs = [_solve(fit.gram[h], cross[h][top]) for h in (0, 1)]
    shapes, peak = _signed_peak_shapes(coefs[top])
    keep = single_lobe(shapes)
    split, split_p = cross_half_agreement(fit, cross, left, brain, n_top)
    info.update(n_brain_voxels=n_brain, n_top_voxels=n_top, n_shapes_kept=int(keep.sum()),
                top_r2_beyond_drift_median=round(float(np.median(r2[top])), 4) if n_top else None,
                split_half_r=round(split, 4), split_half_p=round(split_p, 4), min_split_half_r=MIN_SPLIT_HALF,
                max_split_half_p=MAX_SPLIT_HALF_P, min_voxels=MIN_VOXELS)
    if keep.sum() < MIN_VOXELS:
        return fallback(f"{int(keep.sum())} voxels with a valid response shape (< {MIN_VOXELS}): used the broad "
                        "library")
    if split < MIN_SPLIT_HALF or split_p >= MAX_SPLIT_HALF_P:
        return fallback(f"the mean response shapes of the odd and the even runs agree too little (r {split:.2f}, "
                        f"p {split_p:.3f}; needs r >= {MIN_SPLIT_HALF} and p < {MAX_SPLIT_HALF_P}): used the "
                        "broad library")
    weights = np.clip(r2[top][keep], 1e-12, None)
    scale = np.where(peak != 0, peak, 1.0)[keep, None]     # both halves on the whole session's sign and scale
    halves = tuple(c[keep] @ basis_values(FINE_TIMES) / scale for c in half_coefs)
    members, summary = summarise_family(shapes[keep], halves, weights)
    info.update(summary)
    family = SampledFamily(members)
    if not valid_kernels(family.kernels(1.0)):
        return fallback("a derived kernel was not a valid HRF (non-positive main lobe): used the broad library")
    info["members"] = family.describe()
    return family, info
