"""One-interpolation resampling of raw volumes onto a target grid (the participant grid).

Each output volume ``t`` is ``out_t(x) = raw_t(M_t @ x)`` for the world position ``x`` of every target
voxel, with trilinear interpolation (as FSL mcflirt's and SPM's default realignment reslicing of
BOLD; it smooths slightly but never rings). Compose the per-volume motion transforms with the run ->
participant transform *before* calling this (:func:`~bids_m2i.preproc.transforms.compose_transforms`),
so that the data are interpolated once. Target voxels whose source position falls outside the raw
FOV are 0 (``fill``).
"""

from __future__ import annotations

import numpy as np
import torch

from .sampling import normalising_matrix, resolve_device, sample_normalised, torch_threads, volumes_to_torch


def _target_voxels(target_shape, device) -> torch.Tensor:
    """(P, 4) homogeneous voxel indices of every target voxel, k slowest and i fastest (float32)."""
    nx, ny, nz = (int(s) for s in target_shape[:3])
    k, j, i = torch.meshgrid(torch.arange(nz), torch.arange(ny), torch.arange(nx), indexing="ij")
    return torch.stack([i.ravel(), j.ravel(), k.ravel(), torch.ones(i.numel(), dtype=i.dtype)], 1).float().to(device)


def resample_torch(volumes: torch.Tensor, src_affine: np.ndarray, transforms: np.ndarray, target_affine: np.ndarray,
                   target_shape, fill: float = 0.0) -> torch.Tensor:
    """Resample (N, 1, Z, Y, X) torch volumes with (N, 4, 4) pull transforms -> (N, 1, Zt, Yt, Xt)."""
    nx, ny, nz = (int(s) for s in target_shape[:3])
    # target voxel -> source normalised coordinates, composed in float64 then applied in float32 to small
    # voxel indices (keeps ~1e-5 voxel precision without float64 work per voxel)
    pre = normalising_matrix(volumes.shape[2:][::-1]) @ np.linalg.inv(np.asarray(src_affine, dtype=np.float64))
    mats = pre @ np.asarray(transforms, dtype=np.float64) @ np.asarray(target_affine, dtype=np.float64)
    mats_t = torch.from_numpy(mats[:, :3, :]).float().to(volumes.device)  # (N, 3, 4)
    ijk = _target_voxels(target_shape, volumes.device)
    out = torch.empty((volumes.shape[0], 1, nz, ny, nx), dtype=torch.float32, device=volumes.device)
    # a few volumes per grid_sample call: one call amortises its overhead, (n, P, 3) grids stay small
    step = max(1, int(4e6 // max(1, ijk.shape[0])))
    for start in range(0, volumes.shape[0], step):
        stop = min(volumes.shape[0], start + step)
        grid = torch.matmul(ijk, mats_t[start:stop].transpose(1, 2))  # (n, P, 3)
        values, inside = sample_normalised(volumes[start:stop], grid)
        out[start:stop, 0] = torch.where(inside, values, torch.full_like(values, fill)).view(-1, nz, ny, nx)
    return out


def resample_to_grid(data: np.ndarray, src_affine: np.ndarray, per_volume_transforms: np.ndarray,
                     target_affine: np.ndarray, target_shape, *, n_threads: int = 1, device: str = "cpu",
                     chunk_size: int = 32, fill: float = 0.0) -> np.ndarray:
    """Resample every raw volume onto a target grid in one trilinear interpolation.

    Parameters
    ----------
    data : (X, Y, Z, T) raw data (any numeric dtype; NaN/inf become 0) or (X, Y, Z) for one volume.
    src_affine : (4, 4) voxel -> world of ``data``.
    per_volume_transforms : (T, 4, 4) or (4, 4) pull transforms, target world -> source world (mm).
    target_affine : (4, 4) voxel -> world of the target grid.
    target_shape : (Xt, Yt, Zt)
    n_threads, device, chunk_size : compute settings (``chunk_size`` volumes in memory at once).
    fill : value outside the source FOV.

    Returns
    -------
    (Xt, Yt, Zt, T) float32 (or (Xt, Yt, Zt) for 3-D input), Fortran-ordered (NIfTI's layout).
    """
    arr = np.asarray(data)
    single = arr.ndim == 3
    if single:
        arr = arr[..., None]
    transforms = np.asarray(per_volume_transforms, dtype=np.float64)
    if transforms.ndim == 2:
        transforms = np.broadcast_to(transforms, (arr.shape[3], 4, 4))
    if transforms.shape != (arr.shape[3], 4, 4):
        raise ValueError(f"need one 4x4 transform per volume: data has {arr.shape[3]} volumes, "
                         f"transforms have shape {transforms.shape}")
    shape = tuple(int(s) for s in target_shape[:3])
    # filled as (T, Z, Y, X) C-order, returned as its (X, Y, Z, T) transpose: Fortran order, NIfTI's own
    # memory layout, so neither this function nor nibabel has to copy it into another layout
    out_tzyx = np.empty((arr.shape[3],) + shape[::-1], dtype=np.float32)
    dev = resolve_device(device)
    with torch_threads(n_threads), torch.no_grad():
        for start in range(0, arr.shape[3], chunk_size):
            stop = min(arr.shape[3], start + chunk_size)
            vols = volumes_to_torch(arr[..., start:stop], dev)
            res = resample_torch(vols, src_affine, transforms[start:stop], target_affine, shape, fill=fill)
            out_tzyx[start:stop] = res[:, 0].cpu().numpy()
    out = out_tzyx.transpose(3, 2, 1, 0)
    return out[..., 0] if single else out
