"""A head phantom with known rigid motion, for tests and ``benchmarks/bench_hmc.py``.

The object is analytic (ellipsoids with soft edges, ventricles, a scalp shell, low-frequency texture),
so every volume is *evaluated* at its moved position (averaged over ``supersample``^3 sub-voxel points
for partial volume) instead of being interpolated: no estimator gets its own interpolator handed back.
Noise, a linear drift, a block "activation" blob that moves with the head and optional non-steady-state
volumes are added. For realistic BOLD with an HRF and designs use :mod:`bids_m2i.simulate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .transforms import grid_centre, nearest_rigid, rigid_matrix


@dataclass
class MotionPhantom:
    """data (X, Y, Z, T) float32; affine (4, 4); true_transforms (T, 4, 4) pull transforms from the
    identity pose (world) to each volume (world); true_params (T, 6); brain_mask (X, Y, Z) bool at the
    identity pose; centre (3,) world centre of the grid."""

    data: np.ndarray
    affine: np.ndarray
    true_transforms: np.ndarray
    true_params: np.ndarray
    brain_mask: np.ndarray
    centre: np.ndarray


def make_affine(shape, voxel_size, oblique_deg: float = 0.0) -> np.ndarray:
    """Voxel -> world matrix centring the grid near the origin, optionally rotated (oblique) about x and z."""
    aff = np.diag(list(voxel_size) + [1.0]).astype(np.float64)
    if oblique_deg:
        a = np.deg2rad(oblique_deg)
        rot = rigid_matrix(np.array([0, 0, 0, a, 0, a / 2]), np.zeros(3))
        aff = rot @ aff
    centre_vox = (np.asarray(shape[:3], dtype=np.float64) - 1) / 2
    aff[:3, 3] = -aff[:3, :3] @ centre_vox + np.array([1.5, -8.0, 6.0])
    return aff


def _soft_inside(q: torch.Tensor, semi_axes, edge_mm: float) -> torch.Tensor:
    """~1 inside an ellipsoid (semi-axes in mm), ~0 outside, with a logistic edge of ``edge_mm``."""
    semi = torch.tensor(semi_axes, dtype=q.dtype)
    r = torch.sqrt(((q / semi) ** 2).sum(-1))
    return torch.sigmoid(-(r - 1.0) * float(np.mean(semi_axes)) / edge_mm)


def _object(q: torch.Tensor, active: float, act_centre) -> torch.Tensor:
    """Intensity at points q (..., 3) in mm relative to the head centre (identity pose)."""
    scalp = _soft_inside(q, (80, 96, 64), 1.2) - _soft_inside(q, (74, 90, 59), 1.2)
    brain = _soft_inside(q, (70, 86, 55), 1.0)
    white = _soft_inside(q, (58, 72, 44), 2.0)
    vent = sum(_soft_inside(q - torch.tensor(c, dtype=q.dtype), (7, 20, 11), 1.0) for c in ((-11, 4, 6), (11, 4, 6)))
    texture = (torch.sin(q[..., 0] / 6.0 + 0.3) * torch.sin(q[..., 1] / 7.5 - 0.5)
               + torch.sin(q[..., 2] / 5.0 + q[..., 0] / 11.0) + 0.6 * torch.cos(q[..., 1] / 4.5 + q[..., 2] / 9.0))
    tissue = 1000.0 - 250.0 * white + 80.0 * texture
    img = 300.0 * scalp + brain * (tissue + 500.0 * vent)
    if active:
        d2 = ((q - torch.tensor(act_centre, dtype=q.dtype)) ** 2).sum(-1)
        img = img * (1.0 + active * torch.exp(-d2 / (2 * 9.0 ** 2)) * brain)
    return img


def random_motion(n_volumes: int, max_translation: float, max_rotation_deg: float, rng) -> np.ndarray:
    """(T, 6) smooth random walk with a few abrupt jumps, scaled to the requested maxima."""
    steps = rng.normal(size=(n_volumes, 6))
    jumps = np.zeros((n_volumes, 6))
    for t in rng.choice(np.arange(1, n_volumes), size=min(3, max(0, n_volumes - 1)), replace=False):
        jumps[t] = rng.normal(size=6) * 4
    walk = np.cumsum(steps + jumps, axis=0)
    walk -= walk[0]
    peak = np.abs(walk).max(axis=0)
    peak[peak == 0] = 1.0
    walk /= peak
    walk *= rng.uniform(0.5, 1.0, size=6)
    walk[:, :3] *= max_translation
    walk[:, 3:] *= np.deg2rad(max_rotation_deg)
    return walk


def make_motion_phantom(shape=(64, 64, 32), voxel_size=(3.0, 3.0, 4.0), n_volumes: int = 100, *,
                        max_translation: float = 3.0, max_rotation_deg: float = 2.0, noise: float = 0.01,
                        activation: float = 0.03, drift: float = 0.01, n_nonsteady: int = 0,
                        supersample: int = 2, oblique_deg: float = 0.0, still: bool = False,
                        motion_axes=(True,) * 6, seed: int = 0) -> MotionPhantom:
    """Make a run with known motion.

    Parameters
    ----------
    shape : (X, Y, Z) grid; voxel_size : mm.
    n_volumes : T.
    max_translation, max_rotation_deg : largest absolute translation (mm) / rotation (deg) per axis.
    noise : Gaussian noise SD as a fraction of the tissue intensity (~1000).
    activation : fractional signal change of a blob, 10-on/10-off blocks.
    drift : linear multiplicative drift over the run.
    n_nonsteady : number of initial volumes with extra T1 signal (x1.6, x1.3, ...).
    supersample : sub-voxel points per axis averaged per voxel.
    oblique_deg : rotate the voxel grid (oblique acquisition).
    still : no motion at all.
    motion_axes : which of the 6 parameters move (e.g. only trans_x, trans_y, rot_z for a 1-slice run).
    """
    rng = np.random.default_rng(seed)
    affine = make_affine(shape, voxel_size, oblique_deg)
    centre = grid_centre(affine, shape)
    params = np.zeros((n_volumes, 6)) if still else random_motion(n_volumes, max_translation, max_rotation_deg, rng)
    params = params * np.asarray(motion_axes, dtype=np.float64)
    transforms = rigid_matrix(params, centre)
    nx, ny, nz = shape
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    grids = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    ijk = np.stack([g.ravel() for g in grids], axis=1).astype(np.float64)
    head_centre = np.array([1.5, -8.0, 6.0])  # object centre = grid centre of make_affine at identity
    blocks = ((np.arange(n_volumes) // 10) % 2 == 1).astype(float)
    data = np.empty(tuple(shape) + (n_volumes,), dtype=np.float32)
    sub = np.array(np.meshgrid(offsets, offsets, offsets, indexing="ij")).reshape(3, -1).T
    for t in range(n_volumes):
        inv = np.linalg.inv(transforms[t])
        acc = torch.zeros(ijk.shape[0], dtype=torch.float32)
        for off in sub:
            world = (ijk + off) @ affine[:3, :3].T + affine[:3, 3]
            obj = world @ inv[:3, :3].T + inv[:3, 3] - head_centre
            acc += _object(torch.from_numpy(obj.astype(np.float32)), activation * blocks[t], (30.0, -35.0, 12.0))
        vol = acc.numpy().reshape(shape) / len(sub)
        vol *= 1.0 + drift * t / max(1, n_volumes - 1)
        if t < n_nonsteady:
            vol *= 1.0 + 0.6 / (t + 1)
        vol += rng.normal(scale=noise * 1000.0, size=vol.shape).astype(np.float32)
        data[..., t] = np.abs(vol)
    world0 = ijk @ affine[:3, :3].T + affine[:3, 3] - head_centre
    brain = (_soft_inside(torch.from_numpy(world0.astype(np.float32)), (70, 86, 55), 1.0).numpy() > 0.5).reshape(shape)
    return MotionPhantom(data=data, affine=affine, true_transforms=transforms, true_params=params,
                         brain_mask=brain, centre=centre)


def motion_error_mm(estimated: np.ndarray, true: np.ndarray, points_world: np.ndarray) -> np.ndarray:
    """Per-volume RMS displacement (mm) between estimated and true pull transforms over given points.

    Each method realigns to its own reference whose true pose is unknown (a median or mean image):
    ``estimated_t = true_t @ G`` for one constant rigid ``G`` (reference -> identity pose). ``G`` is fitted
    as the rigid matrix nearest to the mean of ``inv(true_t) @ estimated_t``; the error of volume t is the
    RMS over ``points_world`` of ``|estimated_t x - true_t G x|``.

    Parameters
    ----------
    estimated, true : (T, 4, 4) pull transforms (reference world -> volume world).
    points_world : (P, 3) e.g. the brain voxels' world coordinates.

    Returns
    -------
    (T,) RMS error in mm.
    """
    estimated = np.asarray(estimated, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    g = nearest_rigid(np.mean(np.linalg.inv(true) @ estimated, axis=0))
    pts = np.c_[points_world, np.ones(len(points_world))]
    est_pts = np.einsum("tij,pj->tpi", estimated, pts)[..., :3]
    true_pts = np.einsum("tij,pj->tpi", true @ g, pts)[..., :3]
    return np.sqrt(((est_pts - true_pts) ** 2).sum(-1).mean(-1))
