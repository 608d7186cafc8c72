"""Torch helpers shared by the motion and resampling engines: layout, interpolation, smoothing, threads.

Volumes live in torch as ``(N, 1, Z, Y, X)`` (the NIfTI k, j, i axes). For sampling they are copied into a
*slice stack* ``(N, Z + 1, Y, X)`` (:func:`slice_stack`, or straight from :func:`gaussian_smooth`), which
:func:`sample_volumes` reads as a 2-D image of stacked slices; points are mapped to its coordinates by
matrices from :func:`sampler_matrix` (:func:`sampler_coords`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

import torch.nn.functional as F

from ..utils.torch_runtime import resolve_device, torch_threads  # noqa: F401  (re-exported)


def volumes_to_torch(data: np.ndarray, device: torch.device, *, copy: bool = True) -> torch.Tensor:
    """(X, Y, Z[, N]) numpy -> (N, 1, Z, Y, X) float32 torch, non-finite values set to 0.

    ``copy=False``: the caller vouches that ``data`` holds no NaN/inf and will only read the result; a
    float32 array in NIfTI's (Fortran) order is then returned as a view, without a copy.
    """
    arr = np.asarray(data)
    if arr.ndim == 3:
        arr = arr[..., None]
    arr = np.ascontiguousarray(arr.transpose(3, 2, 1, 0), dtype=np.float32)
    if not copy and device.type == "cpu" and arr.flags.writeable:
        return torch.from_numpy(arr).unsqueeze(1)
    tensor = torch.nan_to_num(torch.from_numpy(arr), nan=0.0, posinf=0.0, neginf=0.0)
    return tensor.unsqueeze(1).to(device)


def _stack_rows(nz: int, ny: int) -> int:
    """Rows of the 2-D image that :func:`sample_volumes` samples: at least the ``nz * ny`` rows of the slices,
    rounded up so that ``rows - 1`` is a power of two. Normalising by a power of two is exact in float32, so
    a voxel centre maps to its exact row (an identity resampling returns the input values)."""
    rows = nz * ny
    return rows if rows <= 2 else 2 ** int(np.ceil(np.log2(rows - 1))) + 1


def sampler_matrix(shape_xyz) -> np.ndarray:
    """4x4 matrix taking voxel ``(i, j, k, 1)`` of a grid of ``shape_xyz`` to :func:`sample_volumes`' coordinates.

    Those are ``(u, v, k)``: ``u`` = ``i`` normalised to ``[-1, 1]`` (``grid_sample``, ``align_corners=True``),
    ``v`` = ``j`` as a normalised row of the slice-stack image (``-1`` at row 0 of slice 0; the sampler adds
    the slice offset), ``k`` in voxels. An axis of size 1 always maps to its single voxel.
    """
    nx, ny, nz = (int(n) for n in shape_xyz[:3])
    rows = _stack_rows(nz, ny)
    out = np.eye(4)
    out[0, 0], out[0, 3] = (2.0 / (nx - 1), -1.0) if nx > 1 else (0.0, 0.0)
    out[1, 1], out[1, 3] = (2.0 / (rows - 1) if ny > 1 else 0.0), (-1.0 if rows > 1 else 0.0)
    if nz == 1:
        out[2, 2] = 0.0
    return out


def new_stack(n: int, nz: int, ny: int, nx: int, device) -> torch.Tensor:
    """Uninitialised (n, Z + 1, Y, X) float32 slice stack for :func:`sample_volumes`.

    Its storage has a zeroed tail beyond the last volume: the sampler's 2-D view of each volume spans
    :func:`_stack_rows` rows (which may run into the next volume or this tail; rows past the slices are
    never sampled, but may be read with weight 0, so they must hold finite values).
    """
    per_volume = (nz + 1) * ny * nx
    tail = max(0, ny * nx + _stack_rows(nz, ny) * nx - per_volume)
    flat = torch.empty(n * per_volume + tail, dtype=torch.float32, device=device)
    flat[n * per_volume:] = 0.0
    return flat[: n * per_volume].view(n, nz + 1, ny, nx)


def slice_stack(volumes: torch.Tensor) -> torch.Tensor:
    """(N, 1, Z, Y, X) -> (N, Z + 1, Y, X): the volumes with their last slice repeated, in a buffer from
    :func:`new_stack` (the layout :func:`sample_volumes` reads)."""
    n, _, nz, ny, nx = volumes.shape
    out = new_stack(n, nz, ny, nx, volumes.device)
    out[:, :nz] = volumes[:, 0]
    out[:, nz] = volumes[:, 0, nz - 1]
    return out


def sampler_coords(mats: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(N, 3, P) coordinates for :func:`sample_volumes`: P homogeneous points (P, 4) mapped by N matrices
    (N, 3+, 4) from :func:`sampler_matrix`. One (3N, 4) x (4, P) product (a broadcast batched product with
    few output columns is several times slower on CPU), each coordinate a contiguous row."""
    n = mats.shape[0]
    return torch.mm(mats[:, :3, :].reshape(3 * n, 4), points.T).view(n, 3, -1)


