"""benchmarks/glm_options.py: configurations parsed as engine keyword arguments, fits kept and resumed. ~20 s."""

import json

import pytest

from helpers import import_benchmark

options = import_benchmark("glm_options")


def test_configurations_are_engine_keyword_arguments():
    assert options.parse_config("default") == ("default", {})
    assert options.parse_config("m:hrf_library=medium,hrf_noise_correction=1.0,max_pcs=3") == (
        "m", {"hrf_library": "medium", "hrf_noise_correction": 1.0, "max_pcs": 3})
    with pytest.raises(SystemExit, match="not key=value"):
        options.parse_config("m:hrf_library")
    # a list value keeps its commas (fractions=[...] was split into items before)
    assert options.parse_config("low:fractions=[0.02,0.05,1.0],fraction_pooling=1.0") == (
        "low", {"fractions": [0.02, 0.05, 1.0], "fraction_pooling": 1.0})


def test_sweep_scores_each_configuration_once_and_resumes(tmp_path, capsys):
    argv = ["--voxels", "150", "--generators", "dg-low", "--configs", "few:max_pcs=1", "--results", str(tmp_path)]
    assert options.main(argv) == 0
    first = capsys.readouterr().out
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["dg-low-seed0-v150-default.json", "dg-low-seed0-v150-few.json"]
    record = json.loads((tmp_path / "dg-low-seed0-v150-few.json").read_text())
    assert record["options"] == {"max_pcs": 1} and record["n_pcs"] <= 1
    assert -1 <= record["r_trial"] <= 1 and "| few | 0 |" in first
    assert all(abs(record[k]) < 1 for k in ("carryover_previous", "carryover_next")) and "carry-over" in first
    # a second run reads the kept fits: nothing is fitted again, the same table is printed
    assert options.main(argv) == 0
    second = capsys.readouterr().out
    assert "dg-low seed 0" not in second and second.split("minus the default")[1] == first.split("minus the default")[1]


def test_bench_glm_passes_the_fraction_pooling_to_ours(tmp_path):
    import numpy as np

    bench = import_benchmark("bench_glm")
    path = str(tmp_path / "session.npz")
    bench.save_session(bench.make_session("dg-high", 300, 0, None), path)
    fits = {w: bench.child_ours("fithrf-denoise-rr", path, str(tmp_path / f"w{w}.npy"), 1, fraction_pooling=w)
            for w in (0.0, 1e6)}
    assert fits[0.0]["info"]["median_frac"] != fits[1e6]["info"]["median_frac"] or not np.array_equal(
        np.load(fits[0.0]["betas"][""]), np.load(fits[1e6]["betas"][""]))
