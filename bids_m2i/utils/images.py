"""Stimulus images as 8-bit RGB, whatever the lab saved them as.

PIL's ``convert("RGB")`` clips the values of 16- and 32-bit images to 255 instead of scaling them: a 16-bit
grayscale PNG (a common export of MATLAB and microscopy-style tools) became an almost white image, silently,
for the decoder's targets and the report. Here such images are scaled by their bit depth first. Alpha is
dropped (as before): the RGB under a transparent pixel is what the image stores.
"""

from __future__ import annotations

import numpy as np


def to_rgb(image):
    """A PIL image as 8-bit RGB; 16/32-bit integer and float grayscale are scaled, not clipped."""
    from PIL import Image

    mode = image.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "F":
            top = 1.0 if np.nanmax(values, initial=0.0) <= 1.0 else 255.0
        else:  # 32-bit integers: PIL gives 16-bit PNGs this mode too; take the range the values use
            peak = np.nanmax(values, initial=0.0)
            top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else float(peak)
        gray = np.clip(np.nan_to_num(values / top * 255.0), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")
