"""``--stop-after preproc`` on images without brain/background contrast (a phantom's QA run, data already masked
to a constant): the participant mask is empty (QA pass 30).

The run ended with exit 0 and, as its only word, matplotlib's "UserWarning: Attempting to set identical low and
high ylims makes transformation singular; automatically expanding." from the carpet plot of zero voxels. (The
GLM stops on an empty mask with 65: tests/test_qa_empty_brain_mask.py.) Now the grid step says the mask has no
voxel and why, and the carpet plot says "no voxel in the brain mask" instead of warning.
"""

from __future__ import annotations

import warnings

import numpy as np

from bids_m2i.cli.run import run_cli
from bids_m2i.preproc.figures import plot_carpet
from helpers import make_minimal_bids


def test_an_empty_mask_is_said_and_the_carpet_plot_does_not_warn(tmp_path, capfd):
    bids = make_minimal_bids(tmp_path / "bids")  # noise around 1000 everywhere: no brain to find
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--stop-after", "preproc", "--skip-bids-validation"])
    err = capfd.readouterr().err  # the steps run in worker processes: their terminal output is on fd 2
    assert code == 0, err
    assert "The participant's brain mask has no voxel" in err  # was: nothing about it
    assert "identical low and high ylims" not in err


def test_carpet_plot_of_an_empty_mask(tmp_path):
    data = np.random.default_rng(0).normal(1000, 10, (4, 4, 3, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = plot_carpet(data, np.zeros((4, 4, 3), bool), tmp_path / "carpet.svg", tr=2.0,
                           confounds={"FD": np.zeros(20)})
    assert "no voxel in the brain mask" in path.read_text()
