"""Head-motion correction benchmark: bids_m2i's engine vs nipy's SpaceTimeRealigner (via nipype) and antspyx.

Data: the analytic phantom of ``bids_m2i.preproc.phantom`` (64x64x32 voxels of 3x3x4 mm, 100 volumes,
motion up to 3 mm / 2 deg, 1 % noise, a 3 % activation blob, 1 % drift), optionally also one run of the
``bids_m2i.simulate`` dataset (``--simulator PRESET``). Every method runs in its own process with the same
thread count (``--threads``: OMP/MKL/OpenBLAS/ITK threads and torch threads).

Reported per method: whole-process wall time (start of the interpreter -> corrected 4-D NIfTI written),
engine time (ours: warm second run, estimation and resampling separately; peers: their registration
call), peak resident memory of the process, and the error = RMS displacement over brain voxels between
the estimated and the true transform of each volume relative to the (fitted) true pose of that
method's reference (``bids_m2i.preproc.phantom.motion_error_mm``), mean and max over volumes.

nipy and antspyx need numpy<2.4 / scipy<1.16: they live in ``.venv-bench`` (see
``benchmarks/requirements-bench.txt``). This script runs each peer with ``--bench-python`` (default
``.venv-bench/bin/python`` next to this repository) when the current interpreter lacks it.

    .venv/bin/python benchmarks/bench_hmc.py --threads 1 [--simulator tiny] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "VECLIB_MAXIMUM_THREADS")


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------ children
def child_ours(nii: str, out_dir: str, threads: int, warm: bool) -> dict:
    import nibabel as nib
    import torch

    torch.set_num_threads(threads)
    from bids_m2i.preproc.motion import estimate_motion
    from bids_m2i.preproc.resample import resample_to_grid

    img = nib.load(nii)
    data = img.get_fdata(dtype=np.float32)
    result = {}
    if warm:  # engine only, warm: one untimed run first
        estimate_motion(data, img.affine, n_threads=threads)
    c0, t0 = time.process_time(), time.perf_counter()
    motion = estimate_motion(data, img.affine, n_threads=threads)
    t1 = time.perf_counter()
    corrected = resample_to_grid(data, img.affine, motion.transforms, img.affine, data.shape[:3], n_threads=threads)
    c2, t2 = time.process_time(), time.perf_counter()
    result["engine_cpu_s"] = c2 - c0
    # written as the app writes every NIfTI (bids_m2i.utils.atomic.save_nifti: atomic, deterministic gzip)
    from bids_m2i.utils.atomic import save_nifti

    save_nifti(nib.Nifti1Image(corrected, img.affine), Path(out_dir) / "ours_corrected.nii.gz")
    result.update(estimate_s=t1 - t0, resample_s=t2 - t1, engine_s=t2 - t0,
                  transforms=motion.transforms.tolist(), convention="pull")
    return result


def child_nipy(nii: str, out_dir: str, threads: int, warm: bool) -> dict:
    from nipype.interfaces.nipy import SpaceTimeRealigner

    os.chdir(out_dir)
    c0, t0 = time.process_time(), time.perf_counter()
    res = SpaceTimeRealigner(in_file=[nii]).run()
    c1, t1 = time.process_time(), time.perf_counter()
    par = np.atleast_2d(np.loadtxt(res.outputs.par_file))
    # nipype writes nipy's Rigid as translation (mm) then rotation vector (rad, Rodrigues)
    mats = []
    for row in par:
        rot = _rodrigues(row[3:6])
        m = np.eye(4)
        m[:3, :3] = rot
        m[:3, 3] = row[:3]
        mats.append(m)
    return dict(engine_s=t1 - t0, engine_cpu_s=c1 - c0, transforms=np.array(mats).tolist(), convention="unknown")


def child_antspyx(nii: str, out_dir: str, threads: int, warm: bool) -> dict:
    import ants

    img = ants.image_read(nii)
    c0, t0 = time.process_time(), time.perf_counter()
    res = ants.motion_correction(img)
    c1, t1 = time.process_time(), time.perf_counter()
    ants.image_write(res["motion_corrected"], str(Path(out_dir) / "ants_corrected.nii.gz"))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # ITK works in LPS
    mats = []
    for files in res["motion_parameters"]:
        tx = ants.read_transform(files[0])
        p = np.asarray(tx.parameters, dtype=np.float64)
        centre = np.asarray(tx.fixed_parameters, dtype=np.float64)
        a = p[:9].reshape(3, 3)
        m = np.eye(4)
        m[:3, :3] = a
        m[:3, 3] = p[9:12] + centre - a @ centre  # ITK: y = A (x - c) + t + c, fixed -> moving
        mats.append(flip @ m @ flip)
    # derived as ITK fixed -> moving (pull); the evaluation still checks both directions and reports it
    return dict(engine_s=t1 - t0, engine_cpu_s=c1 - c0, transforms=np.array(mats).tolist(), convention="unknown")


def _rodrigues(rotvec: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(rotvec))
    if theta < 1e-12:
        return np.eye(3)
    k = np.asarray(rotvec) / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


CHILDREN = {"ours": child_ours, "nipy": child_nipy, "antspyx": child_antspyx}
PEER_MODULES = {"ours": "bids_m2i", "nipy": "nipy", "antspyx": "ants"}


# ------------------------------------------------------------------------------------------ parent
def _has_module(python: str, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('{module}') else 1)"
    return subprocess.run([python, "-c", code], capture_output=True).returncode == 0


def run_child(python: str, method: str, nii: Path, work: Path, threads: int, warm: bool) -> dict:
    out_dir = work / f"{method}{'_warm' if warm else ''}"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_json = out_dir / "result.json"
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS}, PYTHONPATH=str(REPO),
               MPLCONFIGDIR=str(work / "mpl"))
    cmd = [python, str(Path(__file__).resolve()), "--child", method, "--input", str(nii), "--out-dir", str(out_dir),
           "--out-json", str(out_json), "--threads", str(threads)] + (["--warm"] if warm else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(out_json.read_text())
    result["process_s"] = wall
    result["process_cpu_s"] = cpu
    return result


def make_phantom_nifti(work: Path, volumes: int, seed: int) -> tuple[Path, dict]:
    import nibabel as nib

    from bids_m2i.preproc.phantom import make_motion_phantom

    nii = work / f"phantom_T{volumes}_s{seed}.nii.gz"
    truth = work / f"phantom_T{volumes}_s{seed}_truth.npz"
    if not (nii.exists() and truth.exists()):
        ph = make_motion_phantom((64, 64, 32), (3.0, 3.0, 4.0), volumes, max_translation=3.0,
                                 max_rotation_deg=2.0, supersample=2, seed=seed)
        nib.save(nib.Nifti1Image(ph.data, ph.affine), str(nii))
        np.savez(truth, transforms=ph.true_transforms, params=ph.true_params, brain=ph.brain_mask, affine=ph.affine)
    t = np.load(truth)
    return nii, {"transforms": t["transforms"], "params": t["params"], "brain": t["brain"], "affine": t["affine"]}


def make_simulator_nifti(work: Path, preset: str) -> tuple[Path, dict]:
    import nibabel as nib

    from bids_m2i.preproc.transforms import grid_centre, rigid_matrix
    from bids_m2i.simulate import load_truth, simulate_dataset

    root = work / f"sim-{preset}"
    if not (root / "dataset_description.json").exists():
        simulate_dataset(root, preset=preset, seed=0, overwrite=True)
    truth = load_truth(root, "01")
    bold = sorted(root.glob("sub-01/**/func/*_bold.nii.gz"))[0]
    img = nib.load(bold)
    entities = dict(part.split("-", 1) for part in bold.name.split("_")[:-1] if "-" in part)
    table = truth["motion"][(entities["task"], entities.get("ses"), entities["run"])]
    params = np.asarray(table[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]], dtype=np.float64)
    centre = grid_centre(img.affine, img.shape)
    brain = np.asarray(truth["brain_mask"], dtype=bool)
    return bold, {"transforms": rigid_matrix(params, centre), "params": params, "brain": brain, "affine": img.affine}


def evaluate(result: dict, truth: dict) -> dict:
    from bids_m2i.preproc.phantom import motion_error_mm

    aff = truth["affine"]
    pts = np.argwhere(truth["brain"]) @ aff[:3, :3].T + aff[:3, 3]
    est = np.asarray(result["transforms"])
    candidates = {"pull": est, "push": np.linalg.inv(est)}
    if result.get("convention") == "pull":
        candidates = {"pull": est}
    errors = {k: motion_error_mm(v, truth["transforms"], pts) for k, v in candidates.items()}
    best = min(errors, key=lambda k: errors[k].mean())
    return {"err_mean": float(errors[best].mean()), "err_max": float(errors[best].max()), "direction": best}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--input")
    parser.add_argument("--out-dir")
    parser.add_argument("--out-json")
    parser.add_argument("--warm", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["ours", "nipy", "antspyx"])
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--simulator", help="also benchmark the first run of this bids_m2i.simulate preset")
    parser.add_argument("--work", default=str(REPO / "work" / "bench_hmc"))
    parser.add_argument("--bench-python", default=str(REPO / ".venv-bench" / "bin" / "python"))
    parser.add_argument("--markdown", help="write the results table (markdown) to this file")
    args = parser.parse_args(argv)

    if args.child:
        t0 = time.perf_counter()
        result = CHILDREN[args.child](args.input, args.out_dir, args.threads, args.warm)
        result["child_s"] = time.perf_counter() - t0
        result["peak_rss_mb"] = _peak_rss_mb()
        Path(args.out_json).write_text(json.dumps(result))
        if args.child == "ours":
            from bids_m2i.utils.process import skip_exit_gc

            skip_exit_gc()  # as the `m2i` console script does when it ends (bids_m2i.cli.run.main)
        return 0

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)  # phantom generation in this process
    datasets = [("phantom 64x64x32x%d" % args.volumes, *make_phantom_nifti(work, args.volumes, args.seed))]
    if args.simulator:
        datasets.append((f"simulate:{args.simulator}", *make_simulator_nifti(work, args.simulator)))
    rows = []
    for name, nii, truth in datasets:
        for method in args.methods:
            python = sys.executable
            if not _has_module(python, PEER_MODULES[method]):
                python = args.bench_python
            proc = run_child(python, method, nii, work / name.replace(" ", "_").replace(":", "-"), args.threads,
                             warm=False)
            row = {"data": name, "method": method, "process_s": proc["process_s"],
                   "process_cpu_s": proc["process_cpu_s"], "peak_rss_mb": proc["peak_rss_mb"],
                   "engine_s": proc["engine_s"], "engine_cpu_s": proc["engine_cpu_s"], **evaluate(proc, truth)}
            if method == "ours":
                warm = run_child(python, method, nii, work / name.replace(" ", "_").replace(":", "-"), args.threads,
                                 warm=True)
                row.update(engine_s=warm["engine_s"], engine_cpu_s=warm["engine_cpu_s"], estimate_s=warm["estimate_s"],
                           resample_s=warm["resample_s"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = format_table(rows)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 0


def format_table(rows) -> str:
    lines = ["| data | method | engine wall s (estimate / resample) | engine CPU s | process wall s | process CPU s | "
             "peak RSS MB | error mean mm | error max mm | engine ratio wall / CPU | process ratio wall / CPU |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        ours = next((r for r in rows if r["data"] == row["data"] and r["method"] == "ours"), None)
        split = f" ({row['estimate_s']:.2f} / {row['resample_s']:.2f})" if "estimate_s" in row else ""
        ratio_e = ratio_p = "-"
        if ours:
            ratio_e = f"{row['engine_s'] / ours['engine_s']:.1f}x / {row['engine_cpu_s'] / ours['engine_cpu_s']:.1f}x"
            ratio_p = (f"{row['process_s'] / ours['process_s']:.1f}x / "
                       f"{row['process_cpu_s'] / ours['process_cpu_s']:.1f}x")
        lines.append(f"| {row['data']} | {row['method']} | {row['engine_s']:.2f}{split} | {row['engine_cpu_s']:.2f} | "
                     f"{row['process_s']:.2f} | {row['process_cpu_s']:.2f} | {row['peak_rss_mb']:.0f} | "
                     f"{row['err_mean']:.3f} | {row['err_max']:.3f} | {ratio_e} | {ratio_p} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
