"""Benchmark: peak memory of decoding's betas loading + voxel selection + ridge fit at NSD scale.

Synthetic statseries stand in for the GLM's: ``--sessions`` files of ``--trials`` betas each, on a grid of
``--voxels`` in-mask voxels (the mask is the whole grid: the files hold nothing the decoder does not read),
written like the GLM writes them (float32 NIfTI, gzip). The design is NSD's: every image shown 3 times, its
repeats in random sessions, all perception trials; 20 % of the images are held out by the app's split.
Each voxel has a reliability (signal sd 0-1.5 over noise sd 1) so that ncsnr has something to rank.

Then, in a fresh child process per row (``ru_maxrss`` is a high-water mark; the process tree is also sampled
from ``/proc`` every 0.1 s, see ``bench_memory.py``), the app's own path:

1. ``load_betas(statseries, events, mask, top_k=K)`` (``bids_m2i.interfaces.decoding``): ``--path streamed``
   chooses the K voxels from statistics streamed session by session, then reads only them;
   ``--path in-memory`` is what the app did before: read every mask voxel of every trial, choose later;
2. the split (``split_trials``) and ``BrainDecoder('ridge', top_k=K).fit`` on the training trials, with
   random target features (``--features`` dimensions; the pixel space has 3,072).

Run (from the repository root; nice it on a shared machine; the data take ``4 x sessions x trials x voxels``
bytes of disk)::

    nice -n 10 .venv/bin/python benchmarks/bench_decoding_memory.py --folder /tmp/bdm --sessions 40 \
        --trials 750 --voxels 50000 --top-k 15000 --path streamed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import TreeSampler  # noqa: E402  (a sibling script)


def grid_for(voxels: int) -> tuple[int, int, int]:
    """A 3-D grid of exactly ``voxels`` voxels when possible (z the smallest factor found)."""
    for z in range(40, 0, -1):
        if voxels % z == 0:
            rest = voxels // z
            for y in range(int(np.sqrt(rest)), 0, -1):
                if rest % y == 0:
                    return (rest // y, y, z)
    return (voxels, 1, 1)


def make_data(folder: Path, sessions: int, trials: int, voxels: int, seed: int = 0) -> dict:
    import nibabel as nib
    import pandas as pd

    from bids_m2i.utils.atomic import save_nifti

    manifest = folder / "manifest.json"
    if manifest.exists():
        meta = json.loads(manifest.read_text())
        if (meta["sessions"], meta["trials"], meta["voxels"], meta["seed"]) == (sessions, trials, voxels, seed):
            return meta
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_images = sessions * trials // 3
    order = rng.permutation(np.repeat(np.arange(n_images), 3))
    reliability = rng.uniform(0.0, 1.5, voxels).astype(np.float32)
    shape = grid_for(voxels)
    paths, events = [], []
    for s in range(sessions):
        images = order[s * trials:(s + 1) * trials]
        data = np.empty((trials, voxels), dtype=np.float32)
        for t, image in enumerate(images):  # each image's pattern from its own seed: nothing big in memory
            pattern = np.random.default_rng((seed, int(image))).standard_normal(voxels, dtype=np.float32)
            data[t] = reliability * pattern
        data += rng.standard_normal((trials, voxels), dtype=np.float32)
        volume = data.T.reshape(shape + (trials,), order="F")  # voxel v = flat Fortran index v
        path = folder / f"ses-{s:02d}_statseries.nii.gz"
        save_nifti(nib.Nifti1Image(volume, np.eye(4)), path)
        table = folder / f"ses-{s:02d}_events.tsv"
        pd.DataFrame({"trial_index": np.arange(trials), "condition": "perception",
                      "stimulus": [f"img{i:05d}" for i in images], "session": f"{s:02d}"}).to_csv(
            table, sep="\t", index=False)
        paths.append(str(path))
        events.append(str(table))
        print(f"session {s + 1}/{sessions} written", file=sys.stderr)
    meta = {"sessions": sessions, "trials": trials, "voxels": voxels, "seed": seed, "shape": shape,
            "statseries": paths, "events": events,
            "disk_gb": sum(os.path.getsize(p) for p in paths) / 1e9}
    manifest.write_text(json.dumps(meta))
    return meta


def child(args) -> None:
    """The measured process: the app's loading, split and decoder fit."""
    from bids_m2i.decoding.decoder import BrainDecoder
    from bids_m2i.decoding.streaming import training_trials
    from bids_m2i.interfaces.decoding import load_betas
    from bids_m2i.utils.torch_runtime import blas_threads

    meta = json.loads((args.folder / "manifest.json").read_text())
    mask = np.ones(tuple(meta["shape"]), dtype=bool)
    timings = {}
    start = time.perf_counter()
    if args.path == "streamed":
        betas, trials = load_betas(meta["statseries"], meta["events"], mask, top_k=args.top_k,
                                   memory_gb=args.selection_gb)
    else:
        betas, trials = load_betas(meta["statseries"], meta["events"], mask)
    timings["load_s"] = time.perf_counter() - start
    timings["loaded_gb"] = betas.nbytes / 1e9
    train_rows, labels = training_trials(trials)
    rng = np.random.default_rng(1)
    distinct, inverse = np.unique(labels, return_inverse=True)
    features = rng.standard_normal((len(distinct), args.features), dtype=np.float32)[inverse.ravel()]
    start = time.perf_counter()
    with blas_threads(args.threads):
        decoder = BrainDecoder("ridge", top_k=args.top_k, device="cpu", n_threads=args.threads).fit(
            betas[train_rows], features, labels=labels)
    timings["fit_s"] = time.perf_counter() - start
    timings["n_train"] = int(len(train_rows))
    timings["n_voxels_kept"] = int(len(decoder.scaler.columns))
    print(json.dumps(timings))


def measure(args) -> dict:
    command = [sys.executable, __file__, "--child", "--folder", str(args.folder), "--path", args.path,
               "--top-k", str(args.top_k), "--features", str(args.features), "--threads", str(args.threads),
               "--selection-gb", str(args.selection_gb)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    sampler = TreeSampler(process.pid)
    sampler.start()
    stdout, _ = process.communicate()
    sampler.stop()
    if process.returncode != 0:
        raise SystemExit(f"child failed (exit {process.returncode})")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {**json.loads(stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - start,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_process_gb": usage.ru_maxrss * 1024 / 1e9,
            "peak_tree_gb": sampler.peak / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="where the synthetic statseries go")
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--trials", type=int, default=750)
    parser.add_argument("--voxels", type=int, default=200_000)
    parser.add_argument("--top-k", type=int, default=15_000)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--selection-gb", type=float, default=4.0, help="memory for the streamed ncsnr state")
    parser.add_argument("--path", choices=("streamed", "in-memory"), default="streamed")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    start = time.perf_counter()
    meta = make_data(args.folder, args.sessions, args.trials, args.voxels)
    print(f"data ready in {time.perf_counter() - start:.0f} s ({meta['disk_gb']:.1f} GB)", file=sys.stderr)
    row = measure(args)
    row.update(path=args.path, sessions=args.sessions, trials=args.trials, voxels=args.voxels,
               top_k=args.top_k, features=args.features, selection_gb=args.selection_gb,
               machine=f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the end")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
