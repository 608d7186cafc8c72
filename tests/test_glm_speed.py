"""The fast kernels of the single-trial GLM equal direct references (issue 13, speed).

Each rewritten kernel is compared with the plain formula it replaced (one fraction at a time, one kernel at a
time, explicit matrices), on small random problems. Fast (about 2 s); no timing is asserted.
"""

import numpy as np
import pytest
import torch

from bids_m2i.glm.fracridge import (DEFAULT_FRACTIONS, _criterion, _ridge_path, alphas_for_fraction,
                                    fractional_ridge_cv, ridge_cv_loss)
from bids_m2i.glm.reliability import RepeatStructure, leave_one_out_error
from bids_m2i.glm.solvers import RunOperators
from bids_m2i.glm.whitening import RHO_GRID, _rho_powers, expected_lag_profile


def _reference_loo(target, estimate, repeats):
    """The leave-one-repeat-out error written out: each repeat predicted by the mean of the others."""
    out = torch.zeros(estimate.shape[0], dtype=torch.float64)
    for stim in range(repeats.n_stimuli):
        trials = repeats.trials[repeats.stimulus_of_trial == stim]
        for t in trials:
            others = [o for o in trials if o != t]
            prediction = estimate[:, others].double().mean(1)
            out += (target[:, t].double() - prediction) ** 2
    return out


@pytest.mark.parametrize("all_repeated", [True, False])
def test_leave_one_out_error_equals_direct_formula(all_repeated):
    rng = np.random.default_rng(0)
    stimulus = np.repeat(np.arange(12), 3).astype(object)
    rng.shuffle(stimulus)
    if not all_repeated:
        stimulus[[0, 5]] = "n/a"             # two trials outside the repeats, one stimulus with 2 showings
    repeats = RepeatStructure.from_labels(stimulus.astype(str))
    target, estimate = torch.randn(7, stimulus.size), torch.randn(7, stimulus.size)
    fast = leave_one_out_error(target, estimate, repeats)
    assert torch.allclose(fast.double(), _reference_loo(target, estimate, repeats), rtol=1e-5)
    assert torch.equal(leave_one_out_error(target, estimate, repeats), fast)   # cached index tensors reused


def _random_operators(rng, n_runs=3, n_volumes=40, n_trials=8, rank_deficient=False):
    ops = []
    for run in range(n_runs):
        trials = rng.standard_normal((n_volumes, n_trials))
        if rank_deficient and run == 1:
            trials[:, -1] = trials[:, 0]     # a non-estimable direction (singular value 0)
        nuisance = np.column_stack([np.ones(n_volumes), np.linspace(-1, 1, n_volumes)])
        ops.append(RunOperators.build(trials, nuisance, torch.float32, torch.device("cpu")))
    return ops


def _reference_ridge_cv(operators, data_runs, repeats, fractions, criterion):
    """fractional_ridge_cv as one loop over fractions, ridge betas from the explicit formula."""
    projections, ols, fitted, curve, grid = _ridge_path(operators, data_runs)

    def ridge(alpha):
        blocks = []
        for ops, z in zip(operators, projections):
            s = ops.singular[None, :]
            denom = s * s + alpha[:, None]
            coef = torch.where(denom > 0, s / torch.clamp(denom, min=1e-30), torch.zeros_like(denom))
            blocks.append((z * coef) @ ops.right.T)
        return torch.cat(blocks, dim=1)

    best, best_error = ols.clone(), _criterion(ols, ols, repeats, criterion)
    chosen = torch.ones(ols.shape[0])
    for fraction in sorted(fractions, reverse=True):
        if fraction >= 1.0:
            continue
        candidate = ridge(alphas_for_fraction(curve, grid, fraction))
        error = _criterion(ols, candidate, repeats, criterion)
        better = error < best_error
        best = torch.where(better[:, None], candidate, best)
        best_error = torch.where(better, error, best_error)
        chosen = torch.where(better, torch.full_like(chosen, fraction), chosen)
    centred = best - best.mean(1, keepdim=True)
    variance = (centred * centred).sum(1)
    scale = (centred * (ols - ols.mean(1, keepdim=True))).sum(1) / torch.clamp(variance, min=1e-30)
    return scale[:, None] * best + (ols.mean(1) - scale * best.mean(1))[:, None], chosen, best_error


