"""Decoding outputs of fMRIPrep inputs carry the space entities, as the preprocessing and GLM outputs do.

Two runs into one OUTPUT_DIR, ``--space T1w`` and ``--space MNI152NLin2009cAsym`` (fMRIPrep's ``res-2``), kept
their own betas (``..._space-T1w_stat-effect_...``) but wrote the same decoding names
(``sub-01_desc-metrics_table.tsv``, ``sub-01_trial-0000_desc-recon_image.png``, the model): the second run
overwrote the first's decoders, images and metrics, and the group level summarised whichever ran last. Now they
are ``sub-01_space-T1w_desc-metrics_table.tsv``, ``sub-01_space-T1w_trial-0000_desc-recon_image.png``...; the
group level takes ``--space`` to say which to summarise (the participant's own grid, the default, keeps the
names of DESIGN.md)."""

from __future__ import annotations

import pandas as pd
import pytest

from bids_m2i.cli.run import run_cli
from bids_m2i.workflows.group import metrics_path

from test_fmriprep_inputs import make_fmriprep_tree

MNI = "MNI152NLin2009cAsym"


@pytest.mark.slow  # two decoding runs and two group runs of the tiny preset: ~55 s on a busy 2-core machine
def test_two_spaces_into_one_output_dir_keep_their_decoding_outputs(tiny_dataset, tmp_path, capsys):
    tree = make_fmriprep_tree(tiny_dataset, tmp_path / "fmriprep", spaces=("T1w", MNI))
    out = tmp_path / "out"
    common = ["--derivatives", str(tree), "--skip-bids-validation", "--glm", "lsa", "--nprocs", "2",
              "--permutations", "10"]
    for space in ("T1w", MNI):
        assert run_cli([str(tiny_dataset), str(out), "participant", "--space", space,
                        "-w", str(tmp_path / f"work-{space}"), *common]) == 0
    decoding, images = out / "sub-01" / "decoding", out / "sub-01" / "images"
    for entities in ("space-T1w", f"space-{MNI}_res-2"):
        for desc in ("metrics", "predictions", "retrieval", "conditions"):
            assert (decoding / f"sub-01_{entities}_desc-{desc}_table.tsv").is_file()
        assert (decoding / f"sub-01_{entities}_desc-pixelsridge_model.safetensors").is_file()
        assert (decoding / f"sub-01_{entities}_desc-predictions_features.npy").is_file()
        table = pd.read_csv(decoding / f"sub-01_{entities}_desc-predictions_table.tsv", sep="\t", dtype=str)
        # the table points at this space's images and betas
        assert all(image.startswith(f"sub-01/images/sub-01_{entities}_trial-") for image in table["image"])
        assert all((out / image).is_file() for image in table["image"])
        assert all(f"_{entities}_stat-effect_" in source for source in table["source"])
    assert not list(decoding.glob("sub-01_desc-*")) and not list(images.glob("sub-01_trial-*"))
    for page in ("sub-01_space-T1w.html", f"sub-01_space-{MNI}_res-2.html"):  # one page per space
        assert "Not run (--stop-after" not in (out / page).read_text()  # each page found its run's decoding
    assert not (out / "sub-01.html").exists()

    # the group level summarises the space it is given; the res- of the participant level is found
    assert metrics_path(out, "01", {"space": MNI}).name == f"sub-01_space-{MNI}_res-2_desc-metrics_table.tsv"
    for space, prefix in (("T1w", "space-T1w_"), (f"{MNI}:res-2", f"space-{MNI}_res-2_")):
        assert run_cli([str(tiny_dataset), str(out), "group", "--space", space, "-w", str(tmp_path / "wg")]) == 0
        group = pd.read_csv(out / "group" / f"{prefix}desc-metrics_table.tsv", sep="\t", dtype=str)
        assert set(group["participant_id"]) >= {"sub-01", "group"}
        assert (out / "group" / f"{prefix}group.html").is_file()
    assert not (out / "group" / "desc-metrics_table.tsv").exists()
    capsys.readouterr()
    # without --space (the participant's own grid) nothing is found, and the message says which --space to give
    assert run_cli([str(tiny_dataset), str(out), "group", "-w", str(tmp_path / "wg")]) == 66
    err = capsys.readouterr().err
    assert "--space" in err and "space-T1w" in err


def test_group_picks_the_metrics_of_its_space(tmp_path, caplog):
    """Fast: which participant table the group level reads for each --space."""
    from bids_m2i.workflows.group import collect_group_metrics

    folder = tmp_path / "sub-01" / "decoding"
    folder.mkdir(parents=True)
    row = "condition\tcue\tmetric\tfeature_space\tvalue\nperception\tnone\tpixcorr\tpixels\t{}\n"
    (folder / "sub-01_space-T1w_desc-metrics_table.tsv").write_text(row.format("0.1"))
    (folder / f"sub-01_space-{MNI}_res-2_desc-metrics_table.tsv").write_text(row.format("0.2"))
    for space, value in (({"space": "T1w"}, "0.1"), ({"space": MNI}, "0.2"), ({"space": MNI, "res": "2"}, "0.2")):
        table, missing = collect_group_metrics(tmp_path, ["01"], space)
        assert not missing and list(table["value"]) == [value]
    table, missing = collect_group_metrics(tmp_path, ["01"], {})
    assert missing == ["01"] and "--space" in caplog.text and "space-T1w" in caplog.text


def test_the_report_shows_the_betas_of_its_own_space(tmp_path):
    """Fast: the participant page of a --space T1w run listed the MNI run's betas too (both in one OUTPUT_DIR)."""
    import json

    from bids_m2i.config import build_config
    from bids_m2i.reports.participant import build_participant_report

    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    fmriprep = tmp_path / "fmriprep"
    fmriprep.mkdir()
    out = tmp_path / "out"
    func = out / "sub-01" / "func"
    func.mkdir(parents=True)
    for entities in ("space-T1w", f"space-{MNI}_res-2"):
        (func / f"sub-01_task-a_{entities}_stat-effect_desc-lsa_statseries.json").write_text(json.dumps({}))
    config = build_config(bids, out, "participant", {"derivatives": [fmriprep], "space": "T1w", "glm": "lsa"},
                          {"derivatives", "space", "glm"})
    page = build_participant_report(output_dir=out, bids_dir=bids, subject="01", config=config, run_summaries=[],
                                    trials=None, work_dir=tmp_path / "work", stages=["fMRIPrep inputs"]).read_text()
    assert "sub-01_task-a_space-T1w" in page and MNI not in page


def test_shared_training_sees_the_metrics_of_its_space(tmp_path):
    """``group --train-shared-decoder --space T1w`` decides whether to write the summary from the participants'
    metrics tables: it must look for the ``space-T1w`` ones."""
    from types import SimpleNamespace

    from bids_m2i.workflows.shared import summary_possible

    bids = tmp_path / "bids"
    (bids / "sub-01").mkdir(parents=True)
    folder = tmp_path / "out" / "sub-01" / "decoding"
    folder.mkdir(parents=True)
    (folder / "sub-01_space-T1w_desc-metrics_table.tsv").write_text("condition\n")
    config = SimpleNamespace(bids_dir=bids, output_dir=tmp_path / "out", participant_label=[],
                             space_entities={"space": "T1w"})
    assert summary_possible(config)
    assert not summary_possible(SimpleNamespace(**{**vars(config), "space_entities": {}}))
