"""Where held-out perception PixCorr is lost between the decoder and the image (issue 14, tenth pass).

Reads a finished ``m2i … participant --target pixels text`` run on a simulated dataset (its decoding stage
files in the work dir: betas, trials, targets), refits the pixel decoder as the pipeline does
(``fit_decoders`` → ``predict_items`` → ``generate_reconstructions``) with one step changed at a time, and
scores each (condition, cue) group's reconstructions against the simulator's truth as
``score_against_truth.py`` does (32 x 32, repeats averaged). The ``shipped`` variant reproduces the run's own
scores. Nothing upstream of decoding is rerun, so a variant takes ~20 s on 2 cores.

Variants (any of them, comma-separated; the rescaling variants act on ``reconstruct.rescale_items``, the
items' rescaling at prediction time, and leave the penalty CV and the betas' standardisation as shipped):

* ``shipped``: the code as it is;
* ``per-dimension``: held-out perception rescaled per dimension (Brain-Diffuser's rule, the default before);
* ``none``: held-out perception not rescaled;
* ``one-factor-all``: one factor for imagery too (each imagery group still centred on its own mean); the
  shipped rule since issue 14's eleventh pass, so now the same as ``shipped``;
* ``imagery-per-dimension``: imagery items scaled per dimension around their own mean (the rule before);
* ``imagery-none``: imagery items not rescaled (the ridge's predictions as they are, as the oracle scores them);
* ``imagery-perception-rule``: imagery items scaled as held-out perception (one factor, around the training mean);
* ``imagery-pooled``: the two imagery groups (memory, text cue) rescaled together;
* ``averaged-training``: the decoder fitted on each training stimulus' averaged betas instead of single trials;
* ``scale-S``: held-out perception penalties scaled by ``S`` (instead of the joint CV's choice).

    python benchmarks/rescale_probe.py DATASET WORK_DIR --variants shipped,per-dimension,none
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _patched(variant: str):
    """Context: the module attributes a variant replaces, restored afterwards."""
    import contextlib

    from bids_m2i.decoding import decoder as decoder_module
    from bids_m2i.decoding import identification
    from bids_m2i.decoding import reconstruct

    original = {"rescale": decoder_module.rescale_to_training, "items": reconstruct.rescale_items,
                "groups": reconstruct._group_indices, "fit": decoder_module.BrainDecoder.fit,
                "choose": identification.choose_penalty_scale}

    def rescale(raw, mean, sd, *, perception):
        """The items' rescaling at prediction time (``predict_items``), as the variant changes it (other variants:
        the shipped rule); the penalty CV and the betas' standardisation keep the shipped rule."""
        if perception and variant == "none" or not perception and variant == "imagery-none":
            return np.asarray(raw, dtype=np.float32)
        changed = {(True, "per-dimension"): ("training", True), (False, "one-factor-all"): ("items", False),
                   (False, "imagery-per-dimension"): ("items", True),
                   (False, "imagery-perception-rule"): ("training", False)}.get((perception, variant))
        if changed is None:
            return original["items"](raw, mean, sd, perception=perception)
        centre, per_dimension = changed
        return original["rescale"](raw, mean, sd, centre=centre, per_dimension=per_dimension)

    def pooled_groups(trials, items):
        groups, imagery = {}, []
        for key, index in original["groups"](trials, items).items():
            if key[0] == "imagery":
                imagery.append(np.asarray(index))
            else:
                groups[key] = index
        if imagery:
            groups[("imagery", "all")] = np.concatenate(imagery)
        return groups

    def averaged_fit(self, betas, features, labels=None, **kwargs):
        labels = np.asarray(labels)
        names = list(dict.fromkeys(labels.tolist()))
        X = np.stack([betas[labels == n].mean(0) for n in names])
        Y = np.stack([features[labels == n].mean(0) for n in names])
        return original["fit"](self, X, Y, labels=np.asarray(names), **kwargs)

    @contextlib.contextmanager
    def context():
        try:
            reconstruct.rescale_items = rescale
            if variant == "imagery-pooled":
                reconstruct._group_indices = pooled_groups
            if variant == "averaged-training":
                decoder_module.BrainDecoder.fit = averaged_fit
            if variant.startswith("scale-"):
                value = float(variant.split("-", 1)[1])
                identification.choose_penalty_scale = (
                    lambda *a, **k: original["choose"](*a, **{**k, "scales": (value,)}))
            yield
        finally:
            reconstruct.rescale_items = original["items"]
            reconstruct._group_indices = original["groups"]
            decoder_module.BrainDecoder.fit = original["fit"]
            identification.choose_penalty_scale = original["choose"]

    return context()


