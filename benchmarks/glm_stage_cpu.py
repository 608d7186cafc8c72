"""CPU seconds of each stage of ours' single-trial GLM, in one process (issue 13, speed).

Builds one session of a ``bench_glm.py`` generator, then runs ``estimate_single_trial_betas`` (1 thread) a few
times and prints the fit's CPU time (the smallest of the repeats, a warm process: imports and the first
touch of memory are not counted, unlike ``bench_glm.py``'s whole-process figure) and the CPU time spent in
each stage of that repeat. Stages are timed by wrapping the engine's functions; ``OLS designs`` (the
factorisations of every library HRF's design) is nested in the HRF-library pass and the number of PCs.

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/glm_stage_cpu.py --voxels 20000 --generator dg-nsd
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

STAGES = (("estimate", "library_fitted_ss", "HRF library pass"), ("estimate", "choose_n_pcs", "number of PCs"),
          ("estimate", "estimate_ar1", "AR(1) estimate"), ("whitening", "whitened_operators", "whitened designs"),
          ("estimate", "fractional_ridge_cv", "ridge CV"), ("estimate", "ncsnr", "ncsnr"),
          ("estimate", "total_sum_of_squares", "total SS"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--generator", default="dg-nsd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--session", help="an .npz of bench_glm.save_session (written there if absent)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import bench_glm
    from bids_m2i.glm import estimate, model, whitening

    spent = collections.defaultdict(float)

    def timed(function, label):
        def wrapper(*a, **k):
            start = time.process_time()
            try:
                return function(*a, **k)
            finally:
                spent[label] += time.process_time() - start
        return wrapper

    modules = {"estimate": estimate, "whitening": whitening}
    for module, name, label in STAGES:
        setattr(modules[module], name, timed(getattr(modules[module], name), label))
    model.SessionModel._build_all_kernels = timed(model.SessionModel._build_all_kernels, "OLS designs (nested)")

    with tempfile.TemporaryDirectory() as folder:
        path = args.session or os.path.join(folder, "session.npz")
        if not Path(path).exists():
            bench_glm.save_session(bench_glm.make_session(args.generator, args.voxels, args.seed, None), path)
        runs, trials = bench_glm._ours_inputs(bench_glm.load_session(path))
    best = None
    for _ in range(args.repeats):
        spent.clear()
        start = time.process_time()
        estimate.estimate_single_trial_betas(runs, trials, method="fithrf-denoise-rr", n_threads=1)
        total = time.process_time() - start
        if best is None or total < best[0]:
            best = (total, dict(spent))
    print(f"{args.generator}, V = {args.voxels}: fit CPU s (least of {args.repeats}) {best[0]:.2f}")
    for label, seconds in best[1].items():
        print(f"  {label:24s} {seconds:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
