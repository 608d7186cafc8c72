"""One-interpolation resampling of raw volumes onto a target grid (the participant grid).

Each output volume ``t`` is ``out_t(x) = raw_t(M_t @ x)`` for the world position ``x`` of every target
voxel, with trilinear interpolation (as FSL mcflirt's and SPM's default realignment reslicing of
BOLD; it smooths slightly but never rings). Compose the per-volume motion transforms with the run ->
participant transform *before* calling this (:func:`~bids_m2i.preproc.transforms.compose_transforms`),
so that the data are interpolated once. Target voxels whose source position falls outside the raw
FOV are 0 (``fill``).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..utils.parallel import group_map
from .sampling import (new_stack, resolve_device, sample_volumes, sampler_coords, sampler_matrix, slice_stack,
                       torch_threads)

# points per grid_sample call: a few volumes at a time keep the grid, the slice stack and the output in cache
_POINTS_PER_CALL = 1 << 19


def _target_voxels(target_shape, device) -> torch.Tensor:
    """(P, 4) homogeneous voxel indices of every target voxel, k slowest and i fastest (float32)."""
    nx, ny, nz = (int(s) for s in target_shape[:3])
    k, j, i = torch.meshgrid(torch.arange(nz, dtype=torch.float32), torch.arange(ny, dtype=torch.float32),
                             torch.arange(nx, dtype=torch.float32), indexing="ij")
    return torch.stack([i.ravel(), j.ravel(), k.ravel(), torch.ones(i.numel())], 1).to(device)


def _sampling_matrices(src_shape_xyz, src_affine, transforms, target_affine, device) -> torch.Tensor:
    """(N, 3, 4) float32: target voxel -> source sampler coordinates (:func:`~.sampling.sampler_matrix`),
    composed in float64 then applied in float32 to small voxel indices (keeps ~1e-5 voxel precision
    without float64 work per voxel)."""
    pre = sampler_matrix(src_shape_xyz) @ np.linalg.inv(np.asarray(src_affine, dtype=np.float64))
    mats = pre @ np.asarray(transforms, dtype=np.float64) @ np.asarray(target_affine, dtype=np.float64)
    return torch.from_numpy(np.ascontiguousarray(mats[:, :3, :])).float().to(device)


def _sample_stack(stack: torch.Tensor, mats: torch.Tensor, ijk: torch.Tensor, fill: float | None,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Values (n, P) of the n volumes of ``stack`` at the target voxels ``ijk`` (P, 4) mapped by ``mats``;
    ``fill`` None keeps the nearest edge values outside the source FOV."""
    values, inside = sample_volumes(stack, sampler_coords(mats, ijk), out=out)
    return values if fill is None else values.masked_fill_(inside.logical_not_(), fill)


def resample_torch(volumes: torch.Tensor, src_affine: np.ndarray, transforms: np.ndarray, target_affine: np.ndarray,
                   target_shape, fill: float = 0.0) -> torch.Tensor:
    """Resample (N, 1, Z, Y, X) torch volumes with (N, 4, 4) pull transforms -> (N, 1, Zt, Yt, Xt)."""
    nx, ny, nz = (int(s) for s in target_shape[:3])
    mats = _sampling_matrices(volumes.shape[2:][::-1], src_affine, transforms, target_affine, volumes.device)
    ijk = _target_voxels(target_shape, volumes.device)
    out = torch.empty((volumes.shape[0], 1, nz, ny, nx), dtype=torch.float32, device=volumes.device)
    step = max(1, _POINTS_PER_CALL // max(1, ijk.shape[0]))

    def resample_chunk(start):
        stop = min(volumes.shape[0], start + step)
        _sample_stack(slice_stack(volumes[start:stop]), mats[start:stop], ijk, fill,
                      out=out[start:stop].view(stop - start, -1))

    # chunks side by side, one torch thread each: the same values for any thread count (see resample_to_grid)
    with group_map(volumes.device) as map_chunks:
        map_chunks(resample_chunk, range(0, volumes.shape[0], step))
    return out


def resample_to_grid(data: np.ndarray, src_affine: np.ndarray, per_volume_transforms: np.ndarray,
                     target_affine: np.ndarray, target_shape, *, n_threads: int = 1, device: str = "cpu",
                     chunk_size: int = 32, fill: float | None = 0.0) -> np.ndarray:
    """Resample every raw volume onto a target grid in one trilinear interpolation.

    Parameters
    ----------
    data : (X, Y, Z, T) raw data (any numeric dtype; NaN/inf become 0) or (X, Y, Z) for one volume.
    src_affine : (4, 4) voxel -> world of ``data``.
    per_volume_transforms : (T, 4, 4) or (4, 4) pull transforms, target world -> source world (mm).
    target_affine : (4, 4) voxel -> world of the target grid.
    target_shape : (Xt, Yt, Zt)
    n_threads, device, chunk_size : compute settings (``chunk_size`` volumes in memory at once).
    fill : value outside the source FOV; None: the nearest edge value (see ``ResampleRun``).

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
    nx, ny, nz = arr.shape[:3]
    with torch_threads(n_threads), torch.no_grad():
        mats = _sampling_matrices(arr.shape[:3], src_affine, transforms, target_affine, dev)
        ijk = _target_voxels(shape, dev)
        out_t = torch.from_numpy(out_tzyx).view(arr.shape[3], -1)
        step = max(1, min(int(chunk_size), _POINTS_PER_CALL // max(1, ijk.shape[0])))

        def resample_chunk(start):
            stop = min(arr.shape[3], start + step)
            buf = new_stack(stop - start, nz, ny, nx, dev)
            # (X, Y, Z, n) -> (n, Z, Y, X): a plain copy for NIfTI's Fortran-ordered arrays
            _copy_volumes(arr[..., start:stop], buf[:, :nz])
            buf[:, nz] = buf[:, nz - 1]
            if dev.type == "cpu":
                _sample_stack(buf, mats[start:stop], ijk, fill, out=out_t[start:stop])
            else:
                out_t[start:stop] = _sample_stack(buf, mats[start:stop], ijk, fill).cpu()

        # chunks of volumes side by side, one torch thread each (utils/parallel.py; in turn on one thread or a
        # GPU): torch's own threads split a chunk's coordinate products and interpolation at points that depend
        # on their count, which changed the last bits of some values; one thread per chunk gives the same
        # values for any thread count. Each thread holds its own chunk's buffer.
        with group_map(dev) as map_chunks:
            map_chunks(resample_chunk, range(0, arr.shape[3], step))
    out = out_tzyx.transpose(3, 2, 1, 0)
    return out[..., 0] if single else out


def _copy_volumes(chunk: np.ndarray, dest: torch.Tensor) -> None:
    """Copy (X, Y, Z, n) numpy data into a (n, Z, Y, X) float32 tensor, non-finite values -> 0."""
    src = chunk.transpose(3, 2, 1, 0)
    if src.dtype != np.float32 or not src.dtype.isnative or min(src.strides) < 0:
        src = np.ascontiguousarray(src, dtype=np.float32)
    if dest.device.type == "cpu":
        # numpy's copy into the tensor's memory: a read-only input (memory map) needs no torch view, whose warning
        # would need warnings.catch_warnings, which is not thread-safe (chunks are copied on several threads)
        dest.numpy()[...] = src
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only input (memory map): only read here
            dest.copy_(torch.from_numpy(src))
    torch.nan_to_num_(dest, nan=0.0, posinf=0.0, neginf=0.0)
