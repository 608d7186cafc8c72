"""Units of the single-trial betas: per-voxel slope and SD ratio of estimated on true betas (issue 13, QA).

For each generator of ``bench_glm.py`` and each method, over responsive voxels (medians over voxels):

* ``slope``    the regression slope over trials of the estimated on the true betas (cov / var of the truth);
* ``sd ratio`` SD over trials of the estimated betas / SD of the true betas;
* ``mean ratio`` the voxel's mean estimated beta / its mean true beta (the offset part of the scale);
* ``r_trial``  the correlation (as ``bench_glm.py`` scores it; scale-free).

The truth is given in two units, because the generators and the methods use two conventions for "a beta":

* ``peak``    the peak of one trial's response (``glm_generators``' own unit; GLMsingle's convention: its
  kernels are the trial's response normalised to peak 1);
* ``plateau`` the level a sustained response would reach (``bids_m2i.glm.simulation``'s own unit: unit-sum
  HRF convolved with a boxcar of the trial's duration; nilearn's and ours' convention, unit-sum kernels).

They differ per voxel by the factor ``peak of one trial's response / plateau`` of that voxel's true HRF (below 1
without undershoot, above 1 with a deep one, as on ``ours``), recomputed from the generator's HRFs (captured while
the session is simulated). Since issue 14 ours' betas are in peak units by default (``beta_units="peak"``: each
voxel's unit-sum betas times its own kernel's peak response to one trial, ``bids_m2i/glm/units.py``); the rows
"(plateau, before)" divide that factor out again, the units before the change. The factor is also recomputed
here from the library's kernels (the benchmark's own "× kernel peak" of issue 13) and the largest relative
difference printed. ``slope IQR/med``: the interquartile range of the per-voxel slopes over their median (how
much the scale varies between voxels). Results: docs/glm.md, "Units of the betas". The benchmark venv's
glmsingle lacks its HRF table: put the peer's source first on PYTHONPATH (below).

    PYTHONPATH=$PWD:/work/shared/peers/GLMsingle nice -n 5 .venv/bin/python benchmarks/glm_units.py \\
        --voxels 2000 --seed 0 --generators ours dg-nsd dg-high lib-nsd \\
        --glmsingle-python /work/.venv-glm13/bin/python --glmsingle-cache /tmp/glmsingle-cache

GLMsingle's betas are read from ``--glmsingle-cache`` (filled by ``bench_glm.py --glmsingle-cache``) or, when
the cache has no entry, computed by ``bench_glm.py``'s GLMsingle child and stored there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_glm  # noqa: E402
import glm_generators  # noqa: E402

def _capture_hrfs(generator: str):
    """Patch the generator's HRF function so that the per-voxel HRFs (fine grid) are kept; returns (store, undo).
    ``store["dt"]`` is the generator's fine time step."""
    store = {}
    if generator == "ours":
        from bids_m2i.glm import simulation as module
        name = "voxel_hrfs"
    else:
        module = glm_generators
        name = "glmsingle_library_hrfs" if generator == "lib-nsd" else "double_gamma_hrfs"
    original = getattr(module, name)
    store["dt"] = module.FINE_DT

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        store["hrf"] = out[0] if isinstance(out, tuple) else out
        return out

    setattr(module, name, wrapped)
    return store, lambda: setattr(module, name, original)


def peak_over_plateau(hrf: np.ndarray, duration: float, fine_dt: float) -> np.ndarray:
    """Per voxel: peak of the response to a ``duration`` boxcar / the level of a sustained response (sum of the
    HRF on the fine grid: the steady state of the convolution with a boxcar of ones)."""
    boxcar = np.ones(int(round(duration / fine_dt)))
    response = np.stack([np.convolve(h, boxcar)[:h.size + boxcar.size] for h in hrf])
    return np.abs(response).max(1) / hrf.sum(1)


def scale_stats(estimated: np.ndarray, truth: np.ndarray) -> dict:
    """Per-voxel slope, SD ratio and mean ratio of estimated on true (trials × voxels), medians over voxels."""
    est = estimated - estimated.mean(0)
    tru = truth - truth.mean(0)
    slope = (est * tru).sum(0) / (tru ** 2).sum(0)
    sd_ratio = est.std(0) / tru.std(0)
    mean_ratio = estimated.mean(0) / truth.mean(0)
    q1, median, q3 = np.percentile(slope, [25, 50, 75])
    return {"slope": float(median), "sd_ratio": float(np.median(sd_ratio)),
            "mean_ratio": float(np.median(mean_ratio)), "slope_spread": float((q3 - q1) / median)}


def ours_betas(session: dict, method: str, **kwargs) -> tuple[np.ndarray, np.ndarray, float]:
    """Ours' betas (trials × voxels, peak units: the engine's default), the engine's per-voxel factor from plateau
    to peak units, and the largest relative difference of that factor from the benchmark's own computation: the
    peak of the voxel's kernel's response to one trial (its regressor's peak per unit beta, on the model's
    oversampled grid)."""
    from bids_m2i.glm.estimate import estimate_single_trial_betas
    from bids_m2i.glm.hrf_library import canonical_kernel, library_kernels

    runs, trials = bench_glm._ours_inputs(session)
    result = estimate_single_trial_betas(runs, trials, method=method, n_threads=1, **kwargs)
    tr, duration = float(session["tr"]), float(session["durations"][0])
    boxcar = np.ones(int(round(duration / (tr / 50))))
    if method in ("lsa", "lss"):
        peak = np.full(result.betas.shape[1], np.convolve(canonical_kernel("glover", tr), boxcar).max())
    else:
        peaks = np.array([np.convolve(k, boxcar).max() for k in library_kernels(tr)])
        peak = peaks[np.asarray(result.stat_maps()["hrfindex"]).astype(int)]
    check = float(np.max(np.abs(result.beta_scale - peak) / peak))
    return np.asarray(result.betas), np.asarray(result.beta_scale), check


