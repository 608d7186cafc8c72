"""Benchmark: ridge with a per-target alpha chosen by cross-validation (betas -> 1024-d features).

Compares, on the same synthetic data, thread count and run:

- ``ours``     bids_m2i.decoding.ridge.fit_ridge_cv (exact LOO via the hat matrix, intercept-corrected)
- ``ours_cuda`` the same on a GPU (eigen solver; host->device copies included in the time)
- ``ours_bracket`` ours with ``search="bracket"`` (factorises only alphas next to a target's best)
- ``ours_recursive`` ours with the GEMM-based triangular inverse instead of LAPACK's trtri
- ``plain``    a plain closed-form LOO: one Cholesky + explicit inverse per alpha (float32, torch)
- ``sklearn``  scikit-learn ``RidgeCV(alpha_per_target=True)`` (efficient LOO, float64 internally)
- ``himalaya`` himalaya ``KernelRidgeCV`` (5-fold, eigenvalues solver, torch backend)

Each method runs in its own subprocess (peak memory = that process' ``ru_maxrss``, data included) and is
scored by the held-out R² (mean over targets) on 1,000 extra trials.

Run (from the repository root, with the benchmark venv that holds scikit-learn and himalaya)::

    .venv-bench/bin/python benchmarks/bench_decode.py --threads 2            # full size
    .venv-bench/bin/python benchmarks/bench_decode.py --trials 3000 --voxels 5000 --threads 2  # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("ours", "plain", "sklearn", "himalaya")  # also "ours_cuda" (GPU, when present)


def make_data(folder: Path, n_train: int, n_test: int, n_voxels: int, n_targets: int, seed: int = 0,
              n_latent: int = 256, noise: float = 1.5) -> None:
    """Voxels and targets share a latent stimulus code; voxels add independent noise (fMRI-like SNR)."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    latent = rng.standard_normal((n, n_latent), dtype=np.float32)
    # a decaying spectrum, as stimulus features have
    latent *= (1.0 / np.sqrt(1.0 + np.arange(n_latent, dtype=np.float32) / 16.0))
    to_voxels = rng.standard_normal((n_latent, n_voxels), dtype=np.float32) / np.sqrt(n_latent)
    to_targets = rng.standard_normal((n_latent, n_targets), dtype=np.float32)
    X = np.empty((n, n_voxels), dtype=np.float32)
    for start in range(0, n, 1000):
        stop = min(n, start + 1000)
        X[start:stop] = latent[start:stop] @ to_voxels
        X[start:stop] += noise * rng.standard_normal((stop - start, n_voxels), dtype=np.float32)
    # targets differ in noise (so that their best alphas differ): noise sd 2..10 against a signal sd ~6.7
    target_noise = np.geomspace(2.0, 10.0, n_targets).astype(np.float32)
    Y = latent @ to_targets + target_noise * rng.standard_normal((n, n_targets), dtype=np.float32)
    # z-score voxels with training statistics (what the decoder does)
    mean, sd = X[:n_train].mean(0), X[:n_train].std(0)
    X -= mean
    X /= sd
    np.save(folder / "X_train.npy", X[:n_train])
    np.save(folder / "X_test.npy", X[n_train:])
    np.save(folder / "Y_train.npy", Y[:n_train])
    np.save(folder / "Y_test.npy", Y[n_train:])


def r2_mean(Y_true: np.ndarray, Y_pred: np.ndarray) -> float:
    Y_true = Y_true.astype(np.float64)
    ss_res = ((Y_true - Y_pred) ** 2).sum(0)
    ss_tot = ((Y_true - Y_true.mean(0)) ** 2).sum(0)
    return float(np.mean(1.0 - ss_res / ss_tot))


def _plain_loo(X, Y, alphas):
    """Textbook closed-form LOO: one Cholesky and one explicit inverse per alpha (dual form, intercept-
    corrected), float32. The reference point 'what anyone would write first'."""
    import torch

    X = torch.from_numpy(X)
    Y = torch.from_numpy(Y)
    x_mean, y_mean = X.mean(0), Y.mean(0)
    X = X - x_mean
    Yc = Y - y_mean
    n = X.shape[0]
    K = X @ X.T
    best = torch.full((Y.shape[1],), float("inf"))
    best_dual = torch.zeros_like(Yc)
    eye = torch.eye(n)
    for alpha in alphas:
        L = torch.linalg.cholesky(K + alpha * eye)
        inv = torch.cholesky_inverse(L)
        dual = inv @ Yc
        loo = (alpha * dual) / (alpha * torch.diagonal(inv) - 1.0 / n)[:, None]
        err = (loo ** 2).mean(0)
        better = err < best
        best = torch.where(better, err, best)
        best_dual[:, better] = dual[:, better]
        del L, inv
    coef = X.T @ best_dual
    return coef.numpy(), (y_mean - x_mean @ coef).numpy()


