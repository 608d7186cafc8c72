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
    args = parser.parse_args(argv)

    from bids_m2i.decoding.decoder import BrainDecoder, rescale_to_training
    from bids_m2i.decoding.reconstruct import standardise_like
    from bids_m2i.decoding.shared import ParticipantData, fit_new_participant, train_shared_model
    from bids_m2i.decoding.splits import split_trials

    if not args.dataset.exists():
        from bids_m2i.simulate.dataset import simulate_dataset

        simulate_dataset(args.dataset, preset="demo", subjects=args.subjects, seed=0)
    labels = [f"{i + 1:02d}" for i in range(args.subjects)]
    rng = np.random.default_rng(0)
    work = args.dataset.parent / (args.dataset.name + "-features")
    data = {label: load_participant(args.dataset, label, args.noise, args.noise_voxels, rng, work) for label in labels}
    group = []
    for label in labels[:-1]:
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

    trials, betas, feats = data[labels[-1]]
    split = split_trials(trials, seed=0)
    stim = trials["stimulus"].to_numpy()
    run = trials["run"].astype(str).str.zfill(2).to_numpy()
    memory = split.imagery[trials["cue"].to_numpy()[split.imagery] == "image"]
    subsets = {"6 runs": split.train, "2 runs": split.train[np.isin(run[split.train], ["04", "05"])],
               "1 run": split.train[run[split.train] == "04"]}
    subsets["half a run"] = subsets["1 run"][::2]

    def score(decoder, rows, centre, train_rows, imagery):
        X = betas.copy()
        if imagery:
            X[split.imagery] = standardise_like(betas[split.imagery], betas[train_rows])
        names = sorted(set(stim[rows]))
        items = np.stack([X[rows][stim[rows] == n].mean(0) for n in names])
        targets = np.stack([feats[rows][stim[rows] == n][0] for n in names])
        pred = rescale_to_training(decoder.predict(items), decoder.feature_mean, decoder.feature_sd, centre=centre)
        return pixcorr(pred, targets), twoway(pred - decoder.feature_mean, targets - decoder.feature_mean)

    print("| trains on | decoder | perception PixCorr | perception 2-way | imagery-memory PixCorr | imagery-memory 2-way |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rows in subsets.items():
        own = BrainDecoder("ridge", device="cpu", n_threads=args.threads).fit(betas[rows], feats[rows],
                                                                             labels=stim[rows])
        shared = fit_new_participant(model, betas[rows], feats[rows], stim[rows], n_threads=args.threads)
        for kind, decoder in (("own ridge", own), ("shared", shared)):
            pc, tw = score(decoder, split.test, "training", rows, False)
            ipc, itw = score(decoder, memory, "items", rows, True)
            print(f"| {name} ({len(rows)} trials) | {kind} | {pc:.3f} | {tw:.3f} | {ipc:.3f} | {itw:.3f} |", flush=True)


if __name__ == "__main__":
    main()
