"""Voxels chosen for imagery: decode imagery items from voxels that are reliable in imagery (issue 14, seventh pass).

The pixel decoder keeps the top-k voxels by *perception* ncsnr (k by cross-validation on the training
perception trials). Imagery responses are weaker and, voxel by voxel, not proportional to perception (the
simulator gives every voxel its own imagery gain, larger in higher areas), so the voxels that carry imagery
may be another subset. This script measures, on a finished participant run (its betas and model reused;
nothing upstream is rerun), decoding the imagery items with a map refitted on the *training perception trials*
restricted to another voxel set, ranked with an **imagery reliability** per voxel: the ncsnr of the pure-
imagination trials' betas over their repeats (each cue is imagined twice; only *which trials share a cue* is
used, never a target image). Imagery from memory has no repeats in the demo (20 stimuli, one trial each), so
the statistic can only come from the pure-imagination trials:

* for **pure imagination** it is computed either from all 20 cue trials (``all``: transductive, it reads the
  repeat structure of the very trials it decodes) or **leave one cue out** (``loco``: each cue is decoded with a
  voxel set whose statistic never saw that cue's trials; 10 refits);
* for **imagery from memory** it comes from the pure-imagination trials, i.e. from other trials (cross-fitted).

Rules (``k`` = the pipeline's chosen count, so only the ranking changes; held-out perception keeps the pipeline's
decoder: perception scores are the run's):

* ``base``: the pipeline's imagery map (reproduces the run);
* ``imag``: the top ``k`` by imagery ncsnr;
* ``ranksum``: the top ``k`` by the sum of the two ranks (perception ncsnr and imagery ncsnr);
* ``perc2k``: among the top ``2k`` by perception ncsnr, the top ``k`` by imagery ncsnr;
* ``cons-perc2k`` / ``cons-ranksum``: the same with another imagery statistic, the memory-perception consistency
  (per voxel, the correlation over the memory stimuli between the memory trial's beta and the mean of the same
  stimulus' held-out perception trials; which trials share a stimulus, no image): from other trials for pure
  imagination, leave one stimulus out for memory;
* ``count-x2`` / ``count-half``: the perception ranking with twice / half the count (how much the count alone
  moves imagery; a count chosen on memory imagery, cross-fitted, is ``count-memcv``: for pure imagination the
  count of {k/2, k, 2k} with the best memory two-way (PixCorr breaks ties), for memory the same choice made
  on the 19 other memory items).

Every imagery map is the squared-error ridge (per-feature alphas by leave-one-stimulus-out CV on the training
trials with the new voxel set), as the pipeline's imagery map. Scores as ``score_against_truth.py``: PixCorr and
two-way of the rescaled (per group, centred on the items) and clipped pixels against the simulator's targets,
with the per-item two-way difference to ``base`` and its paired standard error (items as the unit). The number of
the simulator's visual voxels in each set is printed to see what a ranking picks (no rule reads it).

    python benchmarks/imagery_voxels.py DATASET OUT [--rules base imag ranksum perc2k] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

RULES = ("base", "imag", "ranksum", "perc2k", "count-x2", "count-half", "count-memcv", "cons-perc2k",
         "cons-ranksum")


def imagery_ncsnr(betas: np.ndarray, labels) -> np.ndarray:
    """ncsnr of imagery trials over their repeats (NSD's formula, :func:`bids_m2i.decoding.voxels.compute_ncsnr`).
    Uses only which trials share a label (cue), never a target."""
    from bids_m2i.decoding.voxels import compute_ncsnr

    return compute_ncsnr(betas, labels)


def memory_consistency(memory_betas: np.ndarray, memory_stim, test_betas: np.ndarray, test_stim) -> np.ndarray:
    """Per voxel: correlation over the memory stimuli between the memory-imagery beta and the mean beta of the
    same stimulus' held-out perception trials. Uses which trials show the same stimulus, never a target image;
    for pure imagination these are other trials (cross-fitted)."""
    names = [n for n in pd.unique(np.asarray(memory_stim)) if np.any(np.asarray(test_stim) == n)]
    m = np.stack([memory_betas[np.asarray(memory_stim) == n].mean(0) for n in names]).astype(np.float64)
    t = np.stack([test_betas[np.asarray(test_stim) == n].mean(0) for n in names]).astype(np.float64)
    m -= m.mean(0)
    t -= t.mean(0)
    denom = np.sqrt((m * m).sum(0) * (t * t).sum(0))
    return np.where(denom > 0, (m * t).sum(0) / np.where(denom > 0, denom, 1), 0.0)


def _rank(x: np.ndarray) -> np.ndarray:
    """Rank in [0, 1) (0 = largest), ties broken by index (deterministic)."""
    order = np.lexsort((np.arange(len(x)), -np.asarray(x)))
    rank = np.empty(len(x))
    rank[order] = np.arange(len(x)) / len(x)
    return rank


def voxel_set(rule: str, perception_snr: np.ndarray, imagery_snr: np.ndarray | None, k: int) -> np.ndarray:
    """Column positions (into the varying voxels) of ``rule``'s voxel set."""
    from bids_m2i.decoding.voxels import select_top_k

    rule = rule.removeprefix("cons-")
    if rule == "imag":
        return select_top_k(imagery_snr, k)
    if rule == "ranksum":
        return select_top_k(-(_rank(perception_snr) + _rank(imagery_snr)), k)
    if rule == "perc2k":
        pool = select_top_k(perception_snr, 2 * k)
        return np.sort(pool[select_top_k(imagery_snr[pool], k)])
    if rule == "count-x2":
        return select_top_k(perception_snr, 2 * k)
    if rule == "count-half":
        return select_top_k(perception_snr, k // 2)
    raise ValueError(rule)


def run(dataset: Path, output: Path, rules=RULES, subject: str = "01") -> dict:
    import tempfile

    import nibabel as nib

    from bids_m2i.decoding.decoder import BrainDecoder, rescale_to_training
    from bids_m2i.decoding.reconstruct import DecodingOptions, ItemBetas, prepare_features
    from bids_m2i.decoding.voxels import compute_ncsnr
    from bids_m2i.interfaces.decoding import load_betas
    from bids_m2i.simulate.oracle import oracle_scores, pattern_correlations, twoway_identification
    from bids_m2i.simulate.truth import load_image, load_truth
    from imagination_diagnosis import paired_difference, per_item_twoway, visual_columns

    func = output / f"sub-{subject}" / "func"
    mask = np.asarray(nib.load(func / f"sub-{subject}_desc-brain_mask.nii.gz").dataobj) > 0
    series = sorted(func.glob(f"sub-{subject}_task-*_stat-effect_desc-*_statseries.nii.gz"))
    events = [Path(str(s).replace("_stat-effect_", "_").replace("_statseries.nii.gz", "_events.tsv")) for s in series]
    betas, trials = load_betas([str(s) for s in series], [str(e) for e in events], mask)
    options = DecodingOptions(targets=("pixels",), work_dir=Path(tempfile.mkdtemp(prefix="imagvox-")))
    prepared = prepare_features(trials, dataset / "stimuli", options)
    split, trials = prepared.split, prepared.trials
    train_betas, train_y, labels = betas[split.train], prepared.train_targets["pixels"], prepared.labels_train
    decoder = BrainDecoder.load(output / f"sub-{subject}" / "decoding" / f"sub-{subject}_desc-pixelsridge_model.safetensors")
    k = int(len(decoder.scaler.columns))
    varying = np.flatnonzero(train_betas.std(0, dtype=np.float64) > 0)
    perception_snr = compute_ncsnr(train_betas[:, varying], labels)
    item_betas = ItemBetas(betas, split, True)
    truth = load_truth(dataset, subject)

    groups = {}
    for cue in ("text", "image"):
        rows = np.array([r for r in split.imagery if trials.at[r, "cue"] == cue])
        stim = trials.loc[rows, "stimulus"].to_numpy()
        names = list(pd.unique(stim))
        targets = np.stack([load_image(truth["target_files"][n], 32).ravel() for n in names])
        groups[cue] = dict(rows=rows, stim=stim, names=names, targets=targets, betas=item_betas(rows))
    text = groups["text"]
    # the imagery statistic: pure-imagination trials' raw betas (ncsnr z-scores each voxel over the rows given)
    snr_all = compute_ncsnr(betas[text["rows"]][:, varying], text["stim"])

    mem_group = groups["image"]
    test_stim = trials.loc[split.test, "stimulus"].to_numpy()
    consistency = memory_consistency(betas[mem_group["rows"]][:, varying], mem_group["stim"],
                                     betas[split.test][:, varying], test_stim)

    fits: dict[tuple, BrainDecoder] = {}

    def imagery_map(positions: np.ndarray) -> BrainDecoder:
        key = tuple(positions.tolist())
        if key not in fits:  # the pipeline's imagery map: squared-error penalties, on the training trials
            fits[key] = BrainDecoder("ridge", top_k=None, penalty="error").fit(
                train_betas[:, varying[positions]], train_y, labels=labels)
        return fits[key]

    def items_of(cue, predict_rows) -> np.ndarray:
        """Rescaled, clipped item predictions of group ``cue``; ``predict_rows(group)`` gives its trials' predictions."""
        g = groups[cue]
        single = predict_rows(g)
        items = np.stack([single[g["stim"] == n].mean(0) for n in g["names"]])
        return np.clip(rescale_to_training(items, decoder.feature_mean, decoder.feature_sd, centre="items"), 0, 1)

    def with_set(positions):
        m = imagery_map(positions)
        return lambda g: m.predict(g["betas"][:, varying[positions]])

    def score(items, cue):
        g = groups[cue]
        return {"twoway": twoway_identification(items, g["targets"]),
                "pixcorr": float(np.mean(pattern_correlations(items, g["targets"]))),
                "per_item": per_item_twoway(items, g["targets"]).tolist()}

    # the simulator's visual voxels among the varying columns (to see what each ranking picks; not used by any rule)
    visual = np.isin(varying, visual_columns(mask, truth["voxel_ijk"], "C"))
    result = {"k": k, "n_varying": int(len(varying)), "rules": {}, "visual_voxels": int(visual.sum()),
              "visual_in_base": int(visual[np.isin(varying, decoder.scaler.columns)].sum())}
    base_items = {cue: items_of(cue, lambda g: decoder.predict(g["betas"])) for cue in groups}
    for rule in rules:
        out = {}
        if rule == "base":
            out = {"imagination": score(base_items["text"], "text"), "memory": score(base_items["image"], "image")}
        elif rule == "count-memcv":
            candidates = {"half": select(perception_snr, k // 2), "k": None, "x2": select(perception_snr, 2 * k)}
            memory_items = {name: (base_items["image"] if pos is None else items_of("image", with_set(pos)))
                            for name, pos in candidates.items()}
            text_items = {name: (base_items["text"] if pos is None else items_of("text", with_set(pos)))
                          for name, pos in candidates.items()}
            targets = groups["image"]["targets"]

            def best(keep):
                def crit(name):
                    it = memory_items[name][keep]
                    return (twoway_identification(it, targets[keep]),
                            float(np.mean(pattern_correlations(it, targets[keep]))))
                return max(candidates, key=crit)

            chosen = best(np.ones(len(targets), bool))
            out["imagination"] = score(text_items[chosen], "text") | {"chosen": chosen}
            # memory, cross-fitted: item i gets the count chosen on the 19 others
            memory = np.empty_like(memory_items["k"])
            picks = []
            for i in range(len(targets)):
                keep = np.arange(len(targets)) != i
                pick = best(keep)
                picks.append(pick)
                memory[i] = memory_items[pick][i]
            out["memory"] = score(memory, "image") | {"chosen": picks}
        elif rule.startswith("cons-"):
            # pure imagination: the statistic is from other trials (memory + held-out perception): cross-fitted;
            # memory: leave one stimulus out (its own trial never enters the statistic it is decoded with)
            positions = voxel_set(rule, perception_snr, consistency, k)
            out["imagination"] = score(items_of("text", with_set(positions)), "text")
            out["overlap_with_base"] = int(np.isin(varying[positions], decoder.scaler.columns).sum())
            out["visual_in_set"] = int(visual[positions].sum())

            def loso(g):
                single = np.empty((len(g["rows"]), train_y.shape[1]), np.float32)
                for i, name in enumerate(g["stim"]):
                    keep = g["stim"] != name
                    c = memory_consistency(betas[g["rows"][keep]][:, varying], g["stim"][keep],
                                           betas[split.test][:, varying], test_stim)
                    pos = voxel_set(rule, perception_snr, c, k)
                    single[i] = imagery_map(pos).predict(g["betas"][i:i + 1][:, varying[pos]])[0]
                return single
            out["memory"] = score(items_of("image", loso), "image")
        else:
            count_rule = rule.startswith("count-")
            positions = voxel_set(rule, perception_snr, snr_all, k)
            out["memory"] = score(items_of("image", with_set(positions)), "image")  # cross-fitted (other trials)
            out["imagination_all"] = score(items_of("text", with_set(positions)), "text")
            out["overlap_with_base"] = int(np.isin(varying[positions], decoder.scaler.columns).sum())
            out["visual_in_set"] = int(visual[positions].sum())
            if not count_rule:  # leave one cue out: the cue's own trials never enter its voxel statistic
                def loco(g):
                    single = np.empty((len(g["rows"]), train_y.shape[1]), np.float32)
                    for name in g["names"]:
                        held = g["stim"] == name
                        snr = compute_ncsnr(betas[g["rows"][~held]][:, varying], g["stim"][~held])
                        pos = voxel_set(rule, perception_snr, snr, k)
                        single[held] = imagery_map(pos).predict(g["betas"][held][:, varying[pos]])
                    return single
                out["imagination"] = score(items_of("text", loco), "text")
            else:
                out["imagination"] = out["imagination_all"]
        for label in ("imagination", "memory"):
            d = paired_difference(out[label]["per_item"], result["rules"]["base"][label]["per_item"]) \
                if "base" in result["rules"] else (0.0, 0.0)
            out[label]["minus_base"] = {"mean": d[0], "se": d[1]}
        result["rules"][rule] = out
    oracle = oracle_scores(dataset, subject, image_size=32)
    result["oracle"] = {k2: v for k2, v in oracle.items() if isinstance(v, dict)}
    return result


def select(scores, k):
    from bids_m2i.decoding.voxels import select_top_k

    return select_top_k(scores, k)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--subject", default="01")
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rules = ["base"] + [r for r in args.rules if r != "base"]
    result = run(args.dataset, args.output, rules, args.subject)
    o = result["oracle"]
    print(f"k = {result['k']} of {result['n_varying']} voxels ({result['visual_in_base']} of the "
          f"{result['visual_voxels']} simulated visual voxels); oracle imagination {o['imagery_text']['pixcorr']:.3f} / "
          f"{o['imagery_text']['twoway']:.3f}, memory {o['imagery_memory']['pixcorr']:.3f} / "
          f"{o['imagery_memory']['twoway']:.3f}")
    for rule, out in result["rules"].items():
        parts = []
        for label in ("imagination", "imagination_all", "memory"):
            if label in out and (label != "imagination_all" or out[label] is not out.get("imagination")):
                s = out[label]
                d = s.get("minus_base", {})
                parts.append(f"{label} {s['pixcorr']:.3f} / {s['twoway']:.3f}"
                             + (f" ({d['mean']:+.3f} se {d['se']:.3f})" if d else "")
                             + (f" [{s['chosen']}]" if "chosen" in s and isinstance(s["chosen"], str) else ""))
        extra = (f" overlap {out['overlap_with_base']}, visual {out['visual_in_set']}"
                 if "overlap_with_base" in out else "")
        print(f"{rule:12s} " + "; ".join(parts) + extra, flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
