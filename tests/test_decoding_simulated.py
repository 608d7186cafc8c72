"""Decoding goals on the simulator's ``demo`` preset (slow: simulates a dataset).

Goals (issue 6): held-out perception PixCorr >= 80 % of the oracle decoder's (ridge from TRUE amplitudes,
``bids_m2i.simulate.oracle``), 2-way identification >= 90 %, imagery from memory above chance with a
permutation p < 0.01. Here the decoder reads the true amplitudes plus independent Gaussian noise (standing
in for GLM estimation error), through the full engine: leak-free split, training-only z-scoring,
leave-one-stimulus-out ridge, repeats averaged, pixel features at 32 x 32.
"""

from __future__ import annotations

import numpy as np
import pytest

from bids_m2i.decoding.decoder import BrainDecoder
from bids_m2i.decoding.features import PixelExtractor, stimulus_features
from bids_m2i.decoding.splits import average_repeats, split_trials


def pixcorr(a, b):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def twoway(pred, truth):
    p = pred - pred.mean(1, keepdims=True)
    t = truth - truth.mean(1, keepdims=True)
    corr = (p / np.linalg.norm(p, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    return float(np.mean((np.diag(corr)[:, None] > corr).sum(1) / (len(p) - 1)))


def permutation_p(pred, truth, n_perm=2000, seed=0):
    """p of the 2-way score under random pairing of predictions and targets."""
    rng = np.random.default_rng(seed)
    observed = twoway(pred, truth)
    null = np.array([twoway(pred, truth[rng.permutation(len(truth))]) for _ in range(n_perm)])
    return observed, float((1 + np.sum(null >= observed)) / (1 + n_perm))


def decode_demo(dataset, noise_sd: float = 0.0, seed: int = 0, size: int = 32, work_dir=None) -> dict:
    """Run the engine on the simulator's true amplitudes (+ noise); return the scores per condition."""
    from bids_m2i.simulate.truth import load_truth

    truth = load_truth(dataset, "01")
    design = truth["design"]
    keep = (design["role"] == "trial").to_numpy()
    trials = design[keep].reset_index(drop=True)
    betas = truth["betas"][keep].astype(np.float32)
    rng = np.random.default_rng(seed)
    if noise_sd:
        betas = betas + noise_sd * betas.std(0) * rng.standard_normal(betas.shape).astype(np.float32)
    files = [truth["target_files"][s] for s in trials["stimulus"]]
    feats = stimulus_features(files, PixelExtractor(size), work_dir=work_dir)
    split = split_trials(trials, seed=seed)
    stim = trials["stimulus"].to_numpy()
    decoder = BrainDecoder("ridge", device="cpu").fit(betas[split.train], feats[split.train], labels=stim[split.train])
    out = {"alpha_median": decoder.info["alpha_median"], "split": split.summary()}
    cue = trials["cue"].to_numpy()
    parts = {"perception": split.test, "imagery_memory": split.imagery[cue[split.imagery] == "image"],
             "imagery_text": split.imagery[cue[split.imagery] == "text"]}
    for name, rows in parts.items():
        if len(rows) == 0:
            continue
        averaged, labels, groups = average_repeats(betas[rows], stim[rows])
        pred = decoder.predict(averaged)
        target = feats[[rows[g[0]] for g in groups]]
        score, p = permutation_p(pred, target, n_perm=500)
        out[name] = {"pixcorr": float(np.mean(pixcorr(pred, target))), "twoway": score, "p": p,
                     "n_items": len(labels)}
    return out


@pytest.mark.slow
def test_demo_goals(tmp_path):
    from bids_m2i.simulate.dataset import simulate_dataset
    from bids_m2i.simulate.oracle import oracle_scores

    dataset = simulate_dataset(tmp_path / "demo", preset="demo", seed=0)
    oracle = oracle_scores(dataset, "01", image_size=32)
    ours = decode_demo(dataset, noise_sd=0.5, work_dir=tmp_path / "work")
    assert ours["perception"]["pixcorr"] >= 0.8 * oracle["perception"]["pixcorr"]
    assert ours["perception"]["twoway"] >= 0.9
    assert ours["imagery_memory"]["p"] < 0.01


NO_MOTION = {k: 0.0 for k in ("drift_mm", "drift_deg", "jerk_mm", "jerk_deg", "jerks_per_minute", "run_offset_mm",
                              "run_offset_deg", "session_offset_mm", "session_offset_deg")}


def glm_betas_without_preproc(dataset, method: str = "fithrf-denoise-rr"):
    """Single-trial betas of every task with the project's GLM, on the raw BOLD inside the true brain mask.

    Only valid for datasets simulated without head motion (``NO_MOTION``): no preprocessing is applied.
    Returns (trials DataFrame, betas (n_trials, n_voxels)).
    """
    import json
    from pathlib import Path

    import nibabel as nib
    import pandas as pd

    from bids_m2i.glm.design import RunData
    from bids_m2i.glm.estimate import estimate_single_trial_betas
    from bids_m2i.simulate.truth import load_truth

    mask = load_truth(dataset, "01")["brain_mask"]
    func = Path(dataset) / "sub-01" / "func"
    rows, betas = [], []
    for task in ("perception", "imagery"):
        runs, tables = [], []
        for bold in sorted(func.glob(f"sub-01_task-{task}_run-*_bold.nii.gz")):
            run = bold.name.split("_run-")[1].split("_")[0]
            data = np.asarray(nib.load(bold).dataobj, dtype=np.float32)[mask]
            side = json.loads(Path(str(bold).replace(".nii.gz", ".json")).read_text())
            runs.append(RunData(data=data, tr=side["RepetitionTime"], run=run, slice_timing=side.get("SliceTiming")))
            ev = pd.read_csv(str(bold).replace("_bold.nii.gz", "_events.tsv"), sep="\t", dtype=str,
                             keep_default_na=False)
            ev["onset"] = ev["onset"].astype(float)
            ev["duration"] = ev["duration"].astype(float)
            ev["run"], ev["task"], ev["session"], ev["event_type"] = run, task, "n/a", ev["trial_type"]
            ev["role"] = np.where(ev.trial_type.isin(["stimulus", "imagery"]), "trial",
                                  np.where(ev.trial_type.isin(["rest", "fixation"]), "ignore", "nuisance"))
            ev["condition"] = np.where(ev.trial_type == "imagery", "imagery", "perception")
            tables.append(ev[ev.role != "ignore"])
        result = estimate_single_trial_betas(runs, pd.concat(tables, ignore_index=True), method=method,
                                             n_threads=2, seed=0)
        rows.append(result.trial_rows.reset_index(drop=True))
        betas.append(result.betas)
    return pd.concat(rows, ignore_index=True), np.concatenate(betas).astype(np.float32)


def decode_trials(trials, betas, target_files: dict, rescale: bool, size: int = 32, work_dir=None) -> dict:
    """Engine on given betas: split, ridge, repeats averaged, optional rescaling; scores per condition."""
    from bids_m2i.decoding.decoder import rescale_items

    files = [target_files[s] for s in trials["stimulus"]]
    feats = stimulus_features(files, PixelExtractor(size), work_dir=work_dir)
    split = split_trials(trials, seed=0)
    stim = trials["stimulus"].to_numpy()
    cue = trials["cue"].to_numpy()
    decoder = BrainDecoder("ridge", device="cpu").fit(betas[split.train], feats[split.train], labels=stim[split.train])
    out = {}
    for name, rows in {"perception": split.test, "imagery_memory": split.imagery[cue[split.imagery] == "image"],
                       "imagery_text": split.imagery[cue[split.imagery] == "text"]}.items():
        averaged, labels, groups = average_repeats(betas[rows], stim[rows])
        pred = decoder.predict(averaged)
        if rescale:
            pred = rescale_items(pred, decoder.feature_mean, decoder.feature_sd, perception=name == "perception")
        target = feats[[rows[g[0]] for g in groups]]
        score, p = permutation_p(pred, target, n_perm=500)
        out[name] = {"pixcorr": float(np.mean(pixcorr(pred, target))), "twoway": score, "p": p}
    return out


@pytest.mark.slow
def test_demo_goals_on_glm_betas(tmp_path):
    from bids_m2i.simulate.dataset import simulate_dataset
    from bids_m2i.simulate.oracle import oracle_scores
    from bids_m2i.simulate.truth import load_truth

    dataset = simulate_dataset(tmp_path / "demo", preset="demo", seed=0, **NO_MOTION)
    oracle = oracle_scores(dataset, "01", image_size=32)
    trials, betas = glm_betas_without_preproc(dataset)
    targets = load_truth(dataset, "01")["target_files"]
    raw = decode_trials(trials, betas, targets, rescale=False)
    rescaled = decode_trials(trials, betas, targets, rescale=True)
    assert raw["perception"]["pixcorr"] >= 0.8 * oracle["perception"]["pixcorr"]
    assert raw["perception"]["twoway"] >= 0.9
    assert rescaled["imagery_memory"]["p"] < 0.01
