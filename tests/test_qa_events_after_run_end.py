"""Events that start after the end of their run are dropped, and trials that end after it are cut short: said
only in the log before (QA pass 29: a run cut to 150 of its 244 volumes lost 19 trials with nothing in the
outputs). Now the GLM sidecar's ``events_warnings`` and the participant report say it too."""

from __future__ import annotations

import json

from bids_m2i.cli.run import run_cli
from fixture_datasets import synthetic_bold, write_bold


def test_dropped_and_cut_trials_are_recorded_in_the_sidecar_and_the_report(minimal_bids, tmp_path):
    bolds = sorted(minimal_bids.rglob("*_bold.nii.gz"))
    for k, bold in enumerate(bolds):  # a head, not noise: a brain mask
        write_bold(bold, synthetic_bold(40, (6, 6, 4), seed=k), tr=2.0)
    events = sorted(minimal_bids.rglob("*_events.tsv"))[0]
    lines = events.read_text().splitlines()
    header = lines[0].split("\t")
    onset, duration = header.index("onset"), header.index("duration")
    late = lines[-1].split("\t")
    late[onset] = "95"          # 40 volumes x 2 s = 80 s: starts after the end
    cut = lines[-2].split("\t")
    cut[onset], cut[duration] = "78", "4"   # starts inside, ends after
    lines[-1], lines[-2] = "\t".join(late), "\t".join(cut)
    events.write_text("\n".join(lines) + "\n")
    before = events.read_bytes()
    out = tmp_path / "out"
    code = run_cli([str(minimal_bids), str(out), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--stop-after", "glm", "--glm", "lsa", "--nprocs", "1"])
    assert code == 0
    assert events.read_bytes() == before  # the input is never modified
    sidecars = sorted((out / "sub-01" / "func").glob("*_stat-effect_desc-lsa_statseries.json"))
    warnings = [w for s in sidecars for w in json.loads(s.read_text()).get("events_warnings", [])]
    dropped = [w for w in warnings if "start after the end of the run (80.0 s = 40 volumes x 2 s)" in w]
    cut_short = [w for w in warnings if "end after the end of the run" in w]
    assert len(dropped) == 1 and "1 trial" in dropped[0], warnings
    assert len(cut_short) == 1 and cut_short[0].startswith("sub-01/"), warnings
    assert str(tmp_path) not in json.dumps(warnings)  # no machine path in the derivatives
    report = (out / "sub-01.html").read_text()
    assert "start after the end of the run" in report and "end after the end of the run" in report
