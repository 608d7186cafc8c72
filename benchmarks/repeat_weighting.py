"""Would weighting the repeats of an item by an estimate of each trial's quality help decoding? (issue 14)

The decoder averages the repeats of a test item (3 per held-out perception image, 2 per pure-imagination cue
on the simulator's ``demo``) with equal weights. A repeat acquired during head motion, or one whose betas carry
little of the item, could be down-weighted. This script measures that on a finished participant run, from the
run's own derivatives (statseries, events, brain mask), without rerunning the GLM:

1. the pixel decoder is fitted exactly as the pipeline fits it (``prepare_features`` + ``fit_decoders``);
2. every held-out perception and imagery trial is decoded on its own (the ridge map is linear, so the weighted
   mean of single-trial predictions *is* the prediction of the weighted mean of betas);
3. each trial gets reliability indices computed from data only (:func:`reliability_indices`), and each
   weighting scheme (:data:`SCHEMES`) averages the repeats of every item with its weights;
4. items are rescaled per (condition, cue) group as the pipeline does, and scored against the simulator's
   truth (PixCorr and two-way identification, 32 x 32 px, as ``score_against_truth.py``).

Two weightings that read the truth are printed as upper bounds, never as methods: ``truth_weighted`` (each
repeat weighted by its single-trial correlation with the target, floored at 0.01) and ``truth_best`` (only the
repeat that decodes best). If even those barely move the scores, no data-only weighting can.

    python benchmarks/repeat_weighting.py DATASET RUN_OUTPUT [--subject 01] [--json FILE] [--trim-training 0.05]

``--trim-training F`` also down-weights bad *training* trials, to zero: the fraction ``F`` of training trials that
agree least with the other repeats of their stimulus (:func:`training_keep_mask`) are dropped before the fit.

``RUN_OUTPUT`` is the output folder of ``m2i DATASET RUN_OUTPUT participant --target pixels text``. About a
minute per seed on one core (the decoder fit dominates); run it under ``nice`` on shared machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

#: the weighting schemes: name -> function of one item's reliability rows (a DataFrame with the columns of
#: :func:`reliability_indices`) returning one non-negative weight per repeat
SCHEMES = {
    "equal (pipeline)": lambda rows: np.ones(len(rows)),
    # inverse framewise displacement, floored at 0.05 mm (below that, FD is realignment noise)
    "1 / FD": lambda rows: 1.0 / np.maximum(rows["fd_mean"].to_numpy(float), 0.05),
    # inverse noise variance: a trial's mean squared z-score in the voxels least reliable over training trials
    "1 / noise variance": lambda rows: 1.0 / np.maximum(rows["noise_variance"].to_numpy(float), 1e-6),
    # agreement with the mean of the item's other repeats in the decoder's voxels (symmetric with 2 repeats)
    "agreement": lambda rows: np.maximum(rows["agreement"].to_numpy(float), 0.0) + 1e-3,
    # spread of the single-trial prediction around the training mean (vivid / attended trials decode larger)
    "prediction energy": lambda rows: rows["prediction_energy"].to_numpy(float),
}


def weighted_repeat_mean(predictions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of the rows of ``predictions`` (n_repeats, d); weights are normalised to sum to 1.

    All-zero (or non-finite) weights fall back to the plain mean, so that no item is ever dropped."""
    predictions = np.asarray(predictions, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if len(weights) != len(predictions):
        raise ValueError(f"{len(weights)} weights for {len(predictions)} repeats")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        weights = np.ones(len(predictions))
    return (weights / weights.sum()) @ predictions


def repeat_agreement(z_betas: np.ndarray) -> np.ndarray:
    """Per repeat: Pearson correlation of its (z-scored) betas with the mean of the item's other repeats.

    z_betas : (n_repeats, v). Returns (n_repeats,); NaN when there is a single repeat."""
    z_betas = np.asarray(z_betas, dtype=np.float64)
    n = len(z_betas)
    if n < 2:
        return np.full(n, np.nan)
    total = z_betas.sum(0)
    out = np.empty(n)
    for k in range(n):
        others = (total - z_betas[k]) / (n - 1)
        out[k] = np.corrcoef(z_betas[k], others)[0, 1]
    return out


def training_keep_mask(betas: np.ndarray, labels, fraction: float, n_voxels: int = 2000) -> np.ndarray:
    """Rows of training ``betas`` to keep when the ``fraction`` of trials that agree least with the other
    repeats of their stimulus are dropped (agreement: :func:`repeat_agreement` in the ``n_voxels`` columns of
    highest training ncsnr, betas z-scored over the training rows). Unrepeated trials are always kept."""
    from bids_m2i.decoding.voxels import compute_ncsnr, select_top_k

    betas = np.asarray(betas, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    keep = np.ones(len(betas), dtype=bool)
    if fraction <= 0:
        return keep
    sd = betas.std(0)
    varying = sd > 0
    z = (betas[:, varying] - betas[:, varying].mean(0)) / sd[varying]
    z = z[:, select_top_k(compute_ncsnr(z, labels), min(n_voxels, z.shape[1]))]
    agreement = np.full(len(betas), np.nan)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) >= 2:
            agreement[rows] = repeat_agreement(z[rows])
    valid = np.isfinite(agreement)
    if valid.any():
        keep[valid & (agreement < np.quantile(agreement[valid], fraction))] = False
    return keep


def noise_variance(z_betas: np.ndarray, noise_voxels: np.ndarray) -> np.ndarray:
    """Per trial: mean squared z-score over ``noise_voxels`` (columns that carry no stimulus information, e.g.
    the lower half by training ncsnr). With voxels z-scored on the training trials, a value of 1 is a typical
    trial; motion or scanner artefacts inflate it."""
    z = np.asarray(z_betas, dtype=np.float64)[:, np.asarray(noise_voxels)]
    return np.mean(z * z, axis=1)


def reliability_indices(trials: pd.DataFrame, rows: np.ndarray, z_betas: np.ndarray, decoder_columns: np.ndarray,
                        noise_voxels: np.ndarray, predictions: np.ndarray, feature_mean: np.ndarray) -> pd.DataFrame:
    """The data-only reliability indices of trial ``rows`` (betas ``z_betas``, z-scored on training trials;
    ``predictions``: their single-trial decoded features). Columns: ``row stimulus condition cue fd_mean
    noise_variance agreement prediction_energy``."""
    out = pd.DataFrame({"row": np.asarray(rows, dtype=int),
                        "stimulus": trials.loc[rows, "stimulus"].to_numpy(),
                        "condition": trials.loc[rows, "condition"].to_numpy(),
                        "cue": trials.loc[rows, "cue"].to_numpy()})
    fd = pd.to_numeric(trials.loc[rows, "fd_mean"], errors="coerce") if "fd_mean" in trials else np.nan
    out["fd_mean"] = np.asarray(fd, dtype=float)
    out["noise_variance"] = noise_variance(z_betas, noise_voxels)
    out["agreement"] = np.nan
    for _, index in out.groupby("stimulus").groups.items():
        index = np.asarray(list(index))
        out.loc[index, "agreement"] = repeat_agreement(z_betas[index][:, decoder_columns])
    out["prediction_energy"] = (np.asarray(predictions) - np.asarray(feature_mean)).std(axis=1)
    return out


def score_schemes(indices: pd.DataFrame, predictions: np.ndarray, truth_pixels: np.ndarray, feature_mean,
                  feature_sd, schemes: dict) -> dict:
    """Per scheme and (condition, cue) group: PixCorr and two-way of the rescaled item predictions."""
    from bids_m2i.decoding.decoder import rescale_items
    from bids_m2i.simulate.oracle import pattern_correlations, twoway_identification

    results = {}
    for name, weigh in schemes.items():
        results[name] = {}
        for (condition, cue), group in indices.groupby(["condition", "cue"], sort=False):
            items, targets = [], []
            for _, index in group.groupby("stimulus", sort=False).groups.items():
                index = np.asarray(list(index))
                items.append(weighted_repeat_mean(predictions[index], weigh(indices.loc[index])))
                targets.append(truth_pixels[index[0]])
            rescaled = np.clip(rescale_items(np.stack(items), feature_mean, feature_sd,
                                             perception=condition == "perception"), 0, 1)
            targets = np.stack(targets)
            results[name][f"{condition}/{cue}"] = {
                "pixcorr": float(np.mean(pattern_correlations(rescaled, targets))),
                "twoway": float(twoway_identification(rescaled, targets)), "n_items": len(items)}
    return results


def run(dataset: Path, output: Path, subject: str = "01", trim_training: float = 0.0) -> dict:
    import nibabel as nib

    from bids_m2i.decoding.reconstruct import DecodingOptions, ItemBetas, fit_decoders, prepare_features
    from bids_m2i.decoding.voxels import compute_ncsnr
    from bids_m2i.interfaces.decoding import load_betas
    from bids_m2i.simulate.oracle import pattern_correlations
    from bids_m2i.simulate.truth import load_image, load_truth

    func = output / f"sub-{subject}" / "func"
    mask = np.asarray(nib.load(func / f"sub-{subject}_desc-brain_mask.nii.gz").dataobj) > 0
    series = sorted(func.glob(f"sub-{subject}_task-*_stat-effect_desc-*_statseries.nii.gz"))
    events = [Path(str(s).replace("_stat-effect_", "_").replace("_statseries.nii.gz", "_events.tsv")) for s in series]
    betas, trials = load_betas([str(s) for s in series], [str(e) for e in events], mask)
    with tempfile.TemporaryDirectory() as cache:  # stimulus features, cached during the fit only
        options = DecodingOptions(targets=("pixels",), work_dir=Path(cache))
        prepared = prepare_features(trials, dataset / "stimuli", options)
        split, trials = prepared.split, prepared.trials
        if trim_training > 0:  # the pipeline's decoder, fitted without the least consistent training trials
            from bids_m2i.decoding.components import DECODERS

            keep = training_keep_mask(betas[split.train], prepared.labels_train, trim_training)
            decoder = DECODERS.create("ridge", top_k="auto", device=options.device, n_threads=options.n_threads,
                                      seed=options.seed).fit(betas[split.train][keep],
                                                             prepared.train_targets["pixels"][keep],
                                                             labels=prepared.labels_train[keep])
        else:
            decoder = fit_decoders(betas, prepared, options).decoders["pixels"]
    item_betas = ItemBetas(betas, split, options.standardise_imagery)
    train = betas[split.train]
    mean, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    ncsnr = compute_ncsnr(train, prepared.labels_train)
    noise_voxels = np.argsort(ncsnr, kind="stable")[: len(ncsnr) // 2]
    truth = load_truth(dataset, subject)
    parts = []
    for rows in (split.test, split.imagery):
        b = item_betas(rows)
        predictions = decoder.predict(b)
        pixels = np.stack([load_image(truth["target_files"][s], 32).ravel() for s in trials.loc[rows, "stimulus"]])
        indices = reliability_indices(trials, rows, (b - mean) / sd, decoder.scaler.columns, noise_voxels,
                                      predictions, decoder.feature_mean)
        parts.append((indices, predictions, pixels))
    indices = pd.concat([p[0] for p in parts], ignore_index=True)
    predictions = np.concatenate([p[1] for p in parts])
    pixels = np.concatenate([p[2] for p in parts])
    indices["r_truth"] = pattern_correlations(predictions, pixels)  # for the upper bounds only

    def truth_best(rows):
        weights = np.zeros(len(rows))
        weights[int(np.argmax(rows["r_truth"].to_numpy()))] = 1.0
        return weights

    schemes = {**SCHEMES, "truth_weighted (bound)": lambda rows: np.maximum(rows["r_truth"].to_numpy(), 0.01),
               "truth_best (bound)": truth_best}
    scores = score_schemes(indices, predictions, pixels, decoder.feature_mean, decoder.feature_sd, schemes)
    # within-item association of each index with the single-trial decoding quality (Pearson, item means removed)
    association = {}
    for (condition, cue), group in indices.groupby(["condition", "cue"]):
        if group.groupby("stimulus").size().max() < 2:
            continue
        centred = group[["r_truth", "fd_mean", "noise_variance", "prediction_energy"]].astype(float)
        centred = centred - centred.groupby(group["stimulus"]).transform("mean")
        association[f"{condition}/{cue}"] = {k: float(centred["r_truth"].corr(centred[k]))
                                             for k in ("fd_mean", "noise_variance", "prediction_energy")}
    return {"scores": scores, "within_item_correlation_with_decoding": association,
            "n_voxels": int(len(decoder.scaler.columns)), "trim_training": trim_training}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--subject", default="01")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--trim-training", type=float, default=0.0, metavar="FRACTION",
                        help="drop this fraction of training trials, those that agree least with the other repeats "
                             "of their stimulus, before fitting (default 0: the pipeline's fit)")
    args = parser.parse_args(argv)
    result = run(args.dataset, args.output, args.subject, args.trim_training)
    groups = list(next(iter(result["scores"].values())))
    print("| scheme | " + " | ".join(f"{g} PixCorr / 2-way" for g in groups) + " |")
    print("| --- |" + " --- |" * len(groups))
    for name, by_group in result["scores"].items():
        print(f"| {name} | " + " | ".join(f"{by_group[g]['pixcorr']:.3f} / {by_group[g]['twoway']:.3f}"
                                          for g in groups) + " |")
    for group, values in result["within_item_correlation_with_decoding"].items():
        print(f"{group}: within-item r with single-trial decoding: "
              + ", ".join(f"{k} {v:+.2f}" for k, v in values.items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
