"""Torch helpers shared by the motion and resampling engines: layout, interpolation, smoothing, threads.

Volumes live in torch as ``(N, 1, Z, Y, X)`` (``grid_sample``'s D, H, W = the NIfTI k, j, i axes), so a
sampling grid's last axis is ``(i, j, k)`` in voxel units of the sampled image.
"""

from __future__ import annotations


import numpy as np
import torch

from ..utils.torch_runtime import resolve_device, torch_threads  # noqa: F401  (re-exported)
import torch.nn.functional as F


def volumes_to_torch(data: np.ndarray, device: torch.device) -> torch.Tensor:
    """(X, Y, Z[, N]) numpy -> (N, 1, Z, Y, X) float32 torch, non-finite values set to 0."""
    arr = np.asarray(data)
    if arr.ndim == 3:
        arr = arr[..., None]
    tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(3, 2, 1, 0), dtype=np.float32))
    tensor = torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0)
    return tensor.unsqueeze(1).to(device)


def torch_to_volumes(tensor: torch.Tensor) -> np.ndarray:
    """(N, 1, Z, Y, X) torch -> (X, Y, Z, N) float32 numpy."""
    return np.ascontiguousarray(tensor[:, 0].permute(3, 2, 1, 0).cpu().numpy())


def normalising_matrix(shape_xyz) -> np.ndarray:
    """4x4 matrix taking voxel ``(i, j, k, 1)`` of a grid of ``shape_xyz`` to ``grid_sample`` coordinates.

    ``align_corners=True``: voxel 0 -> -1, voxel n-1 -> +1; an axis of size 1 always maps to 0.
    """
    out = np.eye(4)
    for axis, n in enumerate(shape_xyz[:3]):
        if n == 1:
            out[axis, axis] = 0.0
        else:
            out[axis, axis] = 2.0 / (n - 1)
            out[axis, 3] = -1.0
    return out


def sample_normalised(volumes: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear values at normalised coordinates.

    Parameters
    ----------
    volumes : (N, 1, Z, Y, X)
    grid : (N, P, 3) coordinates from :func:`normalising_matrix` (``x`` along i/X first).

    Returns
    -------
    values : (N, P); inside : (N, P) bool (point within the grid, tiny tolerance).
    """
    inside = (grid.abs() <= 1.0 + 1e-4).all(dim=-1)
    values = F.grid_sample(volumes, grid.unsqueeze(1).unsqueeze(1), mode="bilinear", padding_mode="border",
                           align_corners=True)
    return values[:, 0, 0, 0, :], inside


def _smoothing_matrix(n: int, sigma: float) -> torch.Tensor:
    """(n, n) Gaussian smoothing operator with replicated edges (rows sum to 1)."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    mat = np.zeros((n, n))
    for i in range(n):
        # replicate padding: taps beyond an edge land on the edge voxel
        np.add.at(mat[i], np.clip(i + offsets, 0, n - 1), kernel)
    return torch.from_numpy(mat).float()


def gaussian_smooth(volumes: torch.Tensor, sigma_xyz) -> torch.Tensor:
    """Separable Gaussian smoothing of (N, 1, Z, Y, X) with sigmas in voxels along (X, Y, Z).

    Sigmas below 0.3 voxel (or along an axis of fewer than 4 voxels) are skipped; edges replicate.
    Each axis is one small dense matrix product (BLAS is much faster on CPU than a 1-D ``conv3d``).
    """
    out = volumes
    for dim, sigma in zip((4, 3, 2), sigma_xyz):  # tensor dims 4, 3, 2 hold X, Y, Z
        n = out.shape[dim]
        if sigma < 0.3 or n < 4:
            continue
        radius = max(1, int(np.ceil(3.0 * sigma)))
        if radius <= 3:
            out = _shift_add_smooth(out, dim, float(sigma), radius)
        else:
            mat = _smoothing_matrix(n, float(sigma)).to(out.device)
            out = torch.movedim(torch.matmul(torch.movedim(out, dim, -1), mat.T), -1, dim)
    return out.contiguous()


def _shift_add_smooth(volumes: torch.Tensor, dim: int, sigma: float, radius: int) -> torch.Tensor:
    """Short Gaussian (<= 7 taps) along one dim as weighted shifted copies with replicated edges."""
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    n = volumes.shape[dim]
    padded = torch.cat([volumes.narrow(dim, 0, 1).expand(*[radius if d == dim else -1 for d in range(5)]),
                        volumes,
                        volumes.narrow(dim, n - 1, 1).expand(*[radius if d == dim else -1 for d in range(5)])], dim=dim)
    out = padded.narrow(dim, 0, n) * float(kernel[0])
    for i in range(1, len(offsets)):
        out.add_(padded.narrow(dim, i, n), alpha=float(kernel[i]))
    return out
