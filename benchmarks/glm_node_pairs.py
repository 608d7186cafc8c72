"""Two versions of the code, the GLM node's whole process each, in alternating pairs (issue 13, speed).

The machine this project is measured on is shared, so CPU seconds drift with the load from one minute to the
next: comparing two trees is only fair inside one run, alternately. For each generator this writes the session
as the node reads it (``bench_glm.write_node_inputs``), then runs ``bench_glm.py``'s node child (the app's GLM
node, ``fithrf-denoise-rr``, 1 thread, in a fresh interpreter: imports, reading, the fit, writing and
publishing) with the code of tree A, then of tree B, ``--pairs`` times, and prints each process' CPU seconds
(user + system, start to exit, and each apart), its start-up and step CPU, its minor page faults, peak RSS,
the number of PCs and how far B's betas are from A's (max |Δ| / sd of A's).

    git archive 433f9e0 | tar -x -C /tmp/before
    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/glm_node_pairs.py /tmp/before $PWD \\
        --generators dg-nsd lib-nsd --glmsingle-python /work/.venv-glm13/bin/python
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def run_node(tree: str, folder: str, data_path: str, out: str) -> dict:
    """bench_glm.py's node child with the code of ``tree`` (its own copy of bench_glm.py)."""
    import json

    env = dict(os.environ, PYTHONPATH=tree, NIPYPE_NO_ET="1")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(tree, "benchmarks", "bench_glm.py"), "--threads", "1",
                           "--node-inputs", folder, "--child", "fithrf-denoise-rr", data_path, out],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"cpu": user + system, "user": user, "system": system, "wall": wall,
            "minor_faults": after.ru_minflt - before.ru_minflt, **payload}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree_a")
    parser.add_argument("tree_b")
    parser.add_argument("--generators", nargs="+", default=["dg-nsd", "lib-nsd"])
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--glmsingle-python", default=None, help="for lib-nsd (GLMsingle's HRF table)")
    parser.add_argument("--hrf-table", default=None, help="for lib-nsd: GLMsingle's getcanonicalhrflibrary.tsv "
                        "itself (when the installed package lacks it)")
    args = parser.parse_args(argv)
    import bench_glm

    table = args.hrf_table or (bench_glm.glmsingle_table(args.glmsingle_python) if args.glmsingle_python else None)
    trees = {"A": str(Path(args.tree_a).resolve()), "B": str(Path(args.tree_b).resolve())}
    print(f"A = {trees['A']}, B = {trees['B']}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| generator | pair | tree | load | process CPU s | user / system CPU s | start-up CPU s | step CPU s | "
          "minor page faults (k) | peak RSS MB | PCs | max abs diff / sd (B vs A) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for generator in args.generators:
        session = bench_glm.make_session(generator, args.voxels, args.seed, table)
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            data_path = os.path.join(tmp, "session.npz")
            bench_glm.save_session(session, data_path)
            folder = str(Path(tmp) / "inputs")
            bench_glm.write_node_inputs(session, Path(folder))
            for pair in range(args.pairs):
                betas = {}
                for name, tree in trees.items():
                    load = os.getloadavg()[0]
                    out = os.path.join(tmp, f"{name}{pair}.npy")
                    row = run_node(tree, folder, data_path, out)
                    betas[name] = bench_glm.read_node_betas(row["node"]["statseries"], row["node"]["events"],
                                                            session)
                    info = row["info"]
                    diff = (f"{np.abs(betas['B'] - betas['A']).max() / betas['A'].std():.1e}"
                            if name == "B" else "")
                    print(f"| {generator} | {pair + 1} | {name} | {load:.1f} | {row['cpu']:.2f} | "
                          f"{row['user']:.2f} / {row['system']:.2f} | {info['startup_cpu_s']:.2f} | "
                          f"{info['step_cpu_s']:.2f} | {row['minor_faults'] / 1000:.0f} | {row['peak_rss_mb']:.0f} | "
                          f"{info['n_pcs']} | {diff} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
