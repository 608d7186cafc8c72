"""The noise pool with and without its stimulus-driven voxels, on the GLM benchmark's generators (issue 14).

For each generator and seed (``bench_glm.make_session``, same sessions as ``bench_glm.py``), ours
(``fithrf-denoise-rr``, the engine in this process) runs with ``pool_exclusion="none"`` (the default) and
``"repeat-reliable"`` (``bids_m2i.glm.denoise.reliable_in_pool``). Per run: r_trial and test-retest (medians over
responsive voxels, as ``bench_glm.py`` scores them), the number of PCs, the pool's size and its share of
responsive voxels before and after the exclusion, and how many voxels the rule took out.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/glm_pool_exclusion.py --voxels 2000 --seeds 0 1 \\
        --generators ours dg-nsd dg-high dg-2rep [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_glm  # noqa: E402

RULES = ("none", "repeat-reliable")


def fit_with_pool_spy(runs, trials, rule: str, **options):
    """The engine's fit with ``pool_exclusion=rule``, and the noise pool before and after the exclusion.

    The exclusion edits the pool in place, so both are copied as the engine passes them."""
    from bids_m2i.glm import estimate

    seen = {}
    original_pool, original_exclude = estimate.noise_pool, estimate._exclude_reliable

    def spy_pool(onoff_r2, brain, threshold=None):
        pool, value = original_pool(onoff_r2, brain, threshold)
        seen["before"] = pool.copy()
        return pool, value

    def spy_exclude(model, chunks, load, pool, *args):
        info = original_exclude(model, chunks, load, pool, *args)
        seen["after"] = pool.copy()
        return info

    estimate.noise_pool, estimate._exclude_reliable = spy_pool, spy_exclude
    try:
        result = estimate.estimate_single_trial_betas(runs, trials, pool_exclusion=rule, **options)
    finally:
        estimate.noise_pool, estimate._exclude_reliable = original_pool, original_exclude
    return result, seen["before"], seen.get("after", seen["before"])


def run_one(session: dict, rule: str, threads: int = 1) -> dict:
    import torch

    torch.set_num_threads(threads)
    runs, trials = bench_glm._ours_inputs(session)
    start = time.perf_counter()
    result, before, after = fit_with_pool_spy(runs, trials, rule, n_threads=threads)
    elapsed = time.perf_counter() - start
    responsive = session["responsive"]
    meta = result.metadata
    return {"rule": rule, "r_trial": float(np.median(bench_glm.r_trial(result.betas, session["true_betas"],
                                                                          responsive))),
            "test_retest": float(np.median(bench_glm.test_retest(result.betas, session["stimulus"])[responsive])),
            "n_pcs": meta["n_pcs"], "pool_before": int(before.sum()), "pool_after": int(after.sum()),
            "responsive_share_before": float(before[responsive].sum() / max(before.sum(), 1)),
            "responsive_share_after": float(after[responsive].sum() / max(after.sum(), 1)),
            "exclusion": meta["noise_pool"].get("exclusion"), "fit_s": round(elapsed, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--generators", nargs="+", default=["ours", "dg-nsd", "dg-high", "dg-2rep"],
                        choices=[g for g in bench_glm.GENERATORS if g != "lib-nsd"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    print("| generator | seed | rule | r_trial | test-retest | PCs | pool (responsive share) before -> after | "
          "excluded (by chance) | fit s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for generator in args.generators:
        for seed in args.seeds:
            session = bench_glm.make_session(generator, args.voxels, seed, None)
            for rule in RULES:
                row = dict(run_one(session, rule, args.threads), generator=generator, seed=seed)
                rows.append(row)
                excl = row["exclusion"] or {}
                print(f"| {generator} | {seed} | {rule} | {row['r_trial']:.4f} | {row['test_retest']:.4f} | "
                      f"{row['n_pcs']} | {row['pool_before']} ({row['responsive_share_before']:.2f}) -> "
                      f"{row['pool_after']} ({row['responsive_share_after']:.2f}) | "
                      f"{excl.get('n_excluded', '')} ({excl.get('expected_by_chance', '')}) | {row['fit_s']} |",
                      flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
