"""Ridge regression with one penalty per target, chosen by cross-validation, in closed form (torch).

Model: ``Y = 1 b + X W + noise`` with the intercept ``b`` unpenalised and ``||W||²`` penalised by
``alpha_t`` for target ``t``. Both X and Y are centred on the training means, so the intercept is
``b = mean(Y) - mean(X) W`` and the hat matrix of the full model is ``H = J/n + Hc`` (``J`` = all-ones,
``Hc`` = hat matrix of the centred problem). Cross-validation errors come from the hat matrix, never
from refits: for a held-out group ``g`` of rows, ``cv_residual_g = (I - H)_gg^{-1} residual_g``
(leave-one-out when every row is its own group). Forgetting the ``J/n`` term of the intercept is a
classic bug: with z-scored X it under-estimates the leverage of every row by ``1/n`` and biases the
chosen alphas.

Two exact solvers share that code:

``eigen``
    one eigendecomposition of the smaller Gram matrix (``X Xᵀ`` when n <= p, else ``Xᵀ X``), then every
    alpha and every target costs matrix products only. Best on GPUs, where ``eigh`` is fast, and on
    CPUs for small problems or many alphas.
``cholesky``
    one Cholesky factorisation + one triangular inverse (for the leverages, and reused for the solve)
    per alpha. On CPUs LAPACK's
    ``eigh`` costs about as much as 15 Cholesky factorisations of the same size, so for a handful of
    alphas on a large problem this is faster.

All arithmetic runs in torch (float32 by default; CUDA when present).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import blas, lapack

from ..utils.torch_runtime import blas_threads, resolve_device, torch_threads

from ..errors import BadDataError, UsageError

LOG = logging.getLogger("m2i.decoding")

#: Default penalty grid. With z-scored voxels the Gram diagonal equals the number of voxels (thousands),
#: and fMRI decoders typically pick alphas between 1e2 and 1e6.
DEFAULT_ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(0.0, 7.01, 0.5))


@dataclass
class RidgeCVResult:
    """A fitted ridge model with per-target penalties.

    Attributes
    ----------
    coef : ndarray, shape (n_features, n_targets)
    intercept : ndarray, shape (n_targets,)
    alpha : ndarray, shape (n_targets,)
        Penalty chosen for each target.
    alphas : ndarray, shape (n_alphas,)
        The grid that was searched.
    cv_mse : ndarray, shape (n_alphas, n_targets)
        Cross-validated mean squared error of each alpha and target.
    solver : str
        ``eigen`` or ``cholesky``.
    cv : str
        ``loo``, ``group`` or ``kfold-<k>``.
    """

    coef: np.ndarray
    intercept: np.ndarray
    alpha: np.ndarray
    alphas: np.ndarray
    cv_mse: np.ndarray
    solver: str
    cv: str
    info: dict = field(default_factory=dict)

    def predict(self, X) -> np.ndarray:
        """Predict targets for new rows ``X`` (n, n_features) -> (n, n_targets)."""
        return ridge_predict(X, self.coef, self.intercept)


def ridge_predict(X, coef, intercept) -> np.ndarray:
    """``X @ coef + intercept`` in float32 numpy; X (n, p), coef (p, t), intercept (t,)."""
    X = np.asarray(X, dtype=np.float32)
    return X @ np.asarray(coef, dtype=np.float32) + np.asarray(intercept, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# helpers


def _as_tensor(array, dtype, device, *, writable_copy: bool) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(array), dtype=dtype, device=device)
    if writable_copy and isinstance(array, np.ndarray) and tensor.device.type == "cpu":
        # torch.as_tensor shares memory with a float32 numpy array: centre a copy, not the caller's data
        if tensor.data_ptr() == array.__array_interface__["data"][0]:
            tensor = tensor.clone()
    return tensor


def _all_finite(tensor: torch.Tensor, rows: int = 1024) -> bool:
    """``torch.isfinite(t).all()`` by row blocks: on a whole (9,000 x 15,000) float32 X, torch's isfinite
    makes temporaries of 1.7 times X's size (measured: +0.9 GB peak)."""
    return all(bool(torch.isfinite(tensor[start:start + rows]).all()) for start in range(0, tensor.shape[0], rows))


