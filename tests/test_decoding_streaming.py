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