@pytest.mark.parametrize("criterion", ["consistency", "ols-target"])
@pytest.mark.parametrize("n_voxels", [5, 700])  # 700 voxels: several fraction batches (FRACTION_BATCH_ROWS)
def test_batched_fractional_ridge_equals_fraction_by_fraction(criterion, n_voxels):
    rng = np.random.default_rng(1)
    operators = _random_operators(rng, rank_deficient=True)
    stimulus = np.array([f"s{i % 12}" for i in range(24)])   # 8 trials per run × 3 runs, 2 showings each
    repeats = RepeatStructure.from_labels(stimulus)
    signal = torch.randn(n_voxels, 1) * torch.randn(1, 24)
    data_runs = []
    for run, ops in enumerate(operators):
        design = (ops.left * ops.singular) @ ops.right.T                      # the reduced trial design
        noise = torch.randn(n_voxels, ops.left.shape[0])
        data_runs.append(signal[:, run * 8:(run + 1) * 8] @ design.T + 2 * noise)
    data_runs[0][0] = 0.0                                                     # a voxel without signal
    betas, chosen, _, _ = fractional_ridge_cv(operators, data_runs, repeats, DEFAULT_FRACTIONS, criterion)
    ref_betas, ref_chosen, ref_error = _reference_ridge_cv(operators, data_runs, repeats, DEFAULT_FRACTIONS,
                                                           criterion)
    assert torch.equal(chosen, ref_chosen)
    assert torch.allclose(betas, ref_betas, atol=1e-5 * float(ref_betas.std()))
    assert torch.unique(chosen).numel() > 1 or n_voxels == 5              # a non-trivial choice
    assert torch.allclose(ridge_cv_loss(operators, data_runs, repeats, DEFAULT_FRACTIONS, criterion), ref_error,
                          rtol=1e-6)


def test_alphas_for_every_fraction_at_once_equal_one_at_a_time():
    torch.manual_seed(0)
    curve = torch.sort(torch.rand(30, 50), dim=0, descending=True).values
    curve[0] = 1.0
    curve[:, :3] = 0.999 + 0.001 * curve[:, :3]           # above every fraction: the grid's strongest penalty
    curve[:, 3] = 0.0                                      # a voxel without signal
    grid = torch.as_tensor(np.concatenate([[0.0], np.logspace(-2, 2, 29)]), dtype=torch.float32)
    fractions = [f for f in DEFAULT_FRACTIONS if f < 1]
    one_by_one = torch.stack([alphas_for_fraction(curve, grid, f) for f in fractions])
    at_once = alphas_for_fraction(curve, grid, torch.tensor(fractions)[:, None])
    assert torch.equal(at_once, one_by_one)


def test_expected_lag_profile_equals_traces():
    rng = np.random.default_rng(2)
    ops = _random_operators(rng, n_runs=1, n_volumes=30, n_trials=6)[0]
    d_residual, d_lagged = expected_lag_profile(ops)
    basis = torch.cat([ops.left, ops.nuisance_basis], dim=1).double().numpy()
    n = basis.shape[0]
    residual = np.eye(n) - basis @ basis.T
    lagged = residual @ np.eye(n, k=-1) @ residual
    lagged = 0.5 * (lagged + lagged.T)
    np.testing.assert_allclose(d_residual, [np.trace(residual, k) * (1 if k == 0 else 2) for k in range(n)],
                               atol=1e-12)
    np.testing.assert_allclose(d_lagged, [np.trace(lagged, k) * (1 if k == 0 else 2) for k in range(n)],
                               atol=1e-12)
    np.testing.assert_array_equal(_rho_powers(n), RHO_GRID[:, None] ** np.arange(n)[None, :])


