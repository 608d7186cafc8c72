"""Procedural stimulus images: compositions of shapes, colours, textures and positions.

Every image is drawn from a small set of generating parameters (kept in ``stimuli/stimuli.tsv``) so that
the brain model can compute image-level features (category, colour, size, position) and the pure-imagination
cue can be a text description of the same parameters. The *category* of an image is the shape of its main
(largest, front-most) object.

Images are rendered at twice their size and box-averaged (anti-aliasing), RGB uint8, shape ``(S, S, 3)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
BACKGROUND_TEXTURES = ("flat", "gradient", "stripes", "checker", "noise")
OBJECT_TEXTURES = ("solid", "stripes", "dots")
# named colours (sRGB 0..1) so that text cues can name them; each draw jitters the value a little
COLOURS = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.95, 0.88, 0.15),
    "green": (0.15, 0.70, 0.20),
    "teal": (0.10, 0.60, 0.60),
    "blue": (0.12, 0.25, 0.85),
    "purple": (0.55, 0.20, 0.75),
    "pink": (0.95, 0.50, 0.70),
    "brown": (0.50, 0.30, 0.12),
    "white": (0.95, 0.95, 0.95),
    "grey": (0.50, 0.50, 0.50),
    "black": (0.06, 0.06, 0.06),
}
COLOUR_NAMES = tuple(COLOURS)
MAX_OBJECTS = 3


@dataclass
class ObjectParams:
    shape: str
    colour: str
    rgb: tuple[float, float, float]
    x: float  # centre, fraction of the width (0 = left)
    y: float  # centre, fraction of the height (0 = top)
    size: float  # half-extent, fraction of the width
    rotation: float  # radians
    texture: str


@dataclass
class ImageParams:
    name: str
    bg_colour: str
    bg_rgb: tuple[float, float, float]
    bg_texture: str
    bg_orientation: float
    bg_frequency: float
    bg_contrast: float
    objects: list[ObjectParams] = field(default_factory=list)

    @property
    def main(self) -> ObjectParams:
        """The largest object (drawn last, on top): it defines the category."""
        return self.objects[-1]

    @property
    def category(self) -> str:
        return self.main.shape


def draw_image_params(rng: np.random.Generator, name: str) -> ImageParams:
    """Draw the generating parameters of one image."""
    bg_colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    params = ImageParams(
        name=name,
        bg_colour=bg_colour,
        bg_rgb=_jitter(rng, COLOURS[bg_colour]),
        bg_texture=BACKGROUND_TEXTURES[rng.integers(len(BACKGROUND_TEXTURES))],
        bg_orientation=float(rng.uniform(0, np.pi)),
        bg_frequency=float(rng.uniform(2.0, 8.0)),
        bg_contrast=float(rng.uniform(0.15, 0.5)),
    )
    n_objects = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    sizes = np.sort(rng.uniform(0.08, 0.34, size=n_objects))
    for size in sizes:  # ascending: the largest object is drawn last and is the main one
        colour = bg_colour
        while colour == bg_colour:  # an object never has its background's colour name
            colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
        margin = 0.5 * size + 0.05
        params.objects.append(
            ObjectParams(
                shape=SHAPES[rng.integers(len(SHAPES))],
                colour=colour,
                rgb=_jitter(rng, COLOURS[colour]),
                x=float(rng.uniform(margin, 1 - margin)),
                y=float(rng.uniform(margin, 1 - margin)),
                size=float(size),
                rotation=float(rng.uniform(0, 2 * np.pi)),
                texture=OBJECT_TEXTURES[int(rng.choice(3, p=[0.6, 0.2, 0.2]))],
            )
        )
    return params


def _jitter(rng, rgb) -> tuple[float, float, float]:
    value = np.clip(np.asarray(rgb) + rng.normal(0, 0.05, 3), 0, 1)
    return tuple(float(v) for v in value)


def render_image(params: ImageParams, size: int, noise_seed: int = 0) -> np.ndarray:
    """Render an image, shape ``(size, size, 3)`` uint8 (2x supersampled then box-averaged)."""
    fine = 2 * size
    coords = (np.arange(fine) + 0.5) / fine
    yy, xx = np.meshgrid(coords, coords, indexing="ij")  # yy: row (top->bottom), xx: column
    image = np.ones((fine, fine, 3)) * np.asarray(params.bg_rgb)
    pattern = _background_pattern(params, xx, yy, fine, noise_seed)
    image = np.clip(image * (1 + params.bg_contrast * pattern[..., None]), 0, 1)
    for obj in params.objects:
        mask = _shape_mask(obj, xx, yy)
        colour = np.ones((fine, fine, 3)) * np.asarray(obj.rgb)
        if obj.texture != "solid":
            colour = np.clip(colour * (1 - 0.45 * _object_texture(obj, xx, yy)[..., None]), 0, 1)
        image = np.where(mask[..., None], colour, image)
    image = image.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    return np.round(image * 255).astype(np.uint8)


def _background_pattern(params: ImageParams, xx, yy, fine: int, noise_seed: int) -> np.ndarray:
    """A zero-centred pattern in [-1, 1] for the background texture."""
    along = np.cos(params.bg_orientation) * xx + np.sin(params.bg_orientation) * yy
    if params.bg_texture == "flat":
        return np.zeros_like(xx)
    if params.bg_texture == "gradient":
        return 2 * (along - along.min()) / (np.ptp(along) + 1e-9) - 1
    if params.bg_texture == "stripes":
        return np.sign(np.sin(2 * np.pi * params.bg_frequency * along))
    if params.bg_texture == "checker":
        across = -np.sin(params.bg_orientation) * xx + np.cos(params.bg_orientation) * yy
        return np.sign(np.sin(2 * np.pi * params.bg_frequency * along) * np.sin(2 * np.pi * params.bg_frequency * across))
    # "noise": smooth blobs, seeded per image so the rendering is reproducible
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(noise_seed)
    blobs = gaussian_filter(rng.normal(size=(fine, fine)), sigma=fine / (2 * params.bg_frequency))
    return np.clip(blobs / (3 * blobs.std() + 1e-9), -1, 1)


def _shape_mask(obj: ObjectParams, xx, yy) -> np.ndarray:
    cos_r, sin_r = np.cos(obj.rotation), np.sin(obj.rotation)
    u = (cos_r * (xx - obj.x) + sin_r * (yy - obj.y)) / obj.size
    v = (-sin_r * (xx - obj.x) + cos_r * (yy - obj.y)) / obj.size
    radius = np.hypot(u, v)
    angle = np.arctan2(v, u)
    if obj.shape == "circle":
        return radius <= 1
    if obj.shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if obj.shape == "triangle":
        # equilateral triangle: inside the three half-planes at distance 0.5 from the centre
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            theta = np.pi / 2 + 2 * np.pi * k / 3
            inside &= (np.cos(theta) * u + np.sin(theta) * v) <= 0.5
        return inside
    if obj.shape == "star":
        return radius <= 0.55 + 0.45 * np.cos(5 * angle) ** 2 * (np.cos(5 * angle) > 0)
    if obj.shape == "ring":
        return (radius <= 1) & (radius >= 0.55)
    if obj.shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1))
    raise ValueError(f"unknown shape {obj.shape}")


def _object_texture(obj: ObjectParams, xx, yy) -> np.ndarray:
    period = obj.size / 2
    if obj.texture == "stripes":
        return (np.sin(2 * np.pi * (xx + yy) / period) > 0).astype(float)
    # dots
    return ((np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period)) > 0.5).astype(float)


def describe(params: ImageParams) -> str:
    """A short text description of the image (the cue of pure-imagination trials)."""
    main = params.main
    size_word = "large" if main.size > 0.24 else ("medium" if main.size > 0.15 else "small")
    vertical = "top" if main.y < 0.4 else ("bottom" if main.y > 0.6 else "middle")
    horizontal = "left" if main.x < 0.4 else ("right" if main.x > 0.6 else "centre")
    where = "in the centre" if (vertical, horizontal) == ("middle", "centre") else f"at the {vertical} {horizontal}"
    texture = "" if main.texture == "solid" else f" {main.texture}"
    background = {"flat": "plain", "noise": "mottled"}.get(params.bg_texture, params.bg_texture)
    text = f"a {size_word} {main.colour}{texture} {main.shape} {where} on a {background} {params.bg_colour} background"
    others = [f"a small {o.colour} {o.shape}" for o in params.objects[:-1]]
    if others:
        text += ", with " + " and ".join(others)
    return text


def params_row(params: ImageParams) -> dict:
    """Flat generating parameters of one image (one row of ``stimuli.tsv``)."""
    row = {
        "stimulus": params.name,
        "category": params.category,
        "description": describe(params),
        "n_objects": len(params.objects),
        "bg_colour": params.bg_colour,
        "bg_r": params.bg_rgb[0],
        "bg_g": params.bg_rgb[1],
        "bg_b": params.bg_rgb[2],
        "bg_texture": params.bg_texture,
        "bg_orientation": params.bg_orientation,
        "bg_frequency": params.bg_frequency,
        "bg_contrast": params.bg_contrast,
    }
    # object 1 is the main object; the others follow by decreasing size
    ordered = list(reversed(params.objects))
    for k in range(MAX_OBJECTS):
        obj = ordered[k] if k < len(ordered) else None
        prefix = f"obj{k + 1}_"
        for key in ("shape", "colour", "x", "y", "size", "rotation", "texture"):
            row[prefix + key] = getattr(obj, key) if obj is not None else "n/a"
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}


STIMULI_COLUMNS_HELP = {
    "stimulus": "Identity of the image (file stimuli/<stimulus>.png)",
    "category": "Shape of the main (largest, front-most) object",
    "description": "Text description generated from the parameters (used as the cue of pure-imagination trials)",
    "n_objects": "Number of shapes in the image",
    "bg_colour": "Named colour of the background",
    "bg_r": "Background red, 0-1", "bg_g": "Background green, 0-1", "bg_b": "Background blue, 0-1",
    "bg_texture": "Background texture: flat, gradient, stripes, checker or noise",
    "bg_orientation": "Orientation of the background texture (radians)",
    "bg_frequency": "Spatial frequency of the background texture (cycles per image)",
    "bg_contrast": "Contrast of the background texture (fraction)",
}
for _k in range(1, MAX_OBJECTS + 1):
    STIMULI_COLUMNS_HELP.update({
        f"obj{_k}_shape": f"Shape of object {_k} (1 = main object; n/a if absent)",
        f"obj{_k}_colour": f"Named colour of object {_k}",
        f"obj{_k}_x": f"Horizontal centre of object {_k} (fraction of the width, 0 = left)",
        f"obj{_k}_y": f"Vertical centre of object {_k} (fraction of the height, 0 = top)",
        f"obj{_k}_size": f"Half-extent of object {_k} (fraction of the width)",
        f"obj{_k}_rotation": f"Rotation of object {_k} (radians)",
        f"obj{_k}_texture": f"Surface texture of object {_k}: solid, stripes or dots",
    })


def image_level_features(params: ImageParams) -> np.ndarray:
    """Image-level features that drive the simulated higher-level voxels, shape ``(n_features,)``.

    One-hot category (6), main object RGB (3), main size, position (x, y), number of objects,
    background luminance, whether the main object is textured, background RGB (3), one-hot background
    texture (5).
    """
    main = params.main
    category = np.eye(len(SHAPES))[SHAPES.index(main.shape)]
    bg_texture = np.eye(len(BACKGROUND_TEXTURES))[BACKGROUND_TEXTURES.index(params.bg_texture)]
    scalars = [main.size / 0.34, main.x, main.y, len(params.objects) / MAX_OBJECTS,
               float(np.dot(params.bg_rgb, [0.299, 0.587, 0.114])), float(main.texture != "solid"),
               *params.bg_rgb]
    return np.concatenate([category, np.asarray(main.rgb), scalars, bg_texture])


def render_text_cue(size: int) -> np.ndarray:
    """What the screen shows during a text cue: dark lines of 'text' on a grey field, ``(size, size, 3)``."""
    image = np.full((size, size, 3), 0.5)
    rows = np.arange(size)
    for k, centre in enumerate((0.38, 0.5, 0.62)):
        line = np.abs(rows / size - centre) < 0.025
        width = 0.3 if k < 2 else 0.2
        cols = np.abs(np.arange(size) / size - 0.5) < width
        image[np.ix_(line, cols)] = 0.9
    return np.round(image * 255).astype(np.uint8)
