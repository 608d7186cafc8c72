"""Vectorised least-squares machinery shared by all single-trial methods.

The session model is block diagonal (one block per run), so everything is solved run by run. For a run, an
HRF kernel and a number of noise PCs, :class:`RunOperators` holds, with ``X`` the trial regressors and ``N``
the nuisance regressors (nuisance events convolved with the same kernel, drift, confounds, noise PCs):

* ``nuisance_basis`` — an orthonormal basis of ``N``;
* the SVD ``U S W^T`` of ``X`` with ``N`` projected out (Frisch–Waugh–Lovell: the trial betas of the full model
  are the betas of this reduced model).

From these, for data ``Y`` (voxels × time): ``z = Y U`` and OLS trial betas ``(z / S) W^T``; ridge betas
``(z S / (S² + α)) W^T``; fitted sum of squares ``|Y nuisance_basis|² + |z|²``. One factorisation therefore
serves every voxel that uses this kernel; the per-voxel cost is a few matrix products done in torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..utils.torch_runtime import torch_threads as _torch_threads

SINGULAR_TOLERANCE = 1e-8  # relative to the largest singular value; smaller directions are not estimable
GRAM_TOLERANCE = 1e-12  # the same idea on eigenvalues of a Gram matrix (singular values > 1e-6 of the largest)


def torch_threads(n_threads: int):
    """At most ``n_threads`` torch threads and one BLAS thread (small factorisations; see utils.torch_runtime)."""
    return _torch_threads(n_threads, single_threaded_blas=True)


def orthonormal_basis(matrix: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space, shape (n_rows, rank)."""
    if matrix.shape[1] == 0:
        return np.zeros((matrix.shape[0], 0))
    left, sing, _ = np.linalg.svd(matrix, full_matrices=False)
    keep = sing > SINGULAR_TOLERANCE * max(sing.max(), 1e-300)
    return left[:, keep]


