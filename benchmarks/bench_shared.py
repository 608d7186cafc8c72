"""Shared-subject decoder vs own-data ridge for a participant left out of the group, on simulated arrays.

Simulates ``--subjects`` demo participants (same images, own brains and brain sizes), takes the true single-trial
amplitudes plus Gaussian noise of ``--noise`` sd per voxel and ``--noise-voxels`` pure-noise voxels (the rest of
a brain mask), trains the shared model on every participant but the last, and decodes the last one from its
training trials in 6, 2 (runs 04 + 05), 1 and half a run, with its own ridge decoder and with a map on the
shared model. Scores: held-out test images (repeats averaged), imagery from memory (standardised as at the
participant level): PixCorr and 2-way identification on 32 x 32 pixels (the participant level's definitions).

    python benchmarks/bench_shared.py --dataset /tmp/demo6 [--subjects 6 --noise 1.0 --noise-voxels 3000 -k 64]
    # the previous method (per-target penalties of the maps, ridge head, 32 components):
    python benchmarks/bench_shared.py --dataset /tmp/demo6 -k 32 --head ridge --per-target-penalties
    # the pipeline's GLM betas instead (``participant --stop-after glm --glm lsa`` of every participant in OUT):
    python benchmarks/bench_shared.py --dataset /tmp/demo6 --betas OUT
    # plus the shared response model (Chen et al. 2015; tried and not kept, docs/decoding.md):
    python benchmarks/bench_shared.py --dataset /tmp/demo6 --srm 650:20:16 650:50:32
    # plus the participant's map as an inverted encoding model (shared_inversion.py; measured, not the default):
    python benchmarks/bench_shared.py --dataset /tmp/demo6 --betas OUT --inversion
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np


def pixcorr(a, b):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def twoway(pred, truth):
    p = pred - pred.mean(1, keepdims=True)
    t = truth - truth.mean(1, keepdims=True)
    corr = (p / np.linalg.norm(p, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    return float(np.mean((np.diag(corr)[:, None] > corr).sum(1) / (len(p) - 1)))


def load_participant(dataset, label, noise, noise_voxels, rng, work_dir):
    from bids_m2i.decoding.features import PixelExtractor, stimulus_features
    from bids_m2i.simulate.truth import load_truth

    truth = load_truth(dataset, label)
    design = truth["design"]
    keep = (design["role"] == "trial").to_numpy()
    trials = design[keep].reset_index(drop=True)
    betas = truth["betas"][keep].astype(np.float32)
    betas = betas + noise * betas.std(0) * rng.standard_normal(betas.shape).astype(np.float32)
    silent = rng.standard_normal((len(betas), noise_voxels)).astype(np.float32) * betas.std()
    betas = np.concatenate([betas, silent], axis=1)
    files = [truth["target_files"][s] for s in trials["stimulus"]]
    return trials, betas, stimulus_features(files, PixelExtractor(32), work_dir=work_dir)


def load_glm_participant(dataset, out, label, work_dir, glm="lsa"):
    """A participant's GLM betas (every trial; ``participant --stop-after glm`` outputs in ``out``), its trials
    table (columns as in the simulator's design) and the 32 x 32 pixels of each row's image (zeros without)."""
    import nibabel as nib

    from bids_m2i.decoding.features import PixelExtractor, stimulus_features
    from bids_m2i.decoding.reconstruct import NA, resolve_images
    from bids_m2i.interfaces.decoding import load_betas
    from bids_m2i.workflows.shared import participant_betas

    mask_path, pairs = participant_betas(Path(out), label, glm)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    betas, trials = load_betas([str(p) for p, _ in pairs], [str(e) for _, e in pairs], mask)
    trials = trials.reset_index(drop=True)
    for column in ("condition", "cue", "stimulus", "stim_file", "cue_text", "category"):
        if column not in trials:
            trials[column] = NA
        trials[column] = trials[column].astype(str).replace({"": NA, "nan": NA})
    paths = resolve_images(trials, Path(dataset) / "stimuli")
    rows = [i for i, path in enumerate(paths) if path is not None]
    feats = np.zeros((len(trials), 32 * 32 * 3), np.float32)
    feats[rows] = stimulus_features([paths[i] for i in rows], PixelExtractor(32), work_dir=work_dir)
    return trials, betas, feats


def _polar(matrix):
    """The orthonormal matrix nearest ``matrix`` (orthogonal Procrustes)."""
    u, _, vt = np.linalg.svd(matrix, full_matrices=False)
    return u @ vt


def srm_decoder(group, n_voxels: int, n_reduced: int, k: int, iterations: int = 30):
    """The shared response model (Chen et al. 2015, deterministic SRM) as a decoder; tried, not kept.

    Group: each participant's per-stimulus mean of z-scored betas on its ``n_voxels`` voxels of highest
    training ncsnr, reduced to its ``n_reduced`` leading principal components (SRM with more dimensions than
    stimuli fits noise: orthonormal maps can match any S); then S (stimuli x k) and orthonormal maps by
    alternating Procrustes. Each participant's voxels -> its leave-one-participant-out S (a ridge, one
    penalty, grouped CV; its own noise out of its targets); a ridge head (penalty per feature, CV grouped by
    stimulus) from those maps' out-of-fold latents to the standardised features, over the whole group.
    A new participant: a ridge from its voxels to S at its training stimuli (all of them must be among the
    group's), then the group's head. Returns ``fit(betas, features, stimuli) -> predict`` and the inter-subject
    correlation of the aligned responses (each participant vs the mean of the others)."""
    from bids_m2i.decoding.ridge import DEFAULT_ALPHAS, ridge_predict
    from bids_m2i.decoding.shared import HEAD_ALPHAS, head_alphas_by_cv, kfold_ridge, solve_head
    from bids_m2i.decoding.voxels import VoxelScaler

    stimuli = sorted(set.intersection(*[set(g.stimuli) for g in group]))
    index = {s: i for i, s in enumerate(stimuli)}
    reduced = {}
    for g in group:
        keep = np.isin(g.stimuli, stimuli)
        scaler = VoxelScaler.fit(g.betas, g.stimuli, n_voxels)
        z = scaler.transform(g.betas[keep]).astype(np.float64)
        rows = np.array([index[s] for s in g.stimuli[keep]])
        means = np.zeros((len(stimuli), z.shape[1]))
        np.add.at(means, rows, z)
        means /= np.bincount(rows, minlength=len(stimuli))[:, None]
        means -= means.mean(0)
        u, sv, _ = np.linalg.svd(means, full_matrices=False)
        reduced[g.label] = u[:, :n_reduced] * sv[:n_reduced]
    labels = list(reduced)
    u, sv, _ = np.linalg.svd(np.concatenate([reduced[p] for p in labels], 1), full_matrices=False)
    shared = u[:, :k] * sv[:k] / np.sqrt(len(labels))
    for _ in range(iterations):
        maps = {p: _polar(reduced[p].T @ shared) for p in labels}
        shared = np.mean([reduced[p] @ maps[p] for p in labels], 0)
    aligned = {p: reduced[p] @ maps[p] for p in labels}
    others = {p: np.mean([aligned[q] for q in labels if q != p], 0) for p in labels}
    isc = float(np.mean([np.corrcoef(aligned[p].ravel(), others[p].ravel())[0, 1] for p in labels]))
    features = np.concatenate([g.features for g in group]).astype(np.float64)
    mean, scale = features.mean(0), features.std(0)
    scale[scale < 1e-8] = 1.0
    latents, targets, groups = [], [], []
    for g in group:
        keep = np.isin(g.stimuli, stimuli)
        z = VoxelScaler.fit(g.betas[keep], g.stimuli[keep], None).transform(g.betas[keep])
        fit = kfold_ridge(z, others[g.label][[index[s] for s in g.stimuli[keep]]], DEFAULT_ALPHAS,
                          g.stimuli[keep], 5, 0, 1, True)
        latents.append(fit.out_of_fold)
        targets.append((g.features[keep] - mean) / scale)
        groups.append(g.stimuli[keep].astype(str))
    alpha, gram, cross = head_alphas_by_cv(np.concatenate(latents), np.concatenate(targets), HEAD_ALPHAS,
                                           np.concatenate(groups))
    head_coef, head_intercept = solve_head(gram, cross, alpha)

    def fit(betas, feats, stims):
        scaler = VoxelScaler.fit(betas, stims, None)
        own = kfold_ridge(scaler.transform(betas), shared[[index[s] for s in stims]], DEFAULT_ALPHAS, stims, 5, 0,
                          1, True)
        return lambda b: ridge_predict(ridge_predict(scaler.transform(b), own.coef, own.intercept), head_coef,
                                       head_intercept) * scale + mean

    return fit, isc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="made with --subjects N if absent")
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--noise-voxels", type=int, default=3000)
    parser.add_argument("-k", "--components", type=int, default=None, help="default: the engine's")
    parser.add_argument("--head", choices=("projection", "ridge"), default="projection")
    parser.add_argument("--per-target-penalties", action="store_true",
                        help="one ridge penalty per latent target in the maps (the previous method)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--betas", type=Path, default=None,
                        help="use the GLM betas of this output folder (participant --stop-after glm [--glm M])")
    parser.add_argument("--glm", default="lsa",
                        help="desc label of the GLM betas that --betas reads: lsa (as issue 15's passes measured) or "
                             "fithrfdenoiserr (the app's default GLM)")
    parser.add_argument("--srm", nargs="*", default=(), metavar="VOXELS:REDUCED:K",
                        help="also the shared response model with these settings (tried, not kept)")
    parser.add_argument("--inversion", action="store_true",
                        help="also the shared decoder whose participant map inverts an encoding model")
    parser.add_argument("--subsets", nargs="*", default=None, help="only these training subsets (e.g. '2 runs')")
    parser.add_argument("--leave-out", default=None,
                        help="the participant left out of the group and decoded (default: the last one)")
    args = parser.parse_args(argv)

    from bids_m2i.decoding.decoder import BrainDecoder, rescale_items
    from bids_m2i.decoding.reconstruct import standardise_like
    from bids_m2i.decoding.shared import ParticipantData, fit_new_participant, train_shared_model
    from bids_m2i.decoding.splits import split_trials

    if not args.dataset.exists():
        from bids_m2i.simulate.dataset import simulate_dataset

        simulate_dataset(args.dataset, preset="demo", subjects=args.subjects, seed=0)
    labels = [f"{i + 1:02d}" for i in range(args.subjects)]
    rng = np.random.default_rng(0)
    work = args.dataset.parent / (args.dataset.name + "-features")
    if args.betas is not None:
        data = {label: load_glm_participant(args.dataset, args.betas, label, work, args.glm) for label in labels}
    else:
        data = {label: load_participant(args.dataset, label, args.noise, args.noise_voxels, rng, work)
                for label in labels}
    left_out = args.leave_out or labels[-1]
    if left_out not in labels:
        parser.error(f"--leave-out {left_out}: not one of {labels}")
    group = []
    for label in [lab for lab in labels if lab != left_out]:
        trials, betas, feats = data[label]
        split = split_trials(trials, seed=0)
        group.append(ParticipantData(label, betas[split.train], feats[split.train],
                                     trials["stimulus"].to_numpy()[split.train]))
    start, cpu = time.monotonic(), time.process_time()
    from bids_m2i.decoding.shared import DEFAULT_COMPONENTS

    model = train_shared_model(group, "pixels", n_components=args.components or DEFAULT_COMPONENTS,
                               n_threads=args.threads, head=args.head, single_penalty=not args.per_target_penalties)
    print(f"shared model of {len(group)} participants (voxels {[g.betas.shape[1] for g in group]}): "
          f"{time.monotonic() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")

    srm = {}
    for setting in args.srm:
        voxels, reduced, k = (int(x) for x in setting.split(":"))
        srm[setting] = srm_decoder(group, voxels, reduced, k)
        print(f"SRM {setting}: inter-subject correlation of the aligned responses {srm[setting][1]:.3f}")

    trials, betas, feats = data[left_out]
    split = split_trials(trials, seed=0)
    stim = trials["stimulus"].to_numpy()
    run = trials["run"].astype(str).str.zfill(2).to_numpy()
    memory = split.imagery[trials["cue"].to_numpy()[split.imagery] == "image"]
    subsets = {"6 runs": split.train, "2 runs": split.train[np.isin(run[split.train], ["04", "05"])],
               "1 run": split.train[run[split.train] == "04"]}
    subsets["half a run"] = subsets["1 run"][::2]
    if args.subsets:
        subsets = {name: rows for name, rows in subsets.items() if name in args.subsets}
    import copy

    inverted = None
    if args.inversion:  # the same group model; only the participant's map is fitted differently
        inverted = copy.copy(model)
        inverted.settings = {**model.settings, "participant_map": "inversion"}

    def score(predict, decoder, rows, train_rows, imagery):
        """PixCorr and two-way of the items of ``rows``; held-out perception items are decoded as the participant
        level decodes them (``perception=True``: the own-data decoder's joint penalties, the shared map alone)."""
        X = betas.copy()
        if imagery:
            X[split.imagery] = standardise_like(betas[split.imagery], betas[train_rows])
        names = sorted(set(stim[rows]))
        items = np.stack([X[rows][stim[rows] == n].mean(0) for n in names])
        targets = np.stack([feats[rows][stim[rows] == n][0] for n in names])
        try:
            raw = predict(items, perception=not imagery)
        except TypeError:  # the SRM decoder's plain function
            raw = predict(items)
        pred = rescale_items(raw, decoder.feature_mean, decoder.feature_sd, perception=not imagery)
        return pixcorr(pred, targets), twoway(pred - decoder.feature_mean, targets - decoder.feature_mean)

    print("| trains on | decoder | perception PixCorr | perception 2-way | imagery-memory PixCorr | imagery-memory 2-way |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rows in subsets.items():
        own = BrainDecoder("ridge", device="cpu", n_threads=args.threads).fit(betas[rows], feats[rows],
                                                                             labels=stim[rows])
        # the map for every item; the default (imagery="ensemble") is the row after, made from the same two fits
        shared = fit_new_participant(model, betas[rows], feats[rows], stim[rows], n_threads=args.threads,
                                     imagery="map")
        decoders = [("own ridge", own.predict, own), ("shared, imagery by the map", shared.predict, shared)]
        # the same map, imagery items by the mean of its and the own-data ridge's patterns (imagery="ensemble",
        # the default)
        ensemble = copy.copy(shared)
        ensemble.own, ensemble.imagery = own, "ensemble"
        decoders.append(("shared (default: imagery ensemble)", ensemble.predict, ensemble))
        if inverted is not None:
            inv = fit_new_participant(inverted, betas[rows], feats[rows], stim[rows], n_threads=args.threads,
                                      imagery="map")
            decoders.append(("shared, inverted encoding map", inv.predict, inv))
        for setting, (make, _) in srm.items():
            decoders.append((f"SRM {setting}", make(betas[rows], feats[rows], stim[rows]), own))
        for kind, predict, scaled in decoders:  # rescaled to this participant's training features
            pc, tw = score(predict, scaled, split.test, rows, False)
            ipc, itw = score(predict, scaled, memory, rows, True)
            print(f"| {name} ({len(rows)} trials) | {kind} | {pc:.3f} | {tw:.3f} | {ipc:.3f} | {itw:.3f} |", flush=True)


if __name__ == "__main__":
    main()
