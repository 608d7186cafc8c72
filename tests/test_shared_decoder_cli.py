"""The shared-subject decoder from the command line: group training, a participant it never saw, mismatches.

Participants 02 and 03 are made from sub-01's betas of the tiny full run (other noise, and sub-03 with fewer
voxels: a smaller brain mask), so the model is trained without sub-01, which is then decoded with it.
"""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_m2i.cli.run import run_cli


def _copy_participant(out, source: str, label: str, seed: int, shrink_mask: bool):
    rng = np.random.default_rng(seed)
    src_dir, dst_dir = out / f"sub-{source}", out / f"sub-{label}"
    for path in sorted((src_dir / "func").glob("*")):
        name = path.name.replace(f"sub-{source}", f"sub-{label}")
        target = dst_dir / "func" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("_statseries.nii.gz"):
            img = nib.load(path)
            data = np.asarray(img.dataobj, dtype=np.float32)
            data = data + 0.3 * data.std() * rng.standard_normal(data.shape).astype(np.float32)
            nib.save(nib.Nifti1Image(data, img.affine, img.header), target)
        elif name.endswith("desc-brain_mask.nii.gz"):
            img = nib.load(path)
            mask = np.asarray(img.dataobj) > 0
            if shrink_mask:
                from scipy import ndimage

                mask = ndimage.binary_erosion(mask)
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), img.affine), target)
        elif name.endswith(("_events.tsv", ".json")):
            shutil.copy(path, target)


