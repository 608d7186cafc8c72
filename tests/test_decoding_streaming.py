"""Decoding reads betas by voxel mask and session, a chunk of volumes at a time (issue 16: memory)."""

from __future__ import annotations

import tracemalloc

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_m2i.errors import BadDataError
from bids_m2i.interfaces.decoding import load_betas


def _series(tmp_path, n_sessions=2, shape=(40, 40, 30), n_volumes=120, seed=0):
    rng = np.random.default_rng(seed)
    paths, events, arrays = [], [], []
    for s in range(n_sessions):
        data = rng.standard_normal((*shape, n_volumes)).astype(np.float32)
        path = tmp_path / f"ses{s}_statseries.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
        table = tmp_path / f"ses{s}_events.tsv"
        pd.DataFrame({"trial_index": range(n_volumes), "stimulus": [f"s{i}" for i in range(n_volumes)]}).to_csv(
            table, sep="\t", index=False)
        paths.append(str(path))
        events.append(str(table))
        arrays.append(data)
    return paths, events, arrays


def test_streamed_betas_equal_the_full_read_at_a_fraction_of_the_memory(tmp_path):
    paths, events, arrays = _series(tmp_path)
    mask = np.zeros(arrays[0].shape[:3], dtype=bool)
    mask[10:30, 10:30, 10:16] = True  # 2,400 of 48,000 voxels (a 5 % ROI)
    expected = np.concatenate([a[mask].T for a in arrays])
    full_bytes = arrays[0].nbytes  # what the former reader held for one session, before masking
    del arrays
    tracemalloc.start()
    betas, trials = load_betas(paths, events, mask, chunk_volumes=16)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(betas, expected)
    assert betas.dtype == np.float32 and len(trials) == 240
    assert trials["source"].iloc[0].startswith("ses0") and trials["source"].iloc[-1].startswith("ses1")
    # measured peak: the output (2.3 MB) plus one chunk of 16 volumes (3 MB) and the gzip reader's buffers,
    # not a whole session (23 MB) nor two sessions plus their concatenation
    assert peak < 0.5 * full_bytes, f"peak {peak / 1e6:.1f} MB vs one session {full_bytes / 1e6:.1f} MB"


def test_rows_and_volumes_must_agree(tmp_path):
    paths, events, _ = _series(tmp_path, n_sessions=1, shape=(4, 4, 4), n_volumes=5)
    pd.DataFrame({"trial_index": range(3)}).to_csv(events[0], sep="\t", index=False)
    with pytest.raises(BadDataError, match="3 rows for 5 volumes"):
        load_betas(paths, events, np.ones((4, 4, 4), bool))


# --- voxel selection before loading (bids_m2i.decoding.streaming) -------------------------------------------

def _design(tmp_path, n_sessions=3, shape=(9, 10, 7), seed=0, stored_dtype=None):
    """Sessions of perception trials whose repeats fall in different sessions, plus imagery rows; voxels of
    graded reliability (signal sd from 0 to 1.5 over noise sd 1), one constant voxel."""
    rng = np.random.default_rng(seed)
    n_vox = int(np.prod(shape))
    repeated = [f"r{i:02d}" for i in range(40)]
    labels = repeated * 3 + [f"u{i:02d}" for i in range(24)]
    rng.shuffle(labels)
    per_session = np.array_split(np.array(labels), n_sessions)
    reliability = rng.uniform(0, 1.5, n_vox)
    patterns = {s: rng.standard_normal(n_vox) for s in set(labels)}
    paths, events, volumes = [], [], []
    for s, stimuli in enumerate(per_session):
        rows = [reliability * patterns[x] + rng.standard_normal(n_vox) for x in stimuli]
        rows += [rng.standard_normal(n_vox) for _ in range(6)]  # imagery trials
        data = (np.stack(rows, axis=1).reshape(*shape, -1) + 3.0).astype(np.float32)
        data[0, 0, 0] = 2.0  # constant voxel
        img = nib.Nifti1Image(data, np.eye(4))
        if stored_dtype is not None:
            img.set_data_dtype(stored_dtype)
        path = tmp_path / f"ses{s}_statseries.nii.gz"
        nib.save(img, path)
        table = pd.DataFrame({"trial_index": range(data.shape[3]),
                              "condition": ["perception"] * len(stimuli) + ["imagery"] * 6,
                              "stimulus": list(stimuli) + ["r00", "r01", "r02", "r03", "r04", "r05"],
                              "session": f"s{s}"})
        table.to_csv(tmp_path / f"ses{s}_events.tsv", sep="\t", index=False)
        paths.append(str(path))
        events.append(str(tmp_path / f"ses{s}_events.tsv"))
        volumes.append(np.asarray(nib.load(path).dataobj, dtype=np.float32))
    mask = np.ones(shape, dtype=bool)
    mask[-1] = False
    return paths, events, mask, volumes


