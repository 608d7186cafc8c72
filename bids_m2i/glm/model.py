"""The session's factorised models: one :class:`~bids_m2i.glm.solvers.RunOperators` per run, kernel and
number of noise PCs, built on demand and cached (they are small: a few hundred × a few hundred)."""

from __future__ import annotations

import numpy as np
import torch

from .design import RunDesign
from .hrf_library import DEFAULT_LIBRARY, canonical_kernel, library_kernels
from .solvers import GRAM_TOLERANCE, SINGULAR_TOLERANCE, RunOperators, orthonormal_basis


class SessionModel:
    """All runs' regressors for a set of HRF kernels.

    Kernel indices ``0 .. n_library-1`` are the HRF library (when ``with_library``); the last index
    (:attr:`canonical_index`) is the assumed HRF ``hrf_model``.

    Parameters
    ----------
    designs : list of RunDesign
    hrf_model : str
        ``"glover"`` or ``"spm"`` (nilearn's kernels).
    library : {"broad", "narrow"}
        Which HRF library (:mod:`bids_m2i.glm.hrf_library`) when ``with_library``.
    """

    def __init__(self, designs: list[RunDesign], hrf_model: str = "glover", with_library: bool = False,
                 oversampling: int = 50, min_onset: float = -24.0, dtype=torch.float32, device=None,
                 library: str = DEFAULT_LIBRARY):
        self.designs = designs
        self.dtype = dtype
        self.device = device or torch.device("cpu")
        self.trial_regressors, self.nuisance_regressors = [], []
        for design in designs:
            kernels = [canonical_kernel(hrf_model, design.tr, oversampling)[None]]
            if with_library:
                kernels.insert(0, library_kernels(design.tr, oversampling, library))
            trials, nuisance = design.event_regressors(np.concatenate(kernels), oversampling, min_onset)
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
            for k, ops in enumerate(self._build_all_kernels(run, n_pcs)):
                self._cache[("trials", run, k, n_pcs)] = ops
        return self._cache[key]

    def _build_all_kernels(self, run: int, n_pcs: int) -> list[RunOperators]:
        """:meth:`RunOperators.build` for every kernel of a run at once (stacked numpy linear algebra:
        one call per step instead of one per kernel; same factorisation)."""
        fixed = self.fixed_basis(run, n_pcs)
        trials = self.trial_regressors[run]                       # (K, T, n)
        events = self.nuisance_regressors[run]                    # (K, T, e)
        n_kernels = trials.shape[0]
        basis = np.broadcast_to(fixed, (n_kernels,) + fixed.shape)
        if events.shape[2]:
            extra = events - fixed @ (fixed.T @ events)
            left, sing, _ = np.linalg.svd(extra, full_matrices=False)
            keep = sing > SINGULAR_TOLERANCE * np.maximum(sing.max(axis=1, keepdims=True), 1e-300)
            basis = np.concatenate([basis, left * keep[:, None, :]], axis=2)  # dropped directions -> 0 columns
        reduced = trials - basis @ (np.swapaxes(basis, 1, 2) @ trials)
        values, right = np.linalg.eigh(np.swapaxes(reduced, 1, 2) @ reduced)
        values, right = values[:, ::-1].copy(), right[:, :, ::-1].copy()
        estimable = values > GRAM_TOLERANCE * np.maximum(values.max(axis=1, keepdims=True), 1e-300)
        sing = np.sqrt(np.where(estimable, values, 0.0))
        left = np.where(estimable[:, None, :], reduced @ right / np.where(estimable, sing, 1.0)[:, None, :], 0.0)
        to = dict(dtype=self.dtype, device=self.device)
        return [RunOperators(torch.as_tensor(np.ascontiguousarray(basis[k]), **to), torch.as_tensor(left[k], **to),
                             torch.as_tensor(sing[k], **to), torch.as_tensor(right[k], **to))
                for k in range(n_kernels)]

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
            for key in [k for k in self._cache if k[0] in ("trials", "fixed") and k[-1] == n_pcs]:
                del self._cache[key]