@pytest.mark.parametrize("nuisance_per_run", [0, 1])   # with nuisance events: the stacked (per-kernel) basis
def test_pc_search_betas_equal_grouped_trial_betas(nuisance_per_run):
    from bids_m2i.glm.denoise import _ols_trial_betas
    from bids_m2i.glm.design import build_run_designs
    from bids_m2i.glm.fithrf import grouped_trial_betas
    from bids_m2i.glm.model import SessionModel
    from bids_m2i.glm.simulation import simulate_session
    from bids_m2i.glm.solvers import percent_signal

    rng = np.random.default_rng(3)
    sim = simulate_session(n_voxels=40, n_runs=2, n_volumes=120, n_stimuli=20, n_repeats=2,
                           nuisance_per_run=nuisance_per_run, seed=3)
    designs, rows = build_run_designs(sim.runs, sim.trials, "polynomial", 0.01, None)
    model = SessionModel(designs, with_library=True)
    model.noise_pcs = [np.linalg.qr(rng.standard_normal((d.frame_times.size, 3)))[0] for d in designs]
    data_runs = [percent_signal(run.data, torch.float32, torch.device("cpu"))[0] for run in sim.runs]
    kernel_of_voxel = rng.integers(0, model.n_kernels - 1, 40)
    for n_pcs in (0, 3):
        reference, _ = grouped_trial_betas(model, data_runs, kernel_of_voxel, len(rows), n_pcs=n_pcs)
        fast = _ols_trial_betas(model, data_runs, kernel_of_voxel, len(rows), n_pcs)
        assert torch.allclose(fast, reference, atol=1e-4 * float(reference.std()))
    # a kernel whose reduced design is singular falls back to the operators' pseudo-inverse
    kernel = int(kernel_of_voxel[0])
    model.trial_regressors[0][kernel][:, 1] = model.trial_regressors[0][kernel][:, 0]
    model.forget()
    assert model.ols_maps(0, 0)[kernel] is None
    assert sum(m is not None for m in model.ols_maps(0, 0)) == model.n_kernels - 1
    reference, _ = grouped_trial_betas(model, data_runs, kernel_of_voxel, len(rows))
    fast = _ols_trial_betas(model, data_runs, kernel_of_voxel, len(rows), 0)
    assert torch.allclose(fast, reference, atol=1e-4 * float(reference.std()))


def test_gamma_pdf_equals_scipy_and_glm_imports_no_scipy():
    import subprocess
    import sys

    from scipy.stats import gamma

    from bids_m2i.glm.hrf_library import gamma_pdf

    times = np.linspace(-2.0, 32.0, 400)
    for shape, loc, scale in ((6.0, 0.1, 0.9), (16.0 / 1.1, 0.02, 1.1), (1.0, 0.0, 1.0)):
        np.testing.assert_allclose(gamma_pdf(times, shape, loc, scale), gamma.pdf(times, shape, loc=loc, scale=scale),
                                   rtol=1e-12, atol=1e-300)
    # the GLM process does not pay for importing scipy (about 0.3 s of CPU)
    code = "import sys, bids_m2i.glm.estimate; print(any(m.startswith('scipy') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("design", ["uniform", "mixed"])
@pytest.mark.parametrize("n_voxels", [5, 700])  # 700 voxels: several fraction batches (FRACTION_BATCH_ROWS)
def test_pc_search_closed_form_loss_equals_ridge_cv_loss(dtype, design, n_voxels):
    """fracridge.search_loss (the PC search's loss without forming the candidate betas) is ridge_cv_loss's
    "consistency" loss: to float64 rounding, and to float32 rounding in single precision. ``mixed``: unrepeated
    trials, stimuli with 2 and 3 showings (per-trial weights), a rank-deficient run."""
    from bids_m2i.glm.fracridge import search_loss

    rng = np.random.default_rng(7)
    torch.manual_seed(7)
    operators = []
    for run in range(3):
        trials = rng.standard_normal((40, 8))
        if run == 1:
            trials[:, -1] = trials[:, 0]                       # a non-estimable direction (singular value 0)
        nuisance = np.column_stack([np.ones(40), np.linspace(-1, 1, 40)])
        operators.append(RunOperators.build(trials, nuisance, dtype, torch.device("cpu")))
    stimulus = np.array([f"s{i % 12}" for i in range(24)]).astype(object)
    if design == "mixed":
        stimulus[[0, 5]] = "n/a"
        stimulus[7] = "s1"                                     # s1 shown 3 times, s7 once
    repeats = RepeatStructure.from_labels(stimulus.astype(str))
    assert (design == "uniform") == (np.unique(repeats.repeats_of_trial).size == 1)
    signal = torch.randn(n_voxels, 1, dtype=dtype) * torch.randn(1, 24, dtype=dtype)
    data_runs = []
    for run, ops in enumerate(operators):
        reduced = (ops.left * ops.singular) @ ops.right.T
        data_runs.append(signal[:, run * 8:(run + 1) * 8] @ reduced.T + 2 * torch.randn(n_voxels, 40, dtype=dtype))
    data_runs[0][0] = 0.0                                       # a voxel without signal in one run
    direct = ridge_cv_loss(operators, data_runs, repeats, DEFAULT_FRACTIONS, "consistency")
    fast = search_loss(operators, data_runs, repeats, DEFAULT_FRACTIONS)
    rtol = 1e-10 if dtype == torch.float64 else 2e-5
    assert torch.allclose(fast, direct, rtol=rtol, atol=rtol * float(direct.abs().max()))
    # fraction 1 alone: the loss of the unregularised betas
    assert torch.allclose(search_loss(operators, data_runs, repeats, (1.0,)),
                          ridge_cv_loss(operators, data_runs, repeats, (1.0,)), rtol=rtol, atol=1e-12)


