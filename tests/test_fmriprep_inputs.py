"""--derivatives FMRIPREP_DIR --space T1w: the right files are picked, missing ones give exit 66."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_m2i.bids.fmriprep import build_fmriprep_docker_command, find_fmriprep_files, index_fmriprep
from bids_m2i.cli.run import run_cli


def make_fmriprep_tree(bids: Path, root: Path, spaces=("T1w", "MNI152NLin2009cAsym"), old_confounds=False) -> Path:
    """A derivatives tree named exactly as fMRIPrep names it (run without zero padding, res entity for MNI)."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.4.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.1"}]}))
    for bold in sorted(bids.glob("sub-*/**/func/*_bold.nii.gz")):
        rel = bold.parent.relative_to(bids)
        out_dir = root / rel
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = bold.name.replace("_bold.nii.gz", "")
        stem = stem.replace("_run-0", "_run-")  # fMRIPrep may drop the run's zero padding
        img = nib.load(bold)
        data = np.asarray(img.dataobj, dtype=np.float32)
        mask = (data.mean(axis=3) > np.percentile(data.mean(axis=3), 60)).astype(np.uint8)
        for space in spaces:
            res = "_res-2" if space.startswith("MNI") else ""
            nib.save(nib.Nifti1Image(data, img.affine, img.header),
                     out_dir / f"{stem}_space-{space}{res}_desc-preproc_bold.nii.gz")
            nib.save(nib.Nifti1Image(mask, img.affine), out_dir / f"{stem}_space-{space}{res}_desc-brain_mask.nii.gz")
        n = data.shape[3]
        rng = np.random.default_rng(0)
        table = pd.DataFrame({c: rng.normal(0, 0.01, n) for c in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y",
                                                                  "rot_z", "global_signal", "csf", "white_matter")})
        table["framewise_displacement"] = np.r_[np.nan, np.abs(rng.normal(0.1, 0.05, n - 1))]
        table["non_steady_state_outlier00"] = np.r_[1, np.zeros(n - 1)]
        suffix = "regressors" if old_confounds else "timeseries"
        table.to_csv(out_dir / f"{stem}_desc-confounds_{suffix}.tsv", sep="\t", index=False, na_rep="n/a")
    return root


def test_picks_the_right_files(tiny_dataset, tmp_path):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep")
    index = index_fmriprep([tree])
    bold = sorted(tiny_dataset.glob("sub-01/func/*run-01_bold.nii.gz"))[0]
    from bids_m2i.bids.layout import parse_entities

    found = find_fmriprep_files(index, parse_entities(bold), "T1w", bold.name)
    assert "space-T1w_desc-preproc_bold" in found["bold"].name
    assert "_run-1_" in found["bold"].name
    assert "space-T1w_desc-brain_mask" in found["mask"].name
    assert found["confounds"].name.endswith("_desc-confounds_timeseries.tsv")
    mni = find_fmriprep_files(index, parse_entities(bold), "MNI152NLin2009cAsym", bold.name)
    assert "res-2" in mni["bold"].name and "res-2" in mni["mask"].name


def test_old_confounds_name(tiny_dataset, tmp_path):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", old_confounds=True)
    index = index_fmriprep([tree])
    bold = sorted(tiny_dataset.glob("sub-01/func/*_bold.nii.gz"))[0]
    from bids_m2i.bids.layout import parse_entities

    found = find_fmriprep_files(index, parse_entities(bold), "T1w", bold.name)
    assert found["confounds"].name.endswith("_desc-confounds_regressors.tsv")


def test_missing_space_is_66_listing_present(tiny_dataset, tmp_path, capsys):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("MNI152NLin2009cAsym",))
    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "--derivatives", str(tree),
                    "--space", "T1w", "-w", str(tmp_path / "work"), "--skip-bids-validation",
                    "--stop-after", "glm"])
    assert code == 66
    err = capsys.readouterr().err
    assert "MNI152NLin2009cAsym" in err and "T1w" in err


def test_missing_run_is_66(tiny_dataset, tmp_path, capsys):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep")
    victim = sorted(tree.rglob("*space-T1w_desc-preproc_bold.nii.gz"))[0]
    victim.unlink()
    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "--derivatives", str(tree),
                    "-w", str(tmp_path / "work"), "--skip-bids-validation", "--stop-after", "glm"])
    assert code == 66
    assert "fMRIPrep" in capsys.readouterr().err


