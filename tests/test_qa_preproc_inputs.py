"""The preprocessing engines on BOLD data unlike the simulator's (QA pass 32): already demeaned or z-scored
series, negative intensities, tiny brain masks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_m2i.errors import BadDataError
from bids_m2i.interfaces.images import load_bold
from bids_m2i.preproc.phantom import make_motion_phantom


@pytest.fixture(scope="module")
def head_run():
    return make_motion_phantom((24, 24, 12), (8.0, 8.0, 11.0), 12, supersample=1, seed=1, max_translation=1.0,
                               max_rotation_deg=0.7)


def _save(path, data, affine, slope=None):
    img = nib.Nifti1Image(data, affine)
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    nib.save(img, str(path))
    return path


@pytest.mark.parametrize("kind", ["demeaned", "zscored", "percent"])
def test_an_already_demeaned_run_is_65(tmp_path, head_run, kind):
    """Motion correction of such a run registered noise to noise: translations of ~7e9 mm, exit 0."""
    d = head_run.data.astype(np.float64)
    mean = d.mean(3, keepdims=True)
    series = {"demeaned": d - mean, "zscored": (d - mean) / (d.std(3, keepdims=True) + 1e-6),
              "percent": 100 * (d / (mean + 1e-3) - 1)}[kind]
    path = _save(tmp_path / "sub-01_task-x_bold.nii.gz", series.astype(np.float32), head_run.affine)
    with pytest.raises(BadDataError, match="already demeaned, z-scored or in percent signal change") as caught:
        load_bold(path)
    assert caught.value.exit_code == 65 and path.name in str(caught.value)


def test_raw_runs_of_every_kind_are_not_taken_for_demeaned(tmp_path, head_run):
    d = head_run.data
    cases = {"raw": d, "offset_1e6": d.astype(np.float64) + 1e6, "low_snr": d + np.random.default_rng(0).normal(
        0, 200, d.shape), "two_volumes": d[..., :2]}
    spiked = d.copy()
    spiked[..., 5] *= 30.0  # a spike volume
    spiked[3, 3, 3, :] = 3e5  # a hot voxel
    cases["spiked"] = spiked
    for name, data in cases.items():
        path = _save(tmp_path / f"{name}.nii.gz", np.asarray(data, dtype=np.float32), head_run.affine)
        assert load_bold(path)[0].shape == data.shape, name
    scaled = _save(tmp_path / "int16.nii.gz", np.round(d / 0.5).astype(np.int16), head_run.affine, slope=0.5)
    assert np.allclose(load_bold(scaled)[0], d, atol=0.26)


@pytest.mark.parametrize("n_hot", [1, 3, 30])
def test_a_few_hot_voxels_do_not_decide_the_brain_mask(n_hot):
    """Otsu's histogram spans the image's range: one corrupt voxel of 1e6 in a head of ~1000 (in every volume of a
    run, so in its reference) put all tissue in one bin; the mask was 4 voxels, and the participant's, through the
    whole run, 29 instead of 2238 (exit 0, no warning)."""
    from bids_m2i.preproc.masks import compute_brain_mask

    image = make_motion_phantom((48, 48, 24), (4.0, 4.0, 5.5), 1, supersample=1, still=True, seed=0).data[..., 0]
    clean = compute_brain_mask(image)
    hot = image.copy()
    hot[np.unravel_index(np.arange(n_hot) * 997 % image.size, image.shape)] = 1e6
    mask = compute_brain_mask(hot)
    dice = 2 * (mask & clean).sum() / (mask.sum() + clean.sum())
    assert dice > 0.98, (int(mask.sum()), int(clean.sum()))


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("bad", [np.inf, np.nan, -np.inf])
def test_register_rigid_treats_non_finite_voxels_as_zero(bad):
    """As estimate_motion does. One inf voxel in the fixed image: the centre-of-mass start overflowed (NaN), and
    the default cost mask was the brain mask of np.nan_to_num's 1.8e308 (before the hot-voxel fix above, the
    inf's few neighbours: the pose ended 1.9 mm off the truth instead of 0.24 mm)."""
    from bids_m2i.preproc.motion import register_rigid

    run = make_motion_phantom((48, 48, 24), (4.0, 4.0, 5.5), 2, supersample=1, seed=0, max_translation=1.5,
                              max_rotation_deg=1.0, noise=0.005, activation=0.0, drift=0.0)
    truth = run.true_transforms[1] @ np.linalg.inv(run.true_transforms[0])
    fixed, moving = run.data[..., 0].copy(), run.data[..., 1].copy()
    fixed[20:22, 20:22, 10] = bad
    moving[30, 12, 5] = bad
    points = np.c_[np.argwhere(run.brain_mask) @ run.affine[:3, :3].T + run.affine[:3, 3],
                   np.ones(int(run.brain_mask.sum()))]

    def error(pose):
        return float(np.sqrt((((points @ pose.T) - (points @ truth.T))[:, :3] ** 2).sum(1).mean()))

    clean = error(register_rigid(run.data[..., 1], run.affine, run.data[..., 0], run.affine))
    assert error(register_rigid(moving, run.affine, fixed, run.affine)) < clean + 0.05 < error(np.eye(4))


