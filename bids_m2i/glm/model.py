"""The session's factorised models: one :class:`~bids_m2i.glm.solvers.RunOperators` per run, kernel and
number of noise PCs, built on demand and cached (they are small: a few hundred × a few hundred)."""

from __future__ import annotations

import numpy as np
import torch

from .design import RunDesign
from .hrf_library import DEFAULT_LIBRARY, canonical_kernel, library_kernels
from .solvers import SINGULAR_TOLERANCE, RunOperators, orthonormal_basis, stacked_operators


class SessionModel:
    """All runs' regressors for a set of HRF kernels.

    Kernel indices ``0 .. n_library-1`` are the HRF library (when ``with_library``); the last index
    (:attr:`canonical_index`) is the assumed HRF ``hrf_model``.

    Parameters
    ----------
    designs : list of RunDesign
    hrf_model : str
        ``"glover"`` or ``"spm"`` (nilearn's kernels).
    library : {"broad", "narrow", "medium"}
        Which HRF library (:mod:`bids_m2i.glm.hrf_library`) when ``with_library``.
    """

    def __init__(self, designs: list[RunDesign], hrf_model: str = "glover", with_library: bool = False,
                 oversampling: int = 50, min_onset: float = -24.0, dtype=torch.float32, device=None,
                 library: str = DEFAULT_LIBRARY):
        self.designs = designs
        self.dtype = dtype
        self.device = device or torch.device("cpu")
        self.trial_regressors, self.nuisance_regressors = [], []
        self.kernels, self.kernel_dt = [], []  # per run: (n_kernels, n_samples) and the grid step (glm/units.py)
        for design in designs:
            kernels = [canonical_kernel(hrf_model, design.tr, oversampling)[None]]
            if with_library:
                kernels.insert(0, library_kernels(design.tr, oversampling, library))
            self.kernels.append(np.concatenate(kernels))
            self.kernel_dt.append(design.tr / oversampling)
            trials, nuisance = design.event_regressors(self.kernels[-1], oversampling, min_onset)
            self.trial_regressors.append(trials)      # (n_kernels, n_volumes, n_run_trials)
            self.nuisance_regressors.append(nuisance)  # (n_kernels, n_volumes, n_nuisance_types)
        self.n_kernels = self.trial_regressors[0].shape[0]
        self.canonical_index = self.n_kernels - 1
        self.noise_pcs: list[np.ndarray | None] = [None] * len(designs)
        self._cache: dict = {}

    @property
    def n_runs(self) -> int:
        return len(self.designs)

    def nuisance(self, run: int, kernel: int, n_pcs: int = 0) -> np.ndarray:
        """Nuisance regressors of one run, shape (n_volumes, n_nuisance)."""
        parts = [self.nuisance_regressors[run][kernel], self.designs[run].fixed_nuisance]
        if n_pcs:
            parts.append(self.noise_pcs[run][:, :n_pcs])
        return np.concatenate(parts, axis=1)

    def fixed_basis(self, run: int, n_pcs: int = 0) -> np.ndarray:
        """Orthonormal basis of drift, confounds and the first ``n_pcs`` noise PCs (shared by all kernels)."""
        key = ("fixed", run, n_pcs)
        if key not in self._cache:
            parts = [self.designs[run].fixed_nuisance]
            if n_pcs:
                parts.append(self.noise_pcs[run][:, :n_pcs])
            self._cache[key] = orthonormal_basis(np.concatenate(parts, axis=1))
        return self._cache[key]

    def operators(self, run: int, kernel: int, n_pcs: int = 0) -> RunOperators:
        key = ("trials", run, kernel, n_pcs)
        if key not in self._cache:
            # every kernel not cached yet (the PC search may have left some: :meth:`keep_operators`)
            missing = [k for k in range(self.n_kernels) if ("trials", run, k, n_pcs) not in self._cache]
            for k, ops in zip(missing, self._build_all_kernels(run, n_pcs, missing)):
                self._cache[("trials", run, k, n_pcs)] = ops
        return self._cache[key]

    def build_operators(self, kernels, n_pcs: int = 0) -> None:
        """Build (and cache) every run's operators of ``kernels`` now, so that threads fitting voxel groups side
        by side (utils/parallel.py) only read the cache: :meth:`operators` builds all missing kernels of a run
        on its first miss, which two threads would otherwise do at once."""
        for run in range(self.n_runs):
            for kernel in kernels:
                self.operators(run, int(kernel), n_pcs)

    def keep_operators(self, run: int, kernels, n_pcs: int, operators: list[RunOperators]) -> None:
        """Cache operators that :meth:`some_operators` built (the PC search's, for the count it chose), so
        :meth:`operators` does not factorise those kernels again. They are what :meth:`operators` would build:
        the same reduced designs, and numpy factorises a stack of matrices one matrix at a time, so a matrix's
        factors do not depend on which others share its stack (tests/test_glm_speed.py checks bit equality)."""
        for kernel, ops in zip(kernels, operators):
            self._cache[("trials", run, int(kernel), n_pcs)] = ops

    def some_operators(self, run: int, kernels, n_pcs: int = 0) -> list[RunOperators]:
        """The operators of some kernels only, for the search over the number of PCs (each count is tried once:
        the kernels no search voxel uses are not factorised). Read from the cache when every kernel is there
        (``n_pcs = 0`` after the HRF choice), else built and not cached; the search hands the chosen count's to
        :meth:`keep_operators`, bit for bit what :meth:`operators` would build for the final fit."""
        kernels = [int(k) for k in kernels]
        if all(("trials", run, k, n_pcs) in self._cache for k in kernels):
            return [self._cache[("trials", run, k, n_pcs)] for k in kernels]
        basis, reduced = self._reduced_trials(run, n_pcs)
        return stacked_operators(basis[kernels], reduced[kernels], self.dtype, self.device)

    def _reduced_trials(self, run: int, n_pcs: int):
        """Every kernel's nuisance basis (K, T, m) and trial regressors with it projected out (K, T, n)."""
        fixed = self.fixed_basis(run, n_pcs)
        trials = self.trial_regressors[run]                       # (K, T, n)
        events = self.nuisance_regressors[run]                    # (K, T, e)
        n_kernels, n_volumes, n_trials = trials.shape
        basis = np.broadcast_to(fixed, (n_kernels,) + fixed.shape)
        if events.shape[2]:
            extra = events - fixed @ (fixed.T @ events)
            left, sing, _ = np.linalg.svd(extra, full_matrices=False)
            keep = sing > SINGULAR_TOLERANCE * np.maximum(sing.max(axis=1, keepdims=True), 1e-300)
            basis = np.concatenate([basis, left * keep[:, None, :]], axis=2)  # dropped directions -> 0 columns
            return basis, trials - basis @ (np.swapaxes(basis, 1, 2) @ trials)
        # one basis for all kernels: two plain GEMMs on the kernels' regressors side by side
        flat = np.swapaxes(trials, 0, 1).reshape(n_volumes, n_kernels * n_trials)
        flat = flat - fixed @ (fixed.T @ flat)
        return basis, np.ascontiguousarray(np.swapaxes(flat.reshape(n_volumes, n_kernels, n_trials), 0, 1))

    def ols_maps(self, run: int, n_pcs: int = 0) -> list[torch.Tensor | None]:
        """Per kernel, the matrix ``M`` (T, n) with OLS trial betas ``Y M`` (the full model's, by Frisch–Waugh–
        Lovell: ``M = X_r (X_rᵀ X_r)⁻¹`` with ``X_r`` the reduced trial regressors), or None for a kernel whose
        reduced design is not clearly full rank (use :meth:`operators` then).

        For the search over the number of noise PCs, which needs OLS betas only: an inverse of the small Gram
        matrix instead of its eigen-decomposition. ``M`` is used only when ``1 / tr(G⁻¹) ≤ λ_min`` exceeds
        ``1e-8 × tr(G) ≥ 1e-8 λ_max`` — every direction then passes :data:`GRAM_TOLERANCE` (so the
        pseudo-inverse of :meth:`operators` is this inverse) and the inverse keeps float32 accuracy.
        """
        key = ("ols", run, n_pcs)
        if key not in self._cache:
            _, reduced = self._reduced_trials(run, n_pcs)
            gram = np.swapaxes(reduced, 1, 2) @ reduced
            try:  # a Cholesky factor exists: positive definite; G⁻¹ = L⁻ᵀ L⁻¹, tr(G⁻¹) = |L⁻¹|²
                factor = np.linalg.cholesky(gram)
                positive = np.ones(len(gram), dtype=bool)
            except np.linalg.LinAlgError:  # some kernel's Gram matrix is not: find which, one by one
                factor = np.broadcast_to(np.eye(gram.shape[1]), gram.shape).copy()
                positive = np.zeros(len(gram), dtype=bool)
                for k, matrix in enumerate(gram):
                    try:
                        factor[k], positive[k] = np.linalg.cholesky(matrix), True
                    except np.linalg.LinAlgError:
                        pass
            inverse_factor = np.linalg.inv(factor)
            inverse = np.swapaxes(inverse_factor, 1, 2) @ inverse_factor
            with np.errstate(all="ignore"):
                clear = positive & (1.0 / (inverse_factor ** 2).sum((1, 2)) > 1e-8 * np.trace(gram, axis1=1, axis2=2))
            maps = reduced @ np.where(clear[:, None, None], inverse, 0.0)
            self._cache[key] = [torch.as_tensor(maps[k], dtype=self.dtype, device=self.device) if clear[k]
                                else None for k in range(len(maps))]
        return self._cache[key]

    def _build_all_kernels(self, run: int, n_pcs: int, kernels=None) -> list[RunOperators]:
        """:meth:`RunOperators.build` for every kernel of a run (or those of ``kernels``) at once (stacked numpy
        linear algebra: one call per step instead of one per kernel; same factorisation)."""
        basis, reduced = self._reduced_trials(run, n_pcs)
        if kernels is not None and len(kernels) < self.n_kernels:
            basis, reduced = basis[kernels], reduced[kernels]
        return stacked_operators(basis, reduced, self.dtype, self.device)

    def onoff_operators(self, run: int, kernel: int | None = None) -> RunOperators:
        """All trials as one condition (GLMsingle's ON-OFF model); assumed HRF unless ``kernel`` is given."""
        kernel = self.canonical_index if kernel is None else kernel
        key = ("onoff", run, kernel)
        if key not in self._cache:
            summed = self.trial_regressors[run][kernel].sum(1, keepdims=True)
            self._cache[key] = RunOperators.build(summed, self.nuisance_regressors[run][kernel],
                                                  self.dtype, self.device, fixed_basis=self.fixed_basis(run))
        return self._cache[key]

    def forget(self, n_pcs: int | None = None) -> None:
        """Drop cached operators (all, or those built with ``n_pcs`` PCs) to bound memory."""
        if n_pcs is None:
            self._cache.clear()
        else:
            for key in [k for k in self._cache if k[0] in ("trials", "fixed", "ols") and k[-1] == n_pcs]:
                del self._cache[key]