def sample_volumes(stack: torch.Tensor, coords: torch.Tensor,
                   out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear values of N volumes at P points each.

    Trilinear interpolation is done as one bilinear ``grid_sample`` of a 2-channel 2-D image per volume
    (slices stacked along the rows; channel 0 = slice ``k0``, channel 1 = slice ``k0 + 1``: two strided
    views of ``stack``, no copy) and a linear blend along ``k``. Same values as a 3-D ``grid_sample`` with
    ``padding_mode="border"`` (to float32 rounding of the row coordinate), several times faster on CPU:
    ATen's 2-D bilinear kernel is vectorised, its 3-D one is not.

    Parameters
    ----------
    stack : (N, Z + 1, Y, X) from :func:`slice_stack`, :func:`new_stack` or
        :func:`gaussian_smooth` (``stacked=True``).
    coords : (N, 3, P) ``(u, v, k)`` from :func:`sampler_coords` (:func:`sampler_matrix`); **overwritten**.
    out : optional (N, P) float32 tensor for the values.

    Returns
    -------
    values : (N, P) (border values outside the grid); inside : (N, P) bool, point within the grid
    (tolerance: 1e-4 of each axis' half-width).
    """
    n, nz1, ny, nx = stack.shape
    nz = nz1 - 1
    rows = _stack_rows(nz, ny)
    per_volume = nz1 * ny * nx
    needed = stack.storage_offset() + (n - 1) * per_volume + ny * nx + rows * nx
    if (stack.stride() != (per_volume, ny * nx, nx, 1)
            or stack.untyped_storage().nbytes() < needed * stack.element_size()):
        stack = slice_stack(stack[:, :nz].unsqueeze(1))
    row = 2.0 / (rows - 1) if rows > 1 else 0.0  # one row in normalised units
    u, v, k = coords.unbind(1)  # (N, P) each, contiguous rows
    # inside: within the grid plus 1e-4 of the half-width of each axis (as a 3-D grid_sample's [-1, 1] +- 1e-4)
    v_max = -1.0 + (ny - 1) * row if ny > 1 else -1.0
    inside = u >= -1.0 - 1e-4
    test = torch.empty_like(inside)
    inside &= torch.le(u, 1.0 + 1e-4, out=test)
    if ny > 1:
        tol_v = 1e-4 * (v_max + 1.0) / 2.0
        inside &= torch.ge(v, -1.0 - tol_v, out=test)
        inside &= torch.le(v, v_max + tol_v, out=test)
    if nz > 1:
        tol_k = 1e-4 * (nz - 1) / 2.0
        inside &= torch.ge(k, -tol_k, out=test)
        inside &= torch.le(k, nz - 1 + tol_k, out=test)
    k.clamp_(0.0, nz - 1)
    k0 = k.floor().clamp_(max=max(nz - 2, 0))
    k.sub_(k0)  # now the weight of slice k0 + 1
    v.clamp_(-1.0, v_max)
    v.add_(k0, alpha=ny * row)
    grid = coords[:, :2].transpose(1, 2).contiguous()  # (N, P, 2): grid_sample wants (u, v) pairs
    pairs = stack.as_strided((n, 2, rows, nx), (per_volume, ny * nx, nx, 1))
    both = F.grid_sample(pairs, grid.unsqueeze(1), mode="bilinear", padding_mode="border", align_corners=True)
    values = torch.lerp(both[:, 0, 0], both[:, 1, 0], k, out=out)
    return values, inside


@functools.lru_cache(maxsize=64)
def _smoothing_matrix(n: int, sigma: float, repeat_last: bool = False) -> torch.Tensor:
    """(n, n) Gaussian smoothing operator with replicated edges (rows sum to 1); ``repeat_last`` appends a
    copy of the last row ((n + 1, n): the slice stack of :func:`slice_stack`)."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    mat = np.zeros((n + 1 if repeat_last else n, n))
    for i in range(n):
        # replicate padding: taps beyond an edge land on the edge voxel
        np.add.at(mat[i], np.clip(i + offsets, 0, n - 1), kernel)
    if repeat_last:
        mat[n] = mat[n - 1]
    return torch.from_numpy(mat).float()


def gaussian_smooth(volumes: torch.Tensor, sigma_xyz, *, stacked: bool = False) -> torch.Tensor:
    """Separable Gaussian smoothing of (N, 1, Z, Y, X) with sigmas in voxels along (X, Y, Z).

    Sigmas below 0.3 voxel (or along an axis of fewer than 4 voxels) are skipped; edges replicate.
    Short kernels (<= 7 taps) are weighted shifted copies; longer ones one small dense matrix product per
    axis, applied to the tensor as it lies (``x @ M.T`` along X, ``M @ x`` along Y and Z: no transposed
    copies). Cheapest on chunks of a few volumes (the working set stays in cache).

    ``stacked``: return the (N, Z + 1, Y, X) layout of :func:`slice_stack` (no extra copy) instead of
    (N, 1, Z, Y, X).
    """
    n, _, nz, ny, nx = volumes.shape
    out = volumes[:, 0]  # (N, Z, Y, X)
    sx, sy, sz = (float(s) for s in sigma_xyz)

    def wanted(sigma, size):
        return sigma >= 0.3 and size >= 4

    if wanted(sx, nx):
        out = _smooth_axis(out, 3, sx)
    if wanted(sy, ny):
        out = _smooth_axis(out, 2, sy)
    if stacked:
        buf = new_stack(n, nz, ny, nx, out.device)
        if wanted(sz, nz) and _radius(sz) > 3:
            torch.matmul(_smoothing_matrix(nz, sz, True).to(out.device), out.reshape(n, nz, ny * nx),
                         out=buf.view(n, nz + 1, ny * nx))
            return buf
        if wanted(sz, nz):
            _smooth_axis(out, 1, sz, out=buf[:, :nz])
        else:
            buf[:, :nz] = out
        buf[:, nz] = buf[:, nz - 1]
        return buf
    if wanted(sz, nz):
        out = _smooth_axis(out, 1, sz)
    return out.unsqueeze(1).contiguous()


def _radius(sigma: float) -> int:
    return max(1, int(np.ceil(3.0 * sigma)))


def _smooth_axis(x: torch.Tensor, dim: int, sigma: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian along one dim (1: Z, 2: Y, 3: X) of (N, Z, Y, X)."""
    radius = _radius(sigma)
    if radius <= 3:
        return _shift_add_smooth(x, dim, sigma, radius, out)
    n, nz, ny, nx = x.shape
    mat = _smoothing_matrix(x.shape[dim], sigma).to(x.device)
    if dim == 3:
        res = torch.matmul(x, mat.T)
    elif dim == 2:
        res = torch.matmul(mat, x)
    else:
        res = torch.matmul(mat, x.reshape(n, nz, ny * nx)).view(n, nz, ny, nx)
    if out is not None:
        out.copy_(res)
        return out
    return res


def _shift_add_smooth(volumes: torch.Tensor, dim: int, sigma: float, radius: int,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Short Gaussian (<= 7 taps) along one dim as weighted shifted copies with replicated edges.

    Each tap pair adds the shifted input to the interior and the edge voxel to the first/last ``offset``
    voxels (what a replicate-padded copy would give, without making that copy).
    """
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    n = volumes.shape[dim]
    nd = volumes.dim()
    first = volumes.narrow(dim, 0, 1)
    last = volumes.narrow(dim, n - 1, 1)
    out = torch.mul(volumes, float(kernel[radius]), out=out)
    for offset in range(1, radius + 1):
        weight = float(kernel[radius + offset])  # symmetric kernel
        inner = n - offset
        if inner > 0:
            out.narrow(dim, offset, inner).add_(volumes.narrow(dim, 0, inner), alpha=weight)  # x[i - offset]
            out.narrow(dim, 0, inner).add_(volumes.narrow(dim, offset, inner), alpha=weight)  # x[i + offset]
        edge = min(offset, n)
        shape = [edge if d == dim else -1 for d in range(nd)]
        out.narrow(dim, 0, edge).add_(first.expand(*shape), alpha=weight)
        out.narrow(dim, n - edge, edge).add_(last.expand(*shape), alpha=weight)
    return out
