"""Benchmark: peak memory (and time) of a whole ``m2i participant`` run on a simulated dataset.

The dataset is made by ``bids_m2i.simulate`` (preset ``demo`` by default; ``tiny`` for a quick look,
``nsd-like`` for an NSD-sized grid, 80×80×56 in two sessions: long), then ``m2i BIDS OUT participant`` runs
in a child process with the given ``--nprocs`` / ``--omp-nthreads`` / ``--mem-gb``. Two memory figures are reported:

* ``peak RSS (largest process)``: ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` after the run, i.e. the
  high-water mark of the largest single process among the children (the main process or one nipype
  worker); this is what one process needs;
* ``peak RSS (process tree)``: the largest sum of the resident sizes of the main process and all its
  descendants, sampled from ``/proc`` every 0.1 s; this is what a job's memory limit (SLURM ``--mem``,
  a container's ``--memory``) has to cover. Sampling can miss a peak shorter than 0.1 s.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_memory.py --preset demo --nprocs 1
    .venv/bin/python benchmarks/bench_memory.py --preset demo --nprocs 2 --markdown work/bench_memory.md
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """The process ids below ``pid`` (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants until stopped."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak, self.peak_processes = pid, interval, 0, 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            pids = [self.pid, *descendants(self.pid)]
            total = sum(rss_bytes(p) for p in pids)
            if total > self.peak:
                self.peak, self.peak_processes = total, len(pids)
            time.sleep(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def make_dataset(preset: str, seed: int, cache: Path) -> Path:
    from bids_m2i.simulate.dataset import simulate_dataset

    target = cache / f"{preset}-seed{seed}"
    if not (target / "dataset_description.json").exists():
        shutil.rmtree(target, ignore_errors=True)
        simulate_dataset(target, preset=preset, seed=seed)
    return target


def run_participant(bids: Path, nprocs: int, omp: int, mem_gb: float | None, extra: list[str]) -> dict:
    root = Path(tempfile.mkdtemp(prefix="m2i-bench-memory-"))
    command = [sys.executable, "-m", "bids_m2i.cli.run", str(bids), str(root / "out"), "participant",
               "-w", str(root / "work"), "--skip-bids-validation", "--nprocs", str(nprocs),
               "--omp-nthreads", str(omp), *extra]
    if mem_gb:
        command += ["--mem-gb", str(mem_gb)]
    env = {**os.environ, "OMP_NUM_THREADS": str(omp)}
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = TreeSampler(process.pid)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.stop()
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(root, ignore_errors=True)
    if process.returncode != 0:
        raise SystemExit(f"m2i failed (exit {process.returncode}):\n{stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_process_mb": usage.ru_maxrss / 1024, "tree_peak_mb": sampler.peak / 2**20,
            "tree_processes": sampler.peak_processes, "command": " ".join(command[1:])}


def describe(bids: Path) -> str:
    import nibabel as nib

    runs = sorted(bids.rglob("*_bold.nii.gz"))
    shapes = sorted({tuple(nib.load(r).shape[:3]) for r in runs})
    total = sum(nib.load(r).shape[-1] for r in runs)
    return f"{len(runs)} runs, {total} volumes, grid(s) {', '.join('×'.join(map(str, s)) for s in shapes)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo", help="simulator preset: tiny, demo, nsd-like")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1])
    parser.add_argument("--omp-nthreads", type=int, default=1)
    parser.add_argument("--mem-gb", type=float, default=None)
    parser.add_argument("--cache", type=Path, default=Path("work/bench_memory_data"))
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("extra", nargs="*", help="more m2i options, after --")
    args = parser.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    bids = make_dataset(args.preset, args.seed, args.cache)
    lines = [f"Dataset: simulator preset `{args.preset}` (seed {args.seed}): {describe(bids)}.", "",
             "| --nprocs | --omp-nthreads | wall s | CPU s | peak RSS, largest process (MB) | "
             "peak RSS, process tree (MB) | processes at the peak |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for nprocs in args.nprocs:
        # one child per row: RUSAGE_CHILDREN accumulates, so each row runs from a fresh interpreter
        if len(args.nprocs) > 1:
            row = subprocess.run([sys.executable, __file__, "--preset", args.preset, "--seed", str(args.seed),
                                  "--nprocs", str(nprocs), "--omp-nthreads", str(args.omp_nthreads),
                                  "--cache", str(args.cache), *(["--mem-gb", str(args.mem_gb)] if args.mem_gb else []),
                                  "--", *args.extra], capture_output=True, text=True, check=True).stdout
            lines.append([line for line in row.splitlines() if line.startswith(f"| {nprocs} |")][0])
            continue
        result = run_participant(bids, nprocs, args.omp_nthreads, args.mem_gb, args.extra)
        lines.append(f"| {nprocs} | {args.omp_nthreads} | {result['wall_s']:.1f} | {result['cpu_s']:.1f} | "
                     f"{result['max_process_mb']:.0f} | {result['tree_peak_mb']:.0f} | {result['tree_processes']} |")
        lines.append("")
        lines.append(f"Command: `m2i {result['command'].split(' ', 2)[2]}`")
    lines += ["", f"Machine: {platform.node()} ({os.cpu_count()} CPUs), Python {platform.python_version()}."]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
