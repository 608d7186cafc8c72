"""The whole participant pipeline (preprocessing -> betas -> decoding -> report) on the tiny preset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_m2i.bids.validation import run_validator
from bids_m2i.cli.run import run_cli

DATA_SUFFIXES = (".nii.gz", ".tsv", ".npy", ".png", ".safetensors")


def _digests(root):
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name.endswith(DATA_SUFFIXES)}


def test_full_run_outputs(tiny_full_run):
    assert tiny_full_run["code"] == 0
    out = tiny_full_run["out"]
    func = out / "sub-01" / "func"
    for task in ("perception", "imagery"):
        series = nib.load(func / f"sub-01_task-{task}_stat-effect_desc-fithrfdenoiserr_statseries.nii.gz")
        events = pd.read_csv(func / f"sub-01_task-{task}_desc-fithrfdenoiserr_events.tsv", sep="\t", dtype=str)
        assert series.shape[3] == len(events) > 0  # row i describes volume i
        assert list(events.columns) == ["trial_index", "onset", "duration", "run", "session", "condition", "cue",
                                        "stimulus", "category", "stim_file", "cue_text", "fd_mean", "split"]
        for stat in ("ncsnr", "r2", "hrfindex", "pcs", "fracridge"):
            assert (func / f"sub-01_task-{task}_stat-{stat}_desc-fithrfdenoiserr_statmap.nii.gz").exists()
        meta = json.loads((func / f"sub-01_task-{task}_stat-effect_desc-fithrfdenoiserr_statseries.json").read_text())
        assert "Sources" in meta
    decoding = out / "sub-01" / "decoding"
    table = pd.read_csv(decoding / "sub-01_desc-predictions_table.tsv", sep="\t", dtype=str)
    features = np.load(decoding / "sub-01_desc-predictions_features.npy")
    assert len(table) == features.shape[0] > 0
    assert set(table["condition"]) == {"perception", "imagery"}
    assert {"image", "top1", "top5", "trial_index"} <= set(table.columns)
    for image in table["image"]:
        assert (out / image).exists() and (out / image).with_suffix(".json").exists()
    metrics = pd.read_csv(decoding / "sub-01_desc-metrics_table.tsv", sep="\t", dtype=str)
    assert list(metrics.columns) == ["condition", "cue", "metric", "feature_space", "value", "chance", "p_value",
                                     "n_items", "n_candidates", "note"]
    assert {"pixcorr", "ssim", "twoway"} <= set(metrics["metric"])
    assert (decoding / "sub-01_desc-pixelsridge_model.safetensors").exists()
    page = (out / "sub-01.html").read_text()
    # vision and imagery side by side, before the long table; the methods give the decoders' chosen values
    assert page.index('id="conditions-table"') < page.index('id="metrics-table"')
    # the headline measure at the top of the page, one row per feature space with a two-way score
    headline = page[page.index('id="headline-table"'):page.index('id="runs-table"')]
    assert headline.count("<tr>") == 1 + metrics.loc[metrics["metric"] == "twoway", "feature_space"].nunique()
    assert "Perception (seen images)" in page and "Imagery from memory" in page
    assert "Voxels were ranked by their ncsnr" in page or "no repeated training stimulus" in page
    assert (out / "logs" / "CITATION.md").read_text().count("Prince") >= 1
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_full_run_validates(tiny_full_run):
    report = run_validator(tiny_full_run["out"])
    assert report.n_errors == 0, report.summary()


def test_full_rerun_reuses_and_is_identical(tiny_full_run):
    out = tiny_full_run["out"]
    before = _digests(out)
    code = run_cli([str(tiny_full_run["bids"]), str(out), "participant", "-w", str(tiny_full_run["work"]),
                    "--nprocs", "2", "--omp-nthreads", "1"])
    assert code == 0
    assert _digests(out) == before


@pytest.mark.parametrize("targets", [["clip"], ["pixels", "clip"], ["pixels", "clip", "clip-text"]],
                         ids=["unclip", "unclip-lowlevel", "unclip-text-best-of-4"])
def test_tiny_models_clip_unclip(tiny_dataset, tiny_full_run, tmp_path, targets):
    """The clip + unclip path runs from the command line with tiny random weights, and says so everywhere."""
    from bids_m2i.models.tiny import make_tiny_models

    models = tmp_path / "models"
    make_tiny_models(models, seed=0, include_eval=False)
    out = tmp_path / "out"
    code = run_cli([str(tiny_dataset), str(out), "participant", "-w", str(tiny_full_run["work"]), "--nprocs", "2",
                    "--target", *targets, "--generator", "unclip", "--models-dir", str(models),
                    "--skip-bids-validation", *(["--candidates", "4"] if "clip-text" in targets else [])])
    assert code == 0
    images = sorted((out / "sub-01" / "images").glob("*_image.json"))
    assert images
    for sidecar in images:
        meta = json.loads(sidecar.read_text())
        assert meta["ModelsTiny"] is True and "noise" in meta["Warning"]
        assert meta["GeneratorStart"] == ("low-level reconstruction" if "pixels" in targets else "noise")
        assert {"Prompt", "CandidateIndex", "CandidateSeed", "Candidates"} <= set(meta)
        if "clip-text" in targets:
            # the retrieved caption is the prompt; the best of 4 candidates is kept, all 4 stay in the work dir
            assert meta["Prompt"] and meta["TextWeight"] == 0.5 and meta["Candidates"] == 4
            assert meta["CandidateSeeds"][meta["CandidateIndex"]] == meta["CandidateSeed"]
            assert meta["CandidateIndex"] == int(np.argmax(meta["CandidateSimilarities"]))
            assert all(Path(f).is_file() for f in meta["CandidateFiles"])
    if "clip-text" in targets:
        table = pd.read_csv(out / "sub-01" / "decoding" / "sub-01_desc-predictions_table.tsv", sep="\t", dtype=str)
        assert (table["caption"] != "n/a").all()
        assert (out / "sub-01" / "decoding" / "sub-01_desc-cliptextridge_model.safetensors").exists()
    metrics = pd.read_csv(out / "sub-01" / "decoding" / "sub-01_desc-metrics_table.tsv", sep="\t", dtype=str)
    assert metrics["note"].str.contains("tiny").all()
    assert "tiny random-weight" in (out / "sub-01.html").read_text()
    assert (out / "sub-01" / "decoding" / "sub-01_desc-clipridge_model.safetensors").exists()


def test_report_can_leave_stimulus_images_out(tiny_full_run, tmp_path):
    """--no-report-stimuli: the report shows reconstructions but no stimulus image (licences)."""
    import shutil

    from bids_m2i.config import build_config
    from bids_m2i.reports.participant import build_participant_report

    out = tmp_path / "out"
    shutil.copytree(tiny_full_run["out"], out)
    pages = {}
    for show in (True, False):
        config = build_config(tiny_full_run["bids"], out, "participant", {"report_stimuli": show}, {"report_stimuli"})
        page = build_participant_report(output_dir=out, bids_dir=tiny_full_run["bids"], subject="01", config=config,
                                        run_summaries=[], trials=None, work_dir=tmp_path / "work",
                                        stages=["preprocessing", "single-trial betas", "decoding"]).read_text()
        pages[show] = page
    assert "stimulus hidden (--no-report-stimuli)" in pages[False]
    assert "stimulus hidden" not in pages[True]
    assert pages[True].count('alt="stimulus ') > pages[False].count('alt="stimulus ') == 0


def test_plugin_and_plugin_args_reach_nipype(tiny_full_run, monkeypatch, tmp_path):
    """--plugin/--plugin-args are what nipype's Workflow.run receives (n_procs capped by --nprocs)."""
    import os

    from nipype.pipeline.engine import Workflow

    # SLURM's sbatch, which m2i looks for on PATH at start-up (a stand-in: Workflow.run is faked, nothing is submitted)
    (tmp_path / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")

    seen = {}

    def fake_run(self, plugin=None, plugin_args=None, updatehash=False):
        seen["plugin"], seen["args"] = plugin, dict(plugin_args or {})

    monkeypatch.setattr(Workflow, "run", fake_run)
    out = tiny_full_run["out"].parent / "plugin_out"
    code = run_cli([str(tiny_full_run["bids"]), str(out), "participant", "-w", str(tiny_full_run["work"]),
                    "--skip-bids-validation", "--plugin", "MultiProc", "--nprocs", "2",
                    "--plugin-args", '{"n_procs": 8, "maxtasksperchild": 1}'])
    assert code == 0
    from nipype.pipeline.plugins.multiproc import MultiProcPlugin

    # MultiProc is given as nipype's plugin object (its heap frozen for the collector: workflows.base)
    assert seen["plugin"] == "MultiProc" or isinstance(seen["plugin"], MultiProcPlugin)
    assert seen["args"]["maxtasksperchild"] == 1
    assert seen["args"]["n_procs"] == 2  # never more than --nprocs
    code = run_cli([str(tiny_full_run["bids"]), str(out), "participant", "-w", str(tiny_full_run["work"]),
                    "--skip-bids-validation", "--plugin", "SLURM", "--plugin-args", '{"sbatch_args": "-p short"}'])
    assert code == 0
    assert seen["plugin"] == "SLURM" and seen["args"] == {"sbatch_args": "-p short"}


def test_decoder_options_from_the_command_line(tiny_full_run, tmp_path):
    """--decoder mlp, --roi-mask, --top-k-voxels, --finetune-imagery and --no-average-repeats all reach the
    decoder and change what is written."""
    import nibabel as nib

    out = tmp_path / "out"
    mask_img = nib.load(tiny_full_run["out"] / "sub-01" / "func" / "sub-01_desc-brain_mask.nii.gz")
    roi = np.asarray(mask_img.dataobj) > 0
    roi[: roi.shape[0] // 2] = False  # one hemifield's worth of voxels
    roi_path = tmp_path / "roi.nii.gz"
    nib.save(nib.Nifti1Image(roi.astype(np.uint8), mask_img.affine), roi_path)
    code = run_cli([str(tiny_full_run["bids"]), str(out), "participant", "-w", str(tiny_full_run["work"]),
                    "--skip-bids-validation", "--nprocs", "2", "--decoder", "mlp", "--roi-mask", str(roi_path),
                    "--top-k-voxels", "40", "--finetune-imagery", "--no-average-repeats"])
    assert code == 0
    model = json.loads((out / "sub-01" / "decoding" / "sub-01_desc-pixelsmlp_model.json").read_text())
    assert model["method"] == "mlp" and model["top_k"] == 40
    # the ROI restricts the voxels; the tiny preset repeats no training stimulus, so ncsnr cannot rank them
    # and every ROI voxel is kept (with a warning): the engine's tests check the ranking itself
    assert 0 < model["info"]["n_voxels"] <= roi.sum() < (np.asarray(mask_img.dataobj) > 0).sum()
    assert "fine_tune" in model["info"]
    table = pd.read_csv(out / "sub-01" / "decoding" / "sub-01_desc-predictions_table.tsv", sep="\t", dtype=str)
    assert (table["n_repeats"] == "1").all()  # one row per trial, not per stimulus
    averaged = pd.read_csv(tiny_full_run["out"] / "sub-01" / "decoding" / "sub-01_desc-predictions_table.tsv",
                           sep="\t", dtype=str)
    assert len(table) > len(averaged)