@pytest.mark.parametrize("still", [True, False])
def test_a_slab_through_the_brain_is_not_tilted_by_its_reference_edges(still):
    """The median reference is made of volumes realigned on their own grid; samples just outside the first or last
    slice were 0, so a slab whose brain reaches them got a reference with dark edge slices, and the fine level
    tilted the volumes to match: a still 10-slice slab had rotations of 5 degrees (error 2.4 mm mean), a moving
    one an error of 1.4 mm."""
    from bids_m2i.preproc.motion import estimate_motion
    from bids_m2i.preproc.phantom import motion_error_mm

    run = make_motion_phantom((48, 48, 10), (4.0, 4.0, 5.5), 24, supersample=1, seed=2, still=still,
                              max_translation=1.0, max_rotation_deg=0.7)
    result = estimate_motion(run.data, run.affine)
    points = np.argwhere(run.brain_mask) @ run.affine[:3, :3].T + run.affine[:3, 3]
    error = motion_error_mm(result.transforms, run.true_transforms, points)
    assert error.mean() < 0.1 and error.max() < 0.2, error
    if still:
        assert np.rad2deg(np.abs(result.params[:, 3:])).max() < 0.2 and np.abs(result.params[:, :3]).max() < 0.1


def test_a_registration_that_cannot_be_checked_says_so(caplog):
    """A cost mask of one voxel leaves the safeguard no points to judge either pose by: it warned "ended worse than
    its start (cost inf > inf, 0.00 mm away)", a comparison it had not made."""
    import logging

    from bids_m2i.preproc.motion import register_rigid

    run = make_motion_phantom((24, 24, 12), (8.0, 8.0, 11.0), 2, supersample=1, seed=0, noise=0.005,
                              activation=0.0, drift=0.0)
    mask = np.zeros((24, 24, 12), dtype=bool)
    mask[12, 12, 6] = True
    with caplog.at_level(logging.INFO, logger="m2i"):
        pose = register_rigid(run.data[..., 1], run.affine, run.data[..., 0], run.affine, mask=mask)
    messages = [r.getMessage() for r in caplog.records if "rigid registration" in r.getMessage()]
    assert len(messages) == 1 and "could not be checked" in messages[0] and "inf" not in messages[0], messages
    assert np.isfinite(pose).all()


def test_negative_intensities_register_as_their_magnitudes():
    """A run minus a constant larger than its values (all negative): the gains divided by sums clamped at 1e-6 and
    the poses ran off to 3e13 mm; now as the run itself."""
    from bids_m2i.preproc.motion import estimate_motion, register_rigid
    from bids_m2i.preproc.phantom import motion_error_mm

    run = make_motion_phantom((32, 32, 16), (6.0, 6.0, 8.0), 8, supersample=1, seed=1, max_translation=1.0,
                              max_rotation_deg=0.7)
    points = np.argwhere(run.brain_mask) @ run.affine[:3, :3].T + run.affine[:3, 3]
    negative = run.data - 3000.0
    error = motion_error_mm(estimate_motion(negative, run.affine).transforms, run.true_transforms, points)
    assert error.mean() < 0.15 and error.max() < 0.3, error
    truth = run.true_transforms[1] @ np.linalg.inv(run.true_transforms[0])
    pose = register_rigid(negative[..., 1], run.affine, negative[..., 0], run.affine)
    h = np.c_[points, np.ones(len(points))]
    assert np.sqrt((((h @ pose.T) - (h @ truth.T))[:, :3] ** 2).sum(1).mean()) < 0.3


def test_a_brain_smaller_than_the_field_gaussian_is_not_flattened_to_nothing():
    """flatten_intensity defined the field where the brain weighed 0.05 under its 6-voxel Gaussian: a one-voxel
    brain weighs 2.9e-4, a head on an 8x8x8 grid under 0.05: the image became zeros and register_runs_to_first
    returned the identity (error 1.94 mm = the motion itself; register_rigid on the raw images: 1.28)."""
    from bids_m2i.preproc.grid import register_runs_to_first
    from bids_m2i.preproc.masks import flatten_intensity

    run = make_motion_phantom((8, 8, 8), (24.0, 24.0, 16.0), 2, supersample=1, seed=0, max_translation=1.5,
                              max_rotation_deg=1.0, noise=0.005, activation=0.0, drift=0.0)
    one = np.zeros((8, 8, 8), dtype=bool)
    one[4, 4, 4] = True
    assert flatten_intensity(run.data[..., 0], brain=one)[4, 4, 4] > 0
    truth = run.true_transforms[1] @ np.linalg.inv(run.true_transforms[0])
    points = np.c_[np.argwhere(run.brain_mask) @ run.affine[:3, :3].T + run.affine[:3, 3],
                   np.ones(int(run.brain_mask.sum()))]

    def error(pose):
        return float(np.sqrt((((points @ pose.T) - (points @ truth.T))[:, :3] ** 2).sum(1).mean()))

    pose = register_runs_to_first([run.data[..., 0], run.data[..., 1]], [run.affine] * 2)[1]
    assert error(pose) < 0.8 * error(np.eye(4)), (error(pose), error(np.eye(4)))


def test_a_still_slab_participant_has_still_confounds(tmp_path):
    """The whole run on a still 8-slice slab through the head: framewise displacement up to 7.2 mm and trans_z
    1.85 mm before the reference's edge fix (betas up to 49 %); a still head now moves by less than 0.5 mm."""
    import pandas as pd

    from bids_m2i.cli.run import run_cli
    from helpers import make_minimal_bids

    bids = make_minimal_bids(tmp_path / "bids")
    run = make_motion_phantom((32, 32, 8), (6.0, 6.0, 6.0), 40, supersample=1, seed=1, still=True)
    img = nib.Nifti1Image(run.data, run.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, str(bids / "sub-01" / "func" / "sub-01_task-perception_run-01_bold.nii.gz"))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "preproc", "--nprocs", "1"])
    assert code == 0
    table = pd.read_csv(next((tmp_path / "out").rglob("*_desc-confounds_timeseries.tsv")), sep="\t")
    assert table["framewise_displacement"].max() < 0.5, table["framewise_displacement"].max()
    assert table[["trans_x", "trans_y", "trans_z"]].abs().to_numpy().max() < 0.2