def score_variant(dataset: Path, stage_folder: Path, variant: str, subject: str = "01", size: int = 32,
                  text: bool = False) -> dict:
    from PIL import Image

    from bids_m2i.decoding import reconstruct
    from bids_m2i.decoding.stage_files import load_betas_file, load_prepared
    from bids_m2i.simulate.oracle import pattern_correlations, twoway_identification
    from bids_m2i.simulate.truth import load_image, load_truth

    betas = load_betas_file(stage_folder / "betas.npy")
    prepared = load_prepared(stage_folder / "trials.tsv", stage_folder / "targets.npz", stage_folder / "prepared.json")
    targets = load_truth(dataset, subject)["target_files"]
    with _patched(variant):
        options = reconstruct.DecodingOptions(targets=("pixels", "text") if text else ("pixels",), n_perm=10)
        fitted = reconstruct.fit_decoders(betas, prepared, options)
        predictions = reconstruct.predict_items(betas, prepared, fitted, options)
        recon = reconstruct.generate_reconstructions(predictions, prepared, options)
        metrics = (reconstruct.evaluate_items(betas, prepared, fitted, predictions, recon, options).metrics
                   if text else None)
    scores = {}
    for (condition, cue), part in predictions.table.groupby(["condition", "cue"]):
        rows = part.index.to_numpy()
        images = np.stack([np.asarray(recon.images[i].convert("RGB").resize((size, size), Image.BOX), dtype=float)
                           .ravel() / 255.0 for i in rows])
        truth = np.stack([load_image(targets[s], size).ravel() for s in part["stimulus"]])
        names = list(dict.fromkeys(part["stimulus"]))
        stim = part["stimulus"].to_numpy()
        images = np.stack([images[stim == n].mean(0) for n in names])
        truth = np.stack([truth[stim == n][0] for n in names])
        scores[f"{condition}/{cue}"] = {"pixcorr": float(np.mean(pattern_correlations(images, truth))),
                                        "twoway": twoway_identification(images, truth), "n_items": len(names)}
    if metrics is not None:
        # the text channel as the run's metrics table scores it (cue retrieval and two-way in the text space)
        for row in metrics[metrics["feature_space"] == "text"].itertuples():
            scores.setdefault(f"{row.condition}/{row.cue}", {})[f"text:{row.metric}"] = float(row.value)
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("work_dir", type=Path, help="the run's -w folder")
    parser.add_argument("--variants", default="shipped,per-dimension")
    parser.add_argument("--subject", default="01")
    parser.add_argument("--text", action="store_true",
                        help="also decode the text space and score the text channel (the run's --target pixels text)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    found = sorted(args.work_dir.glob("**/decode_features*/betas.npy"))
    if not found:
        print(f"no decoding stage files under {args.work_dir}", file=sys.stderr)
        return 66
    results = {}
    for variant in args.variants.split(","):
        results[variant] = score_variant(args.dataset, found[0].parent, variant, args.subject, text=args.text)
        cells = ", ".join(f"{group} {s['pixcorr']:.3f} / {s['twoway']:.3f}" for group, s in results[variant].items()
                          if "pixcorr" in s)
        print(f"{variant}: {cells}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