def test_not_a_derivatives_folder_is_66(tiny_dataset, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "--derivatives", str(empty),
                    "-w", str(tmp_path / "work"), "--skip-bids-validation", "--stop-after", "glm"])
    assert code == 66


def test_fmriprep_docker_command():
    cmd = build_fmriprep_docker_command(Path("/data"), Path("/fmriprep"), ["01", "02"], work_dir=Path("/work"),
                                        fs_license=Path("/lic.txt"), nprocs=8, mem_gb=16)
    assert cmd[:4] == ["fmriprep-docker", "/data", "/fmriprep", "participant"]
    assert cmd[cmd.index("--participant-label") + 1:cmd.index("--participant-label") + 3] == ["01", "02"]
    assert cmd[cmd.index("--output-spaces") + 1] == "T1w"
    assert cmd[cmd.index("--fs-license-file") + 1] == "/lic.txt"
    assert cmd[cmd.index("--mem-mb") + 1] == "16384"


def test_glm_from_fmriprep_tree(tiny_dataset, tmp_path):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep")
    out = tmp_path / "out"
    code = run_cli([str(tiny_dataset), str(out), "participant", "--derivatives", str(tree), "--space", "T1w",
                    "-w", str(tmp_path / "work"), "--stop-after", "glm", "--glm", "lsa", "--nprocs", "2"])
    assert code == 0
    series = sorted(out.glob("sub-01/func/*_space-T1w_stat-effect_desc-lsa_statseries.nii.gz"))
    assert len(series) == 2  # perception and imagery
    assert not list(out.glob("sub-01/func/*desc-preproc_bold*"))
    assert (out / "sub-01" / "func" / "sub-01_space-T1w_desc-brain_mask.nii.gz").exists()


def test_mni_only_outputs_run_in_the_space_the_error_suggests(tiny_dataset, tmp_path, capsys):
    """MNI-only fMRIPrep outputs: --space T1w names the space present, and that space is then accepted."""
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("MNI152NLin2009cAsym",))
    common = ["--derivatives", str(tree), "-w", str(tmp_path / "work"), "--skip-bids-validation", "--stop-after",
              "glm", "--glm", "lsa", "--nprocs", "2"]
    assert run_cli([str(tiny_dataset), str(tmp_path / "out_t1w"), "participant", "--space", "T1w", *common]) == 66
    err = capsys.readouterr().err
    assert "use --space with one of: MNI152NLin2009cAsym" in err and "docs/fmriprep.md" in err
    out = tmp_path / "out"
    assert run_cli([str(tiny_dataset), str(out), "participant", "--space", "MNI152NLin2009cAsym",
                    "--task", "perception", *common]) == 0
    # the names carry the resolution of fMRIPrep's files (res-2), as fMRIPrep's own names do
    series = sorted(out.glob("sub-01/func/*_space-MNI152NLin2009cAsym_res-2_stat-effect_desc-lsa_statseries.nii.gz"))
    assert len(series) == 1  # the perception task
    assert (out / "sub-01" / "func" / "sub-01_space-MNI152NLin2009cAsym_res-2_desc-brain_mask.nii.gz").exists()


def test_space_needs_derivatives_and_a_label(tiny_dataset, tmp_path, capsys):
    base = [str(tiny_dataset), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
            "--skip-bids-validation"]
    assert run_cli([*base, "--space", "MNI152NLin2009cAsym"]) == 64
    assert "--derivatives" in capsys.readouterr().err
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w",))
    assert run_cli([*base, "--derivatives", str(tree), "--space", "fsaverage"]) == 64  # a surface
    assert "not a volume space label" in capsys.readouterr().err


def test_messages_point_to_docs_that_exist():
    """Every docs page a message of bids/fmriprep.py names exists (one pointed to a missing section)."""
    import re

    import bids_m2i.bids.fmriprep as module

    root = Path(__file__).resolve().parents[1]
    pages = set(re.findall(r"docs/[a-z_-]+\.md", Path(module.__file__).read_text()))
    assert pages == {"docs/fmriprep.md"}
    assert all((root / page).exists() for page in pages)