@dataclass
class RunOperators:
    """Factorised model of one run for one kernel (see module docstring); torch tensors on the device.

    Attributes
    ----------
    nuisance_basis : Tensor, shape (n_volumes, n_nuisance_rank)
    left : Tensor, shape (n_volumes, n_run_trials)      U
    singular : Tensor, shape (n_run_trials,)             S (0 for non-estimable directions)
    right : Tensor, shape (n_run_trials, n_run_trials)  W
    """

    nuisance_basis: torch.Tensor
    left: torch.Tensor
    singular: torch.Tensor
    right: torch.Tensor
    _full_basis: torch.Tensor | None = None

    @classmethod
    def build(cls, trials: np.ndarray, nuisance: np.ndarray, dtype, device,
              fixed_basis: np.ndarray | None = None) -> "RunOperators":
        """Factorise ``[trials, nuisance, fixed]`` (float64 numpy in, torch out).

        Parameters
        ----------
        trials : ndarray, shape (n_volumes, n_run_trials)
        nuisance : ndarray, shape (n_volumes, n_nuisance)
        fixed_basis : ndarray, shape (n_volumes, n_fixed), optional
            An already orthonormal basis of further nuisance (shared by all kernels, so computed once).
        """
        if fixed_basis is not None and fixed_basis.shape[1]:
            extra = nuisance - fixed_basis @ (fixed_basis.T @ nuisance)
            basis = np.concatenate([fixed_basis, orthonormal_basis(extra)], axis=1)
        else:
            basis = orthonormal_basis(nuisance)
        reduced = trials - basis @ (basis.T @ trials)
        # eigen-decomposition of the small Gram matrix instead of an SVD of the tall matrix: ~5x faster
        values, right = np.linalg.eigh(reduced.T @ reduced)
        values, right = values[::-1].copy(), right[:, ::-1].copy()
        estimable = values > GRAM_TOLERANCE * max(values.max(initial=0.0), 1e-300)
        sing = np.sqrt(np.where(estimable, values, 0.0))
        left = np.where(estimable, reduced @ right / np.where(estimable, sing, 1.0), 0.0)
        to = dict(dtype=dtype, device=device)
        return cls(torch.as_tensor(basis, **to), torch.as_tensor(left, **to), torch.as_tensor(sing, **to),
                   torch.as_tensor(right, **to))

    def project(self, data: torch.Tensor) -> torch.Tensor:
        """``z = Y U``, shape (n_voxels, n_run_trials), for data (n_voxels, n_volumes)."""
        return data @ self.left

    def ols_from_projection(self, z: torch.Tensor) -> torch.Tensor:
        inverse = torch.where(self.singular > 0, 1.0 / torch.clamp(self.singular, min=1e-30),
                              torch.zeros_like(self.singular))
        return (z * inverse) @ self.right.T

    def fitted_sum_of_squares(self, data: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Per-voxel sum of squares explained by the full run model, shape (n_voxels,)."""
        if z is None:
            if self._full_basis is None:
                self._full_basis = torch.cat([self.left, self.nuisance_basis], dim=1)
            projected = data @ self._full_basis  # one product for trials and nuisance
            return torch.linalg.vector_norm(projected, dim=1) ** 2
        explained = torch.linalg.vector_norm(z, dim=1) ** 2
        if self.nuisance_basis.shape[1]:
            explained = explained + torch.linalg.vector_norm(data @ self.nuisance_basis, dim=1) ** 2
        return explained


def stacked_operators(basis: np.ndarray, reduced: np.ndarray, dtype, device) -> list["RunOperators"]:
    """:meth:`RunOperators.build`'s factorisation for a stack of designs at once (one numpy call per step).

    Parameters
    ----------
    basis : ndarray, shape (B, T, e) or a list of B (T, e_b) arrays
        Orthonormal nuisance basis of each design.
    reduced : ndarray, shape (B, T, n)
        Each design's trial regressors with its nuisance projected out.

    The thin SVD of each reduced design comes from its Gram matrix's eigendecomposition; directions whose
    eigenvalue is below :data:`GRAM_TOLERANCE` of the largest are not estimable and get zero singular values.
    """
    values, right = np.linalg.eigh(np.swapaxes(reduced, 1, 2) @ reduced)
    values, right = values[:, ::-1].copy(), right[:, :, ::-1].copy()
    estimable = values > GRAM_TOLERANCE * np.maximum(values.max(axis=1, keepdims=True), 1e-300)
    sing = np.sqrt(np.where(estimable, values, 0.0))
    left = np.where(estimable[:, None, :], reduced @ right / np.where(estimable, sing, 1.0)[:, None, :], 0.0)
    to = dict(dtype=dtype, device=device)
    # a basis shared by all kernels arrives as a read-only broadcast view: np.require copies such a slice (torch
    # warns on tensors over read-only memory, even where it converts them)
    return [RunOperators(torch.as_tensor(np.require(basis[b], requirements=("C", "W")), **to), torch.as_tensor(left[b], **to),
                         torch.as_tensor(sing[b], **to), torch.as_tensor(right[b], **to))
            for b in range(reduced.shape[0])]


def centred_sum_of_squares(data: torch.Tensor) -> torch.Tensor:
    """Per-voxel total sum of squares around the run mean, shape (n_voxels,)."""
    centred = data - data.mean(1, keepdim=True)
    return (centred * centred).sum(1)


def percent_signal(raw: np.ndarray, dtype, device, data_units: str = "raw"):
    """One run of one voxel chunk in % signal change around its run mean.

    Parameters
    ----------
    raw : ndarray, shape (n_voxels, n_volumes)

    Returns
    -------
    data : Tensor, shape (n_voxels, n_volumes)
        ``100 * (raw / mean - 1)``; voxels whose mean is not positive are set to 0 (not estimable).
    mean : Tensor, shape (n_voxels,)
        Run mean in the input's units.
    """
    data = torch.as_tensor(np.ascontiguousarray(raw), device=device).to(dtype)
    mean = data.mean(1)
    if data_units == "percent":
        return data, mean
    positive = mean > 0
    scale = torch.where(positive, 100.0 / torch.where(positive, mean, torch.ones_like(mean)),
                        torch.zeros_like(mean))
    # the -100 keeps float32 values centred (the model's constant absorbs it)
    return (data * scale[:, None]).sub_(100.0 * positive.to(dtype)[:, None]), mean


def zscore_rows(values: torch.Tensor) -> torch.Tensor:
    """z-score each row (population sd); constant rows become 0."""
    centred = values - values.mean(1, keepdim=True)
    sd = centred.pow(2).mean(1, keepdim=True).sqrt()
    return torch.where(sd > 0, centred / torch.clamp(sd, min=1e-30), torch.zeros_like(centred))