def glmsingle_betas(session: dict, generator: str, args, tmp: str) -> dict:
    data_path = os.path.join(tmp, "session.npz")
    bench_glm.save_session(session, data_path)
    cache = bench_glm._cache_folder(args.glmsingle_cache, generator, args.seed, args.voxels, data_path)
    if (cache / "run.json").exists():
        payload = bench_glm._read_cache(cache)[0]
    else:
        out = os.path.join(tmp, "glmsingle.npy")
        payload, wall, peak, cpu = bench_glm.run_child(
            args.glmsingle_python, ["--threads", "1", "--glmsingle-figures", "off", "--child", "glmsingle",
                                    data_path, out], 1)
        bench_glm._write_cache(cache, payload, wall, peak, cpu)
        payload = bench_glm._read_cache(cache)[0]
    return {f"GLMsingle type-{k}": np.load(p) for k, p in payload["betas"].items()}


# ours' methods and the variants that isolate a step (whitening, denoising, ridge + rescale)
VARIANTS = {
    "lsa": ("lsa", {}),
    "fithrf": ("fithrf", {}),
    "fithrf-denoise (frac 1)": ("fithrf-denoise-rr", {"fractions": (1.0,)}),
    "fithrf-denoise-rr": ("fithrf-denoise-rr", {}),
    "fithrf-denoise-rr ols": ("fithrf-denoise-rr", {"noise_model": "ols"}),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generators", nargs="+", default=["ours", "dg-nsd", "dg-high", "lib-nsd"],
                        choices=bench_glm.GENERATORS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--glmsingle-python", default=None)
    parser.add_argument("--hrf-table", default=None,
                        help="GLMsingle's getcanonicalhrflibrary.tsv for lib-nsd without --glmsingle-python (e.g. "
                             "/work/shared/peers/GLMsingle/glmsingle/hrf/getcanonicalhrflibrary.tsv)")
    parser.add_argument("--glmsingle-cache", type=Path, default=Path(tempfile.gettempdir()) / "glmsingle-cache")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    table = args.hrf_table or (bench_glm.glmsingle_table(args.glmsingle_python) if args.glmsingle_python else None)
    rows = []
    for generator in args.generators:
        store, undo = _capture_hrfs(generator)
        try:
            session = bench_glm.make_session(generator, args.voxels, args.seed, table)
        finally:
            undo()
        truth, responsive = session["true_betas"], session["responsive"]
        duration = float(session["durations"][0])
        factor = peak_over_plateau(store["hrf"], duration, store["dt"])      # peak / plateau per voxel
        if generator == "ours":                                 # truth is a plateau
            units = {"plateau": truth, "peak": truth * factor}
        else:                                                   # truth is a peak
            units = {"peak": truth, "plateau": truth / factor}
        native = "plateau" if generator == "ours" else "peak"
        print(f"\n{generator}: V = {args.voxels}, seed {args.seed}; truth in {native} units; "
              f"peak/plateau of the true HRFs (one trial) median {np.median(factor[responsive]):.3f}")
        print("| method | kernel | slope vs peak | slope vs plateau | slope IQR/med vs peak | SD ratio vs peak "
              "| SD ratio vs plateau | mean ratio vs peak | mean ratio vs plateau | r_trial | median r² |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        estimates = {}
        for name in args.variants:
            method, kwargs = VARIANTS[name]
            betas, scale, check = ours_betas(session, method, **kwargs)
            print(f"({name}: engine's factor vs the benchmark's kernel peak, max relative difference {check:.1e})")
            estimates[name] = ("unit sum → peak", betas)
            if name in ("lsa", "fithrf-denoise-rr"):
                estimates[name + " (plateau, before)"] = ("unit sum", betas / scale[None])
        if args.glmsingle_python:
            with tempfile.TemporaryDirectory() as tmp:
                for name, betas in glmsingle_betas(session, generator, args, tmp).items():
                    estimates[name] = ("peak 1", betas)
        for name, (kernel, betas) in estimates.items():
            vs = {u: scale_stats(betas[:, responsive], t[:, responsive]) for u, t in units.items()}
            per_voxel_r = bench_glm.r_trial(betas, truth, responsive)
            r, r2 = float(np.median(per_voxel_r)), float(np.median(per_voxel_r ** 2))
            rows.append({"generator": generator, "method": name, "kernel": kernel, "r_trial": r, "median_r2": r2,
                         **{f"{k}_vs_{u}": v for u, d in vs.items() for k, v in d.items()},
                         "peak_over_plateau": float(np.median(factor[responsive]))})
            print(f"| {name} | {kernel} | {vs['peak']['slope']:.3f} | {vs['plateau']['slope']:.3f} | "
                  f"{vs['peak']['slope_spread']:.3f} | {vs['peak']['sd_ratio']:.3f} | {vs['plateau']['sd_ratio']:.3f} | {vs['peak']['mean_ratio']:.3f} | "
                  f"{vs['plateau']['mean_ratio']:.3f} | {r:.3f} | {r2:.3f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
