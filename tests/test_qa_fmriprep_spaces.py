"""fMRIPrep outputs in several resolutions or cohorts of one template.

``fmriprep --output-spaces MNI152NLin2009cAsym:res-1 MNI152NLin2009cAsym:res-2`` (or ``MNIPediatricAsym:cohort-1
...:cohort-2``) writes one BOLD per variant. m2i took the first in name order and refused fMRIPrep's own
spelling ``--space MNI152NLin2009cAsym:res-2`` (exit 64), so a user could not choose the 2 mm series; and the
brain mask was matched on the resolution only, not the cohort (another cohort is another grid). Now --space
takes fMRIPrep's ``:res-N`` / ``:cohort-N``, the mask matches the BOLD's space, resolution and cohort, and the
warning about several variants says how to choose. Output names keep the space label alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bids_m2i.bids.fmriprep import find_fmriprep_files, index_fmriprep
from bids_m2i.cli.run import run_cli
from bids_m2i.errors import InputMissingError

RAW = {"subject": "01", "task": "perception", "run": "01"}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "fmriprep"
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "fMRIPrep", "DatasetType": "derivative"}))
    stem = "sub-01_task-perception_run-1"
    for space in ("space-MNI152NLin2009cAsym_res-1", "space-MNI152NLin2009cAsym_res-2",
                  "space-MNIPediatricAsym_cohort-1_res-2", "space-MNIPediatricAsym_cohort-2_res-2"):
        for kind in ("desc-preproc_bold", "desc-brain_mask"):
            (func / f"{stem}_{space}_{kind}.nii.gz").write_bytes(b"")
    (func / f"{stem}_desc-confounds_timeseries.tsv").write_text("framewise_displacement\nn/a\n")
    return root


@pytest.mark.parametrize("space, bold", [
    ("MNI152NLin2009cAsym:res-2", "space-MNI152NLin2009cAsym_res-2_desc-preproc_bold"),
    ("MNI152NLin2009cAsym", "space-MNI152NLin2009cAsym_res-1_desc-preproc_bold"),  # first, with a warning
    ("MNIPediatricAsym:cohort-2", "space-MNIPediatricAsym_cohort-2_res-2_desc-preproc_bold"),
    ("MNIPediatricAsym:cohort-2:res-2", "space-MNIPediatricAsym_cohort-2_res-2_desc-preproc_bold"),
])
def test_space_qualifiers_choose_the_bold_and_its_own_mask(tree, space, bold):
    found = find_fmriprep_files(index_fmriprep([tree]), RAW, space, "sub-01_task-perception_run-01_bold.nii.gz")
    assert bold in found["bold"].name
    assert found["mask"].name == found["bold"].name.replace("desc-preproc_bold", "desc-brain_mask")


def test_the_mask_of_the_chosen_cohort_only(tree):
    """Without the cohort-2 mask, the cohort-2 BOLD has no mask (the cohort-1 mask is another grid)."""
    next(tree.rglob("*cohort-2_res-2_desc-brain_mask.nii.gz")).unlink()
    with pytest.raises(InputMissingError, match="brain mask missing"):
        find_fmriprep_files(index_fmriprep([tree]), RAW, "MNIPediatricAsym:cohort-2", "run")


def test_absent_variant_lists_those_present(tree):
    with pytest.raises(InputMissingError) as info:
        find_fmriprep_files(index_fmriprep([tree]), RAW, "MNI152NLin2009cAsym:res-3", "run")
    assert "MNI152NLin2009cAsym:res-1, MNI152NLin2009cAsym:res-2" in info.value.hint


@pytest.mark.parametrize("space, code", [("MNI152NLin2009cAsym:res-2", 0), ("MNI152NLin2009cAsym:res-x:y", 64),
                                         ("fsaverage:res-2", 64), ("MNI152NLin2009cAsym:den-91k", 64)])
def test_space_option_accepts_fmriprep_spelling(minimal_bids, tmp_path, monkeypatch, space, code):
    """Checked by the command line before anything runs (the workflow is replaced by a marker)."""
    import bids_m2i.bids.inputs as inputs
    import bids_m2i.workflows.base as base

    monkeypatch.setattr(inputs, "attach_fmriprep_inputs", lambda *a, **k: None, raising=False)
    monkeypatch.setattr("bids_m2i.bids.fmriprep.attach_fmriprep_inputs", lambda *a, **k: None)
    monkeypatch.setattr(base, "run_participant_workflows", lambda *a, **k: None)
    (tmp_path / "fmriprep").mkdir()
    args = [str(minimal_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
            "--skip-bids-validation", "--stop-after", "preproc", "--derivatives", str(tmp_path / "fmriprep"),
            "--space", space]
    assert run_cli(args) == code
    if code == 0:
        written = next((tmp_path / "out" / "logs").glob("config-*.toml")).read_text()
        assert f'space = "{space}"' in written  # the resolved config repeats the run exactly
