"""The group level: one, several, and one-missing participants."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from bids_m2i.cli.run import run_cli


def _fake_participants(tiny_full_run, tmp_path, labels):
    """Copies of sub-01's finished derivatives under other labels (the group level only reads tables)."""
    out = tmp_path / "out"
    shutil.copytree(tiny_full_run["out"], out)
    bids = tmp_path / "bids"
    shutil.copytree(tiny_full_run["bids"], bids)
    for label in labels:
        if label == "01":
            continue
        shutil.copytree(bids / "sub-01", bids / f"sub-{label}")
        source = out / "sub-01" / "decoding" / "sub-01_desc-metrics_table.tsv"
        table = pd.read_csv(source, sep="\t", dtype=str, keep_default_na=False)
        table["value"] = pd.to_numeric(table["value"], errors="coerce") + 0.01 * int(label)
        target = out / f"sub-{label}" / "decoding" / f"sub-{label}_desc-metrics_table.tsv"
        target.parent.mkdir(parents=True)
        table.to_csv(target, sep="\t", index=False, na_rep="n/a")
        shutil.copyfile(out / "sub-01" / "decoding" / "sub-01_desc-predictions_table.tsv",
                        target.parent / f"sub-{label}_desc-predictions_table.tsv")
    return bids, out


def test_group_one_participant(tiny_full_run, tmp_path):
    bids, out = _fake_participants(tiny_full_run, tmp_path, ["01"])
    assert run_cli([str(bids), str(out), "group", "-w", str(tmp_path / "work")]) == 0
    table = pd.read_csv(out / "group" / "desc-metrics_table.tsv", sep="\t", dtype=str, keep_default_na=False)
    summary = table[table["participant_id"] == "group"]
    assert (summary["n"] == "1").all()
    assert (summary["sd"] == "n/a").all()
    assert (out / "group" / "group.html").exists()
    # vision and imagery side by side (group means)
    wide = pd.read_csv(out / "group" / "desc-conditions_table.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert {"metric", "feature_space", "perception"} <= set(wide.columns)
    assert any(c.startswith("imagery") for c in wide.columns)


def test_group_several_participants(tiny_full_run, tmp_path):
    bids, out = _fake_participants(tiny_full_run, tmp_path, ["01", "02", "03"])
    assert run_cli([str(bids), str(out), "group", "-w", str(tmp_path / "work")]) == 0
    table = pd.read_csv(out / "group" / "desc-metrics_table.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert set(table["participant_id"]) == {"group", "sub-01", "sub-02", "sub-03"}
    row = table[(table["participant_id"] == "group") & (table["metric"] == "pixcorr") &
                (table["condition"] == "perception")].iloc[0]
    per = table[(table["participant_id"] != "group") & (table["metric"] == "pixcorr") &
                (table["condition"] == "perception")]
    values = pd.to_numeric(per["value"])
    assert row["n"] == "3"
    assert float(row["mean"]) == pytest.approx(values.mean())
    assert float(row["sd"]) == pytest.approx(values.std(ddof=1))
    # the page leads with vision and imagery side by side: mean ± sd (n) per condition
    html = (out / "group" / "group.html").read_text()
    assert 'id="group-conditions"' in html and "Perception (seen images)" in html
    assert f"{values.mean():.3f} <span class=\"chance\">± {values.std(ddof=1):.3f} (n = 3)</span>" in html
    assert html.index('id="group-conditions"') < html.index('id="group-summary"')


def test_group_one_missing(tiny_full_run, tmp_path, caplog):
    bids, out = _fake_participants(tiny_full_run, tmp_path, ["01", "02"])
    shutil.copytree(bids / "sub-01", bids / "sub-03")  # in the dataset, not finished
    assert run_cli([str(bids), str(out), "group", "-w", str(tmp_path / "work")]) == 0
    html = (out / "group" / "group.html").read_text()
    assert "sub-03" in html and "Not finished" in html
    table = pd.read_csv(out / "group" / "desc-metrics_table.tsv", sep="\t", dtype=str)
    assert "sub-03" not in set(table["participant_id"])


def test_group_without_any_participant_is_66(minimal_bids, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text("{}")
    assert run_cli([str(minimal_bids), str(out), "group"]) == 66


def test_group_carries_the_glm_method_and_never_mixes_methods(tiny_full_run, tmp_path, caplog):
    """sub-02 decoded from lsa betas, sub-01 and sub-03 from the default method: one summary per method."""
    bids, out = _fake_participants(tiny_full_run, tmp_path, ["01", "02", "03"])
    predictions = out / "sub-02" / "decoding" / "sub-02_desc-predictions_table.tsv"
    table = pd.read_csv(predictions, sep="\t", dtype=str, keep_default_na=False)
    table["source"] = table["source"].str.replace("_desc-fithrfdenoiserr_", "_desc-lsa_")
    table.to_csv(predictions, sep="\t", index=False)
    assert run_cli([str(bids), str(out), "group", "-w", str(tmp_path / "work")]) == 0
    group = pd.read_csv(out / "group" / "desc-metrics_table.tsv", sep="\t", dtype=str, keep_default_na=False)
    per = group[group["participant_id"] != "group"].groupby("participant_id")["glm_method"].unique()
    assert {k: list(v) for k, v in per.items()} == {"sub-01": ["fithrfdenoiserr"], "sub-02": ["lsa"],
                                                    "sub-03": ["fithrfdenoiserr"]}
    summary = group[(group["participant_id"] == "group") & (group["metric"] == "pixcorr")
                    & (group["condition"] == "perception")]
    assert dict(zip(summary["glm_method"], summary["n"])) == {"fithrfdenoiserr": "2", "lsa": "1"}
    assert "different GLM methods" in caplog.text
    html = (out / "group" / "group.html").read_text()
    assert "different GLM methods" in html and "lsa: sub-02" in html


def test_group_never_averages_different_decoders_or_generators(tiny_full_run, tmp_path, caplog):
    """sub-02 decoded through a shared-subject model (its reconstructions' sidecars say ``"Decoder":
    "shared"``), the others by their own ridge decoders: the group averaged them together (QA pass 30)."""
    import json

    bids, out = _fake_participants(tiny_full_run, tmp_path, ["01", "02", "03"])
    predictions = out / "sub-02" / "decoding" / "sub-02_desc-predictions_table.tsv"
    table = pd.read_csv(predictions, sep="\t", dtype=str, keep_default_na=False)
    images = out / "sub-02" / "images"
    images.mkdir()
    for i, image in enumerate(table["image"]):
        meta = json.loads((out / image).with_suffix(".json").read_text())
        meta["Decoder"] = "shared"
        (images / f"sub-02_trial-{i:04d}_desc-recon_image.json").write_text(json.dumps(meta))
        table.loc[i, "image"] = f"sub-02/images/sub-02_trial-{i:04d}_desc-recon_image.png"
    table.to_csv(predictions, sep="\t", index=False)
    assert run_cli([str(bids), str(out), "group", "-w", str(tmp_path / "work")]) == 0
    group = pd.read_csv(out / "group" / "desc-metrics_table.tsv", sep="\t", dtype=str, keep_default_na=False)
    per = group[group["participant_id"] != "group"].groupby("participant_id")["decoder"].unique()
    assert {k: list(v) for k, v in per.items()} == {"sub-01": ["ridge"], "sub-02": ["shared"], "sub-03": ["ridge"]}
    assert set(group["generator"]) == {"pixels"}
    summary = group[(group["participant_id"] == "group") & (group["metric"] == "pixcorr")
                    & (group["condition"] == "perception")]
    assert dict(zip(summary["decoder"], summary["n"])) == {"ridge": "2", "shared": "1"}
    assert "different decoders or generators" in caplog.text
    html = (out / "group" / "group.html").read_text()
    assert "shared/pixels: sub-02" in html
    wide = pd.read_csv(out / "group" / "desc-conditions_table.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert set(wide["decoder"]) == {"ridge", "shared"}
