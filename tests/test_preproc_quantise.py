"""The preprocessed BOLD is stored as int16 with a per-run scl_slope/scl_inter: the rounding error is bounded
by half a slope and stays far below the BOLD noise."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from bids_m2i.interfaces.images import load_bold, save_like


def _bold_like(seed=0, shape=(12, 10, 8, 60), mean=1200.0, noise_sd=12.0):
    """A BOLD-like float run: a brain of mean ``mean`` with 1 % noise, zeros outside, a few bright voxels
    (vessels / interpolation overshoot) that stretch the range and so the slope."""
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, dtype=np.float32)
    data[2:-2, 2:-2, 1:-1] = mean + noise_sd * rng.standard_normal((shape[0] - 4, shape[1] - 4, shape[2] - 2,
                                                                      shape[3]))
    data[5, 5, 4] *= 3.0
    return data, noise_sd


def test_int16_storage_error_is_at_most_half_a_slope_and_far_below_the_noise(tmp_path):
    data, noise_sd = _bold_like()
    path = save_like(data, np.eye(4), tmp_path / "bold.nii.gz", tr=1.5, stored_dtype=np.int16)
    img = nib.load(path)
    assert img.get_data_dtype() == np.int16
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    # the range is used fully: the slope is the range over ~2^16 steps
    assert np.isclose(slope, (data.max() - data.min()) / 65535, rtol=1e-3)
    back, _, _ = load_bold(path)
    assert back.dtype == np.float32 and back.shape == data.shape
    error = back.astype(np.float64) - data
    assert np.abs(error).max() <= slope / 2 * (1 + 1e-3)
    # in the brain a uniform rounding error: sd slope/sqrt(12), here ~1/700 of the noise
    brain_error = error[data != 0]
    assert abs(brain_error.std() - slope / np.sqrt(12)) < 0.1 * slope / np.sqrt(12)
    assert np.sqrt(np.mean(error ** 2)) < noise_sd / 500
    assert img.header.get_zooms()[3] == 1.5
    # half the float32 bytes before compression
    assert img.header.get_data_dtype().itemsize * data.size == data.nbytes // 2


def test_int16_storage_is_deterministic(tmp_path):
    data, _ = _bold_like(seed=3)
    first = save_like(data, np.eye(4), tmp_path / "a.nii.gz", stored_dtype=np.int16)
    second = save_like(data, np.eye(4), tmp_path / "b.nii.gz", stored_dtype=np.int16)
    assert first.read_bytes() == second.read_bytes()


def test_preprocessed_bold_is_int16_with_error_below_the_noise(tiny_preproc_run):
    """On the pipeline's output: int16 on disk, and the rounding error's sd (slope/sqrt(12)) under 1 % of
    the temporal sd of the quietest 5 % of brain voxels."""
    assert tiny_preproc_run["code"] == 0
    func = tiny_preproc_run["out"] / "sub-01" / "func"
    mask = np.asarray(nib.load(func / "sub-01_desc-brain_mask.nii.gz").dataobj) > 0
    runs = sorted(func.glob("*_desc-preproc_bold.nii.gz"))
    assert runs
    for path in runs:
        img = nib.load(path)
        assert img.get_data_dtype() == np.int16
        slope = float(img.dataobj.slope)
        data, _, _ = load_bold(path)
        temporal_sd = data[mask].std(axis=1)
        assert slope / np.sqrt(12) < 0.01 * np.percentile(temporal_sd, 5), path.name
