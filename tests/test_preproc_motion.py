"""Head-motion engine, registration across runs and one-interpolation resampling (small phantoms)."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from bids_m2i.preproc.masks import compute_brain_mask
from bids_m2i.preproc.motion import estimate_motion, register_rigid
from bids_m2i.preproc.phantom import make_affine, make_motion_phantom, motion_error_mm
from bids_m2i.preproc.resample import resample_to_grid
from bids_m2i.preproc.transforms import (compose_transforms, grid_centre, nearest_rigid, params_from_matrix,
                                         rigid_matrix)

torch.set_num_threads(1)

SHAPE, VOXEL = (48, 48, 24), (4.0, 4.0, 5.5)


def _brain_points(phantom):
    ijk = np.argwhere(phantom.brain_mask)
    return ijk @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]


@pytest.fixture(scope="module")
def moving_run():
    return make_motion_phantom(SHAPE, VOXEL, 16, supersample=2, seed=3)


def test_rigid_parameter_round_trip():
    rng = np.random.default_rng(0)
    params = np.c_[rng.uniform(-5, 5, (20, 3)), rng.uniform(-0.3, 0.3, (20, 3))]
    centre = np.array([3.0, -20.0, 12.0])
    mats = rigid_matrix(params, centre)
    np.testing.assert_allclose(params_from_matrix(mats, centre), params, atol=1e-12)
    # the centre is fixed by a pure rotation; a translation moves it by exactly t
    rot_only = rigid_matrix(np.array([0, 0, 0, 0.1, -0.2, 0.3]), centre)
    np.testing.assert_allclose(rot_only[:3, :3] @ centre + rot_only[:3, 3], centre, atol=1e-12)
    # sign: positive rot_z turns +x (R) towards +y (A) (right-handed about S)
    rz = rigid_matrix(np.array([0, 0, 0, 0, 0, np.pi / 2]), np.zeros(3))
    np.testing.assert_allclose(rz[:3, :3] @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_known_motion_is_recovered(moving_run):
    result = estimate_motion(moving_run.data, moving_run.affine)
    err = motion_error_mm(result.transforms, moving_run.true_transforms, _brain_points(moving_run))
    assert err.mean() <= 0.1, err
    assert err.max() <= 0.3, err
    # relative motion between volumes does not depend on the reference: compare directly
    rel_est = params_from_matrix(np.linalg.inv(result.transforms[0]) @ result.transforms, result.centre)
    rel_true = params_from_matrix(np.linalg.inv(moving_run.true_transforms[0]) @ moving_run.true_transforms,
                                  result.centre)
    assert np.abs(rel_est[:, :3] - rel_true[:, :3]).max() < 0.3
    assert np.abs(rel_est[:, 3:] - rel_true[:, 3:]).max() < np.deg2rad(0.3)
    assert result.params.shape == (16, 6) and result.transforms.shape == (16, 4, 4)
    assert result.reference.shape == SHAPE and result.mask.shape == SHAPE and not result.warnings


def test_still_run_gives_zero_motion():
    still = make_motion_phantom(SHAPE, VOXEL, 8, supersample=1, still=True, seed=1)
    result = estimate_motion(still.data, still.affine)
    assert np.abs(result.params[:, :3]).max() < 0.03
    assert np.abs(result.params[:, 3:]).max() < np.deg2rad(0.03)


def test_one_slice_run_uses_in_plane_fit():
    run = make_motion_phantom((64, 64, 1), (3.0, 3.0, 4.0), 10, supersample=2, seed=2,
                              motion_axes=(True, True, False, False, False, True))
    with pytest.warns(UserWarning, match="in-plane"):
        result = estimate_motion(run.data, run.affine)
    assert result.in_plane
    assert np.abs(result.params[:, [2, 3, 4]]).max() < 1e-9  # through-plane parameters are not fitted
    rel_est = params_from_matrix(np.linalg.inv(result.transforms[0]) @ result.transforms, result.centre)
    rel_true = params_from_matrix(np.linalg.inv(run.true_transforms[0]) @ run.true_transforms, result.centre)
    assert np.abs(rel_est[:, :2] - rel_true[:, :2]).max() < 0.3
    assert np.abs(rel_est[:, 5] - rel_true[:, 5]).max() < np.deg2rad(0.3)


def test_same_inputs_same_outputs(moving_run):
    data = moving_run.data[..., :6]
    a = estimate_motion(data, moving_run.affine, n_threads=1)
    b = estimate_motion(data, moving_run.affine, n_threads=1)
    assert np.array_equal(a.transforms, b.transforms) and np.array_equal(a.reference, b.reference)
    ra = resample_to_grid(data, moving_run.affine, a.transforms, moving_run.affine, SHAPE)
    rb = resample_to_grid(data, moving_run.affine, b.transforms, moving_run.affine, SHAPE)
    assert ra.dtype == np.float32 and np.array_equal(ra, rb)


def test_poses_do_not_depend_on_the_thread_count(moving_run):
    """Chunks of volumes are registered and resampled side by side, one torch thread each (utils/parallel.py),
    and each level's reference is built on one thread: the poses and the resampled volumes are the same bit for
    bit with 1, 2 and 3 threads (before, torch's own threads split products and interpolations at points that
    depend on their count, and two threads gave boldrefs up to 0.007 apart)."""
    data = moving_run.data[..., :12]
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        results = [estimate_motion(data, moving_run.affine, n_threads=n, chunk_size=2) for n in (1, 2, 3)]
        resampled = [resample_to_grid(data, moving_run.affine, results[0].transforms, moving_run.affine, SHAPE,
                                      n_threads=n, chunk_size=3) for n in (1, 2)]
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert np.array_equal(other.transforms, results[0].transforms)
        assert np.array_equal(other.reference, results[0].reference)
    assert np.array_equal(resampled[0], resampled[1])                  # the one interpolation too
    assert torch.get_num_threads() == before


def test_scaled_int16_oblique_and_nan_inputs(tmp_path):
    run = make_motion_phantom(SHAPE, VOXEL, 10, supersample=2, oblique_deg=15.0, seed=4)
    # store as int16 with a slope, the way scanners write it, and read back through nibabel
    img = nib.Nifti1Image(np.round(run.data / 0.5).astype(np.int16), run.affine)
    img.header.set_slope_inter(0.5, 0.0)
    path = tmp_path / "bold.nii.gz"
    nib.save(img, path)
    loaded = nib.load(path)
    assert loaded.get_data_dtype() == np.int16
    data = loaded.get_fdata(dtype=np.float32)
    data[3, 5, 7, 2] = np.nan
    data[10:12, 20, 5, :] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        result = estimate_motion(data, loaded.affine)
    err = motion_error_mm(result.transforms, run.true_transforms, _brain_points(run))
    assert err.mean() <= 0.1 and err.max() <= 0.3, err
    out = resample_to_grid(data, loaded.affine, result.transforms, loaded.affine, SHAPE)
    assert np.isfinite(out).all()


def test_two_runs_with_different_affines_end_on_one_grid():
    run_a = make_motion_phantom(SHAPE, VOXEL, 8, supersample=2, seed=5)
    # second run: another voxel size, FOV and an oblique grid; same head (world) position at identity
    run_b = make_motion_phantom((40, 40, 22), (4.5, 4.5, 6.0), 8, supersample=2, oblique_deg=12.0, seed=6)
    motion_a = estimate_motion(run_a.data, run_a.affine)
    motion_b = estimate_motion(run_b.data, run_b.affine)
    b_to_a = register_rigid(motion_b.reference, run_b.affine, motion_a.reference, run_a.affine)
    composed_b = compose_transforms(motion_b.transforms, b_to_a)
    # both runs' transforms from grid A must be the true poses times ONE reference pose (the grid A)
    pts = _brain_points(run_a)
    g_a = nearest_rigid(np.mean(np.linalg.inv(run_a.true_transforms) @ motion_a.transforms, axis=0))
    g_b = nearest_rigid(np.mean(np.linalg.inv(run_b.true_transforms) @ composed_b, axis=0))
    p_h = np.c_[pts, np.ones(len(pts))]
    gap = np.sqrt((((p_h @ g_a.T) - (p_h @ g_b.T))[:, :3] ** 2).sum(1).mean())
    assert gap < 0.3, gap
    assert motion_error_mm(composed_b, run_b.true_transforms, pts).max() < 0.4
    # resampled once onto grid A, both runs' means line up
    on_a = resample_to_grid(run_a.data, run_a.affine, motion_a.transforms, run_a.affine, SHAPE).mean(3)
    on_b = resample_to_grid(run_b.data, run_b.affine, composed_b, run_a.affine, SHAPE).mean(3)
    brain = compute_brain_mask(on_a) & (on_b > 0)
    assert np.corrcoef(on_a[brain], on_b[brain])[0, 1] > 0.97


def test_register_rigid_recovers_a_session_shift():
    run = make_motion_phantom(SHAPE, VOXEL, 1, supersample=2, still=True, seed=7)
    centre = grid_centre(run.affine, SHAPE)
    truth = rigid_matrix(np.array([9.0, -6.0, 4.0, 0.08, -0.05, 0.1]), centre)
    # moving image = the head at pose ``truth``: moving(truth @ x) == fixed(x)
    moved = resample_to_grid(run.data[..., 0], run.affine, np.linalg.inv(truth), run.affine, SHAPE)
    est = register_rigid(moved, run.affine, run.data[..., 0], run.affine)
    pts = _brain_points(run)
    p_h = np.c_[pts, np.ones(len(pts))]
    inner = compute_brain_mask(run.data[..., 0])
    assert inner.any()
    rms = np.sqrt((((p_h @ est.T) - (p_h @ truth.T))[:, :3] ** 2).sum(1).mean())
    assert rms < 0.3, rms


def test_resample_identity_and_translation():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(10, 9, 8, 2)).astype(np.float32)
    affine = make_affine(data.shape, (2.0, 2.0, 3.0))
    same = resample_to_grid(data, affine, np.tile(np.eye(4), (2, 1, 1)), affine, data.shape[:3])
    np.testing.assert_allclose(same, data, atol=1e-5)
    shift = np.eye(4)
    shift[0, 3] = 2.0  # one voxel along i: out(i) = data(i + 1)
    moved = resample_to_grid(data, affine, shift, affine, data.shape[:3])
    np.testing.assert_allclose(moved[:-1], data[1:], atol=1e-5)
    assert np.all(moved[-1] == 0)  # outside the source FOV -> fill


def test_brain_mask_matches_phantom_brain():
    run = make_motion_phantom(SHAPE, VOXEL, 1, supersample=1, still=True, seed=8)
    mask = compute_brain_mask(run.data[..., 0])
    truth = run.brain_mask
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.85, dice
    assert not compute_brain_mask(np.zeros((5, 5, 5))).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_brain_mask(np.where(truth, np.nan, 1.0))  # NaNs are background, no warning


def test_register_runs_to_first_and_participant_mask():
    from bids_m2i.preproc.grid import participant_brain_mask, register_runs_to_first

    run = make_motion_phantom(SHAPE, VOXEL, 1, supersample=1, still=True, seed=9)
    other_affine = make_affine((40, 40, 22), (4.5, 4.5, 6.0), oblique_deg=10.0)
    other = make_motion_phantom((40, 40, 22), (4.5, 4.5, 6.0), 1, supersample=1, still=True, oblique_deg=10.0, seed=9)
    assert np.allclose(other.affine, other_affine)
    to_run = register_runs_to_first([run.data[..., 0], other.data[..., 0]], [run.affine, other.affine])
    assert np.array_equal(to_run[0], np.eye(4))
    pts = np.c_[_brain_points(run), np.ones(run.brain_mask.sum())]
    # same head position in the world: the transform must be ~identity
    assert np.sqrt((((pts @ to_run[1].T) - pts)[:, :3] ** 2).sum(1).mean()) < 0.3
    on_grid = resample_to_grid(other.data, other.affine, to_run[1], run.affine, SHAPE)[..., 0]
    mask = participant_brain_mask([run.data[..., 0], on_grid])
    assert mask.shape == SHAPE and 2 * (mask & run.brain_mask).sum() / (mask.sum() + run.brain_mask.sum()) > 0.85


def test_given_reference_volume_gets_identity(moving_run):
    data = moving_run.data[..., :6]
    result = estimate_motion(data, moving_run.affine, reference=data[..., 2])
    pts = np.c_[_brain_points(moving_run), np.ones(moving_run.brain_mask.sum())]
    rms = np.sqrt((((pts @ result.transforms[2].T) - pts)[:, :3] ** 2).sum(1).mean())
    assert rms < 0.05, rms  # volume 2 against itself
    assert np.array_equal(result.reference, data[..., 2])


@pytest.mark.parametrize("offset_mm, level", [(0.2, "INFO"), (3.0, "WARNING")])
def test_the_safeguard_warns_only_when_the_kept_start_is_far_from_the_pose_found(monkeypatch, caplog, offset_mm,
                                                                                level):
    """The start is kept whenever the pose found fits worse; a warning only when the two are more than half a
    millimetre apart (a pose that wandered off), not for sub-voxel disagreements (three per demo run before)."""
    import logging

    from bids_m2i.preproc import motion

    run = make_motion_phantom(SHAPE, VOXEL, 1, supersample=2, still=True, seed=7)
    image = run.data[..., 0]
    shifted = np.eye(4)
    shifted[0, 3] = offset_mm
    monkeypatch.setattr(motion, "_register_batch", lambda *args, **kwargs: shifted[None])
    monkeypatch.setattr(motion, "_judge_poses", lambda *args, **kwargs: [2.0, 1.0])  # found worse than start
    with caplog.at_level(logging.INFO, logger="m2i"):
        chosen = register_rigid(image, run.affine, image, run.affine, init=np.eye(4))
    assert np.array_equal(chosen, np.eye(4))
    records = [r for r in caplog.records if "rigid registration" in r.getMessage()]
    assert [r.levelname for r in records] == [level]
    assert f"{offset_mm:.2f} mm" in records[0].getMessage()


def _sub_voxel_pair(seed):
    """Two images of one head a fraction of a voxel apart (as the references of two runs of one session)."""
    run = make_motion_phantom(SHAPE, VOXEL, 2, supersample=2, seed=seed, max_translation=0.6,
                              max_rotation_deg=0.4, noise=0.005, activation=0.0, drift=0.0)
    truth = run.true_transforms[1] @ np.linalg.inv(run.true_transforms[0])
    return run, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sub_voxel_pose_found_is_kept(seed):
    run, truth = _sub_voxel_pair(seed)
    est = register_rigid(run.data[..., 1], run.affine, run.data[..., 0], run.affine)
    p_h = np.c_[_brain_points(run), np.ones(int(run.brain_mask.sum()))]
    error = np.sqrt((((p_h @ est.T) - (p_h @ truth.T))[:, :3] ** 2).sum(1).mean())
    moved = np.sqrt((((p_h @ truth.T) - p_h)[:, :3] ** 2).sum(1).mean())
    assert moved > 0.15 and error < 0.35 * moved, (error, moved)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_safeguard_tells_a_sub_voxel_truth_from_the_identity(seed):
    """The safeguard's judge compares poses at one voxel of smoothing. Unsmoothed, the identity (sampled on the
    grid: sharp) was nearly as good as the true pose (sampled between voxels: blurred), 1.1-1.2x here; on the
    demo without its coil field it kept a start 0.15-0.36 mm off on 5 of 7 runs where the optimiser's pose was
    0.04-0.09 mm off. Smoothed, both poses blur alike and the truth wins by 2.5x."""
    from bids_m2i.preproc import motion
    from bids_m2i.preproc.sampling import volumes_to_torch

    run, truth = _sub_voxel_pair(seed)
    fixed, moving = run.data[..., 0], run.data[..., 1]
    mask = compute_brain_mask(fixed, dilate_vox=2)
    cost_truth, cost_identity = motion._judge_poses(volumes_to_torch(moving, "cpu"), run.affine,
                                                    volumes_to_torch(fixed, "cpu"), run.affine, mask,
                                                    (truth, np.eye(4)))
    assert cost_identity > 2.0 * cost_truth, (cost_truth, cost_identity)
