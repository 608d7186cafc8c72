"""Where ours and GLMsingle part: GLMsingle's choices fed into ours one at a time (issue 13 ablation).

For each generator of ``bench_glm.py`` (same sessions, ``bench_glm.make_session``), ours (``fithrf-denoise-rr``,
in process) is run with one of its choices replaced by GLMsingle's own for that session, read from the cache
that ``bench_glm.py --glmsingle-cache`` fills (its betas and, since 2026-12-02, its per-voxel choices:
``extras.npz``), or by the choice the truth prefers:

* ``default``            ours as shipped;
* ``beyond-drift``       the noise pool and the PC-search voxels picked by the R² beyond drift
                          (``selection_r2="beyond-drift"``), PCs of the ON-OFF residuals;
* ``with-drift``         the same picked by the plain R² (drift counted as explained; ``selection_r2="with-drift"``);
* ``ols``                no AR(1) prewhitening (GLMsingle's estimator);
* ``gs-count``           GLMsingle's number of PCs (our PCs);
* ``gs-pool``            GLMsingle's noise pool (our PCs of it, our count);
* ``gs-pcs``             GLMsingle's PC time series and count;
* ``drift-pcs``          pool and PC-search voxels by the R² beyond drift, PCs of the pool's data with only the
                          drift projected out (``pc_source="drift-residuals"``, as GLMsingle/GLMdenoise) instead
                          of the ON-OFF model's residuals;
* ``drift-pcs-gs-pool``  the same from GLMsingle's noise pool;
* ``drift-2``/``drift-4`` polynomial drift of degree 2 / 4 instead of round(run minutes / 2) = 3 (GLMsingle's);
* ``gs-library``         GLMsingle's 20-HRF library (read from the installed package at run time), our choice;
* ``gs-hrf``             GLMsingle's library and its per-voxel HRF index (type B);
* ``oracle-hrf``         in our (broad) library, each responsive voxel's kernel whose unregularised betas
                          (``fithrf``) correlate best with the truth (a ceiling, not a method);
* ``gs-all``             GLMsingle's library, HRF index, PCs and OLS together.

Each variant is scored at stage C (ridge fraction fixed at 1: the unregularised betas after denoising) and D
(the full method), r_trial / test-retest as ``bench_glm.py`` scores them, beside GLMsingle's types B, C, D.
The replacements are made by patching the engine's module attributes in this process only.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/glm_ablation.py --voxels 2000 --seed 0 \\
        --generators dg-high dg-2rep lib-nsd --glmsingle-cache /tmp/glmcache \\
        --glmsingle-python /work/.venv-glm13/bin/python [--variants default ols ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_glm  # noqa: E402

VARIANTS = ("default", "beyond-drift", "with-drift", "ols", "gs-count", "gs-pool", "gs-pcs", "drift-pcs", "drift-pcs-gs-pool", "drift-2", "drift-4", "gs-library", "gs-hrf",
            "oracle-hrf", "gs-all")


def glmsingle_kernels(table: str, t_r: float, oversampling: int = 50) -> np.ndarray:
    """GLMsingle's library (its table: impulse responses every 0.1 s) on our kernel grid, unit sum, (20, n)."""
    values = np.loadtxt(table)
    grid = np.arange(values.shape[0]) * 0.1
    dt = t_r / oversampling
    t = np.arange(int(round(32.0 / dt))) * dt
    kernels = np.stack([np.interp(t, grid, values[:, j], right=0.0) for j in range(values.shape[1])])
    return kernels / kernels.sum(1, keepdims=True)