def make_cv_groups(n_samples: int, cv="loo", groups=None, seed: int = 0) -> tuple[np.ndarray, str]:
    """Integer group label per row defining the held-out sets of the cross-validation.

    Parameters
    ----------
    n_samples : int
    cv : ``"loo"`` or int
        Leave-one-out, or k folds (rows shuffled with ``seed``) when ``groups`` is None.
    groups : array-like, shape (n_samples,), optional
        Rows sharing a label are held out together (e.g. the repeats of one stimulus: leave-one-stimulus-
        out; LOO over repeats would leak the other repeats of the same image). With an int ``cv``,
        whole groups are dealt into k folds.
    """
    if groups is not None:
        labels = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
        if len(labels) != n_samples:
            raise UsageError(f"groups has {len(labels)} entries for {n_samples} rows")
        if cv == "loo" or cv is None:
            return labels, "group"
        k = int(cv)
        order = np.random.default_rng(seed).permutation(labels.max() + 1)
        return order[labels] % k, f"groupkfold-{k}"
    if cv == "loo" or cv is None:
        return np.arange(n_samples), "loo"
    k = int(cv)
    if k < 2 or k > n_samples:
        raise UsageError(f"cv={cv}: need 2 <= k <= n_samples ({n_samples})")
    perm = np.random.default_rng(seed).permutation(n_samples)
    labels = np.empty(n_samples, dtype=np.int64)
    labels[perm] = np.arange(n_samples) % k
    return labels, f"kfold-{k}"


class _GroupBlocks:
    """Rows grouped by held-out set, batched by set size (so blocks are solved as (g, m, m) batches)."""

    def __init__(self, labels: np.ndarray, device):
        self.singletons = None
        self.batches: list[torch.Tensor] = []  # each (n_groups_of_size_m, m) row indices
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        sizes = np.diff(np.r_[starts, len(labels)])
        for m in np.unique(sizes):
            rows = np.stack([order[s:s + m] for s in starts[sizes == m]])
            if m == 1:
                self.singletons = torch.as_tensor(rows[:, 0], device=device)
            else:
                self.batches.append(torch.as_tensor(rows, device=device))



