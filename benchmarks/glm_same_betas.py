"""Do two versions of the code give the same single-trial betas? (issue 13: speed without changing results)

Runs ``fithrf-denoise-rr`` (1 thread) with the code of each tree on the same sessions of three ``bench_glm.py``
generators — ``dg-nsd`` (V = 20,000 by default), ``ours`` and ``dg-2rep`` (V = 4,000) — each tree in its own
process, and compares: the largest absolute difference of the betas relative to their sd (pass: ≤ 1e-4), and
whether the HRF choice, the number of PCs and the ridge fraction are equal in every voxel.

    git archive integ | tar -x -C /tmp/integ-tree
    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/glm_same_betas.py /tmp/integ-tree $PWD --folder /tmp/same

Other sessions: ``--sessions lib-nsd:20000 dg-high:4000 --seed 3`` (``lib-nsd`` reads GLMsingle's HRF table:
``--glmsingle-python``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SESSIONS = (("dg-nsd", 20000), ("ours", 4000), ("dg-2rep", 4000))
FIELDS = ("betas", "hrf_index", "n_pcs", "frac")


def child(tree: str, folder: str, out: str, sessions=SESSIONS) -> None:
    """Fit every session with the code of ``tree`` and save its outputs (runs in a fresh interpreter)."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, tree)
    import torch

    torch.set_num_threads(1)
    import bench_glm
    from bids_m2i.glm.estimate import estimate_single_trial_betas

    saved = {}
    for name, n_voxels in sessions:
        path = os.path.join(folder, f"{name}-{n_voxels}.npz")
        runs, trials = bench_glm._ours_inputs(bench_glm.load_session(path))
        result = estimate_single_trial_betas(runs, trials, method="fithrf-denoise-rr", n_threads=1)
        saved.update({f"{name}/{field}": getattr(result, field) for field in FIELDS})
    np.savez(out, **saved)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="root of the reference tree (e.g. branch integ, unpacked)")
    parser.add_argument("after", help="root of the tree to check")
    parser.add_argument("--folder", required=True, help="where the sessions and outputs are written")
    parser.add_argument("--sessions", nargs="+", default=[f"{n}:{v}" for n, v in SESSIONS],
                        help="generator:voxels of bench_glm.py (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--glmsingle-python", default=None, help="for lib-nsd (GLMsingle's HRF table)")
    parser.add_argument("--hrf-table", default=None, help="for lib-nsd: GLMsingle's getcanonicalhrflibrary.tsv "
                        "itself (when the installed package lacks it)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sessions = [(text.split(":")[0], int(text.split(":")[1])) for text in args.sessions]
    if args.child:
        child(args.child, args.folder, os.path.join(args.folder, Path(args.child).name + ".npz"), sessions)
        return 0

    if Path(args.before).resolve().name == Path(args.after).resolve().name:
        raise SystemExit("the two trees need different folder names (their outputs are named after them)")
    sys.path.insert(0, str(HERE))
    import bench_glm

    os.makedirs(args.folder, exist_ok=True)
    table = args.hrf_table or (bench_glm.glmsingle_table(args.glmsingle_python) if args.glmsingle_python else None)
    for name, n_voxels in sessions:
        path = os.path.join(args.folder, f"{name}-{n_voxels}.npz")
        if not os.path.exists(path):   # the folder holds one seed's sessions
            bench_glm.save_session(bench_glm.make_session(name, n_voxels, args.seed, table), path)
    outputs = []
    for tree in (args.before, args.after):
        tree = str(Path(tree).resolve())
        env = dict(os.environ, PYTHONPATH=tree)
        subprocess.run([sys.executable, __file__, tree, tree, "--folder", args.folder, "--sessions", *args.sessions,
                        "--child", tree],
                       check=True, env=env)
        outputs.append(np.load(os.path.join(args.folder, Path(tree).name + ".npz")))
    before, after = outputs
    same = True
    for name, n_voxels in sessions:
        reference = before[f"{name}/betas"]
        difference = float(np.abs(reference - after[f"{name}/betas"]).max() / reference.std())
        equal = {field: bool(np.array_equal(before[f"{name}/{field}"], after[f"{name}/{field}"]))
                 for field in FIELDS[1:]}
        print(f"{name} (V = {n_voxels}): max |Δbeta| / sd = {difference:.1e}; equal: "
              + ", ".join(f"{field} {ok}" for field, ok in equal.items()))
        same &= difference <= 1e-4 and all(equal.values())
    print("SAME" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
