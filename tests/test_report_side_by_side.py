"""Vision and imagery side by side on the HTML pages (issue 14: "vision and imagery side by side in the report
and in the group table"): the pages showed only the long metrics tables, one row per condition."""

import pandas as pd

from bids_m2i.reports.side_by_side import side_by_side_rows


def _metrics():
    rows = [("perception", "none", "pixcorr", "pixels", 0.61, 0.026), ("perception", "none", "twoway", "pixels", 0.918, 0.5),
            ("imagery", "image", "twoway", "pixels", 0.866, 0.5), ("imagery", "text", "twoway", "text", 0.967, 0.5),
            ("imagery", "text", "top5", "pixels", 1.0, 1.0), ("perception", "none", "zzz_other", "pixels", 0.3, 0.1)]
    return pd.DataFrame(rows, columns=["condition", "cue", "metric", "feature_space", "value", "chance"])


def test_rows_put_conditions_in_columns_headline_metrics_first():
    headings, rows = side_by_side_rows(_metrics())
    assert headings == ["Perception (seen images)", "Imagery from memory", "Pure imagination (text cue)"]
    assert [(r["metric"], r["feature_space"]) for r in rows] == [
        ("twoway", "pixels"), ("twoway", "text"), ("pixcorr", "pixels"), ("top5", "pixels"), ("zzz_other", "pixels")]
    twoway = rows[0]["cells"]
    assert [c["value"] for c in twoway[:2]] == ["0.918", "0.866"] and twoway[2] is None  # no such metric there
    assert rows[3]["cells"][2]["trivial"] and not twoway[0]["trivial"]  # top-5 of 5 candidates: chance 1
    assert rows[2]["cells"][0]["chance"] == "0.026"


def test_group_cells_carry_the_spread():
    frame = _metrics().rename(columns={"value": "mean"})
    frame["sd"], frame["n"] = ["0.01", "n/a", "0.02", "0.03", "0", "0.1"], ["3", "1", "3", "3", "3", "3"]
    _, rows = side_by_side_rows(frame, value="mean")
    cells = {r["metric"] + "/" + r["feature_space"]: r["cells"] for r in rows}
    assert cells["twoway/pixels"][0]["spread"] == "(n = 1)"           # one participant: no sd
    assert cells["twoway/pixels"][1]["spread"] == "± 0.020 (n = 3)"
    assert cells["pixcorr/pixels"][0]["spread"] == "± 0.010 (n = 3)"


def test_nothing_to_show():
    assert side_by_side_rows(pd.DataFrame()) == ([], [])
