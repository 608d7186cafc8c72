"""Small charts written as SVG text, without matplotlib (the GLM node's two figures).

Importing matplotlib and drawing a first figure cost the GLM step about 1.5 of its ~7 CPU seconds (issue 13:
the whole process against GLMsingle's). A histogram and a design-matrix image need only a frame, ticks, text,
bars, a line and a raster image: written here as plain SVG, text as ``<text>`` (the viewer's sans-serif font),
the image as an embedded grayscale PNG. Identical inputs give identical bytes.

Coordinates are points (1/72 in), as matplotlib's SVGs; the document's view box is fitted to what was drawn
(text extents are estimated from the number of characters), like ``bbox_inches="tight"``.
"""

from __future__ import annotations

import base64
import math
import struct
import zlib
from html import escape
from pathlib import Path

import numpy as np

FONT = "DejaVu Sans, Bitstream Vera Sans, Arial, Helvetica, sans-serif"
CHAR_WIDTH = 0.6      # average glyph width of the font, in font sizes (for the layout only)
TICK = 3.5            # tick length and the gap to its label (pt), matplotlib's defaults
MINUS = "\u2212"


def nice_ticks(lo: float, hi: float, max_ticks: int = 8, integer: bool = False) -> tuple[np.ndarray, float]:
    """Ticks inside [lo, hi] at multiples of 1, 2, 2.5 or 5 x 10^k (the smallest step that gives at most
    ``max_ticks``), and the step. ``integer``: steps of at least 1 and no 2.5."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.array([lo]), 1.0
    span = hi - lo
    magnitude = 10.0 ** math.floor(math.log10(span / max(1, max_ticks - 1)))
    step = 10 * magnitude
    for factor in (1, 2, 2.5, 5, 10):
        candidate = factor * magnitude
        if integer and (candidate < 1 or candidate != round(candidate)):
            continue
        if math.floor(hi / candidate + 1e-9) - math.ceil(lo / candidate - 1e-9) + 1 <= max_ticks:
            step = candidate
            break
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return np.arange(first, last + 1) * step, step


def tick_labels(ticks: np.ndarray, step: float) -> list[str]:
    """Labels with as many decimals as the step needs (0.25 -> two), a true minus sign, no "-0"."""
    decimals = 0
    while decimals < 12 and abs(round(step, decimals) - step) > 1e-9 * abs(step):
        decimals += 1
    labels = []
    for value in ticks:
        text = f"{value:.{decimals}f}"
        if float(text) == 0:
            text = text.lstrip("-")
        labels.append(text.replace("-", MINUS))
    return labels


def png_gray(levels: np.ndarray) -> bytes:
    """A grayscale 8-bit PNG of ``levels`` (rows x columns, 0 = black, 255 = white)."""
    levels = np.ascontiguousarray(levels, dtype=np.uint8)
    height, width = levels.shape
    raw = np.zeros((height, width + 1), dtype=np.uint8)      # filter byte 0 (none) before each row
    raw[:, 1:] = levels

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


class Figure:
    """SVG elements in point coordinates (y down) and the box they cover."""

    def __init__(self):
        self.parts: list[str] = []
        self.box = [math.inf, math.inf, -math.inf, -math.inf]

    def _extend(self, x0, y0, x1, y1):
        self.box = [min(self.box[0], x0, x1), min(self.box[1], y0, y1),
                    max(self.box[2], x0, x1), max(self.box[3], y0, y1)]

    def text(self, x: float, y: float, text: str, size: float = 10, anchor: str = "middle",
             rotate: bool = False) -> None:
        """``text`` with its baseline at ``y`` (or, ``rotate``: reading upwards, its baseline at ``x``)."""
        width = CHAR_WIDTH * size * len(text)
        start = {"start": 0.0, "middle": -width / 2, "end": -width}[anchor]
        transform = f' transform="rotate(-90 {_num(x)} {_num(y)})"' if rotate else ""
        if rotate:
            self._extend(x - 0.8 * size, y - start, x + 0.25 * size, y - start - width)
        else:
            self._extend(x + start, y - 0.8 * size, x + start + width, y + 0.25 * size)
        self.parts.append(f'<text x="{_num(x)}" y="{_num(y)}" font-size="{_num(size)}" text-anchor="{anchor}"'
                          f'{transform}>{escape(text, quote=False)}</text>')

    def line(self, x0: float, y0: float, x1: float, y1: float, width: float = 0.8, dash: str | None = None,
             color: str = "#000000") -> None:
        self._extend(x0, y0, x1, y1)
        style = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{_num(x0)}" y1="{_num(y0)}" x2="{_num(x1)}" y2="{_num(y1)}" '
                          f'stroke="{color}" stroke-width="{_num(width)}"{style}/>')

    def rects(self, boxes, color: str) -> None:
        """Filled rectangles (x0, y0, x1, y1) as one path."""
        path = []
        for x0, y0, x1, y1 in boxes:
            self._extend(x0, y0, x1, y1)
            path.append(f"M{_num(x0)} {_num(y0)}H{_num(x1)}V{_num(y1)}H{_num(x0)}Z")
        if path:
            self.parts.append(f'<path d="{"".join(path)}" fill="{color}"/>')

    def image(self, x: float, y: float, width: float, height: float, png: bytes) -> None:
        """A PNG stretched over the box, its pixels kept square-edged (no smoothing)."""
        self._extend(x, y, x + width, y + height)
        data = base64.b64encode(png).decode("ascii")
        self.parts.append(f'<image x="{_num(x)}" y="{_num(y)}" width="{_num(width)}" height="{_num(height)}" '
                          f'preserveAspectRatio="none" style="image-rendering:pixelated" '
                          f'href="data:image/png;base64,{data}"/>')

    def svg(self, pad: float = 4.0) -> str:
        x0, y0, x1, y1 = self.box[0] - pad, self.box[1] - pad, self.box[2] + pad, self.box[3] + pad
        width, height = x1 - x0, y1 - y0
        return (f'<?xml version="1.0" encoding="utf-8"?>\n'
                f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{_num(width)}pt" '
                f'height="{_num(height)}pt" viewBox="{_num(x0)} {_num(y0)} {_num(width)} {_num(height)}">\n'
                f'<rect x="{_num(x0)}" y="{_num(y0)}" width="{_num(width)}" height="{_num(height)}" fill="#ffffff"/>\n'
                f'<g font-family="{FONT}" fill="#000000">\n' + "\n".join(self.parts) + "\n</g>\n</svg>\n")

    def save(self, path: str | Path) -> Path:
        from ..utils.atomic import write_text

        return write_text(path, self.svg())


class Axes:
    """A plot box on a figure: data limits mapped onto it, with a frame, ticks and labels."""

    def __init__(self, figure: Figure, left: float, top: float, width: float, height: float,
                 xlim: tuple[float, float], ylim: tuple[float, float]):
        """``ylim``: the values at the bottom and at the top of the box (top < bottom for an image's rows)."""
        self.figure, self.left, self.top, self.width, self.height = figure, left, top, width, height
        self.xlim, self.ylim = xlim, ylim

    def x(self, value):
        return self.left + (np.asarray(value, dtype=float) - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * self.width

    def y(self, value):
        bottom = self.top + self.height
        return bottom - (np.asarray(value, dtype=float) - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * self.height

    def frame(self) -> None:
        fig, right, bottom = self.figure, self.left + self.width, self.top + self.height
        for x0, y0, x1, y1 in ((self.left, self.top, self.left, bottom), (right, self.top, right, bottom),
                               (self.left, self.top, right, self.top), (self.left, bottom, right, bottom)):
            fig.line(x0, y0, x1, y1)

    def xticks(self, ticks, labels, size: float = 10) -> float:
        """Ticks below the box; returns the y of the labels' lowest extent."""
        bottom = self.top + self.height
        for value, label in zip(ticks, labels):
            x = float(self.x(value))
            self.figure.line(x, bottom, x, bottom + TICK)
            self.figure.text(x, bottom + 2 * TICK + 0.8 * size, label, size=size)
        return bottom + 2 * TICK + 1.05 * size

    def yticks(self, ticks, labels, size: float = 10) -> float:
        """Ticks left of the box; returns the x of the widest label's left end."""
        widest = 0.0
        for value, label in zip(ticks, labels):
            y = float(self.y(value))
            self.figure.line(self.left - TICK, y, self.left, y)
            self.figure.text(self.left - 2 * TICK, y + 0.35 * size, label, size=size, anchor="end")
            widest = max(widest, CHAR_WIDTH * size * len(label))
        return self.left - 2 * TICK - widest

    def labels(self, xlabel: str, ylabel: str, title: str, xlabel_top: float, ylabel_right: float,
               size: float = 10, title_size: float = 9) -> None:
        middle_x, middle_y = self.left + self.width / 2, self.top + self.height / 2
        self.figure.text(middle_x, xlabel_top + TICK + 0.8 * size, xlabel, size=size)
        self.figure.text(ylabel_right - TICK - 0.25 * size, middle_y, ylabel, size=size, rotate=True)
        self.figure.text(middle_x, self.top - 6, title, size=title_size)


def tick_count(length: float, label_extent: float) -> int:
    """How many ticks fit along ``length`` points when each label takes ``label_extent`` points and a gap."""
    return int(min(10, max(3, length // (label_extent + 14))))
