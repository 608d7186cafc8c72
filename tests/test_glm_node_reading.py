"""The GLM node reads several runs at once when it has threads and memory for them (interfaces/images.py
``read_ahead``, interfaces/glm.py ``reading_threads``): the same arrays in the same order, never more runs in
memory than the budget holds."""

import threading

import nibabel as nib
import numpy as np
import pytest

from bids_m2i.interfaces.glm import reading_threads
from bids_m2i.interfaces.images import read_ahead


def test_read_ahead_yields_in_order_and_holds_at_most_threads_plus_one():
    alive, peak, lock = set(), [0], threading.Lock()

    class Result:
        def __init__(self, item):
            self.item = item
            with lock:
                alive.add(item)
                peak[0] = max(peak[0], len(alive))

        def __del__(self):
            with lock:
                alive.discard(self.item)

    def load(item):
        threading.Event().wait(0.002 * (5 - item % 5))     # later items finish first
        return Result(item)

    seen = []
    for result in read_ahead(load, range(12), threads=3):
        seen.append(result.item)
        threading.Event().wait(0.01)                       # the caller's work: the others load meanwhile
        del result
    assert seen == list(range(12))
    assert 2 <= peak[0] <= 4                               # read ahead, within threads + 1


def test_read_ahead_raises_at_the_failing_item_and_starts_no_more():
    started = []

    def load(item):
        started.append(item)
        if item == 1:
            raise ValueError("run 1 is truncated")
        return item

    seen = []
    with pytest.raises(ValueError, match="run 1"):
        for value in read_ahead(load, range(30), threads=2):
            seen.append(value)
    assert seen == [0] and len(started) < 30


def test_read_ahead_with_one_thread_reads_in_turn_on_the_caller():
    names = []
    assert list(read_ahead(lambda i: names.append(threading.current_thread().name) or i, [2, 0, 1], 1)) == [2, 0, 1]
    assert set(names) == {threading.current_thread().name}


def test_reading_threads_follow_the_memory_left(tmp_path):
    paths = []
    for i in range(4):                                     # 4 runs of 20 x 20 x 10 x 50 float32: 0.8 MB each
        path = tmp_path / f"run{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((20, 20, 10, 50), np.float32), np.eye(4)), path)
        paths.append(str(path))
    masked = 1000 * 200 * 4 / 1e9                          # 1,000 voxels x 200 volumes
    assert reading_threads(paths, 1000, 8, room_gb=1.0) == 4          # every run at once (at most n runs)
    assert reading_threads(paths, 1000, 2, room_gb=1.0) == 2
    assert reading_threads(paths, 1000, 1, room_gb=1.0) == 1          # one thread: in turn
    assert reading_threads(paths, 1000, 8, room_gb=masked + 3.5 * 0.0008) == 2   # 2 ahead + 1 masked
    assert reading_threads(paths, 1000, 8, room_gb=masked + 2.5 * 0.0008) == 1   # only 1 ahead: in turn


def test_the_node_gives_the_same_outputs_reading_ahead(tmp_path):
    """Three threads (runs read ahead, HRF groups side by side) against one: the same betas and trial rows."""
    import json
    from types import SimpleNamespace

    import pandas as pd
    import torch
    from helpers import import_benchmark

    from bids_m2i.interfaces import glm as node_module
    from bids_m2i.interfaces.glm import SingleTrialBetas

    tr = import_benchmark("bench_glm_node_memory").write_session(tmp_path, 3_000, n_runs=4, n_volumes=60,
                                                                  n_stimuli=12, seed=2)
    runs = sorted(tmp_path.glob("run-*_bold.nii"))
    used = []
    counting = node_module.reading_threads
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        outputs = {}
        for threads in (1, 3):
            node_module.reading_threads = lambda *a: used.append(counting(*a)) or used[-1]
            node = SingleTrialBetas(
                bold_files=[str(p) for p in runs],
                confounds_files=[str(p).replace("_bold.nii", "_confounds.tsv") for p in runs],
                mask=str(tmp_path / "mask.nii"), trials=str(tmp_path / "trials.tsv"),
                run_labels=[p.name[len("run-"):-len("_bold.nii")] for p in runs], trs=[tr] * len(runs),
                method="fithrf-denoise-rr", mem_gb=8.0, n_threads=threads)
            work = tmp_path / f"node{threads}"
            work.mkdir()
            node._run_interface(SimpleNamespace(cwd=str(work), returncode=0))
            outputs[threads] = (np.asarray(nib.load(work / "statseries.nii.gz").dataobj),
                                pd.read_csv(work / "events.tsv", sep="\t"),
                                json.loads((work / "statseries.json").read_text())["memory"]["n_workers"])
    finally:
        node_module.reading_threads = counting
        torch.set_num_threads(before)
    assert used == [1, 3]                                  # in turn, then three runs at once
    assert outputs[3][2] == 3 and outputs[1][2] == 1
    np.testing.assert_array_equal(outputs[1][0], outputs[3][0])
    pd.testing.assert_frame_equal(outputs[1][1], outputs[3][1])
