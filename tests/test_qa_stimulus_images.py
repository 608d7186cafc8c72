"""Stimulus images in the formats labs save them in are read with their content.

A 16-bit grayscale PNG (MATLAB's ``imwrite`` of a uint16 array, scanner-style tools) was read as an almost
white image: PIL's ``convert("RGB")`` clips 16-bit values to 255 instead of scaling them. The decoder then
learned to predict white and the report showed white stimuli, without a word.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bids_m2i.decoding.features import load_image, pixel_vector

RAMP = np.linspace(0.0, 1.0, 32 * 32).reshape(32, 32)  # mean 0.5


def _png_rgb16(path, rgb: np.ndarray) -> None:
    """A 48-bit RGB PNG written by hand (PIL cannot write one)."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["gray8", "gray16", "int32", "float", "rgba", "palette", "rgb16"])
def test_stimulus_formats_keep_their_content(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "gray8":
        Image.fromarray((RAMP * 255).round().astype(np.uint8)).save(path)
    elif kind == "gray16":
        Image.fromarray((RAMP * 65535).round().astype(np.uint16)).save(path)
        assert Image.open(path).mode.startswith("I")
    elif kind == "int32":
        path = tmp_path / "int32.tif"
        Image.fromarray((RAMP * 65535).round().astype(np.int32), mode="I").save(path)
    elif kind == "float":
        path = tmp_path / "float.tif"
        Image.fromarray(RAMP.astype(np.float32), mode="F").save(path)
    elif kind == "rgba":
        # opaque RGBA (transparency: tests/test_qa_rgba_stimuli.py)
        rgba = np.dstack([(RAMP * 255).round().astype(np.uint8)] * 3 + [np.full((32, 32), 255, np.uint8)])
        Image.fromarray(rgba, mode="RGBA").save(path)
    elif kind == "palette":
        Image.fromarray((RAMP * 255).round().astype(np.uint8)).convert("P").save(path)
    elif kind == "rgb16":
        _png_rgb16(path, np.dstack([(RAMP * 65535).round()] * 3).astype(np.uint16))
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (32, 32)
    values = np.asarray(image, dtype=np.float64) / 255.0
    assert values.mean() == pytest.approx(0.5, abs=0.02), kind  # a white image has mean ~1
    assert values[0, 0].max() < 0.05 and values[-1, -1].min() > 0.95  # the ramp runs dark to bright
    assert pixel_vector(image, size=8).mean() == pytest.approx(0.5, abs=0.02)


def test_report_thumbnail_of_a_16_bit_stimulus_is_not_white(tmp_path):
    import base64
    import io

    from bids_m2i.reports.participant import data_uri

    path = tmp_path / "gray16.png"
    Image.fromarray((RAMP * 65535).round().astype(np.uint16)).save(path)
    uri = data_uri(path, thumbnail=16)
    thumb = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert np.asarray(thumb, dtype=np.float64).mean() / 255.0 == pytest.approx(0.5, abs=0.03)
