"""Text from the user's files is escaped on the HTML pages (QA pass 33).

Both pages were rendered by jinja2 with ``autoescape=select_autoescape(["html"])``, but the templates are named
``*.html.j2``: select_autoescape matches on the last extension, so nothing was escaped. A cue text
(``events.tsv``'s ``cue_text``), a stimulus name, or a hand-edited metrics table holding ``<``, ``&`` or quotes
went into the page as markup: ``<script>`` ran when the page was opened, ``<b>`` swallowed the rest of the
table, a quote in a stimulus name broke the image's ``alt`` attribute.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
from helpers import make_minimal_bids
from PIL import Image

from bids_m2i.cli.run import run_cli
from bids_m2i.config import build_config
from bids_m2i.reports.participant import build_participant_report

EVIL = "<script>alert('x')</script> & \"quoted\" <b>bold 猫"
ESCAPED = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &#34;quoted&#34; &lt;b&gt;bold 猫"

METRICS = ("condition\tcue\tmetric\tfeature_space\tvalue\tchance\tp_value\tn_items\tn_candidates\tnote\n"
           "perception\tnone\tpixcorr\t{space}\t0.3\t0\t0.01\t10\t10\t{note}\n")


class _Scripts(HTMLParser):
    """The <script> elements of a page (the pages have none of their own)."""

    def __init__(self):
        super().__init__()
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"


def _scripts(html: str) -> int:
    parser = _Scripts()
    parser.feed(html)
    return parser.scripts


def test_participant_page_escapes_cue_texts_stimuli_and_metrics(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    out = tmp_path / "out"
    decoding, images = out / "sub-01" / "decoding", out / "sub-01" / "images"
    decoding.mkdir(parents=True)
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "sub-01_trial-0000_desc-recon_image.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / "sub-01_trial-0001_desc-recon_image.png")
    (decoding / "sub-01_desc-predictions_table.tsv").write_text(
        "condition\tcue\tstimulus\tstim_file\tcue_text\timage\ttop1\n"
        f"imagery\ttext\tcat\tn/a\t{EVIL}\tsub-01/images/sub-01_trial-0000_desc-recon_image.png\tfalse\n"
        f"perception\tnone\t{EVIL}\tn/a\tn/a\tsub-01/images/sub-01_trial-0001_desc-recon_image.png\ttrue\n")
    (decoding / "sub-01_desc-metrics_table.tsv").write_text(METRICS.format(space=EVIL, note=EVIL))
    config = build_config(bids, out, "participant", {}, set())
    page = build_participant_report(output_dir=out, bids_dir=bids, subject="01", config=config, run_summaries=[],
                                    trials=None, work_dir=tmp_path / "work", stages=["decoding"])
    html = page.read_text()
    assert EVIL not in html
    assert _scripts(html) == 0
    assert f"“{ESCAPED}”" in html  # the cue text, shown as written
    assert f'alt="reconstruction {ESCAPED}"' in html  # a quote no longer ends the attribute
    assert "猫" in html


def test_group_page_escapes_the_participants_tables(tmp_path):
    bids = make_minimal_bids(tmp_path / "bids", subjects=("01", "02"), n_volumes=8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps({"Name": "m2i", "BIDSVersion": "1.10.0",
                                                              "DatasetType": "derivative"}))
    for subject, space in (("01", EVIL), ("02", "pixels")):
        folder = out / f"sub-{subject}" / "decoding"
        folder.mkdir(parents=True)
        (folder / f"sub-{subject}_desc-metrics_table.tsv").write_text(METRICS.format(space=space, note="n/a"))
        (out / f"sub-{subject}.html").write_text("<!DOCTYPE html>")
    assert run_cli([str(bids), str(out), "group", "-w", str(tmp_path / "work")]) == 0
    html = (out / "group" / "group.html").read_text()
    assert EVIL not in html
    assert _scripts(html) == 0
    assert ESCAPED in html
    assert '<a href="../sub-01.html">sub-01</a>' in html  # the page's own markup is untouched


def test_group_page_links_only_participant_pages_that_exist(tmp_path):
    """The group page linked ``../sub-02.html`` for every summarised participant, also when that page was never
    written (the report step failed after decoding, a copy of the decoding folders only): a dead link."""
    bids = make_minimal_bids(tmp_path / "bids", subjects=("01", "02"), n_volumes=8)
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps({"Name": "m2i", "BIDSVersion": "1.10.0",
                                                              "DatasetType": "derivative"}))
    for subject in ("01", "02"):
        folder = out / f"sub-{subject}" / "decoding"
        folder.mkdir(parents=True)
        (folder / f"sub-{subject}_desc-metrics_table.tsv").write_text(METRICS.format(space="pixels", note="n/a"))
    (out / "sub-01.html").write_text("<!DOCTYPE html><title>sub-01</title>")
    assert run_cli([str(bids), str(out), "group", "-w", str(tmp_path / "work")]) == 0
    html = (out / "group" / "group.html").read_text()
    assert '<a href="../sub-01.html">sub-01</a>' in html
    assert 'href="../sub-02.html"' not in html and "<td>sub-02</td>" in html
