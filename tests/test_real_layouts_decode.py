"""The whole participant pipeline, decoding included, on the real layouts of ds001246 and ds001506 (real events
and sidecars, synthesized BOLD, and random stimulus images put where the events say they are), one run of a
training, a test and an imagery session each: the category-target imagery with text cues, the session split and
the trials' ``source`` column hold, and the derivatives pass the BIDS validator."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bids_m2i.bids.validation import run_validator, validator_command
from bids_m2i.cli.run import run_cli
from fixture_datasets import make_fixture_copy

pytestmark = pytest.mark.slow

SESSIONS = {
    "ds001246": ("perceptionTraining01", "perceptionTest01", "imageryTest01"),
    "ds001506": ("perceptionNaturalImageTraining01", "perceptionNaturalImageTest01", "imagery01"),
}


def add_random_stimuli(bids: Path, seed: int = 0) -> int:
    """A random 24x24 JPEG at stimuli/<stimulus_name>.JPEG for every image the events name (none ship)."""
    names = set()
    for events in bids.rglob("*_events.tsv"):
        for row in csv.DictReader(events.read_text().splitlines(), delimiter="\t"):
            if row.get("stimulus_name") not in (None, "", "n/a"):
                names.add(row["stimulus_name"])
    folder = bids / "stimuli"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in sorted(names):
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(folder / f"{name}.JPEG")
    return len(names)


@pytest.mark.parametrize("name", sorted(SESSIONS))
def test_decoding_on_a_real_layout(name, tmp_path):
    bids = make_fixture_copy(name, tmp_path / "bids", sessions=SESSIONS[name])
    assert add_random_stimuli(bids) > 0
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"run": [1]}}))
    out = tmp_path / "out"
    code = run_cli([str(bids), str(out), "participant", "--skip-bids-validation", "--bids-filter-file", str(filters),
                    "-w", str(tmp_path / "work"), "--glm", "lsa", "--nprocs", "2", "--omp-nthreads", "1",
                    "--permutations", "20"])
    assert code == 0
    decoding = out / "sub-01" / "decoding"
    model = json.loads((decoding / "sub-01_desc-pixelsridge_model.json").read_text())
    assert model["Split"]["n_train"] == 50 and model["Split"]["n_test"] == 50  # one run of each session
    assert model["info"]["voxel_selection"]["chosen"] == model["info"]["n_voxels"]  # no repeats: all kept
    table = pd.read_csv(decoding / "sub-01_desc-predictions_table.tsv", sep="\t", dtype=str)
    imagery = table[table["condition"] == "imagery"]
    assert len(imagery) > 0 and set(imagery["cue"]) == {"text"}
    train, test, imag = SESSIONS[name]
    assert all(f"ses-{imag}_task-imagery" in s for s in imagery["source"])
    assert all(f"ses-{test}_task-perception" in s for s in table.loc[table["condition"] == "perception", "source"])
    metrics = pd.read_csv(decoding / "sub-01_desc-metrics_table.tsv", sep="\t", dtype=str)
    assert {"pixcorr", "twoway"} <= set(metrics.loc[metrics["condition"] == "perception", "metric"])
    if validator_command() is not None:
        report = run_validator(out)
        assert report.n_errors == 0, report.summary()
