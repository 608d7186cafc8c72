"""Decoding as nodes: features -> fit -> predict -> generate -> evaluate.

The stages passing files (what the workflow's nodes do) compute exactly what one in-process run computes, and
a rerun that changes only the generator or the evaluation reuses the fitted decoders through nipype's cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_m2i.decoding import stage_files
from bids_m2i.decoding.reconstruct import (DecodingOptions, evaluate_items, fit_decoders, generate_reconstructions,
                                           predict_items, prepare_features, reconstruct_participant)

STAGES = ("features", "fit", "predict", "generate", "evaluate")


def _with_memory_imagery(tmp_path):
    """The text-channel dataset plus imagery from memory of 10 training images (2 trials each)."""
    from test_decoding_text import _dataset_with_text

    betas, trials, stim_dir, _ = _dataset_with_text(tmp_path)
    rng = np.random.default_rng(1)
    rows, extra = [], []
    for repeat in range(2):
        for stim in range(10):
            source = np.flatnonzero((trials["stimulus"] == f"im{stim:02d}").to_numpy())[0]
            extra.append(0.7 * betas[source] + rng.standard_normal(betas.shape[1]) * 0.5)
            rows.append({"condition": "imagery", "cue": "image", "stimulus": f"im{stim:02d}",
                         "stim_file": f"im{stim:02d}.png", "cue_text": "n/a", "category": "n/a"})
    trials = pd.concat([trials, pd.DataFrame(rows)], ignore_index=True)
    trials["trial_index"] = [str(i) for i in range(len(trials))]
    return np.vstack([betas, np.asarray(extra, np.float32)]).astype(np.float32), trials, stim_dir


def test_stages_through_files_equal_one_process(tmp_path):
    """Each stage's result saved by ``stage_files`` and loaded by the next stage (as the nodes do) gives the
    same decoded features, captions, images and metrics as the stages run in one process."""
    betas, trials, stim_dir = _with_memory_imagery(tmp_path)
    options = DecodingOptions(targets=("pixels", "text"), finetune_imagery=True, n_perm=20,
                              work_dir=tmp_path / "work")
    direct = reconstruct_participant(betas, trials, stim_dir, options)

    folders = {stage: tmp_path / stage for stage in STAGES}
    for folder in folders.values():
        folder.mkdir()
    # features: the trials table goes through a TSV of strings, as load_betas gives it to the node
    prepared = prepare_features(trials.astype(str), stim_dir, options)
    files = stage_files.save_prepared(folders["features"], prepared)
    betas_file = stage_files.save_betas(folders["features"], betas)
    loaded = lambda: stage_files.load_prepared(files["trials"], files["targets"], files["prepared"])  # noqa: E731
    assert loaded().memory_targets and set(loaded().train_targets) == {"pixels", "text"}
    mapped = stage_files.load_betas_file(betas_file)
    assert isinstance(mapped, np.memmap)  # later nodes read the betas memory-mapped
    # fit
    fitted = fit_decoders(mapped, loaded(), options)
    assert fitted.finetuned and all(d.info.get("fine_tune") for d in fitted.decoders.values())
    fit_files = stage_files.save_fitted(folders["fit"], fitted, loaded())
    reload_fit = lambda: stage_files.load_fitted(fit_files["models"], fit_files["finetuned"],  # noqa: E731
                                                 loaded().targets)
    # predict
    predictions = predict_items(mapped, loaded(), reload_fit(), options)
    pred_files = stage_files.save_predictions(folders["predict"], predictions)
    reload_pred = lambda: stage_files.load_predictions(pred_files["predictions"], pred_files["table"])  # noqa: E731
    # generate
    recon = generate_reconstructions(reload_pred(), loaded(), options)
    gen_files = stage_files.save_reconstructions(folders["generate"], recon,
                                                 reload_pred().features[recon.feature_space])
    # evaluate
    evaluation = evaluate_items(mapped, loaded(), reload_fit(), reload_pred(),
                                stage_files.load_reconstructions(gen_files["images"], gen_files["meta"]), options)

    np.testing.assert_array_equal(np.load(gen_files["features"]), direct.features)
    assert reload_pred().table["caption"].tolist() == direct.predictions["caption"].tolist()
    for image, expected in zip(stage_files.load_reconstructions(gen_files["images"], gen_files["meta"]).images,
                               direct.images):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
    pd.testing.assert_frame_equal(evaluation.metrics, direct.metrics)
    assert evaluation.table["top1"].tolist() == direct.predictions["top1"].tolist()
    pd.testing.assert_frame_equal(evaluation.retrieval, direct.retrieval)
    assert set(direct.metrics["condition"]) == {"perception", "imagery"}
    assert (direct.metrics["cue"] == "image").any()  # imagery from memory went through fine-tuning


def _executed(work: Path, before: dict[str, int]) -> set[str]:
    """Names of the nodes whose nipype result file was rewritten (a node that ran) since ``before``."""
    now = {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}
    return {Path(k).parent.name for k, mtime in now.items() if mtime != before.get(k)}


def _snapshot(work: Path) -> dict[str, int]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}


def test_generator_or_evaluation_change_reuses_the_fitted_decoders(tiny_dataset, tiny_full_run, tmp_path):
    """Another --generator reruns generate and evaluate only, other --permutations evaluate only (an identical
    command runs no node: tests/test_workflow_rerun.py). Counted from nipype's own result files."""
    from bids_m2i.cli.run import run_cli
    from bids_m2i.models.tiny import make_tiny_models

    models = tmp_path / "models"
    make_tiny_models(models, seed=0, include_eval=False)
    out, work = tmp_path / "out", tiny_full_run["work"]

    def run(*options):
        before = _snapshot(work)
        code = run_cli([str(tiny_dataset), str(out), "participant", "-w", str(work), "--nprocs", "2",
                        "--omp-nthreads", "1", "--skip-bids-validation", "--target", "pixels", "clip",
                        "--models-dir", str(models), "--permutations", "20", *options])
        assert code == 0
        return {name for name in _executed(work, before) if name.startswith("decode_")}

    first = run("--generator", "unclip")
    assert first >= {"decode_generate", "decode_evaluate"}
    model = out / "sub-01" / "decoding" / "sub-01_desc-clipridge_model.safetensors"
    fitted_at = model.stat().st_mtime_ns
    assert run("--generator", "pixels") == {"decode_generate", "decode_evaluate"}
    sidecar = json.loads((out / "sub-01" / "images" / "sub-01_trial-0000_desc-recon_image.json").read_text())
    assert sidecar["Generator"] == "pixels"
    assert run("--generator", "pixels", "--permutations", "30") == {"decode_evaluate"}
    assert model.stat().st_mtime_ns == fitted_at  # the published decoder was never rewritten


