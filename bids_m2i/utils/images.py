"""Stimulus images as 8-bit RGB, whatever the lab saved them as.

PIL's ``convert("RGB")`` clips the values of 16- and 32-bit images to 255 instead of scaling them: a 16-bit
grayscale PNG (a common export of MATLAB and microscopy-style tools) became an almost white image, silently,
for the decoder's targets and the report. Here such images are scaled by their bit depth first.

Images with transparency (RGBA, LA, palette PNGs with a transparent colour: isolated objects) are composited
onto :data:`STIMULUS_BACKGROUND`, mid gray: dropping alpha showed whatever colour an editor stored under the
transparent pixels (often black, sometimes anything), a background the participant never saw.
"""

from __future__ import annotations

import numpy as np

#: Background under transparent stimulus pixels: mid gray, the default window colour of presentation software
#: (PsychoPy's ``color=(0, 0, 0)``). A lab that showed its objects on another background should save the
#: images flattened onto it (docs/troubleshooting.md).
STIMULUS_BACKGROUND = (128, 128, 128)


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
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*STIMULUS_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