def _cv_sq_error(residual, i_minus_h_diag, block_fn, groups: _GroupBlocks, n: int):
    """Sum over rows of squared cross-validated residuals, per target.

    residual : (n, t) residuals of the full centred fit.
    i_minus_h_diag : (n,) diagonal of I - H (intercept included).
    block_fn(rows) -> (g, m, m) blocks of I - H for row index batches ``rows`` (g, m).
    """
    total = torch.zeros(residual.shape[1], dtype=residual.dtype, device=residual.device)
    if groups.singletons is not None:
        rows = groups.singletons
        cv_res = residual[rows] / i_minus_h_diag[rows, None]
        total += (cv_res * cv_res).sum(0)
    for rows in groups.batches:
        # chunk so that the (g, m, m) blocks, the (g, m, t) residuals and the (n, g m) columns that block_fn
        # gathers stay small (~80 MB in float32)
        chunk = max(1, int(2e7 // (rows.shape[1] * max(rows.shape[1], residual.shape[1], n))))
        for start in range(0, rows.shape[0], chunk):
            part = rows[start:start + chunk]
            blocks = block_fn(part)
            cv_res = torch.linalg.solve(blocks, residual[part])
            total += (cv_res * cv_res).sum((0, 1))
    return total


# ----------------------------------------------------------------------------------------------------------
# public API


def fit_ridge_cv(X, Y, alphas=DEFAULT_ALPHAS, *, cv="loo", groups=None, solver: str = "auto",
                 device="auto", dtype=torch.float32, n_threads: int | None = None, seed: int = 0,
                 overwrite_X: bool = False, search: str = "grid") -> RidgeCVResult:
    """Fit ridge regression, choosing one alpha per target by cross-validation via the hat matrix.

    Parameters
    ----------
    X : array, shape (n_samples, n_features)
        Training inputs (e.g. z-scored betas). Not modified unless ``overwrite_X``.
    Y : array, shape (n_samples, n_targets)
        Training targets (stimulus features).
    alphas : sequence of float, length n_alphas
    cv : ``"loo"`` or int
        Leave-one-out (or leave-one-group-out with ``groups``), or k folds.
    groups : array, shape (n_samples,), optional
        Rows held out together (repeats of a stimulus).
    solver : ``auto``, ``eigen`` or ``cholesky``
        ``auto``: ``eigen`` on GPUs and for small problems (min(n, p) <= 2048) or more than 12
        factorisations, else ``cholesky``.
    device : ``auto``, ``cpu``, ``cuda``
    dtype : torch dtype
        float32 (default) or float64.
    n_threads : int, optional
        Upper bound on torch threads during the fit.
    overwrite_X : bool
        Allow centring ``X`` in place (saves one copy of X; the caller's array is changed).
    search : ``grid`` | ``bracket``
        ``grid`` evaluates every alpha. ``bracket`` (cholesky solver only) starts in the middle of the
        grid and factorises only the alphas next to some target's current best, until every target's
        best has both neighbours evaluated: exact when each target's CV error is unimodal along the
        grid (the usual case), and typically 3 to 5 factorisations instead of ``n_alphas``. Alphas
        never evaluated get ``cv_mse = nan``.

    Returns
    -------
    RidgeCVResult
    """
    alphas_arr = np.asarray(alphas, dtype=np.float64).ravel()
    if alphas_arr.size == 0 or np.any(alphas_arr <= 0):
        raise UsageError("ridge alphas must be positive numbers", hint="e.g. alphas=np.logspace(0, 7, 15)")
    if search not in ("grid", "bracket"):
        raise UsageError(f"unknown alpha search {search!r}", hint="use grid or bracket")
    dev = resolve_device(device)
    with torch_threads(n_threads), torch.no_grad():
        Xt = _as_tensor(X, dtype, dev, writable_copy=not overwrite_X)
        Yt = torch.as_tensor(np.asarray(Y), dtype=dtype, device=dev)
        if Yt.ndim == 1:
            Yt = Yt[:, None]
        if Xt.ndim != 2 or Yt.shape[0] != Xt.shape[0]:
            raise BadDataError(f"ridge: X {tuple(Xt.shape)} and Y {tuple(Yt.shape)} do not match")
        if not (_all_finite(Xt) and _all_finite(Yt)):
            raise BadDataError("ridge: X or Y contains NaN or infinite values",
                               hint="mask out voxels without data before decoding")
        n, p = Xt.shape
        x_mean = Xt.mean(0)
        Xt -= x_mean
        y_mean = Yt.mean(0)
        Yc = Yt - y_mean
        labels, cv_name = make_cv_groups(n, cv, groups, seed)
        blocks = _GroupBlocks(labels, dev)
        rank = min(n, p)
        if solver == "auto":
            # CPU eigh costs about 15 Cholesky factorisations of the same size (measured): factorise per
            # alpha when fewer than that are needed
            n_factorisations = min(len(alphas_arr), 6) if search == "bracket" else len(alphas_arr)
            if dev.type == "cuda" or rank <= 2048 or n_factorisations > 12:
                solver = "eigen"
            else:
                solver = "cholesky"
        if solver == "eigen":
            cv_sse, coef = _solve_eigen(Xt, Yc, alphas_arr, blocks)
        elif solver == "cholesky":
            cv_sse, coef = _solve_cholesky(Xt, Yc, alphas_arr, blocks, search=search)
        else:
            raise UsageError(f"unknown ridge solver {solver!r}", hint="use auto, eigen or cholesky")
        best = torch.argmin(cv_sse, dim=0)
        intercept = y_mean - x_mean @ coef
        cv_sse = torch.where(torch.isinf(cv_sse), torch.nan, cv_sse)
        return RidgeCVResult(
            coef=coef.cpu().numpy().astype(np.float32, copy=False),
            intercept=intercept.cpu().numpy().astype(np.float32, copy=False),
            alpha=alphas_arr[best.cpu().numpy()],
            alphas=alphas_arr,
            cv_mse=(cv_sse / n).cpu().numpy().astype(np.float64),
            solver=solver,
            cv=cv_name,
            info={"n_samples": n, "n_features": p, "device": str(dev),
                  "search": search if solver == "cholesky" else "grid",  # eigen evaluates every alpha
                  "n_alphas_evaluated": int(torch.isfinite(cv_sse).all(1).sum())},
        )


def fit_ridge(X, Y, alpha, *, device="auto", dtype=torch.float64) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with a fixed alpha (scalar or one per target), intercept unpenalised; a direct solve.

    Returns ``coef`` (p, t) and ``intercept`` (t,). Used for refits and as a reference in tests.
    """
    dev = resolve_device(device)
    with torch.no_grad():
        Xt = torch.as_tensor(np.asarray(X), dtype=dtype, device=dev)
        Yt = torch.as_tensor(np.asarray(Y), dtype=dtype, device=dev)
        if Yt.ndim == 1:
            Yt = Yt[:, None]
        x_mean, y_mean = Xt.mean(0), Yt.mean(0)
        Xc, Yc = Xt - x_mean, Yt - y_mean
        alpha_t = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (Yt.shape[1],))
        gram = Xc.T @ Xc
        rhs = Xc.T @ Yc
        coef = torch.empty((Xt.shape[1], Yt.shape[1]), dtype=dtype, device=dev)
        eye = torch.eye(gram.shape[0], dtype=dtype, device=dev)
        for a in np.unique(alpha_t):
            cols = torch.as_tensor(np.flatnonzero(alpha_t == a), device=dev)
            coef[:, cols] = torch.linalg.solve(gram + a * eye, rhs[:, cols])
        intercept = y_mean - x_mean @ coef
        return coef.cpu().numpy(), intercept.cpu().numpy()


# ----------------------------------------------------------------------------------------------------------
# solvers. Inputs: centred X (n, p) and Y (n, t). Outputs: cv_sse (n_alphas, t) and coef (p, t).


#: rows per block when forming or copying the Gram matrix (bounds the temporaries to block x n)
GRAM_BLOCK = 2048


def _lower_gram(A: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """Lower triangle of ``A Aᵀ`` (the upper triangle is left at zero), with half the flops of ``A @ A.T``.

    ``torch.linalg.cholesky`` and ``torch.linalg.eigh`` read only the lower triangle.
    """
    n = A.shape[0]
    block = block or GRAM_BLOCK
    gram = torch.zeros((n, n), dtype=A.dtype, device=A.device)
    for start in range(0, n, block):
        stop = min(n, start + block)
        gram[start:stop, :stop] = A[start:stop] @ A[:stop].T
    return gram


def _solve_eigen(Xc: torch.Tensor, Yc: torch.Tensor, alphas: np.ndarray, blocks: _GroupBlocks):
    n, p = Xc.shape
    eps = torch.finfo(Xc.dtype).eps
    if n <= p:
        # dual: X Xᵀ = U diag(s) Uᵀ with U (n, n) orthogonal
        s, U = torch.linalg.eigh(_lower_gram(Xc))
    else:
        # primal: Xᵀ X = V diag(s) Vᵀ; thin left singular vectors U = X V / sqrt(s)
        s, V = torch.linalg.eigh(_lower_gram(Xc.T))
        keep = s > s.max() * eps * max(n, p)
        U = (Xc @ V[:, keep]) / torch.sqrt(s[keep])
        s = s[keep]
        del V
    s = torch.clamp(s, min=0)
    Q = U.T @ Yc  # (r, t)
    u_sq = U * U  # leverages: h_i = sum_j U_ij^2 s_j / (s_j + alpha)
    cv_sse = torch.empty((len(alphas), Yc.shape[1]), dtype=Xc.dtype, device=Xc.device)
    for k, alpha in enumerate(alphas):
        shrink = s / (s + alpha)  # eigenvalues of the centred hat matrix
        residual = Yc - U @ (shrink[:, None] * Q)
        i_minus_h = 1.0 - 1.0 / n - u_sq @ shrink

        def block_fn(rows, shrink=shrink):
            Ug = U[rows]  # (g, m, r)
            m = rows.shape[1]
            eye = torch.eye(m, dtype=U.dtype, device=U.device)
            return eye - 1.0 / n - (Ug * shrink) @ Ug.transpose(1, 2)

        cv_sse[k] = _cv_sq_error(residual, i_minus_h, block_fn, blocks, n)
        del residual
    best = torch.argmin(cv_sse, dim=0)
    best_alpha = torch.as_tensor(alphas, dtype=Xc.dtype, device=Xc.device)[best]
    # coef = Xᵀ U diag(1/(s + alpha_t)) Uᵀ Y for each target t (both for the dual and the primal form)
    dual = U @ (Q / (s[:, None] + best_alpha[None, :]))
    coef = Xc.T @ dual
    return cv_sse, coef


#: CPU path of the Cholesky solver: ``lapack`` (scipy's LAPACK in place on one shared buffer, see
#: :class:`_SharedGramBuffer`) measured faster on a quiet 2-thread Xeon than ``recursive`` (torch Cholesky +
#: GEMM-block triangular inverse) and holds one n x n matrix less; the GPU always uses ``recursive``.
TRIANGULAR_INVERSE = "lapack"



def _triangular_inverse_(L: torch.Tensor, base: int = 256) -> torch.Tensor:
    """Invert a lower-triangular matrix in place, recursively by 2 x 2 blocks:
    ``inv([[A, 0], [B, C]]) = [[inv(A), 0], [-inv(C) B inv(A), inv(C)]]``.

    All the work is matrix products (fast BLAS-3 GEMM), about 3x faster on CPUs than LAPACK's ``trtri``
    as shipped with scipy, and it runs on GPUs too.
    """
    n = L.shape[0]
    if n <= base:
        eye = torch.eye(n, dtype=L.dtype, device=L.device)
        L.copy_(torch.linalg.solve_triangular(L, eye, upper=False))
        return L
    h = n // 2
    _triangular_inverse_(L[:h, :h], base)
    _triangular_inverse_(L[h:, h:], base)
    L[h:, :h] = -(L[h:, h:] @ (L[h:, :h] @ L[:h, :h]))
    return L


def _grid_order(n_alphas: int):
    """Generator protocol of ``search="grid"``: every alpha, once."""
    yield list(range(n_alphas))


def _bracket_order(n_alphas: int):
    """Generator protocol for ``search="bracket"``: yields alpha indices to evaluate next, receiving
    the current best index of every target after each batch."""
    evaluated = set()
    todo = sorted({n_alphas // 2, n_alphas // 2 - 1, n_alphas // 2 + 1} & set(range(n_alphas)))
    while todo:
        best = yield todo
        evaluated.update(todo)
        # each target needs both grid neighbours of its current best evaluated (unimodal curve)
        near = np.unique(np.r_[best - 1, best + 1])
        todo = sorted(int(k) for k in near if 0 <= k < n_alphas and k not in evaluated)


def _evaluate_alphas(alphas: np.ndarray, search: str, step) -> None:
    """Call ``step(k)`` for the alpha indices the search asks for; ``step`` returns the current best index
    of every target."""
    order = _grid_order(len(alphas)) if search == "grid" else _bracket_order(len(alphas))
    batch = next(order)
    while True:
        best = None
        for k in batch:
            best = step(k)
        try:
            batch = order.send(best)
        except StopIteration:
            break


def _solve_cholesky(Xc: torch.Tensor, Yc: torch.Tensor, alphas: np.ndarray, blocks: _GroupBlocks,
                    search: str = "grid"):
    if TRIANGULAR_INVERSE == "lapack" and Xc.device.type == "cpu":
        return _solve_cholesky_shared_buffer(Xc, Yc, alphas, blocks, search)
    n, p = Xc.shape
    t = Yc.shape[1]
    dual_form = n <= p
    gram = _lower_gram(Xc if dual_form else Xc.T)
    rhs = Yc if dual_form else Xc.T @ Yc
    # unevaluated alphas (search="bracket") keep an infinite error
    cv_sse = torch.full((len(alphas), t), float("inf"), dtype=Xc.dtype, device=Xc.device)
    best_sse = torch.full((t,), float("inf"), dtype=Xc.dtype, device=Xc.device)
    best_solution = torch.zeros_like(rhs)  # dual coefficients (n, t) or primal coef (p, t)
    diag_index = torch.arange(gram.shape[0], device=Xc.device)

    def step(k):
        _cholesky_step(k, alphas[k], gram, rhs, Xc, Yc, diag_index, dual_form, blocks, n, cv_sse, best_sse,
                       best_solution)
        return torch.argmin(cv_sse, dim=0).cpu().numpy()

    _evaluate_alphas(alphas, search, step)
    coef = Xc.T @ best_solution if dual_form else best_solution
    return cv_sse, coef


def _cholesky_step(k, alpha, gram, rhs, Xc, Yc, diag_index, dual_form, blocks, n, cv_sse, best_sse,
                   best_solution):
    """Evaluate alpha number ``k`` for every target; update the running best in place."""
    gram[diag_index, diag_index] += alpha
    L, info = torch.linalg.cholesky_ex(gram)
    gram[diag_index, diag_index] -= alpha
    if int(info) != 0:
        raise BadDataError(f"ridge: Cholesky failed for alpha={alpha:g} (matrix not positive definite)",
                           hint="use larger alphas or solver='eigen'")
    L_inv = _triangular_inverse_(L)
    # (K + alpha I)^-1 rhs = L^-T L^-1 rhs as two GEMMs
    solution = L_inv.T @ (L_inv @ rhs)
    del L  # its memory now holds L^-1
    if dual_form:
        _score_alpha(k, alpha, solution, Xc, Yc, blocks, n, cv_sse, best_sse, best_solution,
                     inverse_norms_sq=torch.linalg.vector_norm(L_inv, dim=0) ** 2,
                     inverse_columns=lambda columns: L_inv[:, columns])
    else:
        _score_alpha(k, alpha, solution, Xc, Yc, blocks, n, cv_sse, best_sse, best_solution, T=L_inv @ Xc.T)


def _score_alpha(k, alpha, solution, Xc, Yc, blocks, n, cv_sse, best_sse, best_solution, *,
                 inverse_norms_sq=None, inverse_columns=None, T=None):
    """Cross-validated error of alpha number ``k`` from its solve; the running best is updated in place.

    Dual form (n <= p): ``solution`` = (K + alpha I)^-1 Y, with the squared column norms of ``L^-1`` and a
    function returning columns of ``L^-1``. Primal form: ``solution`` = coefficients, ``T`` = ``L^-1 Xᵀ``
    (p, n), whose column norms are the leverages.
    """
    if T is None:
        # I - Hc = alpha (K + alpha I)^-1, so the residual is alpha * solution
        residual = alpha * solution
        i_minus_h = alpha * inverse_norms_sq - 1.0 / n

        def block_fn(rows):
            cols = inverse_columns(rows.reshape(-1)).T.reshape(rows.shape[0], rows.shape[1], -1)
            return alpha * cols @ cols.transpose(1, 2) - 1.0 / n
    else:
        residual = Yc - Xc @ solution
        i_minus_h = 1.0 - 1.0 / n - torch.linalg.vector_norm(T, dim=0) ** 2

        def block_fn(rows):
            cols = T[:, rows.reshape(-1)].T.reshape(rows.shape[0], rows.shape[1], -1)
            eye = torch.eye(rows.shape[1], dtype=T.dtype, device=T.device)
            return eye - 1.0 / n - cols @ cols.transpose(1, 2)

    cv_sse[k] = _cv_sq_error(residual, i_minus_h, block_fn, blocks, n)
    improved = cv_sse[k] < best_sse
    best_sse.copy_(torch.where(improved, cv_sse[k], best_sse))
    best_solution[:, improved] = solution[:, improved]


# ----------------------------------------------------------------------------------------------------------
# CPU: Gram matrix and Cholesky factor share one buffer


class _SharedGramBuffer:
    """The Gram matrix and the Cholesky factor of ``Gram + alpha I`` in one (m, m) Fortran-ordered buffer.

    Why: at 9,000 trials a float32 Gram matrix is 0.32 GB, and torch's Cholesky returns a second one. Here
    the strict upper triangle keeps the Gram matrix (its diagonal is kept aside) and the lower triangle is
    the work area: for each alpha it is refilled from the upper triangle, factorised by LAPACK ``potrf`` in
    place, then inverted by ``trtri`` in place; both read and write only the lower triangle.
    """

    def __init__(self, A: torch.Tensor):
        m = A.shape[0]
        self.array = np.empty((m, m), dtype=A.numpy().dtype, order="F")
        self.W = torch.from_numpy(self.array)  # strides (1, m): W[i, j] is array[i, j]
        W = self.W
        for start in range(0, m, GRAM_BLOCK):
            stop = min(m, start + GRAM_BLOCK)
            W[start:stop, :stop] = A[start:stop] @ A[:stop].T  # rows of the lower triangle (diagonal block full)
            W[:start, start:stop] = W[start:stop, :start].T  # mirrored into the upper triangle
        self.diagonal = W.diagonal().clone()
        self.potrf, self.potrs, self.trtri = lapack.get_lapack_funcs(("potrf", "potrs", "trtri"), (self.array,))
        self.trmm = blas.get_blas_funcs("trmm", (self.array,))

    @property
    def size(self) -> int:
        return self.array.shape[0]

    def factorise(self, alpha: float) -> None:
        """Lower triangle <- Cholesky factor L of ``Gram + alpha I``."""
        W, m = self.W, self.size
        for start in range(0, m, GRAM_BLOCK):
            stop = min(m, start + GRAM_BLOCK)
            W[stop:, start:stop] = W[start:stop, stop:].T
            block = W[start:stop, start:stop]
            block.copy_(torch.triu(block) + torch.triu(block, 1).T)
        W.diagonal().copy_(self.diagonal + alpha)
        _, info = self.potrf(self.array, lower=1, clean=0, overwrite_a=1)
        if info != 0:
            raise BadDataError(f"ridge: Cholesky failed for alpha={alpha:g} (matrix not positive definite)",
                               hint="use larger alphas or solver='eigen'")

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``(Gram + alpha I)^-1 rhs`` from the factor (before :meth:`invert`)."""
        solution, info = self.potrs(self.array, rhs.numpy(), lower=1)
        if info != 0:
            raise BadDataError(f"ridge: triangular solve failed (LAPACK info {info})")
        return torch.from_numpy(np.ascontiguousarray(solution))

    def invert(self) -> None:
        """Lower triangle <- ``L^-1``."""
        _, info = self.trtri(self.array, lower=1, overwrite_c=1)
        if info != 0:
            raise BadDataError(f"ridge: triangular inverse failed (LAPACK info {info})")

    def inverse_column_norms_sq(self) -> torch.Tensor:
        """Squared norms of the columns of ``L^-1`` = diagonal of ``(Gram + alpha I)^-1``."""
        W, m = self.W, self.size
        out = torch.empty(m, dtype=W.dtype)
        for start in range(0, m, GRAM_BLOCK):
            stop = min(m, start + GRAM_BLOCK)
            diag_block = torch.tril(W[start:stop, start:stop])
            out[start:stop] = (diag_block * diag_block).sum(0) + torch.linalg.vector_norm(W[stop:, start:stop],
                                                                                      dim=0) ** 2
        return out

    def inverse_columns(self, columns: torch.Tensor) -> torch.Tensor:
        """Columns of ``L^-1`` (m, k), the Gram entries above the diagonal masked to zero."""
        cols = self.W[:, columns]
        rows = torch.arange(self.size)
        return cols * (rows[:, None] >= columns[None, :])

    def inverse_times(self, B: np.ndarray) -> torch.Tensor:
        """``L^-1 @ B`` for a Fortran-ordered (m, k) array, in place (BLAS ``trmm`` reads the lower triangle)."""
        out = self.trmm(1.0, self.array, B, lower=1, overwrite_b=1)
        return torch.from_numpy(out)


def _solve_cholesky_shared_buffer(Xc: torch.Tensor, Yc: torch.Tensor, alphas: np.ndarray, blocks: _GroupBlocks,
                                  search: str):
    """CPU Cholesky solver on :class:`_SharedGramBuffer`: memory X + one (m, m) matrix + O(m t)."""
    n, p = Xc.shape
    t = Yc.shape[1]
    dual_form = n <= p
    with blas_threads(torch.get_num_threads()):
        shared = _SharedGramBuffer(Xc if dual_form else Xc.T)
        rhs = Yc.contiguous() if dual_form else (Xc.T @ Yc).contiguous()
        cv_sse = torch.full((len(alphas), t), float("inf"), dtype=Xc.dtype)
        best_sse = torch.full((t,), float("inf"), dtype=Xc.dtype)
        best_solution = torch.zeros_like(rhs)

        def step(k):
            alpha = float(alphas[k])
            shared.factorise(alpha)
            solution = shared.solve(rhs)
            shared.invert()
            if dual_form:
                _score_alpha(k, alpha, solution, Xc, Yc, blocks, n, cv_sse, best_sse, best_solution,
                             inverse_norms_sq=shared.inverse_column_norms_sq(), inverse_columns=shared.inverse_columns)
            else:
                T = shared.inverse_times(np.array(Xc.numpy().T, order="F"))  # (p, n)
                _score_alpha(k, alpha, solution, Xc, Yc, blocks, n, cv_sse, best_sse, best_solution, T=T)
            return torch.argmin(cv_sse, dim=0).numpy()

        _evaluate_alphas(alphas, search, step)
        shared = None  # frees the n x n buffer before the coefficients are formed
        coef = Xc.T @ best_solution if dual_form else best_solution
    return cv_sse, coef
