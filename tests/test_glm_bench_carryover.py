"""bench_glm.carryover: how much of a neighbouring trial's true amplitude each beta carries (docs/glm.md,
"Carry-over between neighbouring trials")."""

import numpy as np

from helpers import import_benchmark

bench = import_benchmark("bench_glm")


def _session(rng, n_runs=4, per_run=60, n_voxels=50):
    truth = rng.standard_normal((n_runs * per_run, n_voxels))
    trial_run = np.repeat(np.arange(n_runs), per_run)
    onsets = np.concatenate([rng.permutation(per_run) * 4.0 + 10.0 for _ in range(n_runs)])  # rows not in time order
    return truth, trial_run, onsets


def _with_previous(truth, trial_run, onsets, weight):
    """Each trial's beta = its amplitude + weight x the amplitude of the trial before it in its run."""
    out = truth.copy()
    for run in np.unique(trial_run):
        order = np.flatnonzero(trial_run == run)
        order = order[np.argsort(onsets[order])]
        out[order[1:]] += weight * truth[order[:-1]]
    return out


def test_carryover_finds_the_previous_trials_share_and_nothing_else():
    rng = np.random.default_rng(0)
    truth, trial_run, onsets = _session(rng)
    voxels = np.arange(truth.shape[1])
    noisy = truth + 0.5 * rng.standard_normal(truth.shape)
    previous, following = np.median(bench.carryover(noisy, truth, onsets, trial_run, voxels), axis=1)
    assert abs(previous) < 0.05 and abs(following) < 0.05        # unbiased betas: no carry-over

    leaky = _with_previous(truth, trial_run, onsets, 0.3) + 0.5 * rng.standard_normal(truth.shape)
    previous, following = np.median(bench.carryover(leaky, truth, onsets, trial_run, voxels), axis=1)
    expected = 0.3 / np.sqrt(1 + 0.3 ** 2 + 0.5 ** 2)             # the weight in z-scored units
    assert abs(previous - expected) < 0.05 and abs(following) < 0.05


def test_carryover_follows_onsets_not_row_order():
    rng = np.random.default_rng(1)
    truth, trial_run, onsets = _session(rng)
    voxels = np.arange(truth.shape[1])
    leaky = _with_previous(truth, trial_run, onsets, 0.5)
    late_first = _with_previous(truth, trial_run, -onsets, 0.5)   # the "previous" trial in reversed time
    assert np.median(bench.carryover(leaky, truth, onsets, trial_run, voxels)[0]) > 0.3
    assert np.median(bench.carryover(late_first, truth, onsets, trial_run, voxels)[1]) > 0.3
    assert abs(np.median(bench.carryover(late_first, truth, onsets, trial_run, voxels)[0])) < 0.05


def test_score_against_truth_scores_published_betas_of_a_simulated_dataset(tmp_path):
    """--betas: the run's statseries matched to the true amplitudes by run and onset, whatever the row order."""
    import nibabel as nib
    import pandas as pd

    from bids_m2i.simulate.dataset import simulate_dataset
    from bids_m2i.simulate.truth import load_truth

    score = import_benchmark("score_against_truth")
    dataset = tmp_path / "ds"
    simulate_dataset(dataset, preset="tiny", seed=0)
    truth = load_truth(dataset, "01")
    rows = truth["design"]
    keep = ((rows["task"] == "perception") & (rows["role"] == "trial")).to_numpy()
    trials = rows[keep].reset_index(drop=True)
    run_index = trials["run"].astype(int).to_numpy()
    rng = np.random.default_rng(0)
    leaky = _with_previous(truth["betas"][keep], run_index, trials["onset"].to_numpy(float), 0.5)
    leaky = leaky + 0.1 * rng.standard_normal(leaky.shape)
    order = rng.permutation(len(trials))                      # the published rows in another order
    image = np.zeros(truth["brain_mask"].shape + (len(trials),), dtype=np.float32)
    ijk = truth["voxel_ijk"]
    image[ijk[:, 0], ijk[:, 1], ijk[:, 2], :] = leaky[order].T
    func = tmp_path / "out" / "sub-01" / "func"
    func.mkdir(parents=True)
    nib.save(nib.Nifti1Image(image, truth["affine"]),
             func / "sub-01_task-perception_stat-effect_desc-fithrfdenoiserr_statseries.nii.gz")
    trials.iloc[order][["onset", "duration", "run", "stimulus"]].to_csv(
        func / "sub-01_task-perception_desc-fithrfdenoiserr_events.tsv", sep="\t", index=False)

    result = score.betas_against_truth(dataset, tmp_path / "out", "01", "perception")
    expected = 0.5 / np.sqrt(1 + 0.5 ** 2)
    assert result["n_trials"] == len(trials) and result["r_trial"] > 0.8
    assert abs(result["carryover_previous"] - expected) < 0.1 and abs(result["carryover_next"]) < 0.1
