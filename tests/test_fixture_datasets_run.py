"""The app on a real dataset's layout (ds001246, Generic Object Decoding) with synthesized BOLD and no stimulus
images: betas are estimated, and decoding stops with exit 66 naming the first missing image."""

from __future__ import annotations

import json

import nibabel as nib
import pandas as pd
import pytest

from bids_m2i.cli.run import run_cli
from fixture_datasets import make_fixture_copy


@pytest.fixture(scope="module")
def ds001246(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds001246")
    bids = make_fixture_copy("ds001246", root / "bids", sessions=["perceptionTraining01", "imageryTest01"])
    filters = root / "filters.json"
    filters.write_text(json.dumps({"bold": {"run": [1, 2]}}))
    return bids, filters, root


def test_stop_after_glm_completes(ds001246):
    bids, filters, root = ds001246
    out = root / "out_glm"
    code = run_cli([str(bids), str(out), "participant", "--skip-bids-validation", "--bids-filter-file", str(filters),
                    "-w", str(root / "work"), "--stop-after", "glm", "--glm", "lsa", "--nprocs", "2"])
    assert code == 0
    func = out / "sub-01"
    perception = sorted(func.glob("ses-perceptionTraining01/func/*_stat-effect_desc-lsa_statseries.nii.gz"))
    imagery = sorted(func.glob("ses-imageryTest01/func/*_stat-effect_desc-lsa_statseries.nii.gz"))
    assert len(perception) == 1 and len(imagery) == 1
    assert nib.load(perception[0]).shape[3] == 2 * 50  # 50 stimulus trials per run; one-back repeats are nuisance
    assert nib.load(imagery[0]).shape[3] == 2 * 25  # 25 imagery trials per run; cues and evaluations are nuisance
    events = pd.read_csv(str(imagery[0]).replace("_stat-effect", "").replace("_statseries.nii.gz", "_events.tsv"),
                         sep="\t", dtype=str)
    assert set(events["condition"]) == {"imagery"} and set(events["cue"]) == {"text"}
    assert (out / "sub-01.html").exists()


def test_pixels_target_without_images_is_66(ds001246, capsys):
    bids, filters, root = ds001246
    code = run_cli([str(bids), str(root / "out_decode"), "participant", "--skip-bids-validation",
                    "--bids-filter-file", str(filters), "-w", str(root / "work"), "--glm", "lsa", "--nprocs", "2",
                    "--target", "pixels"])
    assert code == 66
    err = capsys.readouterr().err
    assert "stimulus image" in err.lower() and "n02766534_15976.JPEG" in err and "--stop-after glm" in err
    assert "Traceback" not in err
