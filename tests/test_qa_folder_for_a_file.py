"""A folder given where a decoding option wants a file (``--captions``, ``--roi-mask``, ``--shared-decoder``):
64 "is a folder, not a file", as for ``--config``, ``--events-map`` and ``--bids-filter-file``.

Before: ``--captions DIR`` was 66 "--captions file not found" and ``--shared-decoder DIR`` 66 "shared decoder
not found" (the folder is there: the user checks the spelling), ``--roi-mask DIR`` 65 "cannot be read as a NIfTI
image (Cannot work out file type ...)".
"""

from __future__ import annotations

import pytest

from bids_m2i.cli.run import run_cli
from helpers import make_minimal_bids


@pytest.mark.parametrize("option", [["--captions"], ["--roi-mask"], ["--shared-decoder"]])
def test_a_folder_for_a_file_option_is_64_naming_it(tmp_path, capsys, started, option):
    bids = make_minimal_bids(tmp_path / "bids")
    folder = tmp_path / "downloads"
    folder.mkdir()
    targets = ["--target", "text"] if option == ["--captions"] else []
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", *targets, *option, str(folder)])
    err = capsys.readouterr().err
    assert code == 64, err
    assert f"{folder} is a folder, not a file" in err and "Traceback" not in err and started == []


@pytest.mark.parametrize("targets", [["pixels", "clip"], ["pixels"]])
def test_a_file_for_the_models_folder_is_64_naming_its_folder(tmp_path, capsys, started, targets):
    """``--models-dir models/manifest.json`` (the file that the docs name): 66 "Models folder not found" for a
    path that is there, and with ``--target pixels`` (the metrics' networks) 66 "Cannot read
    .../manifest.json/manifest.json: permission denied". Now 64, saying to give the folder holding it."""
    from bids_m2i.models.tiny import make_tiny_models

    bids = make_minimal_bids(tmp_path / "bids")
    models = tmp_path / "models"
    make_tiny_models(models, include_eval=False)
    manifest = models / "manifest.json"
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--target", *targets, "--models-dir", str(manifest)])
    err = capsys.readouterr().err
    assert code == 64, err
    assert f"{manifest} is a file, not a folder" in err and str(models) in err and started == []


def test_a_file_for_the_derivatives_folder_is_64_naming_its_folder(tmp_path, capsys, started):
    """``--derivatives fmriprep/dataset_description.json``: 66 "--derivatives folder not found" for a path that is
    there. Now 64, saying to give the folder holding it (as for ``--models-dir``)."""
    bids = make_minimal_bids(tmp_path / "bids")
    fmriprep = tmp_path / "fmriprep"
    fmriprep.mkdir()
    description = fmriprep / "dataset_description.json"
    description.write_text('{"Name": "fMRIPrep", "BIDSVersion": "1.8.0", "DatasetType": "derivative"}')
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--derivatives", str(description)])
    err = capsys.readouterr().err
    assert code == 64, err
    assert f"{description} is a file, not a folder" in err and str(fmriprep) in err and started == []
