"""Score an `m2i` participant run on a simulated dataset against the simulator's truth, next to the oracle.

The pipeline cannot score pure imagination itself (the imagined image does not exist in the input
dataset); the simulator keeps its renders of the cues in ``derivatives/simulation/targets/``. This script
reads the run's predictions table and reconstructions, and scores every (condition, cue) group the way
:func:`bids_m2i.simulate.oracle.oracle_scores` scores the oracle (ridge on TRUE amplitudes): PixCorr and
2-way identification of 32 x 32 pixel vectors against the distinct targets of the group (chance 0.5).
It also reads the run's text-channel metrics (cue retrieval top-1 among distinct cues) when present.

    python benchmarks/score_against_truth.py DATASET OUTPUT_DIR [--subject 01] [--json FILE] [--betas [TASK ...]]

``--betas`` also scores the run's published single-trial betas against the true amplitudes, with the GLM
benchmark's measures (``bench_glm.py``: r_trial, test-retest, carry-over of the neighbouring trials).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bids_m2i.simulate.oracle import oracle_scores, pattern_correlations, twoway_identification
from bids_m2i.simulate.truth import load_image, load_truth

if str(Path(__file__).resolve().parent) not in sys.path:   # bench_glm beside it (a script, not a package)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_glm import carryover, r_trial, test_retest  # noqa: E402

GROUPS = {("perception", "none"): "perception", ("perception", "image"): "perception",
          ("imagery", "image"): "imagery_memory", ("imagery", "text"): "imagery_text"}


def run_items(dataset, output_dir, subject: str = "01", size: int = 32) -> dict:
    """The run's reconstructions per scored group, one row per distinct stimulus (repeats averaged, as the
    oracle's): {group: {``names``, ``predicted`` (n_items, n_pixels), ``targets`` (n_items, n_pixels)}}."""
    output_dir = Path(output_dir)
    truth = load_truth(dataset, subject)
    targets = truth["target_files"]
    decoding = output_dir / f"sub-{subject}" / "decoding"
    table = pd.read_csv(decoding / f"sub-{subject}_desc-predictions_table.tsv", sep="\t", dtype=str,
                        keep_default_na=False)
    out: dict = {}
    for (condition, cue), part in table.groupby(["condition", "cue"]):
        label = GROUPS.get((condition, cue), f"{condition}_{cue}")
        recon = np.stack([load_image(output_dir / f, size).ravel() for f in part["image"]])
        names = list(pd.unique(part["stimulus"]))
        stim = part["stimulus"].to_numpy()
        out[label] = {"names": names, "predicted": np.stack([recon[stim == n].mean(0) for n in names]),
                      "targets": np.stack([load_image(targets[n], size).ravel() for n in names])}
    return out


def score_run(dataset, output_dir, subject: str = "01", size: int = 32) -> dict:
    decoding = Path(output_dir) / f"sub-{subject}" / "decoding"
    out: dict = {}
    for label, items in run_items(dataset, output_dir, subject, size).items():
        recon, truth_pixels = items["predicted"], items["targets"]
        out[label] = {"pixcorr": float(np.mean(pattern_correlations(recon, truth_pixels))),
                      "twoway": twoway_identification(recon, truth_pixels), "n_items": len(recon)}
    metrics_path = decoding / f"sub-{subject}_desc-metrics_table.tsv"
    if metrics_path.is_file():
        metrics = pd.read_csv(metrics_path, sep="\t", na_values=["n/a"])
        pick = metrics[(metrics["condition"] == "imagery") & (metrics["cue"] == "text")
                       & metrics["feature_space"].isin(["text", "clip-text"])]
        for row in pick.itertuples():
            out.setdefault("text_channel", {})[f"{row.metric}_{row.feature_space}"] = {
                "value": row.value, "chance": row.chance, "p_value": row.p_value, "n_candidates": row.n_candidates}
    return out


