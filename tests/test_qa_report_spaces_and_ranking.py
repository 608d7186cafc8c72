"""The participant page: one per space, and the voxel-ranking rule of a shared decoder.

* Two runs into one OUTPUT_DIR with fMRIPrep inputs (``--space T1w``, then ``--space MNI152NLin2009cAsym``) kept
  their own betas, decoders and metrics, but wrote one ``sub-01.html``: the page described only the last run.
  Now the page's name carries the space entities as every other output does (``sub-01_space-T1w.html``,
  ``sub-01_space-MNI152NLin2009cAsym_res-2.html``; ``sub-01.html`` for m2i's own preprocessing), each links the
  others, and its methods text counts the trials of its own space only.
* A shared decoder's participant model records which rule ranked the voxels (``info.voxel_ranking``: "shared
  stimuli", "ncsnr" or "none"); the page, where it says the shared decoder was used, did not say which.
"""

from __future__ import annotations

import json
from pathlib import Path

from bids_m2i.config import build_config
from bids_m2i.reports.methods import methods_paragraphs
from bids_m2i.reports.participant import build_participant_report, report_path

MNI = "MNI152NLin2009cAsym"


def _dirs(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    fmriprep = tmp_path / "fmriprep"
    fmriprep.mkdir()
    return bids, fmriprep, tmp_path / "out"


def _config(bids, out, fmriprep, space, **extra):
    values = {"derivatives": [fmriprep], "space": space, "glm": "lsa", **extra}
    return build_config(bids, out, "participant", values, set(values))


def test_one_page_per_space(tmp_path):
    bids, fmriprep, out = _dirs(tmp_path)
    func = out / "sub-01" / "func"
    func.mkdir(parents=True)
    for entities, n in (("space-T1w", 7), (f"space-{MNI}_res-2", 5)):
        (func / f"sub-01_task-a_{entities}_stat-effect_desc-lsa_statseries.json").write_text(
            json.dumps({"method": "lsa", "n_trials": n}))
    pages = {}
    for space in ("T1w", f"{MNI}:res-2"):
        config = _config(bids, out, fmriprep, space)
        pages[space] = build_participant_report(output_dir=out, bids_dir=bids, subject="01", config=config,
                                                run_summaries=[], trials=None, work_dir=tmp_path / "work",
                                                stages=["fMRIPrep inputs", "single-trial betas"])
    assert pages["T1w"] == out / "sub-01_space-T1w.html"
    assert pages[f"{MNI}:res-2"] == out / f"sub-01_space-{MNI}_res-2.html"
    assert not (out / "sub-01.html").exists()
    t1w, mni = (pages[s].read_text() for s in ("T1w", f"{MNI}:res-2"))
    assert "sub-01_task-a_space-T1w" in t1w and MNI + "_res-2_stat" not in t1w
    assert f"sub-01_task-a_space-{MNI}_res-2" in mni and "space-T1w_stat" not in mni
    assert "In all, 7 trials in 1 task/session model(s)" in t1w  # its own space's sidecar only (was 12 in 2)
    assert "In all, 5 trials" in mni
    assert 'href="sub-01_space-T1w.html"' in mni  # a page links the pages of the other spaces in the folder


def test_the_participant_grid_keeps_its_name(tmp_path):
    assert report_path(tmp_path, "01", {}) == tmp_path / "sub-01.html"
    assert report_path(tmp_path, "01", {"space": MNI, "cohort": "1", "res": "2"}).name == \
        f"sub-01_space-{MNI}_cohort-1_res-2.html"


def _shared_model(out: Path, desc: str, ranking: str, n_voxels: int, entities: str = "") -> None:
    folder = out / "sub-01" / "decoding"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"sub-01{entities}_desc-{desc}_model.json").write_text(json.dumps(
        {"method": "shared", "info": {"voxel_ranking": ranking, "n_voxels": n_voxels}}))


def test_methods_say_how_a_shared_decoder_ranked_the_voxels(tmp_path):
    bids, fmriprep, out = _dirs(tmp_path)
    group_model = tmp_path / "desc-sharedpixels_model.safetensors"
    values = {"shared_decoder": [group_model], "target": ["pixels", "text"]}
    config = build_config(bids, out, "participant", values, set(values))
    _shared_model(out, "pixelsshared", "shared stimuli", 480)
    _shared_model(out, "textshared", "none", 3841)
    text = " ".join(methods_paragraphs(config, stages=["decoding"], output_dir=out, subject="01"))
    assert "shared-subject decoder" in text
    assert "pixels: voxels ranked by how well the group's response to the stimuli it shared" in text
    assert "480 voxels used" in text
    assert "text: every voxel of the mask kept" in text and "3841 voxels used" in text
    # ncsnr, one target, fMRIPrep inputs: the model of this space is read
    values = {"shared_decoder": [group_model], "derivatives": [fmriprep], "space": "T1w"}
    config = build_config(bids, out, "participant", values, set(values))
    _shared_model(out, "pixelsshared", "ncsnr", 650, "_space-T1w")
    text = " ".join(methods_paragraphs(config, stages=["decoding"], output_dir=out, subject="01"))
    assert "voxels ranked by their noise-ceiling SNR (ncsnr) over repeated training stimuli, 650 voxels used" in text