@contextlib.contextmanager
def swapped(kernels=None, hrf_index=None, n_pcs=None, pool=None, pcs=None, drift_pcs=False):
    """Replace some of the engine's choices in this process (restored on exit)."""
    import torch

    from bids_m2i.glm import estimate, model

    saved = {}

    def patch(module, name, value):
        saved[(module, name)] = getattr(module, name)
        setattr(module, name, value)

    if kernels is not None:
        patch(model, "library_kernels", lambda t_r, oversampling=50, name=None: kernels(t_r, oversampling))
    if hrf_index is not None:
        original = estimate.library_fitted_ss

        def forced(model_, data_runs, library, selection="full"):
            fitted = original(model_, data_runs, library, selection)
            if fitted.shape[1] != hrf_index.size:
                raise RuntimeError("the forced HRF index needs one voxel chunk")
            top = fitted.max(0).values
            fitted = fitted.clone()
            fitted[torch.as_tensor(hrf_index.astype(np.int64)), torch.arange(hrf_index.size)] = top * (1 + 1e-5) + 1e-9
            return fitted

        patch(estimate, "library_fitted_ss", forced)
    if n_pcs is not None:
        patch(estimate, "choose_n_pcs", lambda *a, **k: (int(n_pcs), [0.0] * (int(k.get("max_pcs", a[5])) + 1)))
    if pool is not None:
        patch(estimate, "noise_pool", lambda onoff_r2, brain, threshold=None: (pool.copy(), 0.0))
    if drift_pcs:
        def drift_residuals(model_, run, data):
            fixed = torch.as_tensor(model_.fixed_basis(run), dtype=data.dtype, device=data.device)
            return data - (data @ fixed) @ fixed.T

        patch(estimate, "onoff_residuals", drift_residuals)
    if pcs is not None:
        base = estimate.NoisePCAccumulator

        class Given(base):
            def components(self, max_pcs):
                return [np.asarray(p[:, :max_pcs], dtype=float) for p in pcs]

        patch(estimate, "NoisePCAccumulator", Given)
    try:
        yield
    finally:
        for (module, name), value in saved.items():
            setattr(module, name, value)


def fit(session, swaps=None, **options):
    from bids_m2i.glm.estimate import estimate_single_trial_betas

    runs, trials = bench_glm._ours_inputs(session)
    with swapped(**(swaps or {})):
        result = estimate_single_trial_betas(runs, trials, method=options.pop("method", "fithrf-denoise-rr"),
                                             n_threads=1, **options)
    return result


def score(betas, session):
    truth, responsive, stimulus = session["true_betas"], session["responsive"], session["stimulus"]
    return (float(np.median(bench_glm.r_trial(betas, truth, responsive))),
            float(np.median(bench_glm.test_retest(betas[:, responsive], stimulus))))


