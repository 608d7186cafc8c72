"""Stimulus images as 8-bit RGB, whatever the lab saved them as.

PIL's ``convert("RGB")`` clips the values of 16- and 32-bit images to 255 instead of scaling them: a 16-bit
grayscale PNG (a common export of MATLAB and microscopy-style tools) became an almost white image, silently,
for the decoder's targets and the report. Here such images are scaled by their bit depth first.

Images with transparency (RGBA, LA, palette PNGs with a transparent colour: isolated objects) are composited
onto :data:`STIMULUS_BACKGROUND`, mid gray: dropping alpha showed whatever colour an editor stored under the
transparent pixels (often black, sometimes anything), a background the participant never saw.

Large images (a camera's 6000 x 4000 photographs, 8000 px scans) are read at most :data:`MAX_STIMULUS_SIDE` on
their shorter side: every use downstream is smaller (pixel targets 64 px, CLIP 224, the metrics 425, report
thumbnails 128), while the evaluation held every test item's image at full size as float32 (288 MB for one
24-megapixel photograph, 14 GB for 50 of them) beyond any ``--mem-gb``. Images above Pillow's decompression-bomb
limit (about 179 megapixels) are refused with a message saying so; before, the run ended with exit 1 and
"could be decompression bomb DOS attack", and images above half that limit printed that warning.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import BadDataError

#: Background under transparent stimulus pixels: mid gray, the default window colour of presentation software
#: (PsychoPy's ``color=(0, 0, 0)``). A lab that showed its objects on another background should save the
#: images flattened onto it (docs/troubleshooting.md).
STIMULUS_BACKGROUND = (128, 128, 128)

#: Shorter side (px) stimulus images are read at, at most: twice the largest size any step uses (the metrics'
#: 425 px), so that reading a large image changes nothing but the memory and time it takes.
MAX_STIMULUS_SIDE = 1024


@contextmanager
def open_stimulus(path):
    """``PIL.Image.open(path)`` for a stimulus: a decompression bomb (an image of more than Pillow's
    ``2 * MAX_IMAGE_PIXELS``) is a :class:`BadDataError` naming the file, and Pillow's warning for images above
    ``MAX_IMAGE_PIXELS`` is not shown (they are read downscaled, see :func:`read_stimulus`)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise BadDataError(
                f"Stimulus image {path} is too large to read safely: {exc}", path=path,
                hint=f"save it smaller (m2i uses it at most {MAX_STIMULUS_SIDE} px on its shorter side; e.g. "
                f"`mogrify -resize {MAX_STIMULUS_SIDE}x{MAX_STIMULUS_SIDE}^ FILE` or Pillow's thumbnail)",
            ) from None
        with image:
            yield image


def read_stimulus(path, max_side: int | None = MAX_STIMULUS_SIDE):
    """A stimulus image file as 8-bit RGB (:func:`to_rgb`), its shorter side at most ``max_side`` px
    (aspect ratio kept; ``None``: full size). JPEGs are decoded at a reduced scale when that suffices."""
    from PIL import Image

    with open_stimulus(Path(path)) as image:
        target = None
        if max_side and min(image.size) > max_side:
            scale = max_side / min(image.size)
            target = tuple(max(1, round(side * scale)) for side in image.size)
            image.draft(None, target)  # JPEG: DCT scaling to 1/2, 1/4, 1/8, never below the target
        rgb = to_rgb(image)
    if target is not None and rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb


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