@pytest.fixture(scope="module")
def group_model(tiny_full_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    out = root / "out"
    shutil.copytree(tiny_full_run["out"], out)
    _copy_participant(out, "01", "02", 2, shrink_mask=False)
    _copy_participant(out, "01", "03", 3, shrink_mask=True)
    code = run_cli([str(tiny_full_run["bids"]), str(out), "group", "-w", str(root / "work"), "--train-shared-decoder",
                    "--participant-label", "02", "03", "--skip-bids-validation"])
    return {"code": code, "out": out, "root": root, "model": out / "group" / "decoding" /
            "desc-sharedpixels_model.safetensors"}


def test_group_level_trains_a_shared_decoder(group_model):
    assert group_model["code"] == 0
    meta = json.loads(group_model["model"].with_suffix(".json").read_text())
    assert meta["FeatureSpace"] == "pixels" and meta["FeatureDim"] == 32 * 32 * 3
    participants = {p["label"]: p for p in meta["Participants"]}
    assert sorted(participants) == ["02", "03"]
    assert participants["03"]["n_voxels"] < participants["02"]["n_voxels"]  # no common template needed
    assert all(p["n_train"] > 0 for p in participants.values())
    assert not list(group_model["model"].parent.glob("*.tmp*"))  # written atomically


def test_participant_the_model_never_saw(group_model, tiny_full_run, tmp_path):
    out = tmp_path / "out"
    code = run_cli([str(tiny_full_run["bids"]), str(out), "participant", "--participant-label", "01", "-w",
                    str(tiny_full_run["work"]), "--skip-bids-validation", "--nprocs", "2",
                    "--shared-decoder", str(group_model["model"])])
    assert code == 0
    decoding = out / "sub-01" / "decoding"
    model = json.loads((decoding / "sub-01_desc-pixelsshared_model.json").read_text())
    assert model["method"] == "shared"
    assert model["info"]["shared_participants"] == ["02", "03"]
    assert model["info"]["shared_model"] == str(group_model["model"])
    metrics = pd.read_csv(decoding / "sub-01_desc-metrics_table.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert "perception" in set(metrics["condition"])
    assert len(list((out / "sub-01" / "images").glob("*_desc-recon_image.png"))) > 0
    report = (out / "sub-01.html").read_text()
    assert "shared-subject decoder" in report and "desc-sharedpixels_model.safetensors" in report


def test_mismatched_feature_spaces_exit_64(group_model, tiny_full_run, tmp_path, capsys):
    args = [str(tiny_full_run["bids"]), str(tmp_path / "out"), "participant", "--participant-label", "01", "-w",
            str(tmp_path / "work"), "--skip-bids-validation"]
    assert run_cli(args + ["--target", "clip", "--shared-decoder", str(group_model["model"])]) == 64
    assert "decodes 'pixels' features but --target is clip" in capsys.readouterr().err
    # a pixels model of another pixel size
    other = tmp_path / "desc-sharedpixels_model.safetensors"
    shutil.copy(group_model["model"], other)
    meta = json.loads(group_model["model"].with_suffix(".json").read_text())
    meta["FeatureInfo"]["pixel_size"] = 16
    other.with_suffix(".json").write_text(json.dumps(meta))
    assert run_cli(args + ["--shared-decoder", str(other)]) == 64
    assert "pixel_size: 16 in the model, 32 here" in capsys.readouterr().err
    assert not (tmp_path / "out" / "sub-01").exists()  # refused before anything ran


def test_group_training_needs_two_participants_with_betas(tiny_full_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(tiny_full_run["out"], out)
    code = run_cli([str(tiny_full_run["bids"]), str(out), "group", "-w", str(tmp_path / "work"),
                    "--train-shared-decoder", "--participant-label", "01", "--skip-bids-validation"])
    assert code == 66
    assert "at least 2 participants" in capsys.readouterr().err


@pytest.mark.slow
def test_pixels_and_clip_shared_decoders(group_model, tiny_full_run, tmp_path):
    """One shared model per target (tiny random-weight CLIP: the numbers mean nothing), both used at once."""
    from bids_m2i.models.tiny import make_tiny_models

    models = tmp_path / "models"
    make_tiny_models(models, seed=0, include_eval=False)
    out = group_model["out"]
    code = run_cli([str(tiny_full_run["bids"]), str(out), "group", "-w", str(tmp_path / "gwork"),
                    "--train-shared-decoder", "--participant-label", "02", "03", "--target", "clip",
                    "--models-dir", str(models), "--skip-bids-validation"])
    assert code == 0
    clip_model = out / "group" / "decoding" / "desc-sharedclip_model.safetensors"
    meta = json.loads(clip_model.with_suffix(".json").read_text())
    assert meta["FeatureSpace"] == "clip" and meta["FeatureDim"] > 0  # the tiny model's embedding size
    from bids_m2i.decoding.reconstruct import find_decoding_clip_dir

    assert meta["FeatureInfo"] == {"clip_model": find_decoding_clip_dir(models).name}
    decoded = tmp_path / "out"
    args = [str(tiny_full_run["bids"]), str(decoded), "participant", "--participant-label", "01", "-w",
            str(tiny_full_run["work"]), "--skip-bids-validation", "--nprocs", "2", "--target", "pixels", "clip",
            "--models-dir", str(models)]
    assert run_cli(args + ["--shared-decoder", str(clip_model)]) == 64  # no shared model for pixels
    assert run_cli(args + ["--shared-decoder", str(group_model["model"]), str(clip_model)]) == 0
    for target in ("pixels", "clip"):
        assert (decoded / "sub-01" / "decoding" / f"sub-01_desc-{target}shared_model.safetensors").exists()


def test_shared_imagery_option_is_recorded_in_the_model(group_model, tiny_full_run, tmp_path):
    """--shared-imagery map (group level) reaches the model file; the default is the ensemble."""
    default = json.loads(group_model["model"].with_suffix(".json").read_text())
    assert default["Settings"]["imagery"] == "ensemble"
    out = tmp_path / "out"
    shutil.copytree(group_model["out"], out)
    shutil.rmtree(out / "group")
    code = run_cli([str(tiny_full_run["bids"]), str(out), "group", "-w", str(tmp_path / "work"),
                    "--train-shared-decoder", "--shared-imagery", "map", "--participant-label", "02", "03",
                    "--skip-bids-validation"])
    assert code == 0
    meta = json.loads((out / "group" / "decoding" / "desc-sharedpixels_model.json").read_text())
    assert meta["Settings"]["imagery"] == "map"
    assert run_cli([str(tiny_full_run["bids"]), str(out), "group", "--shared-imagery", "mean"]) == 64
