"""Benchmark of single-trial beta estimators on simulated data with ground truth.

Design (issue 5): 6 runs × 200 volumes, TR 1.6 s, 3 s trials, 120 stimuli × 3 repeats (each repeat in a
different run), per-voxel HRFs from a continuous family that is not our library, drift, AR(1) noise and
global noise (``bids_m2i.glm.simulation``). Half of the voxels respond.

Each estimator runs in a fresh process (so that its peak memory can be read) with the same thread limit:
ours (``lsa``, ``lss``, ``fithrf``, ``fithrf-denoise-rr``), nilearn's ``FirstLevelModel`` LSA (per run, OLS),
a naive LSS loop (numpy ``lstsq`` per trial), a plain numpy LSA solve (nilearn design, one ``lstsq`` per run),
and GLMsingle when ``--glmsingle PATH`` points to a checkout of its Python package.

Metrics: ``r_trial`` = per responsive voxel, correlation over trials of estimated and true single-trial betas,
median over voxels; ``test-retest`` = per responsive voxel, mean over pairs of repeats of the across-stimulus
correlation, median over voxels.

    python benchmarks/bench_glm.py --voxels 5000 20000 --threads 2 [--glmsingle ~/src/GLMsingle]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OURS = ("lsa", "lss", "fithrf", "fithrf-denoise-rr")
PEERS = ("numpy-lsa", "nilearn-lsa", "naive-lss")


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _limit_threads(threads: int) -> None:
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


def _load(path):
    import pickle

    with open(path, "rb") as fh:
        return pickle.load(fh)


def _percent(data):
    return 100.0 * (data / data.mean(1, keepdims=True) - 1.0)


def _nilearn_design(run, events, hrf_model="glover"):
    from nilearn.glm.first_level import make_first_level_design_matrix

    return make_first_level_design_matrix(run.model_frame_times(), events, hrf_model=hrf_model,
                                          drift_model="cosine", high_pass=0.01)


def _run_events(sim, run):
    rows = sim.trials[(sim.trials["run"] == run.run) & (sim.trials["role"] == "trial")]
    events = rows[["onset", "duration"]].copy()
    events["trial_type"] = [f"t{i:04d}" for i in rows.index]
    return events, rows.index.to_numpy()


def run_numpy_lsa(sim):
    """nilearn design matrices, then ``pinv(X) @ Y`` per run (solve time, with % scaling, reported apart)."""
    betas = {}
    designs = [(_nilearn_design(run, _run_events(sim, run)[0]), run) for run in sim.runs]
    start = time.perf_counter()
    for frame, run in designs:
        solution = np.linalg.pinv(frame.to_numpy()) @ _percent(run.data).T
        for name, row in zip(frame.columns, solution):
            if name.startswith("t"):
                betas[int(name[1:])] = row
    return betas, {"solve_s": time.perf_counter() - start}


def run_nilearn_lsa(sim):
    import warnings

    import nibabel as nib
    from nilearn.glm.first_level import FirstLevelModel

    n_voxels = sim.runs[0].data.shape[0]
    shape = (n_voxels // 100, 100, 1) if n_voxels % 100 == 0 else (n_voxels, 1, 1)
    mask = nib.Nifti1Image(np.ones(shape, dtype=np.uint8), np.eye(4))
    betas = {}
    for run in sim.runs:
        events, index = _run_events(sim, run)
        img = nib.Nifti1Image(run.data.reshape(*shape, -1), np.eye(4))
        model = FirstLevelModel(t_r=run.tr, hrf_model="glover", drift_model="cosine", high_pass=0.01,
                                noise_model="ols", mask_img=mask, minimize_memory=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(img, events=events)
            for i in index:
                effect = model.compute_contrast(f"t{i:04d}", output_type="effect_size")
                betas[int(i)] = effect.get_fdata().reshape(-1)
    return betas, {}


def run_naive_lss(sim):
    """Mumford's LSS-1 as a loop: one design and one lstsq (all voxels) per trial."""
    from nilearn.glm.first_level import compute_regressor

    betas = {}
    for run in sim.runs:
        events, index = _run_events(sim, run)
        frame_times = run.model_frame_times()
        drift = _nilearn_design(run, None).to_numpy()
        data = _percent(run.data).T
        regressors = {i: compute_regressor([[o], [d], [1.0]], "glover", frame_times)[0][:, 0]
                      for i, o, d in zip(index, events["onset"], events["duration"])}
        total = sum(regressors.values())
        for i in index:
            design = np.column_stack([regressors[i], total - regressors[i], drift])
            betas[int(i)] = np.linalg.lstsq(design, data, rcond=None)[0][0]
    return betas, {}


