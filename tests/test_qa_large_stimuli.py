"""Very large stimulus images (QA pass 30): a camera's photographs, 8000 px scans, a panorama.

* An image above Pillow's decompression-bomb limit (about 179 megapixels: 15000 x 12000 here) stopped the run
  with exit 1, "unexpected failure: DecompressionBombError ... could be decompression bomb DOS attack" and
  "please report it". Now 65 before any step, naming the image and how to save it smaller.
* Images above half that limit printed Pillow's "DecompressionBombWarning ... DOS attack" in the terminal on
  every read, and every large image was held at full size: the evaluation stacked all test items' images
  as float32 before resizing them to 425 px (288 MB for one 24-megapixel photograph). Now stimuli are read at
  most ``MAX_STIMULUS_SIDE`` (1024) px on their shorter side (JPEGs decoded at a reduced scale), aspect ratio
  and content kept, without the warning.
"""

from __future__ import annotations

import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from bids_m2i.cli.run import run_cli
from bids_m2i.decoding.features import load_image, pixel_vector


def _blank_png(path, width: int, height: int) -> None:
    """An 8-bit grayscale PNG of ``width`` x ``height`` black pixels written row by row (a few hundred kB on
    disk, never held in memory as an image)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _copy(tiny_dataset, tmp_path):
    bids = tmp_path / "bids"
    shutil.copytree(tiny_dataset, bids, symlinks=True)
    return bids


def test_an_image_above_the_decompression_bomb_limit_is_65_before_any_step(tiny_dataset, tmp_path, capsys,
                                                                             started):
    bids = _copy(tiny_dataset, tmp_path)
    _blank_png(bids / "stimuli" / "img-0024.png", 15000, 12000)  # 180 megapixels, a perception stimulus
    code = run_cli([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                    "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == 65, err  # was 1 "unexpected failure: DecompressionBombError"
    assert "img-0024.png" in err and "too large to read safely" in err and "save it smaller" in err
    assert "Traceback" not in err and "please report" not in err
    assert not started


def _photograph(width: int, height: int) -> np.ndarray:
    """Left half red, right half a blue-to-white vertical ramp: content whose position and colour show."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = (200, 30, 30)
    ramp = np.linspace(0, 255, height).round().astype(np.uint8)[:, None]
    rgb[:, width // 2:, 0] = ramp
    rgb[:, width // 2:, 1] = ramp
    rgb[:, width // 2:, 2] = 255
    return rgb


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a_large_photograph_is_read_at_most_1024_px_with_its_content(tmp_path, suffix):
    width, height = 6000, 4000  # a 24-megapixel camera
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(_photograph(width, height)).save(path, quality=95)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (1536, 1024)  # was (6000, 4000): the whole photograph held; aspect ratio kept
    # the content a full-size read gives: the pixel target and the colours of both halves
    with Image.open(path) as full:
        reference = full.convert("RGB")
    assert np.abs(pixel_vector(image) - pixel_vector(reference)).max() < 0.02
    array = np.asarray(image, dtype=np.float64)
    np.testing.assert_allclose(array[500, 100], (200, 30, 30), atol=6)
    assert array[10, 1400, 2] > 240 and array[10, 1400, 0] < 20 and array[-10, 1400].min() > 235


def test_a_small_image_is_unchanged(tmp_path):
    path = tmp_path / "small.png"
    rgb = _photograph(425, 425)
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(np.asarray(load_image(path)), rgb)


def test_an_image_above_the_warning_limit_is_read_without_the_dos_warning(tmp_path):
    path = tmp_path / "scan.png"
    _blank_png(path, 10000, 10000)  # 100 megapixels: Pillow warns above 89
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        image = load_image(path)
    assert image.size == (1024, 1024) and not np.asarray(image).any()


def test_report_thumbnail_of_a_large_stimulus(tmp_path):
    import base64
    import io

    from bids_m2i.reports.participant import data_uri

    path = tmp_path / "photo.jpg"
    Image.fromarray(_photograph(3000, 2000)).save(path, quality=95)
    thumb = Image.open(io.BytesIO(base64.b64decode(data_uri(path, thumbnail=128).split(",", 1)[1])))
    assert thumb.size == (128, 85)
    np.testing.assert_allclose(np.asarray(thumb, dtype=np.float64)[40, 10], (200, 30, 30), atol=8)
