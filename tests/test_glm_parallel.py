"""HRF groups fitted side by side on several threads (bids_m2i/utils/parallel.py; issue 13, speed).

No timing is asserted (benchmarks/bench_glm.py measures it); these pin what the threads must not change: the
order of the results, one torch thread per group, errors, and the betas themselves.
"""

import threading

import numpy as np
import pytest
import torch

from bids_m2i.utils.parallel import group_map


@pytest.fixture
def two_torch_threads():
    """The suite runs torch on one thread (conftest.py); the engine never raises the process' count."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_group_map_keeps_order_and_gives_each_group_one_torch_thread(two_torch_threads):
    seen = []

    def work(item):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        threading.Event().wait(0.01 * (item % 3))    # unequal durations: finishing order differs from the items'
        return item * item

    with group_map(torch.device("cpu")) as map_groups:
        assert map_groups(work, range(12)) == [i * i for i in range(12)]
    assert {n for _, n in seen} == {1}
    assert all(name.startswith("m2i-glm-group") for name, _ in seen)
    assert torch.get_num_threads() == 2                          # restored


def test_group_map_runs_in_turn_on_one_thread_or_another_device(two_torch_threads):
    main = threading.current_thread().name
    for device, threads in ((torch.device("cpu"), 1), (torch.device("cuda"), 2)):
        torch.set_num_threads(threads)
        names = []
        with group_map(device) as map_groups:
            assert map_groups(lambda i: names.append(threading.current_thread().name) or -i, [3, 1, 2]) == [-3, -1, -2]
        assert set(names) == {main} and torch.get_num_threads() == threads


def test_group_map_raises_a_groups_error_and_starts_no_more_groups(two_torch_threads):
    started = []

    def work(item):
        started.append(item)
        if item == 0:
            raise ValueError("group 0 failed")
        threading.Event().wait(0.05)
        return item

    with pytest.raises(ValueError, match="group 0 failed"):
        with group_map(torch.device("cpu")) as map_groups:
            map_groups(work, range(40))
    assert len(started) < 40                                     # the queued groups were cancelled
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("threads", [1, 2])
def test_lazy_group_map_yields_in_order_and_starts_few_items_ahead(two_torch_threads, threads):
    """The PC search maps its counts lazily: results come in order, and while the caller holds one result no
    more than the workers' count + 1 items are started and not taken, so few counts' operators exist at once."""
    torch.set_num_threads(threads)
    started, taken, most_ahead = [], [], [0]
    lock = threading.Lock()

    def work(item):
        with lock:
            started.append(item)
            most_ahead[0] = max(most_ahead[0], len(started) - len(taken))
        threading.Event().wait(0.02 if item == 0 else 0.001)   # the first item is the slowest
        return -item

    with group_map(torch.device("cpu")) as map_groups:
        results = map_groups(work, range(20), lazy=True)
        assert started == []                                   # nothing starts before it is asked for
        for item, result in enumerate(results):
            assert result == -item
            taken.append(item)
            threading.Event().wait(0.005)                      # the caller's own work on the result
    assert len(taken) == 20
    assert most_ahead[0] <= (threads + 1 if threads > 1 else 1)


def test_lazy_group_map_raises_an_items_error_when_reached(two_torch_threads):
    def work(item):
        if item == 3:
            raise ValueError("item 3 failed")
        return item

    seen = []
    with pytest.raises(ValueError, match="item 3 failed"):
        with group_map(torch.device("cpu")) as map_groups:
            for result in map_groups(work, range(10), lazy=True):
                seen.append(result)
    assert seen == [0, 1, 2]
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("options", [{}, {"noise_model": "ols", "hrf_library": "medium", "fraction_pooling": 1.0},
                                     {"method": "fithrf"}, {"method": "lss"}])
def test_betas_with_two_threads_equal_one_thread_and_reruns(two_torch_threads, options):
    """Every group's arithmetic is one thread's, and the stages left on torch's own threads (the HRF pass's
    products) split over voxels, not over sums: two threads give the one-thread betas bit for bit."""
    from bids_m2i.glm.estimate import estimate_single_trial_betas
    from bids_m2i.glm.simulation import simulate_session

    sim = simulate_session(n_voxels=900, n_runs=3, n_volumes=140, n_stimuli=20, n_repeats=3, seed=4)
    one = estimate_single_trial_betas(sim.runs, sim.trials, max_pcs=4, n_threads=1, **options)
    two = [estimate_single_trial_betas(sim.runs, sim.trials, max_pcs=4, n_threads=2, **options) for _ in range(2)]
    if options.get("method", "fithrf-denoise-rr") == "fithrf-denoise-rr":
        assert one.metadata["n_pcs"] > 0                                        # PCs searched
    if options.get("method") != "lss":
        assert len(np.unique(one.hrf_index)) > 3                                # several HRF groups
    assert two[0].metadata["n_threads"] == 2
    for result in two:
        for name in ("betas", "r2", "ncsnr", "hrf_index", "n_pcs", "frac"):
            np.testing.assert_array_equal(getattr(result, name), getattr(one, name), err_msg=name)


def test_memory_plan_counts_each_extra_worker():
    from bids_m2i.glm.estimate import PER_WORKER_BYTES, estimate_memory
    from bids_m2i.glm.fracridge import FRACTION_BATCH_ROWS, N_ALPHAS

    sizes = dict(n_voxels=200_000, n_volumes=1_200, n_trials=360, itemsize=4, input_itemsize=4, n_kernels=21,
                 mem_gb=6.0)
    one_chunk, one = estimate_memory(**sizes)
    four_chunk, four = estimate_memory(**sizes, n_workers=4)
    extra = 3 * (PER_WORKER_BYTES + 3 * FRACTION_BATCH_ROWS * 360 * 4)
    assert (one["n_workers"], four["n_workers"]) == (1, 4)
    assert four_chunk < one_chunk < 200_000                      # chunked, and fewer voxels per chunk
    assert four["total_gb"] <= 6.0 and one["total_gb"] <= 6.0
    per_voxel = 4 * (3 * 1_200 + 8 * 360 + N_ALPHAS + 2 * 21 + 32)
    assert abs((one_chunk - four_chunk) * per_voxel - extra) < 2 * per_voxel


def test_engine_plans_for_the_threads_it_runs_groups_on(two_torch_threads):
    from bids_m2i.glm.estimate import estimate_single_trial_betas
    from bids_m2i.glm.simulation import simulate_session

    sim = simulate_session(n_voxels=300, n_runs=3, n_volumes=100, n_stimuli=10, n_repeats=3, seed=2)
    plans = [estimate_single_trial_betas(sim.runs, sim.trials, max_pcs=2, n_threads=n).metadata["memory"]
             for n in (1, 2)]
    assert [p["n_workers"] for p in plans] == [1, 2]
