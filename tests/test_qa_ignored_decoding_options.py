"""Decoding options that the chosen generator or targets do not use were ignored without a word.

``--candidates 4`` with the default ``--generator pixels`` (best of N is an unclip feature) and ``--captions
FILE`` without a text target (``text``/``clip-text``) ran to the end with exit 0: the user believed the images
were the best of 4, or that the caption bank held the file's captions. Now the log warns once, at the start
(the run goes on: a config file shared by several runs may set them for all).
"""

from __future__ import annotations

import logging

import pytest

from bids_m2i.cli.run import run_cli


def _run(bids, tmp_path, *options):
    return run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", *options])


@pytest.mark.parametrize("options, said", [
    (["--candidates", "4"], "--candidates 4 applies to --generator unclip only"),
    (["--captions", "CAPTIONS"], "--captions is read for --target text or clip-text only"),
])
def test_an_unused_decoding_option_is_warned_about(tiny_dataset, tmp_path, caplog, started, options, said):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red apple\n")
    options = [str(captions) if o == "CAPTIONS" else o for o in options]
    with caplog.at_level(logging.WARNING, logger="m2i"):
        assert _run(tiny_dataset, tmp_path, *options) == 0
    assert started == [True]
    assert said in caplog.text


@pytest.mark.parametrize("options", [
    [],
    ["--candidates", "1"],
    ["--candidates", "4", "--stop-after", "glm"],
    ["--target", "pixels", "text", "--captions", "CAPTIONS"],
])
def test_used_or_default_options_are_not_warned_about(tiny_dataset, tmp_path, caplog, started, options):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red apple\n")
    options = [str(captions) if o == "CAPTIONS" else o for o in options]
    with caplog.at_level(logging.WARNING, logger="m2i"):
        assert _run(tiny_dataset, tmp_path, *options) == 0
    assert "applies to" not in caplog.text and "is read for" not in caplog.text
