"""What a fair test of shared-subject decoding needs: participant-specific brain sizes in the simulator, and a
BIDS filter file that restricts one task's runs while keeping another's."""

from __future__ import annotations

import numpy as np

from bids_m2i.simulate.dataset import BRAIN_SCALE_RANGE, brain_scale, simulate_dataset
from bids_m2i.simulate.presets import get_preset
from bids_m2i.simulate.truth import load_truth


def test_brain_scales_differ_but_participant_01_keeps_the_preset():
    cfg = get_preset("demo")
    scales = [brain_scale(cfg, 0, i) for i in range(6)]
    assert scales[0] == 1.0
    assert len(set(scales)) == 6 and all(BRAIN_SCALE_RANGE[0] <= s <= BRAIN_SCALE_RANGE[1] for s in scales)
    assert scales == [brain_scale(cfg, 0, i) for i in range(6)]  # deterministic
    assert all(brain_scale(get_preset("demo", brain_size_sd=0.0), 0, i) == 1.0 for i in range(6))


def test_participants_have_different_voxel_counts(tmp_path):
    root = simulate_dataset(tmp_path / "two", preset="tiny", subjects=3, seed=0, motion=False)
    counts = []
    for label in ("01", "02", "03"):
        truth = load_truth(root, label)
        counts.append((int(truth["brain_mask"].sum()), len(truth["voxel_ijk"])))
    assert len({c[0] for c in counts}) == 3 and len({c[1] for c in counts}) == 3
    single = simulate_dataset(tmp_path / "one", preset="tiny", subjects=1, seed=0, motion=False)
    assert int(load_truth(single, "01")["brain_mask"].sum()) == counts[0][0]
    for (mask, responsive), scale in zip(counts, [brain_scale(get_preset("tiny"), 0, i) for i in range(3)]):
        assert abs(responsive - round(100 * scale ** 3)) <= 1  # tiny: 60 early + 40 higher voxels


def test_bids_filter_file_list_selects_the_union(tiny_dataset, tmp_path, capsys):
    """A list of filter sets under "bold" (one task's runs restricted, the other task whole): how the
    shared-decoder goal restricts a new participant to 2 perception runs and keeps its imagery runs."""
    import json

    from bids_m2i.cli.run import run_cli

    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": [{"task": "perception", "run": [2]}, {"task": "imagery"}]}))
    code = run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "--print-trials", "--skip-bids-validation",
                    "--bids-filter-file", str(filters), "-w", str(tmp_path / "work")])
    assert code == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("perception", "imagery"))]
    assert sorted((r[0], r[2]) for r in rows) == [("imagery", "01"), ("perception", "02")]
    filters.write_text(json.dumps({"bold": [{"task": "perception"}, "run-02"]}))
    assert run_cli([str(tiny_dataset), str(tmp_path / "out"), "participant", "--print-trials",
                    "--skip-bids-validation", "--bids-filter-file", str(filters), "-w", str(tmp_path / "work")]) == 64
