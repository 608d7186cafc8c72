"""Benchmark: the single-trial GLM node's peak resident memory against its ``--mem-gb`` budget at NSD size.

Issue 16's goal: "GLM peak RSS within ``--mem-gb`` at 200k voxels and 750 trials". This writes an NSD-like
session (``--runs`` runs of ``--volumes`` volumes, 252 stimuli x 3 repeats = 756 trials by default, each
repeat in another run) on a grid of ``--voxels`` in-mask voxels, then runs the app's GLM node
(``bids_m2i.interfaces.glm.SingleTrialBetas``, ``fithrf-denoise-rr``) in a fresh child process whose budget is
its own baseline (python, numpy, torch, nipype) plus ``--headroom-gb``. It prints the engine's plan (chunk
size), the budget and the process' high-water mark (``VmHWM``). The voxels' time series are noise around a
baseline: memory and time do not depend on the signal.

Run (from the repository root; the data take ``4 x voxels x runs x volumes`` bytes of disk, 2.2 GB by default)::

    .venv/bin/python benchmarks/bench_glm_node_memory.py --folder /tmp/glm200k --voxels 200000 --headroom-gb 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from bids_m2i.interfaces.glm import SingleTrialBetas, process_rss_gb
    import bids_m2i.glm.estimate, bids_m2i.reports.figures  # torch (and the figures, without matplotlib)

    folder, headroom_gb, tr = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    baseline = process_rss_gb()
    budget = baseline + headroom_gb
    runs = sorted(folder.glob("run-*_bold.nii"))
    node = SingleTrialBetas(bold_files=[str(p) for p in runs],
                            confounds_files=[str(p).replace("_bold.nii", "_confounds.tsv") for p in runs],
                            mask=str(folder / "mask.nii"), trials=str(folder / "trials.tsv"),
                            run_labels=[p.name[len("run-"):-len("_bold.nii")] for p in runs],
                            trs=[tr] * len(runs), method="fithrf-denoise-rr", mem_gb=budget, n_threads=1)
    work = folder / "node"
    work.mkdir()
    start = time.perf_counter()
    result = node.run(cwd=str(work))
    wall = time.perf_counter() - start
    meta = json.loads(Path(result.outputs.statseries_meta).read_text())
    peak = [int(line.split()[1]) * 1024 / 1e9 for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
    print(json.dumps({"baseline_gb": baseline, "budget_gb": budget, "peak_gb": peak, "wall_s": wall,
                      "plan": meta["memory"]}))
""")


def write_session(folder: Path, n_voxels: int, n_runs: int, n_volumes: int, n_stimuli: int, seed: int) -> float:
    """An NSD-like design (``simulate_session``'s trials table) and noise runs on a grid of ``n_voxels``."""
    import nibabel as nib

    from bids_m2i.glm.simulation import simulate_session

    sim = simulate_session(n_voxels=10, n_runs=n_runs, n_volumes=n_volumes, n_stimuli=n_stimuli, n_repeats=3,
                           seed=seed)
    side = int(np.ceil(np.sqrt(n_voxels / 50)))
    shape = (side, side, 50)
    mask = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    mask[:n_voxels] = 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(mask.reshape(shape), affine), folder / "mask.nii")
    rng = np.random.default_rng(seed)
    for run in sim.runs:
        data = 1000.0 + 10.0 * rng.standard_normal((*shape, n_volumes), dtype=np.float32)
        nib.save(nib.Nifti1Image(data, affine), folder / f"run-{run.run}_bold.nii")
        (folder / f"run-{run.run}_confounds.tsv").write_text(
            "framewise_displacement\n" + "n/a\n" + "0.1\n" * (n_volumes - 1))
    sim.trials.to_csv(folder / "trials.tsv", sep="\t", index=False, na_rep="n/a")
    return float(sim.runs[0].tr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--voxels", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--volumes", type=int, default=226)
    parser.add_argument("--stimuli", type=int, default=252, help="x 3 repeats = trials (756: NSD has 750)")
    parser.add_argument("--headroom-gb", type=float, default=4.0, help="the budget above the process' baseline")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shutil.rmtree(args.folder, ignore_errors=True)
    args.folder.mkdir(parents=True)
    start = time.perf_counter()
    tr = write_session(args.folder, args.voxels, args.runs, args.volumes, args.stimuli, args.seed)
    print(f"wrote the session in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(args.folder), str(args.headroom_gb), str(tr)],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report.update(voxels=args.voxels, runs=args.runs, volumes=args.volumes, trials=3 * args.stimuli,
                  within_budget=report["peak_gb"] <= report["budget_gb"])
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
