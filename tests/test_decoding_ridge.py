"""Ridge with per-target alpha by hat-matrix cross-validation, against explicit refits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_m2i.decoding import ridge
from bids_m2i.decoding.ridge import fit_ridge, fit_ridge_cv, make_cv_groups


def _explicit_cv_mse(X, Y, alphas, labels):
    """Refit without each held-out set, by hand (numpy normal equations, intercept unpenalised)."""
    n = len(X)
    errs = np.zeros((len(alphas), Y.shape[1]))
    for k, a in enumerate(alphas):
        for g in np.unique(labels):
            held = labels == g
            Xt, Yt = X[~held], Y[~held]
            xm, ym = Xt.mean(0), Yt.mean(0)
            Xc = Xt - xm
            W = np.linalg.solve(Xc.T @ Xc + a * np.eye(X.shape[1]), Xc.T @ (Yt - ym))
            pred = (X[held] - xm) @ W + ym
            errs[k] += ((pred - Y[held]) ** 2).sum(0)
    return errs / n


def _data(n, p, t, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    X = (X - X.mean(0)) / X.std(0)  # z-scored, where a missing intercept correction bites
    W = rng.standard_normal((p, t))
    Y = X @ W + rng.standard_normal((n, t)) * np.linspace(0.5, 30, t) + 5.0
    return X, Y


@pytest.mark.parametrize("shape", [(40, 70), (70, 25)], ids=["dual", "primal"])
@pytest.mark.parametrize("solver", ["eigen", "cholesky", "cholesky-recursive"])
@pytest.mark.parametrize("cv", ["loo", "groups", 4])
def test_cv_errors_equal_explicit_refits(shape, solver, cv, monkeypatch):
    n, p = shape
    X, Y = _data(n, p, 3)
    alphas = np.logspace(-1, 4, 6)
    groups = np.arange(n) // 3 if cv == "groups" else None
    if solver == "cholesky-recursive":
        monkeypatch.setattr(ridge, "TRIANGULAR_INVERSE", "recursive")
        solver = "cholesky"
    result = fit_ridge_cv(X, Y, alphas, cv="loo" if cv == "groups" else cv, groups=groups, solver=solver,
                          dtype=torch.float64, device="cpu")
    labels, _ = make_cv_groups(n, "loo" if cv == "groups" else cv, groups)
    expected = _explicit_cv_mse(X, Y, alphas, labels)
    np.testing.assert_allclose(result.cv_mse, expected, rtol=1e-8)
    np.testing.assert_array_equal(result.alpha, alphas[expected.argmin(0)])
    coef, intercept = fit_ridge(X, Y, result.alpha, device="cpu")
    np.testing.assert_allclose(result.coef, coef, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.intercept, intercept, rtol=1e-4, atol=1e-5)


def test_fit_ridge_matches_hand_closed_form():
    X, Y = _data(30, 8, 2, seed=3)
    coef, intercept = fit_ridge(X, Y, [2.0, 50.0], device="cpu")
    for j, a in enumerate([2.0, 50.0]):
        Xa = np.c_[np.ones(len(X)), X]
        P = np.diag([0.0] + [a] * X.shape[1])  # intercept unpenalised
        beta = np.linalg.solve(Xa.T @ Xa + P, Xa.T @ Y[:, j])
        np.testing.assert_allclose(coef[:, j], beta[1:], rtol=1e-9)
        np.testing.assert_allclose(intercept[j], beta[0], rtol=1e-9)


def test_float32_solvers_agree_and_predict():
    X, Y = _data(300, 500, 16, seed=1)
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    alphas = np.logspace(1, 5, 5)
    eig = fit_ridge_cv(X, Y, alphas, solver="eigen", device="cpu")
    chol = fit_ridge_cv(X, Y, alphas, solver="cholesky", device="cpu")
    np.testing.assert_allclose(eig.cv_mse, chol.cv_mse, rtol=1e-3)
    np.testing.assert_allclose(eig.predict(X[:5]), chol.predict(X[:5]), rtol=1e-3, atol=1e-2)
    X_before = X.copy()
    fit_ridge_cv(X, Y, alphas, device="cpu")
    np.testing.assert_array_equal(X, X_before)  # the caller's data is not centred in place


def test_alpha_selection_recovers_known_noise_to_signal_ratio():
    """Y = X w + e with w ~ N(0, tau² I), e ~ N(0, s²): the Bayes-optimal penalty is s² / tau²."""
    rng = np.random.default_rng(7)
    n, p, per_setting = 400, 40, 30
    X = rng.standard_normal((n, p))
    truths = [1.0, 100.0, 3000.0]
    Ys = []
    for alpha_true in truths:
        tau = 1.0
        sigma = np.sqrt(alpha_true) * tau
        W = rng.standard_normal((p, per_setting)) * tau
        Ys.append(X @ W + sigma * rng.standard_normal((n, per_setting)))
    Y = np.concatenate(Ys, axis=1)
    alphas = 10.0 ** np.arange(-1, 5.01, 0.25)
    result = fit_ridge_cv(X, Y, alphas, dtype=torch.float64, device="cpu")
    for k, alpha_true in enumerate(truths):
        chosen = result.alpha[k * per_setting:(k + 1) * per_setting]
        ratio = np.median(np.log10(chosen)) - np.log10(alpha_true)
        assert abs(ratio) < 0.5, (alpha_true, np.median(chosen))


def test_intercept_correction_matters_for_loo():
    """LOO leverages without the 1/n intercept term differ from the exact refits (the bug we avoid)."""
    X, Y = _data(20, 60, 2, seed=5)
    alphas = np.array([10.0])
    result = fit_ridge_cv(X, Y, alphas, dtype=torch.float64, device="cpu")
    exact = _explicit_cv_mse(X, Y, alphas, np.arange(20))
    np.testing.assert_allclose(result.cv_mse, exact, rtol=1e-8)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    K = Xc @ Xc.T
    H = K @ np.linalg.inv(K + 10.0 * np.eye(20))
    naive = (((Yc - H @ Yc) / (1 - np.diag(H))[:, None]) ** 2).mean(0)
    assert not np.allclose(naive, exact[0], rtol=1e-3)


def test_bad_inputs_raise():
    from bids_m2i.errors import BadDataError, UsageError

    X, Y = _data(10, 4, 1)
    with pytest.raises(UsageError):
        fit_ridge_cv(X, Y, [0.0, 1.0])
    X[0, 0] = np.nan
    with pytest.raises(BadDataError):
        fit_ridge_cv(X, Y, [1.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():  # pragma: no cover - run on GPU machines
    X, Y = _data(200, 300, 8)
    alphas = np.logspace(1, 4, 4)
    ref = fit_ridge_cv(X, Y, alphas, device="cpu", dtype=torch.float64)
    for solver in ("eigen", "cholesky"):
        gpu = fit_ridge_cv(X.astype(np.float32), Y.astype(np.float32), alphas, device="cuda", solver=solver)
        np.testing.assert_allclose(gpu.cv_mse, ref.cv_mse, rtol=1e-2)
        np.testing.assert_allclose(gpu.predict(X[:10]), ref.predict(X[:10]), rtol=1e-2, atol=1e-2)


def test_recursive_triangular_inverse_in_place():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((700, 700))
    L = torch.linalg.cholesky(torch.as_tensor(A @ A.T + 700 * np.eye(700)))
    expected = torch.linalg.inv(L)
    out = ridge._triangular_inverse_(L.clone(), base=64)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(45, 70), (70, 33)], ids=["dual", "primal"])
@pytest.mark.parametrize("cv", ["loo", "groups"])
def test_shared_buffer_solver_in_several_blocks_equals_explicit_refits(shape, cv, monkeypatch):
    # the CPU solver keeps the Gram matrix in the upper triangle of the buffer that LAPACK factorises in its
    # lower triangle; blocks of 8 rows exercise the block copies (an off-by-one there corrupts the Gram matrix
    # from the second alpha on)
    monkeypatch.setattr(ridge, "GRAM_BLOCK", 8)
    n, p = shape
    X, Y = _data(n, p, 4, seed=5)
    alphas = np.logspace(-1, 4, 5)
    groups = np.arange(n) // 3 if cv == "groups" else None
    result = fit_ridge_cv(X, Y, alphas, groups=groups, solver="cholesky", dtype=torch.float64, device="cpu")
    labels, _ = make_cv_groups(n, "loo", groups)
    expected = _explicit_cv_mse(X, Y, alphas, labels)
    np.testing.assert_allclose(result.cv_mse, expected, rtol=1e-8)
    coef, _ = fit_ridge(X, Y, result.alpha, device="cpu")
    np.testing.assert_allclose(result.coef, coef, rtol=1e-4, atol=1e-6)


def test_shared_buffer_holds_one_gram_sized_matrix():
    # the LAPACK work happens in the one numpy buffer: numpy allocations during the fit (traced by
    # tracemalloc, unlike torch's) stay under 1.5 n x n matrices: no second Gram-sized copy for potrf/trtri.
    # The process-level peak at scale is measured by benchmarks/bench_decode.py.
    import tracemalloc

    rng = np.random.default_rng(0)
    n, p = 600, 900
    X = torch.from_numpy(rng.standard_normal((n, p)).astype(np.float32))
    Y = torch.from_numpy(rng.standard_normal((n, 4)).astype(np.float32))
    blocks = ridge._GroupBlocks(np.arange(n), "cpu")
    tracemalloc.start()  # numpy buffers are traced; torch tensors made from them share their memory
    ridge._solve_cholesky_shared_buffer(X - X.mean(0), Y - Y.mean(0), np.logspace(1, 4, 4), blocks, "grid")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n * n * 4 <= peak < 1.5 * n * n * 4


def test_bracket_search_matches_grid_with_fewer_factorisations():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((150, 220)).astype(np.float32)
    W = rng.standard_normal((220, 40)).astype(np.float32)
    Y = X @ W * 0.1 + rng.standard_normal((150, 40)).astype(np.float32) * np.geomspace(0.5, 20, 40).astype(np.float32)
    alphas = np.logspace(-1, 6, 15)
    grid = fit_ridge_cv(X, Y, alphas, solver="cholesky", device="cpu")
    bracket = fit_ridge_cv(X, Y, alphas, solver="cholesky", device="cpu", search="bracket")
    np.testing.assert_array_equal(bracket.alpha, grid.alpha)
    np.testing.assert_allclose(bracket.coef, grid.coef, rtol=1e-5, atol=1e-6)
    evaluated = np.isfinite(bracket.cv_mse).all(1)
    assert 3 <= evaluated.sum() < len(alphas)
    np.testing.assert_allclose(bracket.cv_mse[evaluated], grid.cv_mse[evaluated], rtol=1e-4)
    assert np.isnan(bracket.cv_mse[~evaluated]).all()
