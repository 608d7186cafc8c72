"""A participant with only imagery runs (or whose perception events name no stimulus) cannot be decoded: the
decoder trains on perception trials. The run stopped with 65 "no perception trials with a stimulus" at the
decoding stage, after the participant's preprocessing and GLM (minutes to hours on real data). Now: 65 before
any step, naming the participant; ``--stop-after glm`` still runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import make_minimal_bids
from PIL import Image

from bids_m2i.cli.run import run_cli


def make_bids_with_images(root: Path, tasks: tuple[str, ...]) -> Path:
    """The minimal dataset with a stimulus image per event (``stimuli/img-NNNN.png``)."""
    bids = make_minimal_bids(root, tasks=tasks)
    (bids / "stimuli").mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(bids / "stimuli" / f"img-{i:04d}.png")
    for events in bids.rglob("*_events.tsv"):
        lines = events.read_text().splitlines()
        kind = "imagery" if "imagery" in events.name else "stimulus"  # m2i's native trial_type values
        rows = [lines[0]] + [line.replace("\tn/a\tnone", f"\timg-{i:04d}.png\tnone", 1).replace("stimulus", kind, 1)
                             for i, line in enumerate(lines[1:])]
        events.write_text("\n".join(rows) + "\n")
    return bids


def test_only_imagery_runs_are_65_before_any_step(tmp_path, started, capsys):
    bids = make_bids_with_images(tmp_path / "bids", tasks=("imagery",))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 65 and not started
    assert "sub-01 has no perception trials" in err and "imagery" in err and "--stop-after glm" in err
    assert "Traceback" not in err


def test_only_imagery_runs_up_to_the_glm_start(tmp_path, started):
    bids = make_bids_with_images(tmp_path / "bids", tasks=("imagery",))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm"])
    assert code == 0 and started


def test_perception_and_imagery_start(tmp_path, started):
    bids = make_bids_with_images(tmp_path / "bids", tasks=("perception", "imagery"))
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    assert code == 0 and started
