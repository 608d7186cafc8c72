"""glibc's allocator tuned for the GLM step (``utils/process.malloc_retained``; issue 13, speed of the process).

The thresholds are raised for the step and set back after it, ``malloc_trim`` runs after it, nothing is tuned
where the C library is not glibc or the user tunes malloc in the environment, and the node's outputs are the
same with and without it. About 10 s (two fits of a small session in this process).
"""

import contextlib
import ctypes
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_m2i.utils import process

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


class _FakeMalloc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_thresholds_raised_in_the_block_and_set_back_after(monkeypatch):
    fake = _FakeMalloc()
    monkeypatch.setattr(process, "_glibc_malloc", lambda: (fake.mallopt, fake.malloc_trim))
    with process.malloc_retained():
        inside = list(fake.calls)
    assert inside == [("mallopt", -3, process.STEP_MMAP_THRESHOLD), ("mallopt", -1, process.STEP_TRIM_THRESHOLD)]
    assert fake.calls[2:] == [("mallopt", -3, process.AFTER_MMAP_THRESHOLD),
                              ("mallopt", -1, process.AFTER_TRIM_THRESHOLD), ("malloc_trim", 0)]


def test_set_back_when_the_block_fails(monkeypatch):
    fake = _FakeMalloc()
    monkeypatch.setattr(process, "_glibc_malloc", lambda: (fake.mallopt, fake.malloc_trim))
    with pytest.raises(KeyError):
        with process.malloc_retained():
            raise KeyError("the step's own error goes through")
    assert fake.calls[-1] == ("malloc_trim", 0)
    assert ("mallopt", -3, process.AFTER_MMAP_THRESHOLD) in fake.calls


def test_a_failing_call_never_breaks_the_block(monkeypatch):
    def broken(*args):
        raise OSError("no such function")

    monkeypatch.setattr(process, "_glibc_malloc", lambda: (broken, broken))
    with process.malloc_retained():
        ran = True
    assert ran


@pytest.mark.parametrize("case", ["musl", "no-confstr", "no-ctypes-library", "user-env", "user-tunables"])
def test_no_op_outside_glibc_or_when_the_user_tunes_malloc(monkeypatch, case):
    if case == "musl":
        monkeypatch.setattr(os, "confstr", lambda name: None if name == "CS_GNU_LIBC_VERSION" else "")
    elif case == "no-confstr":
        def no_confstr(name):
            raise ValueError("unrecognized configuration name")
        monkeypatch.setattr(os, "confstr", no_confstr)
    elif case == "no-ctypes-library":
        monkeypatch.setattr(os, "confstr", lambda name: "glibc 2.36")

        def no_library(*args, **kwargs):
            raise OSError("cannot load the C library")
        monkeypatch.setattr(ctypes, "CDLL", no_library)
    elif case == "user-env":
        monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    else:
        monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")
    assert process._glibc_malloc() is None
    with process.malloc_retained():
        pass


def _mapped_blocks(libc) -> int:
    """glibc's count of blocks served by mmap (``mallinfo2().hblks``)."""
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblks


def _is_mapped(libc, size: int) -> bool:
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before = _mapped_blocks(libc)
    pointer = libc.malloc(size)
    try:
        return _mapped_blocks(libc) > before
    finally:
        libc.free(pointer)


def test_real_glibc_keeps_a_large_block_in_the_heap_only_during_the_block():
    if process._glibc_malloc() is None:
        pytest.skip("not glibc, or malloc tuned in the environment")
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc older than 2.33 (no mallinfo2)")
    with process.malloc_retained():
        assert not _is_mapped(libc, 64 * MB)      # below the step's threshold: from the heap
        assert _is_mapped(libc, process.STEP_MMAP_THRESHOLD + MB)
    assert _is_mapped(libc, 64 * MB)              # above the threshold set back: mapped again
    assert not _is_mapped(libc, 16 * MB)


def _run_node(folder: Path, work: Path):
    import json

    from bids_m2i.interfaces.glm import SingleTrialBetas

    import bench_glm

    spec = json.loads((folder / "node.json").read_text())
    work.mkdir()
    node = SingleTrialBetas(
        bold_files=spec["bold"], confounds_files=spec["confounds"], mask=spec["mask"], trials=spec["trials"],
        run_labels=spec["run_labels"], trs=spec["trs"], slice_timings=[None] * len(spec["bold"]),
        method="fithrf-denoise-rr", mem_gb=bench_glm.NODE_MEM_GB, n_threads=1, seed=0)
    return node.run(cwd=str(work)).outputs


def test_node_outputs_identical_with_and_without(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_glm

    from bids_m2i.glm.simulation import simulate_session

    # a small session (3 runs x 120 volumes, 60 trials): the allocator's settings cannot depend on its size
    sim = simulate_session(n_voxels=300, n_runs=3, n_volumes=120, n_stimuli=20, n_repeats=3, seed=0)
    rows = sim.trials[sim.trials["role"] == "trial"]
    labels = [r.run for r in sim.runs]
    session = dict(runs=[r.data for r in sim.runs], tr=sim.runs[0].tr, onsets=rows["onset"].to_numpy(float),
                   durations=rows["duration"].to_numpy(float),
                   trial_run=np.array([labels.index(r) for r in rows["run"]]),
                   stimulus=rows["stimulus"].str[4:].astype(int).to_numpy())
    bench_glm.write_node_inputs(session, tmp_path / "inputs")
    entered = []
    real = process.malloc_retained

    @contextlib.contextmanager
    def spy():
        with real():
            entered.append(True)
            yield

    monkeypatch.setattr(process, "malloc_retained", spy)
    tuned = _run_node(tmp_path / "inputs", tmp_path / "tuned")
    assert entered == [True]                      # the node's step ran inside it
    monkeypatch.setattr(process, "malloc_retained", contextlib.nullcontext)
    plain = _run_node(tmp_path / "inputs", tmp_path / "plain")
    for name in ["statseries"] + sorted(tuned.statmaps):
        a = tuned.statseries if name == "statseries" else tuned.statmaps[name]
        b = plain.statseries if name == "statseries" else plain.statmaps[name]
        np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
    assert Path(tuned.events).read_bytes() == Path(plain.events).read_bytes()
