"""A DataLad / git-annex dataset whose content was not fetched (``datalad clone`` without ``datalad get``).

Its files are symbolic links into ``.git/annex/objects`` that lead nowhere. Users saw: exit 65 "Cannot read
the BOLD file ... re-export or re-download it", "Cannot index the BIDS dataset" for a sidecar, "not in
stimuli/" for an image that is there as a link, and exit 16 from the validator when only the participant they
asked for had been fetched. Now: exit 66 naming the files and the `datalad get` command, and a validator that
cannot read unfetched files of other participants no longer stops the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids

ANNEX = "../../.git/annex/objects/Xk/3Q/SHA256E-s1234--0123abcd.nii.gz/SHA256E-s1234--0123abcd.nii.gz"


def _unfetch(path: Path, target: str = ANNEX) -> None:
    path.unlink()
    os.symlink(target, path)


@pytest.fixture
def dataset(tmp_path):
    return make_minimal_bids(tmp_path / "bids", subjects=("01", "02"))


def _run(dataset, tmp_path, *extra):
    return run_cli([str(dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--stop-after", "preproc", *extra])


@pytest.mark.parametrize("which", ["bold", "events"])
def test_unfetched_run_files_are_66_with_the_datalad_command(dataset, tmp_path, capsys, which):
    stem = dataset / "sub-01" / "func" / "sub-01_task-perception_run-01"
    _unfetch(Path(f"{stem}_bold.nii.gz" if which == "bold" else f"{stem}_events.tsv"))
    extra = ["--skip-bids-validation"] + (["--stop-after", "glm"] if which == "events" else [])
    assert _run(dataset, tmp_path, *extra) == 66
    err = capsys.readouterr().err
    assert "symbolic links to content that is not here" in err and "datalad get sub-01/func/" in err
    assert "Traceback" not in err


def test_unfetched_sidecar_and_description_are_66(dataset, tmp_path, capsys):
    _unfetch(dataset / "task-perception_bold.json", ".git/annex/objects/a/b/SHA256E-s9--ff.json/SHA256E-s9--ff.json")
    assert _run(dataset, tmp_path, "--skip-bids-validation") == 66
    assert "datalad get task-perception_bold.json" in capsys.readouterr().err
    _unfetch(dataset / "dataset_description.json", ".git/annex/objects/a/b/SHA256E-s9--fe.json/SHA256E-s9--fe.json")
    assert _run(dataset, tmp_path, "--skip-bids-validation") == 66
    assert "datalad get dataset_description.json" in capsys.readouterr().err


def test_a_dangling_link_elsewhere_is_named_as_such(dataset, tmp_path, capsys):
    _unfetch(dataset / "sub-01" / "func" / "sub-01_task-perception_run-01_bold.nii.gz", "/nonexistent/bold.nii.gz")
    assert _run(dataset, tmp_path, "--skip-bids-validation") == 66
    assert "points to /nonexistent/bold.nii.gz" in capsys.readouterr().err


def test_unfetched_stimulus_image_is_named_as_unfetched(tmp_path):
    from bids_m2i.bids.stimuli import check_decoding_stimuli
    from bids_m2i.errors import InputMissingError

    stimuli = tmp_path / "bids" / "stimuli"
    stimuli.mkdir(parents=True)
    os.symlink("../.git/annex/objects/a/b/SHA256E-s9--aa.png/SHA256E-s9--aa.png", stimuli / "img-01.png")
    from PIL import Image

    for i in range(2, 7):  # a design decoding can train on (one stimulus alone is refused first, 65, since qa35)
        Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(stimuli / f"img-0{i}.png")
    names = [f"img-0{i}" for i in range(1, 7)]
    trials = pd.DataFrame({"role": "trial", "condition": "perception", "cue": "none", "stimulus": names,
                           "stim_file": [f"{n}.png" for n in names], "task": "a", "session": "n/a", "run": "01",
                           "split": "train"})
    with pytest.raises(InputMissingError, match="symbolic links to content that is not here") as info:
        check_decoding_stimuli(trials, stimuli)
    assert "datalad get stimuli/img-01.png" in info.value.hint


def test_validator_errors_on_unfetched_files_of_other_participants_do_not_stop_the_run(dataset, tmp_path,
                                                                                        monkeypatch):
    """`datalad get sub-01` then `m2i ... --participant-label 01`: sub-02's links are the validator's only
    errors (NIFTI_HEADER_UNREADABLE); the run goes on (and would stop with 66 had sub-01 been unfetched)."""
    import bids_m2i.workflows.base as base

    started = []
    monkeypatch.setattr(base, "run_participant_workflows", lambda *args, **kwargs: started.append(True))
    _unfetch(dataset / "sub-02" / "func" / "sub-02_task-perception_run-01_bold.nii.gz")
    assert _run(dataset, tmp_path, "--participant-label", "01") == 0
    assert started == [True]
    assert _run(dataset, tmp_path, "--participant-label", "02") == 66