def worker(method: str, folder: Path, alphas: list[float], threads: int) -> dict:
    X = np.load(folder / "X_train.npy")
    Y = np.load(folder / "Y_train.npy")
    info: dict = {}
    start = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    info["_cpu0"] = usage.ru_utime + usage.ru_stime
    if method in ("ours", "ours_cuda", "ours_recursive", "ours_bracket"):
        import torch

        from bids_m2i.decoding import ridge
        from bids_m2i.decoding.ridge import fit_ridge_cv

        if method == "ours_recursive":  # variant: GEMM-based triangular inverse on the CPU
            ridge.TRIANGULAR_INVERSE = "recursive"

        torch.set_num_threads(threads)
        device = "cuda" if method == "ours_cuda" else "cpu"
        if device == "cuda":  # initialise the CUDA context outside the timed fit
            torch.zeros(1, device="cuda")
            start = time.perf_counter()
        search = "bracket" if method == "ours_bracket" else "grid"
        result = fit_ridge_cv(X, Y, alphas, device=device, overwrite_X=True, search=search)
        if device == "cuda":
            torch.cuda.synchronize()
        coef, intercept = result.coef, result.intercept
        info["solver"] = result.solver
        info["alphas_evaluated"] = result.info["n_alphas_evaluated"]
        chosen = result.alpha
    elif method == "plain":
        import torch

        torch.set_num_threads(threads)
        coef, intercept = _plain_loo(X, Y, alphas)
        chosen = None
    elif method == "sklearn":
        from sklearn.linear_model import RidgeCV

        model = RidgeCV(alphas=alphas, alpha_per_target=True).fit(X, Y)
        coef, intercept = model.coef_.T, model.intercept_
        chosen = np.asarray(model.alpha_)
    elif method == "himalaya":
        import torch
        from himalaya.backend import set_backend
        from himalaya.kernel_ridge import KernelRidgeCV

        torch.set_num_threads(threads)
        backend = set_backend("torch", on_error="raise")
        model = KernelRidgeCV(alphas=alphas, kernel="linear", cv=5, fit_intercept=True,
                              solver_params=dict(n_targets_batch=256, n_alphas_batch=len(alphas)))
        model.fit(X, Y)
        X_test = np.load(folder / "X_test.npy")
        elapsed = time.perf_counter() - start
        pred = backend.to_numpy(model.predict(X_test))
        return _report(method, elapsed, pred, folder, np.asarray(backend.to_numpy(model.best_alphas_)), info)
    else:
        raise SystemExit(f"unknown method {method}")
    elapsed = time.perf_counter() - start
    X_test = np.load(folder / "X_test.npy")
    pred = X_test @ coef.astype(np.float32) + intercept.astype(np.float32)
    return _report(method, elapsed, pred, folder, chosen, info)


def _report(method, elapsed, pred, folder, chosen, info) -> dict:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds of the fit (all threads): robust to a busy machine, unlike wall time
    info["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime - info.pop("_cpu0"), 1)
    Y_test = np.load(folder / "Y_test.npy")
    out = {"method": method, "seconds": round(elapsed, 2), "r2_test": round(r2_mean(Y_test, pred), 4),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3), **info}
    if chosen is not None:
        values, counts = np.unique(np.round(np.asarray(chosen, dtype=float), 6), return_counts=True)
        out["alphas_chosen"] = {f"{v:g}": int(c) for v, c in zip(values, counts)}
        np.save(folder / f"alpha_{method}.npy", np.asarray(chosen, dtype=float))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=9000)
    parser.add_argument("--test-trials", type=int, default=1000)
    parser.add_argument("--voxels", type=int, default=15000)
    parser.add_argument("--targets", type=int, default=1024)
    parser.add_argument("--alphas", type=int, default=8, help="number of alphas (log-spaced 1e2..1e6)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    alphas = [float(a) for a in np.logspace(2, 6, args.alphas)]
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, alphas, args.threads)))
        return 0

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        make_data(folder, args.trials, args.test_trials, args.voxels, args.targets, args.seed)
        print(f"data {args.trials}x{args.voxels} -> {args.targets} targets made in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--worker", method, "--data", str(folder),
                   "--alphas", str(args.alphas), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                result = {"method": method, "error": proc.stderr.strip().splitlines()[-1:]}
            else:
                result = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(result)
            print(json.dumps(result), flush=True)
        chosen = {m: np.load(folder / f"alpha_{m}.npy") for m in ("ours", "ours_bracket", "sklearn")
                  if (folder / f"alpha_{m}.npy").exists()}
        for mine in ("ours", "ours_bracket"):
            if mine in chosen and "sklearn" in chosen:
                agree = float(np.mean(chosen[mine] == chosen["sklearn"]))
                print(f"alpha agreement {mine} vs sklearn: {agree:.4f}")
    summary = {"size": {"trials": args.trials, "voxels": args.voxels, "targets": args.targets,
                        "alphas": args.alphas, "threads": args.threads}, "results": results}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
