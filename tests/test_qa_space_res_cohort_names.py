"""Outputs of fMRIPrep inputs in several resolutions (or cohorts) of one template carry ``res-``/``cohort-``.

Two runs of m2i into one OUTPUT_DIR, ``--space MNI152NLin2009cAsym:res-1`` and ``:res-2``, wrote the same names
(``sub-01_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz``, ``..._stat-effect_desc-lsa_statseries.nii.gz``):
the second overwrote the first, and its betas were read with the other grid's mask. Now the outputs carry the
entities of the BOLD used (BIDS-Derivatives order: space, cohort, res, then stat and desc); without res/cohort
in the input the names are as before (tests/test_fmriprep_inputs.py).
"""

from __future__ import annotations

import shutil

from bids_m2i.bids.derivatives import derivative_path
from bids_m2i.cli.run import run_cli
from bids_m2i.workflows.shared import participant_betas

from test_fmriprep_inputs import make_fmriprep_tree

SPACE = "MNI152NLin2009cAsym"


def test_entity_order_space_cohort_res_stat_desc(tmp_path):
    path = derivative_path(tmp_path, subject="01", task="imagery", space="MNIPediatricAsym", cohort="2", res="2",
                           stat="effect", desc="lsa", suffix="statseries", extension=".nii.gz", datatype="func")
    assert path.name == ("sub-01_task-imagery_space-MNIPediatricAsym_cohort-2_res-2_stat-effect_desc-lsa_"
                         "statseries.nii.gz")


def test_two_resolutions_into_one_output_dir_keep_both(tiny_dataset, tmp_path):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=(SPACE,))
    for res2 in list(tree.rglob("*_res-2_*")):  # the same series also written at "res-1" (same grid: a name test)
        shutil.copy(res2, res2.with_name(res2.name.replace("_res-2_", "_res-1_")))
    out = tmp_path / "out"
    common = ["--derivatives", str(tree), "--skip-bids-validation", "--stop-after", "glm", "--glm", "lsa",
              "--task", "perception", "--nprocs", "2"]
    for res in ("1", "2"):
        assert run_cli([str(tiny_dataset), str(out), "participant", "--space", f"{SPACE}:res-{res}",
                        "-w", str(tmp_path / f"work{res}"), *common]) == 0
    func = out / "sub-01" / "func"
    for res in ("1", "2"):
        assert (func / f"sub-01_space-{SPACE}_res-{res}_desc-brain_mask.nii.gz").exists()
        assert len(list(func.glob(f"*_space-{SPACE}_res-{res}_stat-effect_desc-lsa_statseries.nii.gz"))) == 1
        assert len(list(func.glob(f"*_space-{SPACE}_res-{res}_stat-ncsnr_desc-lsa_statmap.nii.gz"))) == 1
        assert len(list(func.glob(f"*_space-{SPACE}_res-{res}_desc-lsa_events.tsv"))) == 1
    assert not list(func.glob(f"*_space-{SPACE}_desc-*"))  # nothing under the bare space label
    # the group level (shared decoder) finds each resolution's betas with its own mask
    for res in ("1", "2"):
        mask, pairs = participant_betas(out, "01", "lsa", {"space": SPACE, "res": res})
        assert f"_res-{res}_" in mask.name and all(f"_res-{res}_" in s.name for s, _ in pairs)