def betas_against_truth(dataset, output_dir, subject: str = "01", task: str = "perception") -> dict:
    """The run's published single-trial betas of one task against the simulator's true amplitudes, scored as
    ``bench_glm.py`` scores the GLM benchmark (medians over the responsive voxels): r_trial, test-retest and
    the carry-over of the previous / next trial's amplitude (``bench_glm.carryover``)."""
    import nibabel as nib

    truth = load_truth(dataset, subject)
    design = truth["design"]
    keep = (design["task"] == task).to_numpy()
    rows = design[keep].reset_index(drop=True)
    amplitudes = truth["betas"][keep]
    row_of = {(str(run).lstrip("0"), float(onset)): i for i, (run, onset) in enumerate(zip(rows["run"], rows["onset"]))}
    func = Path(output_dir) / f"sub-{subject}" / "func"
    series = sorted(func.glob(f"sub-{subject}_task-{task}_*stat-effect_*statseries.nii.gz"))
    events = sorted(func.glob(f"sub-{subject}_task-{task}_*events.tsv"))
    if len(series) != 1 or len(events) != 1:
        raise SystemExit(f"expected one statseries and one events table of task {task} in {func}")
    trials = pd.read_csv(events[0], sep="\t", dtype={"run": str})
    image = np.asarray(nib.load(series[0]).dataobj, dtype=np.float64)
    ijk = truth["voxel_ijk"]
    betas = image[ijk[:, 0], ijk[:, 1], ijk[:, 2], :].T                              # (trials, responsive voxels)
    matched = amplitudes[[row_of[(str(run).lstrip("0"), float(onset))]
                          for run, onset in zip(trials["run"], trials["onset"])]]
    voxels = np.flatnonzero(matched.std(0) > 0)
    carry = np.median(carryover(betas, matched, trials["onset"].to_numpy(float), trials["run"].astype(str).to_numpy(),
                                voxels), axis=1)
    return {"task": task, "n_trials": len(trials), "n_voxels": int(voxels.size),
            "r_trial": float(np.median(r_trial(betas, matched, voxels))),
            "test_retest": float(np.median(test_retest(betas[:, voxels], trials["stimulus"].astype(str).to_numpy()))),
            "carryover_previous": float(carry[0]), "carryover_next": float(carry[1])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("output_dir")
    parser.add_argument("--subject", default="01")
    parser.add_argument("--json")
    parser.add_argument("--betas", nargs="*", metavar="TASK", default=None,
                        help="also score the published betas of these tasks (default: perception) against the "
                        "true amplitudes: r_trial, test-retest, carry-over of the neighbouring trials")
    args = parser.parse_args(argv)
    ours = score_run(args.dataset, args.output_dir, args.subject)
    if args.betas is not None:
        for task in args.betas or ["perception"]:
            scores = betas_against_truth(args.dataset, args.output_dir, args.subject, task)
            ours.setdefault("betas", {})[task] = scores
            print(f"betas {task:10s} r_trial {scores['r_trial']:.3f}  test-retest {scores['test_retest']:.3f}  "
                  f"carry-over previous {scores['carryover_previous']:+.3f} / next {scores['carryover_next']:+.3f}  "
                  f"({scores['n_trials']} trials, {scores['n_voxels']} responsive voxels)")
    oracle = oracle_scores(args.dataset, args.subject, image_size=32)
    result = {"ours": ours, "oracle": {k: v for k, v in oracle.items() if isinstance(v, dict)}}
    for label, scores in ours.items():
        if label in oracle and isinstance(oracle[label], dict):
            o = oracle[label]
            print(f"{label:16s} pixcorr {scores['pixcorr']:.3f} (oracle {o['pixcorr']:.3f}, "
                  f"{scores['pixcorr'] / o['pixcorr']:.0%})  2-way {scores['twoway']:.3f} "
                  f"(oracle {o['twoway']:.3f}, {scores['twoway'] / o['twoway']:.0%})  n={scores['n_items']}")
    for name, row in ours.get("text_channel", {}).items():
        print(f"text channel {name}: {row['value']:.3f} (chance {row['chance']:.3f}, p {row['p_value']:.4f}, "
              f"{row['n_candidates']} candidates)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
