"""HRF kernels: nilearn's canonical ones and the library used to fit one HRF per voxel.

Every kernel is sampled on nilearn's oversampled grid (step ``t_r / oversampling``, 32 s long) and
normalised to unit sum, exactly as ``nilearn.glm.first_level.glover_hrf`` is. With that convention a fitted beta
is the plateau amplitude (in % BOLD) that a sustained stimulus would reach with that kernel's shape; how much of
it a single short trial reaches depends on the shape (0.40–1.25 for a 3 s trial across the broad library), so
the engine rescales each voxel's betas to the peak of one trial's response, GLMsingle's units
(:mod:`bids_m2i.glm.units`, ``beta_units="peak"``).

The library
-----------
20 double-gamma HRFs in nilearn's parametrisation (``peak - ratio * undershoot``, each a gamma pdf of shape
``delay / dispersion`` and scale ``dispersion``). Ten peak delays ``d`` from 4.0 s to 9.4 s, with a dispersion
that grows with the delay (``0.9 * d / 6``: later responses are broader, as measured by Handwerker et al.
2004, NeuroImage 21:1639), so that the time to peak ranges from about 3.3 s to 7.9 s; each with a weak and a
strong undershoot (``ratio`` 0.15 and 0.45, undershoot delay ``d + 6`` s, dispersion 0.9). Glover's canonical
HRF (delay 6, dispersion 0.9, undershoot 12, ratio 0.48) sits inside this family. The spread mirrors the range
covered by GLMsingle's library (Prince et al. 2022, eLife 11:e77599), but the shapes are our own. This is the
``"broad"`` library (the default until issue 13's thirteenth pass, now an option).

The ``"narrow"`` library (an option; issue 13) is a one-parameter family ordered by latency: member ``i`` has its
peak (the gamma mode, ``delay - dispersion``) at ``3 + 4 i / 19`` s (3–7 s), a full width at half maximum
(``2.355 sqrt(delay · dispersion)``) of ``2.5 + i / 19`` s (later responses are broader) and an undershoot 8 s
after the peak (dispersion 1) whose ratio falls from 0.35 to 0.05 (early, narrow responses have the stronger
undershoot). The kernels are narrower than the canonical HRF on purpose: with trials every few seconds, broad
kernels make neighbouring trials' regressors nearly collinear, and the R² that chooses the HRF then rewards
fitting noise. Index 0 is the earliest member, index 19 the latest. The idea of a latency-ordered 20-member
family is GLMsingle's; the shapes are our own.

The ``"medium"`` library (an option; issue 13) is the same latency-ordered family with FWHM ``4 + i / 19`` s
(4–5 s): between the two others (docs/glm.md, "HRF library").

The ``"two-width"`` library (the default since issue 13's thirteenth pass) crosses ten latencies with two
widths: members 0–9 have their peaks at ``3 + 4 k / 9`` s (3–7 s) with the medium library's widths (FWHM
``4 + k / 9`` s), members 10–19 the same peaks with FWHM ``5 + 1.5 k / 9`` s (5–6.5 s); undershoots as in the
narrow library (8 s after the peak, ratio 0.35 → 0.05 with latency). Each voxel's choice between the two widths
is what the single-width libraries lack: the medium widths suit HRFs with a deep undershoot (GLMsingle's NSD
library, the benchmark's double gammas), the wider ones the demo simulator's shallower, broader responses, where
the medium library alone takes a share of the previous trial into each beta (docs/glm.md, "One library of two
widths").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KERNEL_SECONDS = 32.0
LIBRARY_DELAYS = np.round(np.linspace(4.0, 9.4, 10), 2)
LIBRARY_RATIOS = (0.15, 0.45)
# the "narrow" library
N_NARROW = 20
NARROW_PEAKS = np.linspace(3.0, 7.0, N_NARROW)          # s, mode of the positive gamma
NARROW_FWHM = np.linspace(2.5, 3.5, N_NARROW)           # s, full width at half maximum (gamma approximation)
MEDIUM_FWHM = np.linspace(4.0, 5.0, N_NARROW)           # s, the "medium" library (same peaks and undershoots)
NARROW_RATIOS = np.linspace(0.35, 0.05, N_NARROW)       # undershoot / peak
NARROW_UNDERSHOOT_LAG = 8.0                             # s after the peak
# the "two-width" library: ten latencies, each in the medium library's width and in a wider one
TWO_WIDTH_PEAKS = np.linspace(3.0, 7.0, 10)             # s, mode of the positive gamma
TWO_WIDTH_FWHM = (np.linspace(4.0, 5.0, 10), np.linspace(5.0, 6.5, 10))  # s: members 0-9, then 10-19
TWO_WIDTH_RATIOS = np.linspace(0.35, 0.05, 10)          # undershoot / peak, by latency
GAMMA_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))           # FWHM / sd of a normal (gamma approximation)
LIBRARIES = ("broad", "narrow", "medium", "two-width")
DEFAULT_LIBRARY = "two-width"


def gamma_pdf(times: np.ndarray, shape: float, loc: float, scale: float) -> np.ndarray:
    """Gamma density (``scipy.stats.gamma.pdf`` with ``loc``), 0 at and before ``loc``.

    Written out because importing ``scipy.stats`` costs about a second of CPU per GLM process (and
    ``scipy.special`` about 0.3 s: ``math.lgamma`` serves the one shape)."""
    x = (np.asarray(times, dtype=float) - loc) / scale
    positive = x > 0
    out = np.zeros_like(x)
    xp = x[positive]
    out[positive] = np.exp((shape - 1.0) * np.log(xp) - xp - math.lgamma(shape)) / scale
    return out


@dataclass(frozen=True)
class DoubleGammaParams:
    """Parameters of one double-gamma HRF (nilearn's names; seconds)."""

    delay: float
    dispersion: float
    undershoot: float
    u_dispersion: float
    ratio: float

    def as_dict(self) -> dict:
        return {
            "delay": self.delay,
            "dispersion": self.dispersion,
            "undershoot": self.undershoot,
            "u_dispersion": self.u_dispersion,
            "ratio": self.ratio,
        }


def kernel_times(t_r: float, oversampling: int = 50, time_length: float = KERNEL_SECONDS) -> np.ndarray:
    """nilearn's oversampled kernel grid (s): ``round(time_length / (t_r / oversampling))`` points over 0..time_length."""
    return np.linspace(0, time_length, int(np.rint(time_length / (t_r / oversampling))))


def double_gamma_kernel(params: DoubleGammaParams, t_r: float, oversampling: int = 50,
                        time_length: float = KERNEL_SECONDS) -> np.ndarray:
    """Sample a unit-sum double-gamma HRF on nilearn's oversampled grid.

    Returns
    -------
    kernel : ndarray, shape (round(time_length / (t_r / oversampling)),)
    """
    dt = t_r / oversampling
    times = kernel_times(t_r, oversampling, time_length)
    peak = gamma_pdf(times, params.delay / params.dispersion, loc=dt, scale=params.dispersion)
    under = gamma_pdf(times, params.undershoot / params.u_dispersion, loc=dt, scale=params.u_dispersion)
    kernel = peak - params.ratio * under
    return kernel / kernel.sum()


def _broad_params() -> list[DoubleGammaParams]:
    members = []
    for ratio in LIBRARY_RATIOS:
        for delay in LIBRARY_DELAYS:
            members.append(DoubleGammaParams(delay=float(delay), dispersion=round(0.9 * delay / 6.0, 4),
                                             undershoot=float(delay) + 6.0, u_dispersion=0.9, ratio=ratio))
    return members


def _latency_ordered_params(widths: np.ndarray, peaks: np.ndarray = NARROW_PEAKS,
                            ratios: np.ndarray = NARROW_RATIOS) -> list[DoubleGammaParams]:
    members = []
    for peak, fwhm, ratio in zip(peaks, widths, ratios):
        # a gamma of shape delay/dispersion and scale dispersion has mode delay - dispersion and variance
        # delay * dispersion: solve both for the requested peak and width
        variance = (fwhm / GAMMA_FWHM) ** 2
        dispersion = (-peak + np.sqrt(peak * peak + 4.0 * variance)) / 2.0
        delay = peak + dispersion
        members.append(DoubleGammaParams(delay=round(float(delay), 4), dispersion=round(float(dispersion), 4),
                                         undershoot=round(float(delay + NARROW_UNDERSHOOT_LAG), 4),
                                         u_dispersion=1.0, ratio=round(float(ratio), 4)))
    return members


def _two_width_params() -> list[DoubleGammaParams]:
    return [member for widths in TWO_WIDTH_FWHM
            for member in _latency_ordered_params(widths, TWO_WIDTH_PEAKS, TWO_WIDTH_RATIOS)]


def check_library(name: str) -> str:
    """``name`` if it is a known library, else a :class:`~bids_m2i.errors.UsageError`."""
    if name not in LIBRARIES:
        from ..errors import UsageError

        raise UsageError(f"Unknown HRF library {name!r}", hint=f"use one of {', '.join(LIBRARIES)}")
    return name


def library_params(name: str = DEFAULT_LIBRARY) -> list[DoubleGammaParams]:
    """The members of the HRF library ``name`` (``"broad"``, ``"narrow"``, ``"medium"``, ``"two-width"``), in index
    order (module docstring)."""
    if check_library(name) == "broad":
        return _broad_params()
    if name == "two-width":
        return _two_width_params()
    return _latency_ordered_params(NARROW_FWHM if name == "narrow" else MEDIUM_FWHM)


def library_kernels(t_r: float, oversampling: int = 50, name: str = DEFAULT_LIBRARY) -> np.ndarray:
    """All kernels of the library ``name``.

    Returns
    -------
    kernels : ndarray, shape (n_hrf, n_samples)

    ``name`` may also be a library object with ``kernels(t_r, oversampling)`` (the session-derived library,
    :class:`bids_m2i.glm.session_library.SampledFamily`).
    """
    if not isinstance(name, str):
        return name.kernels(t_r, oversampling)
    return np.stack([double_gamma_kernel(p, t_r, oversampling) for p in library_params(name)])


def time_to_peak(kernel: np.ndarray, t_r: float, oversampling: int = 50) -> float:
    """Time (s) of the kernel's maximum on its sampling grid."""
    dt = KERNEL_SECONDS / (kernel.size - 1)
    return float(np.argmax(kernel) * dt)


# nilearn's canonical kernels (Glover 1999; SPM's), in the same double-gamma parametrisation
CANONICAL_PARAMS = {
    "glover": DoubleGammaParams(delay=6.0, dispersion=0.9, undershoot=12.0, u_dispersion=0.9, ratio=0.48),
    "spm": DoubleGammaParams(delay=6.0, dispersion=1.0, undershoot=16.0, u_dispersion=1.0, ratio=0.167),
}


def canonical_kernel(hrf_model: str, t_r: float, oversampling: int = 50) -> np.ndarray:
    """nilearn's canonical kernel (``"glover"`` or ``"spm"``), unit sum, equal to ``nilearn.glm.first_level``'s
    ``glover_hrf`` / ``spm_hrf`` (test) without importing nilearn's GLM module.

    Returns
    -------
    kernel : ndarray, shape (n_samples,)
    """
    if hrf_model in CANONICAL_PARAMS:
        return double_gamma_kernel(CANONICAL_PARAMS[hrf_model], t_r, oversampling)
    from ..errors import UsageError

    raise UsageError(f"Unknown hrf_model {hrf_model!r} for single-trial GLMs",
                     hint="use 'glover' or 'spm' (the fitted HRF methods use the documented library)")


def describe_library(t_r: float = 1.0, oversampling: int = 50, name: str = DEFAULT_LIBRARY) -> list[dict]:
    """One dict per member of the library ``name`` (parameters and time to peak), for the sidecar."""
    if not isinstance(name, str):  # a derived library describes itself
        return name.describe()
    out = []
    for index, params in enumerate(library_params(name)):
        kernel = double_gamma_kernel(params, t_r, oversampling)
        out.append({"index": index, **params.as_dict(), "time_to_peak_s": round(time_to_peak(kernel, t_r), 2)})
    return out