def _in_memory_choice(paths, events, mask, top_k, seed=0):
    from bids_m2i.decoding.streaming import training_trials
    from bids_m2i.decoding.voxels import VoxelScaler, compute_ncsnr

    betas, trials = load_betas(paths, events, mask)
    train_rows, labels = training_trials(trials, seed=seed)
    scaler = VoxelScaler.fit(betas[train_rows], labels, top_k)
    varying = np.flatnonzero(betas[train_rows].std(0) > 0)
    return betas, trials, train_rows, scaler, varying, compute_ncsnr(betas[train_rows][:, varying], labels)


@pytest.mark.parametrize("memory_gb", [1.0, 2e-5])  # one pass, and blocks of ~40 voxels (many passes)
def test_streamed_selection_is_the_in_memory_one(tmp_path, memory_gb):
    from bids_m2i.decoding.streaming import (load_selected_betas, read_series, streamed_ncsnr,
                                             training_trials)

    paths, events, mask, _ = _design(tmp_path)
    betas, trials, train_rows, scaler, varying, ncsnr = _in_memory_choice(paths, events, mask, top_k=60)
    # the scores themselves, streamed, against compute_ncsnr on the loaded matrix
    series, _ = read_series(paths, events, mask)
    scores, streamed_varying = streamed_ncsnr(series, mask, *training_trials(trials), memory_gb=memory_gb,
                                              chunk_volumes=7)
    np.testing.assert_array_equal(np.flatnonzero(streamed_varying), varying)
    # ncsnr = sqrt(1 - noise var) / sqrt(noise var): near 0 the square root magnifies float32 rounding of
    # (1 - noise var) (a voxel at 0.0026 differed by 2e-5 between runs), so compare its square there
    np.testing.assert_allclose(scores[varying] ** 2, ncsnr ** 2, rtol=5e-5, atol=1e-6)
    assert len(varying) == mask.sum() - 1  # the constant voxel is out
    selected = load_selected_betas(paths, events, mask, 60, memory_gb=memory_gb, chunk_volumes=7)
    np.testing.assert_array_equal(selected.columns, scaler.columns)
    np.testing.assert_array_equal(selected.betas, betas[:, scaler.columns])
    pd.testing.assert_frame_equal(selected.trials, trials)
    # the decoder's own selection on the reduced matrix keeps everything, with the same z-scoring
    again = type(scaler).fit(selected.betas[train_rows], trials["stimulus"].to_numpy()[train_rows], 60)
    np.testing.assert_array_equal(again.columns, np.arange(60))
    np.testing.assert_array_equal(again.transform(selected.betas), scaler.transform(betas))


def test_load_betas_top_k_returns_the_chosen_columns(tmp_path):
    paths, events, mask, _ = _design(tmp_path, seed=1)
    betas, _, _, scaler, _, _ = _in_memory_choice(paths, events, mask, top_k=25, seed=4)
    chosen, trials = load_betas(paths, events, mask, top_k=25, seed=4, memory_gb=1e-5)
    assert chosen.shape == (len(trials), 25)
    np.testing.assert_array_equal(chosen, betas[:, scaler.columns])


def test_scaled_integer_statseries_are_read_like_nibabel(tmp_path):
    from bids_m2i.decoding.streaming import fortran_indices, read_columns, read_series

    paths, events, mask, volumes = _design(tmp_path, n_sessions=2, stored_dtype=np.int16)
    assert nib.load(paths[0]).dataobj.slope != 1.0
    series, _ = read_series(paths, events, mask)
    got = read_columns(series, fortran_indices(mask), chunk_volumes=5)
    np.testing.assert_allclose(got, np.concatenate([v[mask].T for v in volumes]), rtol=1e-6, atol=1e-6)


def test_without_repeats_every_varying_voxel_is_kept(tmp_path):
    from bids_m2i.decoding.streaming import load_selected_betas

    paths, events, mask, _ = _design(tmp_path, n_sessions=1)
    table = pd.read_csv(events[0], sep="\t")
    table["stimulus"] = [f"x{i}" for i in range(len(table))]
    table.to_csv(events[0], sep="\t", index=False)
    selected = load_selected_betas(paths, events, mask, 10)
    assert len(selected.columns) == mask.sum() - 1


def test_selection_memory_is_bounded_by_its_budget(tmp_path):
    """The ncsnr state of a pass stays within memory_gb (plus a chunk), far below the full matrix."""
    from bids_m2i.decoding.streaming import load_selected_betas

    paths, events, mask, volumes = _design(tmp_path, shape=(30, 30, 20))
    full = sum(v[mask].nbytes for v in volumes)
    del volumes
    tracemalloc.start()
    selected = load_selected_betas(paths, events, mask, 200, memory_gb=full / 20 / 1e9, chunk_volumes=8)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert selected.betas.shape[1] == 200
    # budget (5 % of the matrix) + the kept columns (1 %) + a chunk of 8 raw volumes and its copies (~10 %)
    assert peak < 0.25 * full, f"peak {peak / 1e6:.1f} MB vs all betas {full / 1e6:.1f} MB"