def oracle_index(session, n_kernels, kernels=None, **options):
    """Per voxel, the library kernel whose ``fithrf`` betas correlate best with the truth (responsive voxels;
    the others keep ours' choice)."""
    truth, responsive = session["true_betas"], session["responsive"]
    everyone = np.arange(truth.shape[1])
    scores = []
    for k in range(n_kernels):
        swaps = {"hrf_index": np.full(truth.shape[1], k), "kernels": kernels}
        result = fit(session, swaps, method="fithrf", hrf_noise_correction=0.0, **options)
        scores.append(bench_glm.r_trial(result.betas, truth, everyone))
    scores = np.nan_to_num(np.stack(scores), nan=-1.0)
    ours = fit(session, {"kernels": kernels}, method="fithrf", **options).hrf_index
    return np.where(responsive, np.argmax(scores, 0), ours).astype(np.int64)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generators", nargs="+", default=list(bench_glm.GENERATORS), choices=bench_glm.GENERATORS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--glmsingle-cache", type=Path, required=True)
    parser.add_argument("--glmsingle-python", required=True, help="python of GLMsingle's environment (its table)")
    parser.add_argument("--stages", nargs="+", default=["C", "D"], choices=("C", "D"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    table = bench_glm.glmsingle_table(args.glmsingle_python)
    rows = []
    for generator in args.generators:
        session = bench_glm.make_session(generator, args.voxels, args.seed, table)
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            path = os.path.join(tmp, "session.npz")
            bench_glm.save_session(session, path)
            cache = bench_glm._cache_folder(args.glmsingle_cache, generator, args.seed, args.voxels, path)
        gs, extras = {}, {}
        if (cache / "run.json").exists():      # without it (e.g. fresh seeds) only GLMsingle-free variants run
            record = json.loads((cache / "run.json").read_text())["payload"]
            gs = {key: score(np.load(p), session) for key, p in record["betas"].items()}
            extras = dict(np.load(record["extras"])) if record.get("extras") else {}
        print(f"\n{generator} seed {args.seed}: GLMsingle "
              + (", ".join(f"{k} {v[0]:.3f}/{v[1]:.3f}" for k, v in gs.items()) or "not in the cache")
              + f"; its PCs {extras.get('typed_pcnum')}, pool "
              + (str(int(extras["typed_noisepool"].sum())) if extras else "?"))
        print("| variant | PCs | C r_trial / tr | D r_trial / tr | D − GLMsingle D | s |")
        print("| --- | ---: | --- | --- | --- | ---: |")
        gs_kernels = lambda t_r, oversampling=50: glmsingle_kernels(table, t_r, oversampling)  # noqa: E731
        gs_pcs = [extras[f"pcregressors_{r}"] for r in range(len(session["runs"]))] if extras else None
        for variant in args.variants:
            if (variant.startswith("gs-") or variant.endswith("gs-pool")) and not extras:
                continue
            start = time.perf_counter()
            swaps, options = {}, {}
            if variant == "default":
                pass
            elif variant == "beyond-drift":
                options["selection_r2"] = "beyond-drift"
            elif variant == "with-drift":
                options["selection_r2"] = "with-drift"
            elif variant == "ols":
                options["noise_model"] = "ols"
            elif variant == "gs-count":
                swaps["n_pcs"] = int(extras["typed_pcnum"])
            elif variant == "gs-pool":
                swaps["pool"] = extras["typed_noisepool"].astype(bool)
            elif variant == "gs-pcs":
                swaps.update(n_pcs=int(extras["typed_pcnum"]), pcs=gs_pcs)
            elif variant == "drift-pcs":
                options.update(pc_source="drift-residuals", selection_r2="beyond-drift")
            elif variant == "drift-pcs-gs-pool":
                swaps.update(drift_pcs=True, pool=extras["typed_noisepool"].astype(bool))
            elif variant in ("drift-2", "drift-4"):
                options.update(drift_model="polynomial", drift_order=int(variant[-1]))
            elif variant == "gs-library":
                swaps["kernels"] = gs_kernels
            elif variant == "gs-hrf":
                swaps.update(kernels=gs_kernels, hrf_index=extras["typeb_HRFindex"].astype(np.int64))
                options["hrf_noise_correction"] = 0.0
            elif variant == "oracle-hrf":
                swaps["hrf_index"] = oracle_index(session, 20)
                options["hrf_noise_correction"] = 0.0
            elif variant == "gs-all":
                swaps.update(kernels=gs_kernels, hrf_index=extras["typeb_HRFindex"].astype(np.int64),
                             n_pcs=int(extras["typed_pcnum"]), pcs=gs_pcs)
                options.update(hrf_noise_correction=0.0, noise_model="ols")
            row = {"generator": generator, "seed": args.seed, "variant": variant,
                   "glmsingle": {k: list(v) for k, v in gs.items()}}
            for stage in args.stages:
                result = fit(session, swaps, **options, **({"fractions": (1.0,)} if stage == "C" else {}))
                row[stage] = score(result.betas, session)
                row["n_pcs"] = result.metadata["n_pcs"]
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            cell = {s: f"{row[s][0]:.3f} / {row[s][1]:.3f}" if s in row else "" for s in ("C", "D")}
            delta = (f"{row['D'][0] - gs['D'][0]:+.3f} / {row['D'][1] - gs['D'][1]:+.3f}"
                     if "D" in row and "D" in gs else "")
            print(f"| {variant} | {row['n_pcs']} | {cell['C']} | {cell['D']} | {delta} | {row['seconds']:.0f} |",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
