"""Head motion: trajectories (smooth drift + sudden jerks) and the resampling that applies them.

Convention (also in the ground-truth sidecars): parameters ``trans_x trans_y trans_z`` (mm) and
``rot_x rot_y rot_z`` (rad) describe where the head *is*: a point ``p`` of the head (RAS mm, motion-free
frame, grid centre = origin) is seen by the scanner at ``x = R p + t`` with ``R = Rz(rot_z) Ry(rot_y)
Rx(rot_x)`` (rotation about the grid centre, x-rotation applied first). A realignment that maps each volume
back onto the motion-free reference estimates the inverse transform.

Resampling deliberately differs from the pipeline's trilinear torch realignment: the static head is
evaluated from a cubic B-spline (``scipy.ndimage.map_coordinates``, order 3) on a 2x finer grid that holds
the analytic head averaged over a voxel's extent; the functional fluctuations (BOLD, physiological noise)
move with the head through a cubic spline on the voxel grid. Thermal noise, coil sensitivity and scanner
drift stay in the scanner frame (they do not move with the head).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MOTION_COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


def rotation_matrices(params: np.ndarray) -> np.ndarray:
    """Rotation matrices ``Rz @ Ry @ Rx`` for parameters (..., 6), shape (..., 3, 3)."""
    rx, ry, rz = params[..., 3], params[..., 4], params[..., 5]
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    one, zero = np.ones_like(rx), np.zeros_like(rx)
    r_x = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cx, -sx], -1), np.stack([zero, sx, cx], -1)], -2)
    r_y = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], -2)
    r_z = np.stack([np.stack([cz, -sz, zero], -1), np.stack([sz, cz, zero], -1), np.stack([zero, zero, one], -1)], -2)
    return r_z @ r_y @ r_x


def rigid_matrix(params) -> np.ndarray:
    """4x4 matrix (RAS mm, about the grid centre = origin) mapping head points to scanner points."""
    params = np.asarray(params, dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrices(params)
    matrix[:3, 3] = params[:3]
    return matrix


def motion_trajectory(rng: np.random.Generator, duration: float, dt: float, cfg: dict,
                      offset: np.ndarray | None = None) -> np.ndarray:
    """Head pose over time, shape ``(n_steps, 6)`` on a ``dt`` grid (mm, rad).

    Smooth drift: a random walk smoothed over ~20 s, scaled to at most ``drift_mm`` / ``drift_deg``.
    Jerks (Poisson, ``jerks_per_minute``): fast (0.2-0.8 s) steps that stay, or spikes that return after
    1-4 s, up to ``jerk_mm`` / ``jerk_deg`` per axis.
    """
    n = int(np.ceil(duration / dt)) + 1
    scale = np.array([cfg["drift_mm"]] * 3 + [np.deg2rad(cfg["drift_deg"])] * 3)
    walk = np.cumsum(rng.normal(size=(n, 6)), axis=0)
    walk = ndimage.gaussian_filter1d(walk, sigma=20.0 / dt, axis=0, mode="nearest")
    walk -= walk[0]
    walk *= scale / (np.abs(walk).max(axis=0) + 1e-12) * rng.uniform(0.3, 1.0, 6)
    pose = walk
    jerk_scale = np.array([cfg["jerk_mm"]] * 3 + [np.deg2rad(cfg["jerk_deg"])] * 3)
    n_jerks = rng.poisson(cfg["jerks_per_minute"] * duration / 60.0)
    time = np.arange(n) * dt
    for _ in range(n_jerks):
        start = rng.uniform(0.05, 0.95) * duration
        rise = rng.uniform(0.2, 0.8)
        size = rng.uniform(-1, 1, 6) * jerk_scale * rng.uniform(0.3, 1.0)
        step = np.clip((time - start) / rise, 0, 1)
        step = 0.5 - 0.5 * np.cos(np.pi * step)  # smooth but fast transition
        if rng.random() < 0.5:  # spike: the head comes back
            back = start + rise + rng.uniform(1.0, 4.0)
            step = step - (0.5 - 0.5 * np.cos(np.pi * np.clip((time - back) / rise, 0, 1)))
        pose = pose + step[:, None] * size[None, :]
    if offset is not None:
        pose = pose + offset[None, :]
    return pose


def sample_trajectory(trajectory: np.ndarray, dt: float, times: np.ndarray) -> np.ndarray:
    """Linear interpolation of a trajectory (n_steps, 6) at ``times`` (any shape) -> (..., 6)."""
    grid = np.arange(len(trajectory)) * dt
    flat = np.asarray(times, dtype=float).ravel()
    out = np.stack([np.interp(flat, grid, trajectory[:, k]) for k in range(6)], axis=-1)
    return out.reshape(*np.shape(times), 6)


class MovingHeadSampler:
    """Samples the moving head (static anatomy x (1 + fluctuations %)) at the scanner's voxel centres.

    Only voxels that can see the head (the head, resp. the brain for the fluctuations, dilated by
    ``margin_mm``: more than any simulated displacement) are interpolated; the rest is air (0).
    """

    def __init__(self, affine: np.ndarray, shape, anatomy_fine: np.ndarray, brain_mask: np.ndarray,
                 margin_mm: float = 7.0):
        self.affine = affine
        self.inv_affine = np.linalg.inv(affine)
        self.shape = tuple(shape)
        self.anatomy_coeffs = ndimage.spline_filter(anatomy_fine, order=3, mode="nearest")
        self.identity_anatomy = anatomy_fine[::2, ::2, ::2]
        voxel_mm = float(np.sqrt((affine[:3, :3] ** 2).sum(0)).min())
        iterations = int(np.ceil(margin_mm / voxel_mm))
        head = self.identity_anatomy > 0.02 * self.identity_anatomy.max()
        head = ndimage.binary_dilation(head, iterations=iterations)
        brain = ndimage.binary_dilation(brain_mask, iterations=iterations) & head
        self.head_index = np.flatnonzero(head.ravel())
        self.brain_in_head = np.flatnonzero(brain.ravel()[self.head_index])  # positions within head_index
        ijk = np.stack(np.unravel_index(self.head_index, self.shape), axis=-1).astype(float)
        self.scanner_mm = ijk @ affine[:3, :3].T + affine[:3, 3]  # (n_head, 3)
        self.slice_of = ijk[:, 2].astype(int)

    def head_coordinates(self, pose_per_slice: np.ndarray) -> np.ndarray:
        """Motion-free voxel coordinates seen by each head-region scanner voxel, shape (3, n_head).

        pose_per_slice : (nz, 6) head pose while each slice (third axis) is acquired.
        """
        rotations = rotation_matrices(pose_per_slice)[self.slice_of]  # (n, 3, 3)
        shifted = self.scanner_mm - pose_per_slice[self.slice_of, :3]
        head_mm = np.einsum("nji,nj->ni", rotations, shifted)  # R^T (x - t)
        ijk = head_mm @ self.inv_affine[:3, :3].T + self.inv_affine[:3, 3]
        return ijk.T

    def sample(self, fluctuation_pct: np.ndarray, pose_per_slice: np.ndarray | None) -> np.ndarray:
        """One volume: anatomy x (1 + fluctuation / 100) seen through the head pose, shape ``self.shape``."""
        if pose_per_slice is None or not np.any(pose_per_slice):
            return self.identity_anatomy * (1 + fluctuation_pct / 100.0)
        coords = self.head_coordinates(pose_per_slice)
        anatomy = ndimage.map_coordinates(self.anatomy_coeffs, coords * 2.0, order=3, mode="nearest",
                                          prefilter=False)
        moved = np.zeros(len(self.head_index))
        moved[self.brain_in_head] = ndimage.map_coordinates(fluctuation_pct, coords[:, self.brain_in_head],
                                                            order=3, mode="constant", cval=0.0)
        volume = np.zeros(self.shape)
        volume.ravel()[self.head_index] = anatomy * (1 + moved / 100.0)
        return volume


def undo_motion(volume: np.ndarray, affine: np.ndarray, pose: np.ndarray, order: int = 3) -> np.ndarray:
    """Resample a volume acquired with head pose ``pose`` (6,) back onto the motion-free grid.

    Inverse of the acquisition: motion-free voxel ``p`` was seen at scanner position ``R p + t``.
    """
    grids = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    ijk = np.stack(grids, axis=-1).astype(float)
    head_mm = ijk @ affine[:3, :3].T + affine[:3, 3]
    scanner_mm = head_mm @ rotation_matrices(np.asarray(pose, float)).T + np.asarray(pose, float)[:3]
    inv = np.linalg.inv(affine)
    coords = np.moveaxis(scanner_mm @ inv[:3, :3].T + inv[:3, 3], -1, 0)
    return ndimage.map_coordinates(volume, coords, order=order, mode="nearest")
