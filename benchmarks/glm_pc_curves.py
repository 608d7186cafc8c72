"""The PC search's score curves on the benchmark sessions (issue 13, speed: could the search stop early?).

For each seed and ``generator:voxels``, fits ``fithrf-denoise-rr`` (1 thread) and records the chosen number of
noise PCs and the median score of every count K = 0..max_pcs (``pc_selection.median_cv_score``). A rule that
stops the search early can then be checked offline against every curve: it keeps the method's results only if it
chooses the same K on all of them.

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/glm_pc_curves.py --folder /tmp/curves \
        --seeds 0 1 2 5 6 --glmsingle-python /work/.venv-glm13/bin/python
    .venv/bin/python benchmarks/glm_pc_curves.py --folder /tmp/curves --evaluate

``--evaluate`` reads the recorded curves and checks the rule "stop once ``patience`` counts in a row after the
best so far did not beat it, and choose among the counts tried" for patience 1..10: on how many sessions it
chooses another K than the whole search, and how many counts it tries.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SESSIONS = ("dg-nsd:20000", "lib-nsd:20000", "ours:4000", "dg-low:4000", "dg-high:4000", "dg-2rep:4000",
            "nsd-session:2000")


def find_selection(metadata):
    """The ``pc_selection`` dict wherever the metadata nests it."""
    if isinstance(metadata, dict):
        if "pc_selection" in metadata:
            return metadata["pc_selection"]
        for value in metadata.values():
            found = find_selection(value)
            if found is not None:
                return found
    return None


def chosen(scores, stop: float = 0.95) -> int:
    """The search's rule (denoise._choose_n_pcs_ridge): the first count reaching ``stop`` of the best gain."""
    gains = np.asarray(scores, dtype=float)
    return 0 if gains.max() <= 0 else int(np.flatnonzero(gains >= stop * gains.max())[0])


def with_patience(scores, patience: int):
    """(K, counts tried) when the search stops ``patience`` counts after its best so far."""
    best, at, tried = -np.inf, 0, len(scores)
    for k, value in enumerate(scores):
        if value > best:
            best, at = value, k
        if k - at >= patience:
            tried = k + 1
            break
    return chosen(scores[:tried]), tried


def evaluate(path: str) -> None:
    with open(path) as handle:
        rows = [json.loads(line) for line in handle]
    print(f"{len(rows)} sessions: " + ", ".join(sorted({row['session'] for row in rows})) + "; seeds "
          + " ".join(str(s) for s in sorted({row['seed'] for row in rows})))
    print("chosen K: " + " ".join(f"{row['session'].split(':')[0]}/{row['seed']}={row['n_pcs']}" for row in rows))
    print("| patience | sessions with another K | counts tried per session (of 11) |")
    print("| ---: | ---: | ---: |")
    for patience in range(1, 11):
        results = [with_patience(row["scores"], patience) for row in rows]
        wrong = sum(k != chosen(row["scores"]) for (k, _), row in zip(results, rows))
        tried = np.mean([n for _, n in results])
        print(f"| {patience} | {wrong} | {tried:.2f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--evaluate", action="store_true", help="only evaluate the recorded curves")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 5, 6])
    parser.add_argument("--sessions", nargs="+", default=list(SESSIONS))
    parser.add_argument("--glmsingle-python", default=None, help="for lib-nsd (GLMsingle's HRF table)")
    parser.add_argument("--hrf-table", default=None, help="for lib-nsd: GLMsingle's getcanonicalhrflibrary.tsv "
                        "itself (when the installed package lacks it)")
    args = parser.parse_args(argv)
    if args.evaluate:
        evaluate(os.path.join(args.folder, "curves.jsonl"))
        return 0
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    sys.path.insert(0, str(HERE))
    import torch

    torch.set_num_threads(1)
    import bench_glm
    from bids_m2i.glm.estimate import estimate_single_trial_betas

    os.makedirs(args.folder, exist_ok=True)
    out = os.path.join(args.folder, "curves.jsonl")
    done = set()
    if os.path.exists(out):
        with open(out) as handle:
            done = {(row["session"], row["seed"]) for row in map(json.loads, handle)}
    table = args.hrf_table
    for seed in args.seeds:
        for text in args.sessions:
            if (text, seed) in done:
                continue
            name, n_voxels = text.split(":")[0], int(text.split(":")[1])
            if name == "lib-nsd" and table is None:
                table = bench_glm.glmsingle_table(args.glmsingle_python)
            session = bench_glm.make_session(name, n_voxels, seed, table)
            runs, trials = bench_glm._ours_inputs(session)
            result = estimate_single_trial_betas(runs, trials, method="fithrf-denoise-rr", n_threads=1)
            selection = find_selection(result.metadata)
            row = {"session": text, "seed": seed, "n_pcs": int(result.metadata["n_pcs"]),
                   "scores": selection.get("median_cv_score") if selection else None}
            print(json.dumps(row), flush=True)
            with open(out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
