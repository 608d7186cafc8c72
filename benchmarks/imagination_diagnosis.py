"""Why is pure imagination below the oracle on some seeds? Item-by-item diagnosis of one participant run (issue 14).

On a dataset of ``m2i-simulate`` and the output of ``m2i DATASET OUT participant -w WORK --target pixels text``
(the run's GLM outputs reused; nothing of the pipeline is changed), this script:

1. fits the pixel decoder exactly as the pipeline does and decodes the imagery items (pipeline rescaling);
2. scores every pure-imagination cue on its own (per-item two-way: the share of the other cues' targets its
   reconstruction is closer to than its own target is not) for ours and for the oracle
   (``bids_m2i.simulate.oracle``: ridge on the true amplitudes), with two swaps that split the gap between the
   two inputs: the oracle's map applied to *our* imagery betas, and our decoder applied to the *true* imagery
   amplitudes (written into the betas of the simulator's visual voxels, on our betas' scale);
3. lists every cue trial: the correlation of its betas with its true amplitudes (visual voxels), the single-
   trial decoding correlation with the target (ours, oracle) and its framewise displacement;
4. reports which voxels each task's GLM put in its noise pool (the simulator's visual voxels among them);
5. with ``--glm-variants``: reruns the imagery task's GLM node of WORK with other engine settings
   (:data:`GLM_VARIANTS`), puts the new imagery betas in place of the run's and decodes them with the same
   decoder (the perception betas and the decoder are unchanged).

    python benchmarks/imagination_diagnosis.py DATASET OUT WORK [--glm-variants default no-pcs pool-perception]
        [--json FILE]

About 1 minute for steps 1-4 and 40 s per GLM variant on one core (``nice`` on shared machines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

#: imagery-session GLM settings compared by ``--glm-variants`` (keyword arguments of
#: ``bids_m2i.glm.estimate.estimate_single_trial_betas``; ``method`` is the node's input)
GLM_VARIANTS = {
    "default": {},
    "no-pcs": {"max_pcs": 0},
    "pc-consistency": {"pc_criterion": "consistency"},
    "no-ridge": {"fractions": (1.0,)},
    "fithrf": {"method": "fithrf"},
    "lsa": {"method": "lsa"},
    "pool-reliable": {"pool_exclusion": "repeat-reliable"},
    "pool-reliable-0.3": {"pool_exclusion": "repeat-reliable", "pool_alpha": 0.3},
    # issue 14, eighth pass: ``pool_exclude`` = the voxels the participant's perception task finds responsive
    # (resolved in :func:`run` by :func:`perception_responsive`)
    "pool-perception": {"pool_exclude": "perception-onoff"},
    "pool-perception-r2": {"pool_exclude": "perception-r2-map"},
    # the bound of any such rule: the simulator's visual voxels themselves (truth; not available to a user)
    "pool-truth-visual": {"pool_exclude": "truth-visual"},
}
# issue 14, ninth pass: a fixed number of noise PCs in the imagery GLM (pcs-0 ... pcs-10)
GLM_VARIANTS.update({f"pcs-{k}": {"n_pcs": k} for k in range(11)})


def per_item_twoway(predicted: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per item: the share of the other items' targets that correlate less with its prediction than its own
    target does, shape ``(n,)``. Its mean is :func:`bids_m2i.simulate.oracle.twoway_identification`."""
    p = predicted - predicted.mean(1, keepdims=True)
    t = targets - targets.mean(1, keepdims=True)
    p = p / (np.linalg.norm(p, axis=1, keepdims=True) + 1e-12)
    t = t / (np.linalg.norm(t, axis=1, keepdims=True) + 1e-12)
    corr = p @ t.T
    return (np.diag(corr)[:, None] > corr).sum(1) / (len(corr) - 1)


