"""Stimulus images kept in subfolders of ``stimuli/`` while the events give bare file names (QA pass 30).

BOLD5000 (ds001499, the real events here) names each image by its bare file name (``stim_file``
``n01930112_19568.JPEG``), and its images are distributed in ``Presented_Stimuli/COCO``, ``.../ImageNet`` and
``.../Scene``. Copied into ``BIDS_DIR/stimuli/`` as distributed, every image was "not in stimuli/": exit 66
asking to move each image to the top of ``stimuli/``, in a dataset that may be read-only. Now a bare name
missing from the top folder is found in a subfolder (at any depth) when exactly one file there has it, and the
trials table gives the path found (``ImageNet/n01930112_19568.JPEG``); a name two subfolders hold is 65 naming
both, since which image the participant saw cannot be told.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bids_m2i.bids.events import events_to_trials
from bids_m2i.bids.stimuli import resolve_stimulus_path
from bids_m2i.cli.run import run_cli
from bids_m2i.errors import BadDataError
from fixture_datasets import make_fixture_copy

FOLDERS = {"imagenet": "ImageNet", "coco": "COCO", "scenes": "Scene"}


def _bold5000_with_stimuli(tmp_path):
    """ds001499's real sub-CSI1 ses-01 (9 runs), its images in BOLD5000's subfolders under stimuli/."""
    bids = make_fixture_copy("ds001499", tmp_path / "ds001499")
    rng = np.random.default_rng(0)
    for events in sorted(bids.rglob("*_events.tsv")):
        table = pd.read_csv(events, sep="\t", dtype=str, keep_default_na=False)
        for name, kind in zip(table["stim_file"].str.strip(), table["ImgType"].str.strip()):
            folder = bids / "stimuli" / FOLDERS[kind.removeprefix("rep_")]
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / name).exists():
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / name, format="PNG")
    return bids


def test_bold5000_images_in_their_subfolders_are_found(tmp_path, capsys, started):
    bids = _bold5000_with_stimuli(tmp_path)
    assert not list((bids / "stimuli").glob("*.JPEG"))  # nothing at the top of stimuli/
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 0, err  # was 66 "... stimulus images that decoding needs are not in .../stimuli"
    assert started
    events = next(bids.rglob("*run-01_events.tsv"))
    trials = events_to_trials(events, task="5000scenes", stimuli_dir=bids / "stimuli")
    assert trials["stim_file"].iloc[0] == "ImageNet/n01930112_19568.JPEG"
    assert set(trials["stim_file"].str.split("/").str[0]) == {"ImageNet", "COCO", "Scene"}


def test_a_name_in_two_subfolders_is_65_naming_both(tmp_path):
    stimuli = tmp_path / "bids" / "stimuli"
    for folder in ("cats", "dogs"):
        (stimuli / folder).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(stimuli / folder / "image1.png")
    with pytest.raises(BadDataError, match="2 of its subfolders") as info:
        resolve_stimulus_path(stimuli, "image1.png", "events.tsv")
    assert "cats/image1.png" in str(info.value) and "dogs/image1.png" in str(info.value)
    # the subfolder given, or a file at the top, settles it
    assert resolve_stimulus_path(stimuli, "dogs/image1.png") == stimuli / "dogs" / "image1.png"
    Image.new("RGB", (4, 4)).save(stimuli / "image1.png")
    assert resolve_stimulus_path(stimuli, "image1.png") == stimuli / "image1.png"
    assert resolve_stimulus_path(stimuli, "absent.png") is None


def test_hidden_folders_are_not_searched(tmp_path):
    stimuli = tmp_path / "bids" / "stimuli"
    (stimuli / ".git" / "annex").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(stimuli / ".git" / "annex" / "image1.png")
    assert resolve_stimulus_path(stimuli, "image1.png") is None


def test_stim_file_written_from_the_dataset_root_as_the_specification_does(tmp_path):
    """``/stimuli/face.png``: the BIDS specification names the folder ``/stimuli`` (from the dataset root), and
    events copying that notation stopped with 65 "points outside BIDS_DIR/stimuli/" (the events were right)."""
    stimuli = tmp_path / "bids" / "stimuli"
    (stimuli / "faces").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(stimuli / "faces" / "face.png")
    assert resolve_stimulus_path(stimuli, "/stimuli/faces/face.png") == stimuli / "faces" / "face.png"
    for outside in ("/etc/passwd", "/stimuli/../../etc/passwd", "/data/stimuli/faces/face.png"):
        with pytest.raises(BadDataError, match="points outside BIDS_DIR/stimuli/"):
            resolve_stimulus_path(stimuli, outside, "events.tsv")
