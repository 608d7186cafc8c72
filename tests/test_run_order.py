"""Runs are taken in the order of their numbers, not of their names as text (run-2 before run-10)."""

from helpers import make_minimal_bids

from bids_m2i.utils.paths import natural_key


def test_natural_key_orders_numbers_by_value_and_is_total():
    names = ["sub-10_task-a_run-1", "sub-2_task-a_run-10", "sub-2_task-a_run-2", "sub-2_task-a_run-02",
             "sub-2_task-b_run-1"]
    assert sorted(names, key=natural_key) == ["sub-2_task-a_run-02", "sub-2_task-a_run-2", "sub-2_task-a_run-10",
                                              "sub-2_task-b_run-1", "sub-10_task-a_run-1"]


def test_runs_beyond_nine_come_after_run_nine(tmp_path):
    from bids_m2i.bids.inputs import collect_inputs
    from bids_m2i.config import build_config

    bids = make_minimal_bids(tmp_path / "bids", runs=("1", "2", "9", "10", "11"), n_volumes=36)
    options = {"skip_bids_validation": True, "stop_after": "glm"}   # no stimulus images in this dataset
    config = build_config(bids, tmp_path / "out", "participant", options, set(options))
    inputs = collect_inputs(config, tmp_path / "work")["01"]
    assert [r.bold.entities["run"] for r in inputs.runs] == ["1", "2", "9", "10", "11"]
    # the trials table (and so the GLM's design, statseries and events outputs) follows the same order
    assert list(dict.fromkeys(inputs.trials["run"])) == [r.bold.run for r in inputs.runs]


def test_group_level_lists_participants_by_number(tmp_path):
    from types import SimpleNamespace

    from bids_m2i.workflows.group import expected_participants

    for label in ("10", "2", "1", "11"):
        (tmp_path / f"sub-{label}").mkdir()
    config = SimpleNamespace(bids_dir=tmp_path, output_dir=tmp_path / "out", participant_label=[])
    assert expected_participants(config) == ["1", "2", "10", "11"]
