"""Single-trial betas with OLS vs AR(1) prewhitening (``noise_model``), stage by stage, beside GLMsingle type D.

In-process (one interpreter, same sessions for every row; times are ratios within this run, not whole
processes): for each generator of ``bench_glm.py`` (the same sessions, built by its ``make_session``), ours'
three stages (``fithrf``; ``fithrf-denoise`` = the full pipeline with the ridge fraction fixed at 1;
``fithrf-denoise-rr``) are fitted with ``noise_model="ols"`` and ``"ar1"`` and scored as ``bench_glm.py`` scores
them (r_trial, test-retest over responsive voxels). GLMsingle's type-D betas are read from the cache that
``bench_glm.py --glmsingle-cache`` fills (never rerun here); without it the "− D" columns are empty.

    nice -n 10 .venv/bin/python benchmarks/bench_glm_noise_model.py --voxels 2000 --seed 0 \\
        --glmsingle-cache /tmp/glmsingle-cache --glmsingle-python /work/.venv-glm13/bin/python \\
        [--stages fithrf-denoise-rr] [--hrf-library narrow] [--json out.json]

``--glmsingle-python`` is only needed for ``lib-nsd`` (GLMsingle's HRF table, read from its installed package).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_glm as B  # noqa: E402

STAGES = ("fithrf", "fithrf-denoise", "fithrf-denoise-rr")


def score(betas, session):
    return (float(np.median(B.r_trial(betas, session["true_betas"], session["responsive"]))),
            float(np.median(B.test_retest(betas[:, session["responsive"]], session["stimulus"]))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voxels", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generators", nargs="+", default=list(B.GENERATORS), choices=B.GENERATORS)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--hrf-library", default=None, help="passed to the engine when given (broad | narrow)")
    parser.add_argument("--glmsingle-cache", type=Path, default=None)
    parser.add_argument("--glmsingle-python", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from bids_m2i.glm.estimate import estimate_single_trial_betas

    table = B.glmsingle_table(args.glmsingle_python) if args.glmsingle_python else None
    extra = {"hrf_library": args.hrf_library} if args.hrf_library else {}
    rows = []
    print("| generator | stage | noise model | r_trial | test-retest | − GLMsingle D | median ρ | fit s |")
    print("| --- | --- | --- | ---: | ---: | --- | ---: | ---: |")
    for generator in args.generators:
        if generator == "lib-nsd" and table is None:
            print(f"| lib-nsd | skipped: needs --glmsingle-python (its HRF table) |")
            continue
        session = B.make_session(generator, args.voxels, args.seed, table)
        reference = (np.nan, np.nan)
        if args.glmsingle_cache:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "session.npz")
                B.save_session(session, path)
                folder = B._cache_folder(args.glmsingle_cache, generator, args.seed, args.voxels, path)
            if (folder / "run.json").exists():
                reference = score(np.load(folder / "betasD.npy"), session)
        runs, trials = B._ours_inputs(session)
        for stage in args.stages:
            for noise_model in ("ols", "ar1"):
                kwargs = dict(extra, noise_model=noise_model, n_threads=args.threads)
                if stage == "fithrf-denoise":
                    kwargs["fractions"] = (1.0,)
                method = "fithrf-denoise-rr" if stage == "fithrf-denoise" else stage
                start = time.perf_counter()
                result = estimate_single_trial_betas(runs, trials, method=method, **kwargs)
                seconds = time.perf_counter() - start
                r, tr = score(result.betas, session)
                rho = (result.metadata.get("ar1") or {}).get("median")
                row = {"generator": generator, "seed": args.seed, "stage": stage, "noise_model": noise_model,
                       "r_trial": r, "test_retest": tr, "glmsingle_d": reference, "median_rho": rho,
                       "fit_s": seconds, "n_pcs": result.metadata["n_pcs"]}
                rows.append(row)
                versus = f"{r - reference[0]:+.3f} / {tr - reference[1]:+.3f}" if np.isfinite(reference[0]) else ""
                rho_text = f"{rho:.2f}" if rho is not None else ""
                print(f"| {generator} | {stage} | {noise_model} | {r:.3f} | {tr:.3f} | {versus} | {rho_text} | "
                      f"{seconds:.1f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