def test_permutations_option_is_checked(tiny_dataset, tmp_path, capsys):
    from bids_m2i.cli.run import run_cli

    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                    "--permutations", "-1"])
    assert code == 64 and "--permutations" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**64)])
def test_seed_out_of_range_is_a_usage_error(tiny_dataset, tmp_path, capsys, seed):
    """A seed beyond 64 bits failed inside a node (numpy refuses it): a traceback, exit 1. Now one range for the
    command line and the config file, checked before anything runs."""
    from bids_m2i.cli.run import run_cli

    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                    "--seed", seed])
    err = capsys.readouterr().err
    assert code == 64 and "--seed" in err
    assert "not in the range 0<=x<=4294967295" in err
    assert not (tmp_path / "out").exists()


def test_seed_out_of_range_in_a_config_file(tmp_path):
    from bids_m2i.config import read_config_file
    from bids_m2i.errors import UsageError

    path = tmp_path / "m2i.toml"
    path.write_text(f"seed = {2**40}\n")
    with pytest.raises(UsageError) as raised:
        read_config_file(path)
    assert raised.value.exit_code == 64 and "from 0 to 4294967295" in raised.value.message
    path.write_text(f"seed = {2**32 - 1}\n")
    assert read_config_file(path)["seed"] == 2**32 - 1


