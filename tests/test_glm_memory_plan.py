"""The GLM's memory plan counts the designs and their factorisations (long runs of many trials).

The plan kept a fixed 64 MB for them; on 4 runs × 800 volumes × 300 trials (2,000 voxels) the fit's peak rose
by 824 MB where the plan said 254 MB, so a node could take three times its --mem-gb share. Measured in
docs/glm.md ("Memory"); here the plan's arithmetic, on designs only (no fit)."""

import torch
from helpers import regular_trials

from bids_m2i.glm.estimate import design_memory_bytes, estimate_memory
from bids_m2i.glm.model import SessionModel


def _model(n_runs, n_volumes, every):
    _, designs, _ = regular_trials(n_runs, n_volumes, 1.6, every=every, n_stimuli=40)
    return SessionModel(designs, "glover", with_library=True, dtype=torch.float32)


def test_usual_runs_keep_the_fixed_allowance():
    model = _model(6, 200, every=4.8)                  # 6 runs x 200 volumes, ~64 trials each
    design = design_memory_bytes(model, 4, max_pcs=10)
    assert 10e6 < design < 64e6
    sizes = dict(n_voxels=20_000, n_volumes=1_200, n_trials=390, itemsize=4, input_itemsize=4, n_kernels=21,
                 mem_gb=4.0)
    assert estimate_memory(**sizes, design_bytes=design) == estimate_memory(**sizes)   # the plan as before
    assert estimate_memory(**sizes)[1]["design_gb"] == 0.064


def test_long_runs_of_many_trials_enter_the_plan():
    model = _model(4, 800, every=4.0)                  # 4 runs x 800 volumes, ~316 trials each
    design = design_memory_bytes(model, 4, max_pcs=10)
    n_trials = sum(t.shape[2] for t in model.trial_regressors)
    assert design > 600e6                              # the trial regressors alone: 21 x 800 x 316 x 8 B x 4 runs
    sizes = dict(n_voxels=20_000, n_volumes=3_200, n_trials=n_trials, itemsize=4, input_itemsize=4, n_kernels=21,
                 mem_gb=2.0)
    old_chunk, old = estimate_memory(**sizes)
    chunk, plan = estimate_memory(**sizes, design_bytes=design)
    assert plan["design_gb"] > 0.6 and plan["total_gb"] <= 2.0 and old["total_gb"] <= 2.0
    assert chunk < old_chunk                           # fewer voxels per chunk: the designs take their room
    per_voxel = 4 * (3 * 3_200 + 8 * n_trials + 120 + 2 * 21 + 32)
    assert abs((old_chunk - chunk) * per_voxel - (design - 64e6)) < 2 * per_voxel


def test_each_worker_adds_a_pc_count_and_a_factorisation():
    """The PC search tries one count per worker side by side (glm/denoise.py): each worker beyond the first
    holds one more count's factorised models and factorises one run's kernels at a time. With one worker the
    estimate is the one above (three counts kept + one tried)."""
    model = _model(4, 800, every=4.0)
    one, two = (design_memory_bytes(model, 4, max_pcs=10, n_workers=n) for n in (1, 2))
    assert design_memory_bytes(model, 4, max_pcs=10) == one
    counts = 0.0
    building = 0.0
    for run, trials in enumerate(model.trial_regressors):
        k, t, n = trials.shape
        e = model.nuisance_regressors[run].shape[2] + model.designs[run].fixed_nuisance.shape[1] + 10
        counts += k * (t * (n + e) + n * n) * 4
        building = max(building, 3 * k * t * n * 8)
    assert abs((two - one) - (counts + building)) < 1.0
    assert 0.2e9 < two - one < 0.3e9                   # ~240 MB more on these long runs


def test_the_workflows_coarse_need_covers_the_engines_designs_with_threads():
    """The GLM node's share of --mem-gb is at least workflows.glm.glm_need_gb, whose designs term must cover
    the engine's own estimate (design_memory_bytes) for the threads the node runs with, long runs included."""
    from types import SimpleNamespace

    from bids_m2i.workflows.glm import DESIGN_KERNELS, glm_need_gb

    for n_runs, n_volumes, every in ((4, 800, 4.0), (6, 200, 4.8)):
        model = _model(n_runs, n_volumes, every=every)
        n_trials = sum(t.shape[2] for t in model.trial_regressors)
        runs = [SimpleNamespace(shape=(1, 1, 1), n_volumes=n_volumes) for _ in range(n_runs)]
        base = glm_need_gb(runs, n_trials, 1) - DESIGN_KERNELS * n_runs * n_volumes * (n_trials / n_runs) * 40 / 1e9
        for threads in (1, 2, 4):
            coarse = glm_need_gb(runs, n_trials, threads) - base
            assert coarse * 1e9 >= design_memory_bytes(model, 4, max_pcs=10, n_workers=threads)
        assert glm_need_gb(runs, n_trials, 2) > glm_need_gb(runs, n_trials, 1)
