"""Stimuli with transparency (RGBA / LA PNGs of isolated objects, palette PNGs with a transparent colour).

Alpha was dropped: the colour stored under transparent pixels became the stimulus, usually black but
anything an editor left there (here: saturated red), so the decoder's targets, the metrics and the report
showed a background the participant never saw. Now every image with transparency is composited onto
mid gray (128, 128, 128), the default window colour of presentation software (PsychoPy) and documented in
docs/troubleshooting.md; opaque pixels are unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bids_m2i.decoding.features import load_image
from bids_m2i.utils.images import STIMULUS_BACKGROUND


def _object_on_transparency(mode: str) -> Image.Image:
    """A 16 x 16 image: a white opaque square in the middle, a half-transparent blue band, the rest transparent
    with red stored under it."""
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[...] = (255, 0, 0, 0)  # what an editor left under the transparent pixels
    rgba[4:12, 4:12] = (255, 255, 255, 255)
    rgba[14:, :] = (0, 0, 255, 128)
    image = Image.fromarray(rgba, mode="RGBA")
    if mode == "LA":
        return image.convert("LA")
    return image


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_show_the_gray_background(tmp_path, mode):
    path = tmp_path / "object.png"
    _object_on_transparency(mode).save(path)
    pixels = np.asarray(load_image(path), dtype=np.int32)
    assert STIMULUS_BACKGROUND == (128, 128, 128)
    np.testing.assert_array_equal(pixels[0, 0], STIMULUS_BACKGROUND)  # not the stored red (or black)
    np.testing.assert_array_equal(pixels[8, 8], (255, 255, 255))  # opaque: unchanged
    if mode == "RGBA":  # half-transparent blue over gray
        assert abs(pixels[15, 0] - np.array([64, 64, 191])).max() <= 1


def test_palette_png_with_a_transparent_colour(tmp_path):
    path = tmp_path / "palette.png"
    index = np.zeros((8, 8), np.uint8)
    index[2:6, 2:6] = 1
    image = Image.fromarray(index, mode="P")
    image.putpalette([0, 0, 0, 255, 255, 0] + [0] * 762)
    image.save(path, transparency=0)  # palette entry 0 (black) is transparent
    pixels = np.asarray(load_image(path))
    np.testing.assert_array_equal(pixels[0, 0], STIMULUS_BACKGROUND)
    np.testing.assert_array_equal(pixels[3, 3], (255, 255, 0))


def test_opaque_rgba_is_unchanged(tmp_path):
    path = tmp_path / "opaque.png"
    rgba = np.random.default_rng(0).integers(0, 256, (8, 8, 4)).astype(np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(path)
    np.testing.assert_array_equal(np.asarray(load_image(path)), rgba[..., :3])
