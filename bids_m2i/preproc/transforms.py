"""Rigid transforms in world (RAS mm) space and the 6-parameter convention of the motion engine.

Convention (also in ``docs/preprocessing.md``)
-----------------------------------------------
A volume's transform ``M`` (4x4, world mm) is the *pull* mapping from the reference onto that volume:
the tissue found at world point ``x`` of the reference is at ``M @ x`` in the volume, so the volume
resampled onto the reference is ``out(x) = volume(M @ x)``. It is the same direction as an ITK/ANTs
"fixed -> moving" transform (in RAS instead of ITK's LPS).

``M`` is parameterised by ``(trans_x, trans_y, trans_z, rot_x, rot_y, rot_z)``::

    M @ x = R (x - c) + c + t,      R = Rz(rot_z) @ Ry(rot_y) @ Rx(rot_x)

with ``t`` in mm along R, A, S; rotations in radians, right-handed about the R, A, S axes through the
reference grid's centre ``c`` (world position of the middle voxel of the reference grid). A positive
``trans_x`` means that, in that volume, the head sits further to the right than in the reference.
"""

from __future__ import annotations

import numpy as np

PARAM_NAMES = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def grid_centre(affine: np.ndarray, shape) -> np.ndarray:
    """World (mm) position of the centre of a voxel grid.

    Parameters
    ----------
    affine : (4, 4) voxel -> world matrix.
    shape : the grid's first three dimensions.

    Returns
    -------
    (3,) float64
    """
    ijk = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64)[:3, :3] @ ijk + np.asarray(affine, dtype=np.float64)[:3, 3]


def rotation_matrix(rot: np.ndarray) -> np.ndarray:
    """Rotation matrices ``Rz @ Ry @ Rx`` for angles (..., 3) in radians -> (..., 3, 3)."""
    rot = np.asarray(rot, dtype=np.float64)
    a, b, g = rot[..., 0], rot[..., 1], rot[..., 2]
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    out = np.empty(rot.shape[:-1] + (3, 3))
    out[..., 0, 0] = cg * cb
    out[..., 0, 1] = cg * sb * sa - sg * ca
    out[..., 0, 2] = cg * sb * ca + sg * sa
    out[..., 1, 0] = sg * cb
    out[..., 1, 1] = sg * sb * sa + cg * ca
    out[..., 1, 2] = sg * sb * ca - cg * sa
    out[..., 2, 0] = -sb
    out[..., 2, 1] = cb * sa
    out[..., 2, 2] = cb * ca
    return out


def rigid_matrix(params: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """4x4 matrices from parameters (..., 6) rotating about ``centre`` (3,) -> (..., 4, 4)."""
    params = np.asarray(params, dtype=np.float64)
    centre = np.asarray(centre, dtype=np.float64)
    rot = rotation_matrix(params[..., 3:])
    out = np.zeros(params.shape[:-1] + (4, 4))
    out[..., :3, :3] = rot
    out[..., :3, 3] = params[..., :3] + centre - rot @ centre
    out[..., 3, 3] = 1.0
    return out


def params_from_matrix(matrices: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rigid_matrix`: (..., 4, 4) -> (..., 6) (rot_y kept in [-pi/2, pi/2])."""
    m = np.asarray(matrices, dtype=np.float64)
    centre = np.asarray(centre, dtype=np.float64)
    rot = m[..., :3, :3]
    out = np.empty(m.shape[:-2] + (6,))
    out[..., 3] = np.arctan2(rot[..., 2, 1], rot[..., 2, 2])
    out[..., 4] = -np.arcsin(np.clip(rot[..., 2, 0], -1.0, 1.0))
    out[..., 5] = np.arctan2(rot[..., 1, 0], rot[..., 0, 0])
    out[..., :3] = m[..., :3, 3] - centre + rot @ centre
    return out


def compose_transforms(per_volume: np.ndarray, run_to_participant: np.ndarray) -> np.ndarray:
    """Pull transforms from the participant grid straight to each raw volume.

    Parameters
    ----------
    per_volume : (T, 4, 4) run reference -> volume (from :func:`estimate_motion`).
    run_to_participant : (4, 4) participant reference -> run reference (from :func:`register_rigid`
        with the run's reference as ``moving`` and the participant reference as ``fixed``).

    Returns
    -------
    (T, 4, 4) participant reference -> raw volume, for :func:`resample_to_grid` (one interpolation).
    """
    return np.asarray(per_volume, dtype=np.float64) @ np.asarray(run_to_participant, dtype=np.float64)


def nearest_rigid(matrix: np.ndarray) -> np.ndarray:
    """The rigid transform closest to a 4x4 affine (rotation part projected with an SVD)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    rot = u @ vt
    if np.linalg.det(rot) < 0:
        u[:, -1] *= -1
        rot = u @ vt
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = matrix[:3, 3]
    return out