def run_glmsingle(sim, path):
    """GLMsingle (Prince et al. 2022) with its defaults; type-D (full pipeline) and type-B betas."""
    sys.path.insert(0, str(path))
    from glmsingle.glmsingle import GLM_single

    stimuli = sorted(sim.trials.loc[sim.trials["role"] == "trial", "stimulus"].unique())
    column = {s: j for j, s in enumerate(stimuli)}
    designs, data = [], []
    for run in sim.runs:
        rows = sim.trials[(sim.trials["run"] == run.run) & (sim.trials["role"] == "trial")]
        design = np.zeros((run.n_volumes, len(stimuli)))
        for _, row in rows.iterrows():
            design[int(round(row["onset"] / run.tr)), column[row["stimulus"]]] = 1
        designs.append(design)
        data.append(run.data.astype(np.float32))
    with tempfile.TemporaryDirectory() as out:
        glm = GLM_single({"wantmemoryoutputs": [0, 1, 0, 1], "wantfileoutputs": [0, 0, 0, 0]})
        results = glm.fit(designs, data, 3.0, sim.runs[0].tr, outputdir=out)
    typed = {"D": np.squeeze(results["typed"]["betasmd"]).T}
    if results.get("typeb") is not None:
        typed["B"] = np.squeeze(results["typeb"]["betasmd"]).T
    return typed, {}


def child(method: str, data_path: str, threads: int, glmsingle: str | None) -> dict:
    """Run one estimator; returns metrics, wall time and peak memory."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from bids_m2i.glm.estimate import estimate_single_trial_betas
    from bids_m2i.glm.reliability import retest_reliability
    from bids_m2i.glm.simulation import r_trial

    sim = _load(data_path)
    import nilearn.glm.first_level  # noqa: F401  (import time is not the estimator's)

    rss_loaded = _peak_rss_mb()
    start = time.perf_counter()
    extra = {}
    stimulus = sim.trials.loc[sim.trials["role"] == "trial", "stimulus"].to_numpy()
    if method in OURS:
        result = estimate_single_trial_betas(sim.runs, sim.trials, method=method, n_threads=threads)
        outputs = {"": result.betas}
        stimulus = result.trial_rows["stimulus"].to_numpy()
        extra = {"n_pcs": result.metadata["n_pcs"], "median_frac": result.metadata["median_ridge_fraction"],
                 "fit_s": result.metadata["timing_s"]["fit_s"]}
    elif method == "glmsingle":
        outputs, extra = run_glmsingle(sim, glmsingle)
    else:
        by_trial, extra = {"numpy-lsa": run_numpy_lsa, "nilearn-lsa": run_nilearn_lsa,
                           "naive-lss": run_naive_lss}[method](sim)
        outputs = {"": np.stack([by_trial[i] for i in sorted(by_trial)])}
    wall = time.perf_counter() - start
    peak = _peak_rss_mb()
    rows = []
    for suffix, betas in outputs.items():
        responsive = sim.responsive
        rows.append({
            "method": method + (f" (type {suffix})" if suffix else ""), "wall_s": wall,
            "peak_rss_mb": peak, "rss_over_data_mb": peak - rss_loaded,
            "r_trial": float(np.median(r_trial(betas, sim.true_betas, responsive))),
            "test_retest": float(np.nanmedian(retest_reliability(betas[:, responsive], stimulus))),
            **extra})
    return {"rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(PEERS + OURS))
    parser.add_argument("--glmsingle", type=Path, default=None, help="checkout of GLMsingle (its python package)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write all rows here")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _limit_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.threads,
                               str(args.glmsingle) if args.glmsingle else None)))
        return 0

    sys.path.insert(0, str(ROOT))
    import pickle

    from bids_m2i.glm.reliability import retest_reliability
    from bids_m2i.glm.simulation import simulate_session

    methods = list(args.methods) + (["glmsingle"] if args.glmsingle else [])
    all_rows = []
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"threads per estimator {args.threads}, python {platform.python_version()}")
    for n_voxels in args.voxels:
        sim = simulate_session(n_voxels=n_voxels, seed=args.seed)
        trial_stimulus = sim.trials.loc[sim.trials["role"] == "trial", "stimulus"].to_numpy()
        ceiling = float(np.median(retest_reliability(sim.true_betas[:, sim.responsive], trial_stimulus)))
        print(f"\nV = {n_voxels}: truth test-retest ceiling {ceiling:.2f}")
        print("| method | wall s | peak RSS MB | RSS over data MB | r_trial | test-retest | notes |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        with tempfile.TemporaryDirectory() as tmp:
            data_path = os.path.join(tmp, "sim.pkl")
            with open(data_path, "wb") as fh:
                pickle.dump(sim, fh)
            for method in methods:
                command = [sys.executable, __file__, "--threads", str(args.threads), "--child", method, data_path]
                if args.glmsingle:
                    command += ["--glmsingle", str(args.glmsingle)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    print(f"| {method} | failed: {done.stderr.strip().splitlines()[-1:]} |")
                    continue
                for row in json.loads(done.stdout.strip().splitlines()[-1])["rows"]:
                    row.update(n_voxels=n_voxels, truth_ceiling=ceiling)
                    all_rows.append(row)
                    notes = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                                      if k in ("solve_s", "fit_s", "n_pcs", "median_frac"))
                    print(f"| {row['method']} | {row['wall_s']:.2f} | {row['peak_rss_mb']:.0f} | "
                          f"{row['rss_over_data_mb']:.0f} | {row['r_trial']:.3f} | {row['test_retest']:.3f} | "
                          f"{notes} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