def test_training_trials_check_uses_a_public_identity():
    """``inputs.check_has_training_trials`` imported the private ``decoding.splits._identity``."""
    import inspect

    import pandas as pd

    import bids_m2i.bids.inputs as inputs
    from bids_m2i.decoding.splits import stimulus_identity

    source = inspect.getsource(inputs)
    assert "_identity" not in source.replace("stimulus_identity", "")
    trials = pd.DataFrame({"stimulus": ["a", "n/a", "n/a"], "stim_file": ["a.png", "b.png", "n/a"]})
    assert list(stimulus_identity(trials)) == ["a", "b.png", "n/a"]


def test_group_page_links_the_participant_page_of_its_space(tmp_path):
    """``space-..._group.html`` linked ``../sub-01.html``, the page of another run (or none)."""
    from bids_m2i.cli.run import run_cli

    bids, _, out = _dirs(tmp_path)
    (bids / "sub-01").mkdir()
    folder = out / "sub-01" / "decoding"
    folder.mkdir(parents=True)
    row = "condition\tcue\tmetric\tfeature_space\tvalue\tchance\tp_value\nperception\tnone\tpixcorr\tpixels\t0.2\t0\t0.01\n"
    (folder / f"sub-01_space-{MNI}_res-2_desc-metrics_table.tsv").write_text(row)
    # both pages exist (the group page links only pages that do): the link must pick its space's
    for name in (f"sub-01_space-{MNI}_res-2.html", "sub-01.html"):
        (out / name).write_text("<!DOCTYPE html>")
    (out / "dataset_description.json").write_text(json.dumps({"Name": "m2i", "BIDSVersion": "1.10.0",
                                                              "DatasetType": "derivative"}))
    assert run_cli([str(bids), str(out), "group", "--space", MNI, "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"]) == 0
    page = (out / "group" / f"space-{MNI}_group.html").read_text()
    assert f'href="../sub-01_space-{MNI}_res-2.html"' in page and 'href="../sub-01.html"' not in page


def _own_model(out: Path, desc: str, info: dict) -> None:
    folder = out / "sub-01" / "decoding"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"sub-01_desc-{desc}_model.json").write_text(json.dumps({"method": "ridge", "info": info}))


def test_methods_give_what_the_own_decoders_chose(tmp_path):
    """The voxel count and the perception penalty scale are chosen by cross-validation on the participant's
    data; the methods text (what users paste into papers) named neither, nor the text channel, the prompt or the
    best-of-N selection."""
    bids, _, out = _dirs(tmp_path)
    values = {"target": ["pixels", "text"]}
    config = build_config(bids, out, "participant", values, set(values))
    _own_model(out, "pixelsridge", {
        "voxel_selection": {"chosen": 654, "cv_error": {"654": 0.38, "1308": 0.41, "5232": 0.48}},
        "penalty_scale": {"chosen": 0.5, "rule": "... (joint maximin rule) ...", "cv_twoway": {"1": 0.9}}})
    _own_model(out, "textridge", {"voxel_selection": {"chosen": 5232, "rule": "auto: no training stimulus repeats"},
                                  "penalty_scale": {"chosen": 1.0, "rule": "too few distinct training stimuli"}})
    text = " ".join(methods_paragraphs(config, stages=["decoding"], output_dir=out, subject="01"))
    assert "pixels: 654 of 5,232" in text
    assert "text: all 5,232 (no repeated training stimulus" in text
    assert "pixels: 0.5; imagery items used the unscaled penalties" in text  # text kept its penalties: not listed
    assert "TF-IDF" in text and "Images were generated by the inverse pixel transform." in text

    values = {"target": ["pixels", "clip", "clip-text"], "generator": "unclip", "candidates": 4}
    config = build_config(bids, out, "participant", values, set(values))
    text = " ".join(methods_paragraphs(config, stages=["decoding"], output_dir=out, subject="01"))
    assert "CLIP text embeddings" in text and "TF-IDF" not in text
    assert "prompted with the retrieved caption" in text and "4 candidates per item" in text
    assert "noised to 0.75 of the schedule" in text
