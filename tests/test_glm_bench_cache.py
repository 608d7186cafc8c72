"""bench_glm's GLMsingle cache: one folder per (generator, seed, V, session arrays), read back as written."""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_glm  # noqa: E402


def _session(scale=1.0):
    rng = np.random.default_rng(0)
    return dict(runs=[scale * rng.standard_normal((5, 20)) for _ in range(2)], tr=1.6, onsets=np.array([1.0, 5.0]),
                durations=np.array([3.0, 3.0]), trial_run=np.array([0, 1]), stimulus=np.array([1, 1]))


def test_cache_folder_follows_the_arrays_not_the_file(tmp_path):
    first, second, other = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    bench_glm.save_session(_session(), first)
    time.sleep(1.1)  # a zip member's time differs between saves; the folder must not
    bench_glm.save_session(_session(), second)
    bench_glm.save_session(_session(2.0), other)
    folder = bench_glm._cache_folder(tmp_path / "cache", "dg-nsd", 0, 5, str(first))
    assert folder == bench_glm._cache_folder(tmp_path / "cache", "dg-nsd", 0, 5, str(second))
    assert folder != bench_glm._cache_folder(tmp_path / "cache", "dg-nsd", 0, 5, str(other))
    assert folder != bench_glm._cache_folder(tmp_path / "cache", "dg-nsd", 1, 5, str(first))
    assert folder.name.startswith("dg-nsd-seed0-v5-")


def test_cache_round_trip(tmp_path):
    betas = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "typed.npy", betas)
    payload = {"betas": {"D": str(tmp_path / "typed.npy")}, "info": {"n_pcs": 3, "stage_s": {"D": 1.5}}}
    folder = tmp_path / "cache" / "x"
    bench_glm._write_cache(folder, payload, 10.0, 400.0, 9.0)
    (tmp_path / "typed.npy").unlink()          # the cache keeps its own copy of the betas
    read, wall, peak, cpu = bench_glm._read_cache(folder)
    assert (wall, peak, cpu) == (10.0, 400.0, 9.0)
    assert read["info"] == payload["info"]
    np.testing.assert_array_equal(np.load(read["betas"]["D"]), betas)


def test_cache_keeps_glmsingle_choices(tmp_path):
    """GLMsingle's per-voxel choices (``extras``: HRF index, noise pool, PCs ...) are copied into the cache, so
    that benchmarks/glm_ablation.py can feed them into ours after the run's temporary folder is gone."""
    np.save(tmp_path / "typed.npy", np.zeros((2, 3), dtype=np.float32))
    np.savez(tmp_path / "extras.npz", typeb_HRFindex=np.array([3, 19, 0]), typed_pcnum=np.array(4))
    payload = {"betas": {"D": str(tmp_path / "typed.npy")}, "info": {}, "extras": str(tmp_path / "extras.npz")}
    folder = tmp_path / "cache" / "x"
    bench_glm._write_cache(folder, payload, 1.0, 1.0, 1.0)
    (tmp_path / "extras.npz").unlink()
    read, *_ = bench_glm._read_cache(folder)
    with np.load(read["extras"]) as extras:
        np.testing.assert_array_equal(extras["typeb_HRFindex"], [3, 19, 0])
        assert int(extras["typed_pcnum"]) == 4