def test_pc_search_count_and_scores_equal_the_direct_loss():
    """The number of PCs and its scores are those of ridge_cv_loss on every kernel's own operators (the search's
    operators are built for the search voxels' kernels only, and its loss in closed form)."""
    from bids_m2i.glm import denoise
    from bids_m2i.glm.design import build_run_designs
    from bids_m2i.glm.model import SessionModel
    from bids_m2i.glm.simulation import simulate_session
    from bids_m2i.glm.solvers import percent_signal

    rng = np.random.default_rng(4)
    sim = simulate_session(n_voxels=120, n_runs=3, n_volumes=120, n_stimuli=20, n_repeats=3, seed=4)
    designs, rows = build_run_designs(sim.runs, sim.trials, "polynomial", 0.01, None)
    model = SessionModel(designs, with_library=True)
    model.noise_pcs = [np.linalg.qr(rng.standard_normal((d.frame_times.size, 4)))[0] for d in designs]
    data_runs = [percent_signal(run.data, torch.float32, torch.device("cpu"))[0] for run in sim.runs]
    kernel_of_voxel = rng.choice([2, 5, 11, 17], 120)          # a few of the library's kernels
    repeats = RepeatStructure.from_labels(rows["stimulus"].astype(str).to_numpy())
    n_pcs, scores = denoise.choose_n_pcs(model, data_runs, kernel_of_voxel, len(rows), repeats, 4)

    losses = []
    for k in range(5):
        loss = torch.zeros(120)
        for kernel in np.unique(kernel_of_voxel):
            index = torch.as_tensor(np.flatnonzero(kernel_of_voxel == kernel))
            operators = [model.operators(run, int(kernel), k) for run in range(model.n_runs)]
            loss[index] = ridge_cv_loss(operators, [d.index_select(0, index) for d in data_runs], repeats)
        losses.append(loss)
    reference = [float(torch.median(losses[0] - loss)) for loss in losses]
    np.testing.assert_allclose(scores, reference, rtol=1e-3, atol=1e-6)
    gains = np.asarray(reference)
    assert n_pcs == (0 if gains.max() <= 0 else int(np.flatnonzero(gains >= 0.95 * gains.max())[0]))
    # the search's own operators (some kernels, not cached) are the model's: same factorisation
    model.forget()
    some = model.some_operators(1, [5, 11], 2)
    assert ("trials", 1, 5, 2) not in model._cache
    for ops, kernel in zip(some, (5, 11)):
        full = model.operators(1, kernel, 2)
        for name in ("singular", "right", "left", "nuisance_basis"):
            assert torch.allclose(getattr(ops, name), getattr(full, name), atol=1e-6)
    assert model.some_operators(1, [5], 2)[0] is model.operators(1, 5, 2)   # read from the cache when there


def test_fractional_ridge_without_fitted_gives_the_same_betas():
    """The AR(1) path skips the explained sum of squares it discards (``with_fitted=False``): same outputs."""
    rng = np.random.default_rng(2)
    operators = _random_operators(rng)
    repeats = RepeatStructure.from_labels(np.array([f"s{i % 12}" for i in range(24)]))
    data_runs = [torch.randn(50, ops.left.shape[0]) for ops in operators]
    with_fitted = fractional_ridge_cv(operators, data_runs, repeats)
    without = fractional_ridge_cv(operators, data_runs, repeats, with_fitted=False)
    assert without[3] is None and with_fitted[3] is not None
    for a, b in zip(with_fitted[:3], without[:3]):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------------------
