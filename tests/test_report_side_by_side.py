"""Vision and imagery side by side on the HTML pages (issue 14: "vision and imagery side by side in the report
and in the group table"): the pages showed only the long metrics tables, one row per condition."""

import pandas as pd

from bids_m2i.reports.side_by_side import side_by_side_rows, twoway_headline


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


def test_headline_is_twoway_per_space_with_p_and_the_category_mark():
    """The participant page's summary: two-way only, one row per feature space, p-values ("< 0.001" at 1000
    permutations' floor, blank without permutations), and a mark where pure imagination was scored against
    category means (no target image) rather than against its own target."""
    rows = [("perception", "none", "twoway", "pixels", 0.926, 0.5, 1 / 1001, "against distinct other targets"),
            ("perception", "none", "pixcorr", "pixels", 0.61, 0.02, 1 / 1001, "chance = mean under shuffled pairings"),
            ("imagery", "image", "twoway", "pixels", 0.868, 0.5, "n/a", "against distinct other targets"),
            ("imagery", "text", "twoway", "pixels", 0.525, 0.5, 0.41,
             "decoded features vs the cue target's features; targets are categories: mean feature of the category"),
            ("imagery", "text", "twoway", "text", 0.944, 0.5, 0.002, "pure imagination: no target image")]
    frame = pd.DataFrame(rows, columns=["condition", "cue", "metric", "feature_space", "value", "chance", "p_value",
                                        "note"])
    headings, table = twoway_headline(frame)
    assert headings == ["Perception (seen images)", "Imagery from memory", "Pure imagination (text cue)"]
    assert [r["feature_space"] for r in table] == ["pixels", "text"]
    pixels, text = table[0]["cells"], table[1]["cells"]
    assert [c["value"] for c in pixels] == ["0.926", "0.868", "0.525"]
    assert [c["p"] for c in pixels] == ["< 0.001", "", "0.410"]
    assert [c["categories"] for c in pixels] == [False, False, True]
    assert text[0] is None and text[1] is None and text[2]["value"] == "0.944" and not text[2]["categories"]
    assert twoway_headline(frame[frame["metric"] != "twoway"]) == ([], [])
    assert twoway_headline(pd.DataFrame()) == ([], [])
