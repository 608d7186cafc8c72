"""``--captions FILE`` written by tools we do not control.

The file was read only at the decoding stage, after preprocessing and the GLM: a binary file (a .docx or an
image given by mistake) stopped the run there, hours in, with 65 and a bare "'utf-8' codec can't decode";
a UTF-16 file (Windows Notepad's "Unicode", Excel's "Unicode Text") failed the same way. Now the file is read
at start-up (65 before any step, "not a text file"); UTF-16 and a UTF-8 BOM are read; a file without any
caption is a warning (the bank keeps the training captions and cue texts).
"""

from __future__ import annotations

import pytest

from bids_m2i.cli.run import run_cli
from bids_m2i.decoding.text import read_caption_file
from helpers import make_minimal_bids

CAPTIONS = "# extra bank\na dog on a beach\n\nthe red car\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le"])
def test_text_encodings_are_read(tmp_path, encoding):
    path = tmp_path / "captions.txt"
    path.write_bytes(CAPTIONS.replace("\n", "\r\n").encode(encoding))
    assert read_caption_file(path) == ["a dog on a beach", "the red car"]


def _run(tmp_path, captions):
    bids = make_minimal_bids(tmp_path / "bids", n_volumes=8)
    return run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation", "--target", "text", "--captions", str(captions)])


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\xff\xfe\x00",
                                     b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xdf\xa4\xd2lZ\x01\x00\x00"])
def test_a_binary_captions_file_is_65_before_any_step(tmp_path, capsys, started, content):
    path = tmp_path / "captions.docx"
    path.write_bytes(content * 50)
    assert _run(tmp_path, path) == 65
    err = capsys.readouterr().err
    assert "is not a text file" in err and path.name in err
    assert started == []


def test_a_captions_file_without_captions_warns(tmp_path, caplog):
    path = tmp_path / "captions.txt"
    path.write_text("# nothing yet\n\n")
    assert read_caption_file(path) == []
    assert "holds no caption" in caplog.text


def test_a_windows_ansi_captions_file_is_read_with_a_warning(tmp_path, caplog):
    """Captions saved as "ANSI" (Windows-1252: Notepad before 2019, Excel's "Text (Tab delimited)") or Latin-1,
    in a French or German lab: 65 "not a text file (neither UTF-8 nor UTF-16)", which it is. Events files in
    that encoding are read as Latin-1 with a warning; captions are now read too, as Windows-1252 (its curly
    quotes are what those programs write), with a warning."""
    path = tmp_path / "captions.txt"
    path.write_bytes("café au lait\r\nl\u2019arbre « rouge »\r\nGrüße\r\n".encode("cp1252"))
    assert read_caption_file(path) == ["café au lait", "l\u2019arbre « rouge »", "Grüße"]
    assert "not UTF-8" in caplog.text and path.name in caplog.text


def test_a_binary_file_without_nul_bytes_is_still_not_text(tmp_path):
    from bids_m2i.errors import BadDataError

    path = tmp_path / "captions.bin"
    path.write_bytes(bytes(range(1, 256)) * 20)
    with pytest.raises(BadDataError, match="is not a text file"):
        read_caption_file(path)