# Sixth pass (issue 13, speed): work the fit did twice, done once; betas bit for bit the same

@pytest.mark.parametrize("nuisance_per_run", [0, 1])   # with nuisance events: the per-kernel basis
def test_operators_built_for_some_kernels_equal_all_kernels_at_once(nuisance_per_run):
    """:meth:`SessionModel.operators` factorises only the kernels not cached yet; each kernel's factors are
    bit for bit those of the whole stack (numpy factorises a stack one matrix at a time)."""
    from bids_m2i.glm.design import build_run_designs
    from bids_m2i.glm.model import SessionModel
    from bids_m2i.glm.simulation import simulate_session

    rng = np.random.default_rng(6)
    sim = simulate_session(n_voxels=10, n_runs=2, n_volumes=120, n_stimuli=20, n_repeats=2,
                           nuisance_per_run=nuisance_per_run, seed=6)
    designs, _ = build_run_designs(sim.runs, sim.trials, "polynomial", 0.01, None)
    pcs = [np.linalg.qr(rng.standard_normal((d.frame_times.size, 3)))[0] for d in designs]
    whole, parts = SessionModel(designs, with_library=True), SessionModel(designs, with_library=True)
    whole.noise_pcs = parts.noise_pcs = pcs
    kept = [3, 7, 12]
    for run in range(2):
        parts.keep_operators(run, kept, 2, parts.some_operators(run, kept, 2))
        assert ("trials", run, 0, 2) not in parts._cache
        for kernel in range(whole.n_kernels):
            a, b = whole.operators(run, kernel, 2), parts.operators(run, kernel, 2)
            for name in ("singular", "right", "left", "nuisance_basis"):
                assert torch.equal(getattr(a, name), getattr(b, name)), (run, kernel, name)
        assert all(("trials", run, k, 2) in parts._cache for k in range(parts.n_kernels))


@pytest.mark.parametrize("chunked", [False, True])
def test_ridge_stage_reuses_loaded_data_and_search_operators_with_the_same_betas(monkeypatch, chunked):
    """The ridge stage takes the HRF pass's last chunk (data and total SS) instead of loading it again, and the
    chosen count's operators from the PC search: every output equals the fit that redoes both."""
    from bids_m2i.glm import estimate
    from bids_m2i.glm.model import SessionModel
    from bids_m2i.glm.simulation import simulate_session

    sim = simulate_session(n_voxels=600, n_runs=3, n_volumes=140, n_stimuli=20, n_repeats=3, seed=1)
    if chunked:   # chunks of 256 voxels: only the last one is reused
        monkeypatch.setattr(estimate, "DEFAULT_WORKING_GB", 1e-9)
    loads, kept = [], []
    percent_signal = estimate.percent_signal
    monkeypatch.setattr(estimate, "percent_signal", lambda raw, *a, **k: loads.append(raw.shape[0])
                        or percent_signal(raw, *a, **k))
    keep_operators = SessionModel.keep_operators
    monkeypatch.setattr(SessionModel, "keep_operators", lambda self, run, kernels, n_pcs, ops: kept.append(n_pcs)
                        or keep_operators(self, run, kernels, n_pcs, ops))
    fast = estimate.estimate_single_trial_betas(sim.runs, sim.trials, max_pcs=4, n_threads=1)
    fast_loads = list(loads)
    assert fast.metadata["n_pcs"] > 0 and kept == [fast.metadata["n_pcs"]] * 3   # non-vacuous
    assert fast.metadata["memory"]["chunk_voxels"] == (256 if chunked else 600)

    # the same fit, loading every chunk again and factorising every kernel again
    denoise_and_ridge = estimate._denoise_and_ridge
    monkeypatch.setattr(estimate, "_denoise_and_ridge",
                        lambda *a, **k: denoise_and_ridge(*a, **{**k, "retained": None}))
    monkeypatch.setattr(SessionModel, "keep_operators", lambda *a: None)
    loads.clear()
    plain = estimate.estimate_single_trial_betas(sim.runs, sim.trials, max_pcs=4, n_threads=1)
    assert len(loads) == len(fast_loads) + 3                      # one chunk of 3 runs loaded once less
    for name in ("betas", "r2", "ncsnr", "hrf_index", "n_pcs", "frac"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(plain, name), err_msg=name)
