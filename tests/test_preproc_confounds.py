"""Confounds (FD, DVARS, std DVARS, global signal), non-steady-state detection and figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bids_m2i.preproc.confounds import compute_confounds, compute_dvars, framewise_displacement
from bids_m2i.preproc.figures import (plot_carpet, plot_framewise_displacement, plot_motion_traces,
                                      plot_std_before_after, temporal_std)
from bids_m2i.preproc.nonsteady import detect_nonsteady_volumes
from bids_m2i.preproc.phantom import make_motion_phantom
from bids_m2i.utils.atomic import write_tsv


def test_framewise_displacement_by_hand():
    params = np.array([[0, 0, 0, 0, 0, 0],
                       [1.0, -0.5, 0.25, 0.01, 0, -0.02],
                       [1.0, -0.5, 0.25, 0.01, 0, -0.02],
                       [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    fd = framewise_displacement(params)
    assert math.isnan(fd[0])
    # |1| + |-0.5| + |0.25| + 50 * (|0.01| + |0| + |-0.02|)
    np.testing.assert_allclose(fd[1:], [1.75 + 50 * 0.03, 0.0, 1.75 + 50 * 0.03])
    np.testing.assert_allclose(framewise_displacement(params, radius=80)[1], 1.75 + 80 * 0.03)


def test_dvars_by_hand():
    # two voxels, four volumes; median of all in-mask values = 100 -> scale by 10
    data = np.zeros((2, 1, 1, 4))
    data[0, 0, 0] = [100, 102, 98, 100]
    data[1, 0, 0] = [50, 52, 54, 150]
    mask = np.ones((2, 1, 1), bool)
    median = np.median(data)
    scaled = data[:, 0, 0] * 1000 / median
    diff = np.diff(scaled, axis=1)
    expected = np.sqrt((diff ** 2).mean(axis=0))
    dvars, std = compute_dvars(data, mask)
    assert math.isnan(dvars[0]) and math.isnan(std[0])
    np.testing.assert_allclose(dvars[1:], expected)
    # standardisation: robust SD (IQR/1.349) and lag-1 autocorrelation per voxel
    sd = (np.percentile(scaled, 75, axis=1) - np.percentile(scaled, 25, axis=1)) / 1.349
    c = scaled - scaled.mean(axis=1, keepdims=True)
    rho = (c[:, 1:] * c[:, :-1]).sum(1) / (c ** 2).sum(1)
    np.testing.assert_allclose(std[1:], expected / (sd * np.sqrt(2 * (1 - rho))).mean())


def test_std_dvars_is_about_one_for_white_noise():
    rng = np.random.default_rng(0)
    data = 1000 + 10 * rng.normal(size=(12, 12, 6, 200))
    _, std = compute_dvars(data, np.ones((12, 12, 6), bool))
    assert abs(np.nanmean(std) - 1.0) < 0.05


def test_confounds_table_and_sidecar(tmp_path):
    run = make_motion_phantom((24, 24, 12), (8.0, 8.0, 11.0), 6, supersample=1, seed=0)
    mask = run.brain_mask
    table, sidecar = compute_confounds(run.true_params, run.data, mask)
    assert list(table.columns) == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                                   "framewise_displacement", "dvars", "std_dvars", "global_signal"]
    assert table.iloc[0][["framewise_displacement", "dvars", "std_dvars"]].isna().all()
    assert not table.iloc[1:].isna().any().any()
    np.testing.assert_allclose(table["global_signal"], run.data[mask].astype(np.float64).mean(axis=0), rtol=1e-9)
    assert set(sidecar) == set(table.columns)
    assert sidecar["trans_x"]["Units"] == "mm" and sidecar["rot_z"]["Units"] == "rad"
    path = write_tsv(tmp_path / "confounds.tsv", table)
    first = path.read_text().splitlines()[1].split("\t")
    assert first[6:9] == ["n/a", "n/a", "n/a"]
    back = pd.read_csv(path, sep="\t", na_values="n/a")
    np.testing.assert_allclose(back["framewise_displacement"].iloc[1:], table["framewise_displacement"].iloc[1:])


def test_nonsteady_volumes_detected():
    run = make_motion_phantom((24, 24, 12), (8.0, 8.0, 11.0), 30, supersample=1, n_nonsteady=3, seed=1)
    assert detect_nonsteady_volumes(run.data) == [0, 1, 2]
    steady = make_motion_phantom((24, 24, 12), (8.0, 8.0, 11.0), 30, supersample=1, seed=1)
    assert detect_nonsteady_volumes(steady.data, steady.brain_mask) == []
    # a bright volume in the middle is a spike, not a dummy scan
    spiky = steady.data.copy()
    spiky[..., 15] *= 1.5
    assert detect_nonsteady_volumes(spiky) == []


def test_figures_are_deterministic_svg(tmp_path):
    run = make_motion_phantom((24, 24, 12), (8.0, 8.0, 11.0), 12, supersample=1, seed=2)
    fd = framewise_displacement(run.true_params)
    outputs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        files = [
            plot_motion_traces(run.true_params, folder / "motion.svg", tr=2.0),
            plot_framewise_displacement(fd, folder / "fd.svg", threshold=0.3),
            plot_carpet(run.data, run.brain_mask, folder / "carpet.svg", confounds={"FD": fd}),
            plot_std_before_after(temporal_std(run.data), temporal_std(run.data) * 0.5, folder / "std.svg"),
        ]
        outputs.append([f.read_bytes() for f in files])
    for first, second in zip(*outputs):
        assert first == second
        assert first.lstrip().startswith(b"<?xml") and b"<svg" in first
        assert b"<dc:date>" not in first
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temporary files
