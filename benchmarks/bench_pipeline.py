"""Benchmark: the participant level stage by stage on a simulated NSD-like session.

The dataset is the simulator's ``nsd-like`` preset with one session (8 runs of 80×80×56 voxels, ~350
volumes each); ``--small`` makes the same design on a 40×40×28 grid of 4 mm voxels (8× fewer voxels) for a
quick look. ``m2i BIDS OUT participant`` then runs three times in child processes on one work dir, each
stage reusing the finished nodes of the one before:

1. ``--stop-after preproc`` (motion correction, resampling, confounds, figures),
2. ``--stop-after glm`` (single-trial betas),
3. the whole pipeline (decoding, images, metrics, report),

and, with ``--rerun``, the whole pipeline once more (nothing left to compute: the cost of a check).

Per stage: wall time, CPU time of the process tree (user + system of the m2i process and its nipype
workers), peak RSS of the largest single process (``ru_maxrss`` of the children) and of the whole tree
(sampled from ``/proc`` every 0.1 s, see ``bench_memory.py``), and the disk used by OUTPUT_DIR plus the work
dir afterwards (hard-linked files counted once) against the input dataset's size.

Run (from the repository root; nice it on a shared machine)::

    nice -n 10 .venv/bin/python benchmarks/bench_pipeline.py --small --nprocs 2
    nice -n 10 .venv/bin/python benchmarks/bench_pipeline.py --nprocs 2 --markdown /tmp/bench_pipeline.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import TreeSampler  # noqa: E402  (a sibling script)

SMALL = {"shape": (40, 40, 28), "voxel_mm": 4.0, "n_early": 600, "n_higher": 500}
STAGES = (("preprocessing", ["--stop-after", "preproc"]), ("single-trial betas", ["--stop-after", "glm"]),
          ("decoding + report", []))


def disk_bytes(*folders: Path) -> int:
    """Bytes on disk under ``folders``; a file hard-linked several times is counted once."""
    seen, total = set(), 0
    for folder in folders:
        if not folder.exists():
            continue
        for root, _dirs, files in os.walk(folder):
            for name in files:
                try:
                    st = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def make_dataset(folder: Path, small: bool, seed: int) -> Path:
    from bids_m2i.simulate import simulate_dataset

    overrides = dict(SMALL) if small else {}
    return simulate_dataset(folder, preset="nsd-like", seed=seed, sessions=1, **overrides)


# runs m2i in a child and prints the children's resource usage: ru_maxrss is a high-water mark over every
# child a process ever had, so each stage gets a fresh parent to measure its own
STAGE_WRAPPER = """
import json, resource, subprocess, sys
code = subprocess.call(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=open(sys.argv[1], "w"))
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": code, "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss}))
"""


def run_stage(bids: Path, out: Path, work: Path, args: list[str], common: list[str]) -> dict:
    command = [sys.executable, "-m", "bids_m2i.cli.run", str(bids), str(out), "participant", "-w", str(work),
               *common, *args]
    stderr_file = work.parent / "stage_stderr.txt"
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", STAGE_WRAPPER, str(stderr_file), *command],
                               stdout=subprocess.PIPE, text=True)
    sampler = TreeSampler(process.pid)
    sampler.start()
    stdout, _ = process.communicate()
    sampler.stop()
    wall = time.perf_counter() - start
    usage = json.loads(stdout.strip().splitlines()[-1])
    if usage["code"] != 0:
        raise SystemExit(f"{' '.join(command)} exited {usage['code']}:\n{stderr_file.read_text()[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage["cpu_s"], "peak_process_gb": usage["maxrss_kb"] * 1024 / 1e9,
            "peak_tree_gb": sampler.peak / 1e9,
            "disk_gb": disk_bytes(out, work) / 1e9, "out_gb": disk_bytes(out) / 1e9,
            "work_gb": disk_bytes(work) / 1e9}


def describe(bids: Path) -> str:
    import nibabel as nib

    bolds = sorted(bids.rglob("*_bold.nii.gz"))
    shapes = {nib.load(p).shape[:3] for p in bolds}
    volumes = [nib.load(p).shape[3] for p in bolds]
    return (f"{len(bolds)} runs of {' / '.join('×'.join(map(str, s)) for s in shapes)} voxels, "
            f"{min(volumes)}–{max(volumes)} volumes")


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Dataset: {meta['dataset']}; input {meta['input_gb']:.2f} GB. m2i options: `{meta['options']}`. "
             f"Machine: {meta['machine']}.", "",
             "| stage | wall (s) | CPU (s) | peak RSS, largest process (GB) | peak RSS, process tree (GB) | "
             "outputs + work dir after (GB) | × input |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['stage']} | {row['wall_s']:.0f} | {row['cpu_s']:.0f} | {row['peak_process_gb']:.2f} | "
                     f"{row['peak_tree_gb']:.2f} | {row['disk_gb']:.2f} (outputs {row['out_gb']:.2f}, work "
                     f"{row['work_gb']:.2f}) | {row['disk_gb'] / meta['input_gb']:.1f} |")
    total_wall = sum(r["wall_s"] for r in rows if r["stage"] in dict(STAGES))
    total_cpu = sum(r["cpu_s"] for r in rows if r["stage"] in dict(STAGES))
    lines += ["", f"Participant level in all: {total_wall:.0f} s wall, {total_cpu:.0f} s CPU."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="40×40×28 grid at 4 mm instead of 80×80×56 at 2 mm")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--omp-nthreads", type=int, default=1)
    parser.add_argument("--mem-gb", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerun", action="store_true", help="time a second identical full run too")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep the dataset and outputs in")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    root.mkdir(parents=True, exist_ok=True)
    bids, out, work = root / "bids", root / "out", root / "work"
    for folder in (out, work):
        shutil.rmtree(folder, ignore_errors=True)
    if not (bids / "dataset_description.json").exists():
        start = time.perf_counter()
        make_dataset(bids, args.small, args.seed)
        print(f"simulated in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    common = ["--nprocs", str(args.nprocs), "--omp-nthreads", str(args.omp_nthreads)]
    if args.mem_gb:
        common += ["--mem-gb", str(args.mem_gb)]
    input_gb = disk_bytes(*[p for p in bids.iterdir() if p.name != "derivatives"]) / 1e9  # not the truth
    stages = list(STAGES) + ([("rerun, nothing to do", [])] if args.rerun else [])
    rows = []
    for name, stage_args in stages:
        row = {"stage": name, **run_stage(bids, out, work, stage_args, common)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    meta = {"dataset": describe(bids), "input_gb": input_gb, "options": " ".join(common),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, load average "
                       f"{os.getloadavg()[0]:.1f} at the end"}
    text = markdown(rows, meta)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