def test_decoder_registry_names():
    from bids_m2i.decoding.components import DECODERS

    assert {"ridge", "mlp"} <= set(DECODERS.names())
    with pytest.raises(Exception, match="unknown decoder"):
        DECODERS.create("nope")


def test_source_column_names_each_rows_own_statseries(tiny_full_run):
    """Every GLM node writes ``statseries.nii.gz`` in its own folder: the predictions table's ``source`` must
    still name the task's (and session's) own derivative, not the last series' for every row."""
    assert tiny_full_run["code"] == 0
    table = pd.read_csv(tiny_full_run["out"] / "sub-01" / "decoding" / "sub-01_desc-predictions_table.tsv",
                        sep="\t", dtype=str)
    for condition, task in (("perception", "task-perception"), ("imagery", "task-imagery")):
        sources = set(table.loc[table["condition"] == condition, "source"])
        assert sources and all(task in s for s in sources), (condition, sources)


def test_source_names_by_position(tmp_path):
    from bids_m2i.interfaces.decoding import source_names

    events = []
    for i, n in enumerate((2, 3)):
        folder = tmp_path / f"node{i}"
        folder.mkdir()
        path = folder / "events.tsv"  # same basename in each node's folder, as the GLM nodes write them
        pd.DataFrame({"trial_index": range(n)}).to_csv(path, sep="\t", index=False)
        events.append(str(path))
    assert list(source_names(events, ["a_statseries.nii.gz", "b_statseries.nii.gz"])) == [
        "a_statseries.nii.gz"] * 2 + ["b_statseries.nii.gz"] * 3


@pytest.mark.parametrize("n_memory_items", [1, 2])
def test_finetune_with_few_memory_items(tmp_path, caplog, n_memory_items):
    """--finetune-imagery with the memory items in one fold of the split (always so with one item) used to
    fit each fold on zero trials (ZeroDivisionError). Two items are spread over two folds; one item cannot be
    held out from itself: no fine-tuning, with a warning."""
    import logging

    betas, trials, stim_dir = _with_memory_imagery(tmp_path)
    keep = (trials["condition"] != "imagery") | trials["stimulus"].isin([f"im{i:02d}" for i in range(n_memory_items)])
    betas, trials = betas[keep.to_numpy()], trials[keep].reset_index(drop=True)
    trials["trial_index"] = [str(i) for i in range(len(trials))]
    options = DecodingOptions(targets=("pixels",), finetune_imagery=True, n_perm=0, work_dir=tmp_path / "work")
    prepared = prepare_features(trials.astype(str), stim_dir, options)
    with caplog.at_level(logging.WARNING, logger="m2i.decoding"):
        fitted = fit_decoders(betas, prepared, options)
    if n_memory_items == 1:
        assert not fitted.finetuned and "not fine-tuned" in caplog.text
    else:
        assert fitted.decoders["pixels"].info["fine_tune"]["folds"] == 2
        assert np.isfinite(np.stack(list(fitted.finetuned["pixels"].values()))).all()


def test_top_k_zero_keeps_every_voxel_and_default_is_auto(tmp_path):
    """``--top-k-voxels 0`` keeps every voxel (as before the cross-validated count), no option means ``auto``;
    the fit node's default (-1) is the no-option case."""
    from bids_m2i.interfaces.decoding import FitDecoders

    betas, trials, stim_dir = _with_memory_imagery(tmp_path)
    prepared = prepare_features(trials.astype(str), stim_dir, DecodingOptions(targets=("pixels",), n_perm=0,
                                                                              work_dir=tmp_path / "work"))
    chosen = {}
    for top_k in (None, 0, 7):
        options = DecodingOptions(targets=("pixels",), n_perm=0, work_dir=tmp_path / "work", top_k=top_k)
        decoder = fit_decoders(betas, prepared, options).decoders["pixels"]
        chosen[top_k] = (decoder.top_k, decoder.info["n_voxels"])
    assert chosen[None][0] == "auto" and chosen[0] == (None, betas.shape[1]) and chosen[7][0] == 7
    assert FitDecoders().inputs.top_k == -1