def paired_difference(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Mean per-item difference of two per-item scores and its standard error (items as the unit)."""
    diff = np.asarray(ours, float) - np.asarray(reference, float)
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def visual_columns(mask: np.ndarray, voxel_ijk: np.ndarray, order: str) -> np.ndarray:
    """Column of each simulated voxel ``voxel_ijk`` (n, 3) among the mask's voxels taken in ``order``; -1 where the
    voxel is outside the mask. The decoder's betas and the GLM engine both hold the mask's voxels in C order
    (``data[mask]``; ``decoding.streaming.fortran_indices`` reads them in that order)."""
    flat = np.flatnonzero(np.asarray(mask, bool).ravel(order=order))
    position = {int(f): i for i, f in enumerate(flat)}
    wanted = np.ravel_multi_index(tuple(np.asarray(voxel_ijk).T), mask.shape, order=order)
    return np.array([position.get(int(f), -1) for f in wanted], dtype=int)


def _node_interface(work: Path, task: str, **overrides):
    from nipype.utils.filemanip import loadpkl

    from bids_m2i.interfaces.glm import SingleTrialBetas

    node = loadpkl(str(next(work.glob(f"m2i_wf/sub_*_wf/single_trial_task_{task}_wf/estimate_betas/_node.pklz"))))
    iface = SingleTrialBetas()
    for key, value in node.inputs.get().items():
        # start_times=[]: what runs made before the fMRIPrep StartTime input (8968246) pickled for "not given";
        # the interface now reads a list as one start time per run
        if key == "start_times" and not value:
            continue
        if key != "derivatives" and value is not None:
            setattr(iface.inputs, key, value)
    for key, value in overrides.items():
        setattr(iface.inputs, key, value)
    return iface, node.inputs.mask


def noise_pool_overlap(work: Path, task: str, voxel_ijk: np.ndarray, scratch: Path) -> dict:
    """Rerun one task's GLM node and report its noise pool: size, and how many simulated visual voxels are in it."""
    import nibabel as nib

    import bids_m2i.glm.estimate as estimate

    captured = {}
    original = estimate.noise_pool

    def spy(onoff_r2, brain, threshold=None):
        pool, used = original(onoff_r2, brain, threshold)
        captured["pool"], captured["brain"] = pool.copy(), np.asarray(brain, bool).copy()
        return pool, used

    estimate.noise_pool = spy
    try:
        iface, mask_path = _node_interface(work, task)
        folder = scratch / f"pool-{task}"
        folder.mkdir(parents=True, exist_ok=True)
        iface.run(cwd=str(folder))
    finally:
        estimate.noise_pool = original
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    columns = visual_columns(mask, voxel_ijk, "C")
    pool = captured["pool"]
    return {"pool_voxels": int(pool.sum()), "brain_voxels": int(mask.sum()),
            "visual_in_pool": int(pool[columns[columns >= 0]].sum()), "visual_voxels": int((columns >= 0).sum()),
            # arrays for the pool-perception variants (left out of the JSON)
            "_pool": pool, "_brain": captured["brain"], "_mask_path": str(mask_path)}


def perception_responsive(rule: str, output: Path, subject: str, perception_pool: dict, mask: np.ndarray):
    """The voxels (boolean, the mask's voxels in C order) that the perception task finds responsive.

    ``perception-onoff``: what perception's own GLM keeps out of its noise pool: brain voxels whose ON-OFF R²
    beyond drift reaches perception's Otsu threshold (captured from the perception GLM node's rerun; the GLM does
    not write its ON-OFF R²). ``perception-r2-map``: from what the run wrote, with nothing rerun: the perception
    R² statmap (the final single-trial model) above Otsu's threshold on its log10 over the brain mask."""
    from bids_m2i.glm.denoise import log_r2, otsu_threshold

    if rule == "perception-onoff":
        return perception_pool["_brain"] & ~perception_pool["_pool"]
    if rule == "perception-r2-map":
        import nibabel as nib

        path = next((output / f"sub-{subject}" / "func").glob(
            f"sub-{subject}_task-perception_stat-r2_desc-*_statmap.nii.gz"))
        r2 = np.asarray(nib.load(path).dataobj, dtype=float)[mask]
        return r2 >= 10.0 ** otsu_threshold(log_r2(r2))
    raise ValueError(f"unknown pool_exclude rule {rule!r}")


def run(dataset: Path, output: Path, work: Path, variants=(), subject: str = "01") -> dict:
    import nibabel as nib

    import bids_m2i.glm.estimate as estimate
    from bids_m2i.decoding.decoder import rescale_to_training
    from bids_m2i.decoding.reconstruct import DecodingOptions, ItemBetas, fit_decoders, prepare_features
    from bids_m2i.interfaces.decoding import load_betas
    from bids_m2i.simulate.oracle import pattern_correlations, ridge_fit, ridge_predict, twoway_identification
    from bids_m2i.simulate.truth import load_image, load_truth

    scratch = Path(tempfile.mkdtemp(prefix="imagination-", dir=os.environ.get("TMPDIR")))
    func = output / f"sub-{subject}" / "func"
    mask = np.asarray(nib.load(func / f"sub-{subject}_desc-brain_mask.nii.gz").dataobj) > 0
    series = sorted(func.glob(f"sub-{subject}_task-*_stat-effect_desc-*_statseries.nii.gz"))
    events = [Path(str(s).replace("_stat-effect_", "_").replace("_statseries.nii.gz", "_events.tsv")) for s in series]
    betas, trials = load_betas([str(s) for s in series], [str(e) for e in events], mask)
    options = DecodingOptions(targets=("pixels",), work_dir=scratch / "features")
    prepared = prepare_features(trials, dataset / "stimuli", options)
    split, trials = prepared.split, prepared.trials
    decoder = fit_decoders(betas, prepared, options).decoders["pixels"]

    truth = load_truth(dataset, subject)
    design, amplitudes = truth["design"], truth["betas"]
    key = design["task"] + "|" + design["run"].astype(str).str.zfill(2) + "|" + design["onset"].round(2).astype(str)
    row_of = {k: i for i, k in enumerate(key)}
    tasks = np.where(trials["condition"] == "imagery", "imagery", "perception")
    truth_row = np.array([row_of[f"{t}|{str(r).zfill(2)}|{round(float(o), 2)}"]
                          for t, r, o in zip(tasks, trials["run"], trials["onset"])])
    columns = visual_columns(mask, truth["voxel_ijk"], "C")
    inside = columns >= 0

    def target_pixels(names):
        return np.stack([load_image(truth["target_files"][n], 32).ravel() for n in names])

    # the oracle exactly as bids_m2i.simulate.oracle.oracle_scores fits it
    train = design.index[(design["role"] == "trial") & (design["condition"] == "perception")
                         & (design["split"] == "train")].to_numpy()
    x_mean, x_sd = amplitudes[train].mean(0), amplitudes[train].std(0) + 1e-9
    weights, _ = ridge_fit((amplitudes[train] - x_mean) / x_sd, target_pixels(design.loc[train, "stimulus"]),
                           groups=design.loc[train, "stimulus"].to_numpy())
    ours_train = betas[split.train][:, columns[inside]]
    ours_mean, ours_sd = ours_train.mean(0), ours_train.std(0) + 1e-9

    def decode_groups(all_betas):
        """Pipeline decoding of the pure-imagination and memory items from a betas matrix."""
        item_betas = ItemBetas(all_betas, split, True)
        out = {}
        for cue in ("text", "image"):
            rows = np.array([r for r in split.imagery if trials.at[r, "cue"] == cue])
            stim = trials.loc[rows, "stimulus"].to_numpy()
            names = list(pd.unique(stim))
            single = decoder.predict(item_betas(rows))
            items = np.stack([single[stim == n].mean(0) for n in names])
            rescaled = np.clip(rescale_to_training(items, decoder.feature_mean, decoder.feature_sd, centre="items"),
                               0, 1)
            out[cue] = dict(rows=rows, stim=stim, names=names, single=single, items=rescaled,
                            betas=item_betas(rows), targets=target_pixels(names))
        return out

    decoded = decode_groups(betas)
    result = {"n_decoder_voxels": int(len(decoder.scaler.columns)),
              "decoder_voxels_visual": int(np.isin(decoder.scaler.columns, columns[inside]).sum())}
    for cue, label in (("text", "imagination"), ("image", "memory")):
        d = decoded[cue]
        rows, stim, names, targets = d["rows"], d["stim"], d["names"], d["targets"]
        true_z = (amplitudes[truth_row[rows]] - x_mean) / x_sd
        oracle = ridge_predict(weights, np.stack([true_z[stim == n].mean(0) for n in names]))
        # swap 1: the oracle's map on our imagery betas (visual voxels, on the training trials' z scale)
        ours_z = np.zeros_like(true_z)
        ours_z[:, inside] = (d["betas"][:, columns[inside]] - ours_mean) / ours_sd
        oracle_on_ours = ridge_predict(weights, np.stack([ours_z[stim == n].mean(0) for n in names]))
        # swap 2: our decoder on the true imagery amplitudes, standardised over the imagery trials as the
        # pipeline standardises betas, written into the visual voxels' columns on our training scale
        all_imagery = amplitudes[truth_row[split.imagery]][:, inside]
        true_std = (amplitudes[truth_row[rows]][:, inside] - all_imagery.mean(0)) / (all_imagery.std(0) + 1e-9)
        swapped = d["betas"].copy()
        swapped[:, columns[inside]] = true_std * ours_sd + ours_mean
        single_true = decoder.predict(swapped)
        items_true = np.clip(rescale_to_training(np.stack([single_true[stim == n].mean(0) for n in names]),
                                                 decoder.feature_mean, decoder.feature_sd, centre="items"), 0, 1)
        scores = {}
        for name, predicted in (("ours", d["items"]), ("oracle", oracle), ("oracle map on our betas", oracle_on_ours),
                                ("our decoder on true amplitudes", items_true)):
            scores[name] = {"twoway": twoway_identification(predicted, targets),
                            "pixcorr": float(np.mean(pattern_correlations(predicted, targets))),
                            "per_item": dict(zip(names, per_item_twoway(predicted, targets).round(3).tolist()))}
        difference = paired_difference(list(scores["ours"]["per_item"].values()),
                                        list(scores["oracle"]["per_item"].values()))
        group = {"scores": scores, "ours_minus_oracle": {"mean": difference[0], "se": difference[1]}}
        if cue == "text":
            b = d["betas"][:, columns[inside]]
            t = amplitudes[truth_row[rows]][:, inside]
            group["trials"] = pd.DataFrame({
                "stimulus": stim, "run": trials.loc[rows, "run"].to_numpy(),
                "onset": trials.loc[rows, "onset"].astype(float).to_numpy(),
                "fd_mean": pd.to_numeric(trials.loc[rows, "fd_mean"], errors="coerce").round(3).to_numpy(),
                "r_betas_truth": pattern_correlations((b - b.mean(0)) / (b.std(0) + 1e-9),
                                                      (t - t.mean(0)) / (t.std(0) + 1e-9)).round(3),
                "r_decoded_ours": pattern_correlations(d["single"], target_pixels(stim)).round(3),
                "r_decoded_oracle": pattern_correlations(ridge_predict(weights, true_z), target_pixels(stim)).round(3),
            }).sort_values(["stimulus", "onset"]).to_dict("list")
        result[label] = group

    pools_found = {task: noise_pool_overlap(work, task, truth["voxel_ijk"], scratch)
                   for task in ("perception", "imagery")}
    if pools_found["perception"]["_mask_path"] != pools_found["imagery"]["_mask_path"]:
        raise SystemExit("the two tasks' GLM nodes use different masks: voxel orders would not line up")
    result["noise_pool"] = {task: {k: v for k, v in pool.items() if not k.startswith("_")}
                            for task, pool in pools_found.items()}
    run_sidecar = json.loads(next(func.glob(f"sub-{subject}_task-imagery_stat-effect_desc-*_statseries.json"))
                             .read_text())
    result["noise_pool"]["imagery"]["n_pcs"] = run_sidecar.get("n_pcs")

    n_imagery = int((tasks == "imagery").sum())
    if variants and not np.all(tasks[:n_imagery] == "imagery"):
        raise SystemExit("the imagery statseries is expected first among the run's statseries")
    original = estimate.estimate_single_trial_betas
    result["glm_variants"] = {}
    for name in variants:
        settings = dict(GLM_VARIANTS[name])
        method = settings.pop("method", None)
        excluded = None
        if settings.get("pool_exclude") == "truth-visual":
            excluded = np.zeros(mask.sum(), bool)
            excluded[columns[inside]] = True
            settings["pool_exclude"] = excluded
        elif isinstance(settings.get("pool_exclude"), str):
            excluded = perception_responsive(settings["pool_exclude"], output, subject, pools_found["perception"],
                                             mask)
            settings["pool_exclude"] = excluded

        def patched(*args, _settings=settings, **kwargs):
            kwargs.update(_settings)
            return original(*args, **kwargs)

        pools = []
        original_pool = estimate.noise_pool

        def spy(onoff_r2, brain, threshold=None):  # the pool object itself: a pool exclusion edits it in place
            pool, used = original_pool(onoff_r2, brain, threshold)
            pools.append(pool)
            return pool, used

        estimate.estimate_single_trial_betas, estimate.noise_pool = patched, spy
        try:
            iface, _ = _node_interface(work, "imagery", **({"method": method} if method else {}))
            folder = scratch / f"glm-{name}"
            folder.mkdir(parents=True, exist_ok=True)
            iface.run(cwd=str(folder))
        finally:
            estimate.estimate_single_trial_betas, estimate.noise_pool = original, original_pool
        new, new_trials = load_betas([str(folder / "statseries.nii.gz")], [str(folder / "events.tsv")], mask)
        if len(new) != n_imagery or not np.allclose(new_trials["onset"].astype(float),
                                                    trials["onset"].astype(float)[:n_imagery]):
            raise SystemExit(f"variant {name}: the imagery trials do not line up with the run's")
        replaced = betas.copy()
        replaced[:n_imagery] = new
        sidecar = json.loads((folder / "statseries.json").read_text())
        row = {"n_pcs": sidecar.get("n_pcs"), "median_ridge_fraction": sidecar.get("median_ridge_fraction"),
               "pool_voxels": int(pools[-1].sum()) if pools else None,
               "visual_in_pool": int(pools[-1][columns[inside]].sum()) if pools else None,
               "pool_exclusion": sidecar.get("noise_pool", {}).get("exclusion"),
               "excluded_by_mask": sidecar.get("noise_pool", {}).get("excluded_by_mask")}
        if excluded is not None:
            row["exclude_mask"] = {"voxels": int(excluded.sum()), "visual": int(excluded[columns[inside]].sum())}
        for cue, d in decode_groups(replaced).items():
            row["imagination" if cue == "text" else "memory"] = {
                "twoway": twoway_identification(d["items"], d["targets"]),
                "pixcorr": float(np.mean(pattern_correlations(d["items"], d["targets"])))}
        result["glm_variants"][name] = row
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("work", type=Path, help="the run's work dir (-w), for the GLM nodes' inputs")
    parser.add_argument("--subject", default="01")
    parser.add_argument("--glm-variants", nargs="*", default=[], choices=sorted(GLM_VARIANTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args.dataset, args.output, args.work, args.glm_variants, args.subject)
    print(f"decoder voxels: {result['n_decoder_voxels']} ({result['decoder_voxels_visual']} simulated visual)")
    for label in ("imagination", "memory"):
        group = result[label]
        scores = "; ".join(f"{k} {v['twoway']:.3f} / {v['pixcorr']:.3f}" for k, v in group["scores"].items())
        print(f"\n{label}: {scores}; ours - oracle per item {group['ours_minus_oracle']['mean']:+.3f} "
              f"(se {group['ours_minus_oracle']['se']:.3f})")
        if label == "imagination":
            per_item = pd.DataFrame({k: v["per_item"] for k, v in group["scores"].items()})
            print(per_item.to_string())
            print(pd.DataFrame(group["trials"]).to_string(index=False))
    for task, pool in result["noise_pool"].items():
        print(f"noise pool, {task}: {pool['pool_voxels']} of {pool['brain_voxels']} brain voxels; "
              f"{pool['visual_in_pool']} of the {pool['visual_voxels']} simulated visual voxels are in it")
    print(f"imagery GLM of the run: {result['noise_pool']['imagery']['n_pcs']} PCs")
    for name, row in result["glm_variants"].items():
        if row.get("exclude_mask"):
            print(f"imagery GLM {name}: exclusion mask {row['exclude_mask']['voxels']} voxels "
                  f"({row['exclude_mask']['visual']} simulated visual), {row['excluded_by_mask']['n_removed']} "
                  "of them left the pool")
        print(f"imagery GLM {name}: {row['n_pcs']} PCs, pool {row['pool_voxels']} voxels "
              f"({row['visual_in_pool']} simulated visual), imagination {row['imagination']['twoway']:.3f} / "
              f"{row['imagination']['pixcorr']:.3f}, memory {row['memory']['twoway']:.3f} / "
              f"{row['memory']['pixcorr']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
