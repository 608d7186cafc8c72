"""The GLM node's reading and figures, made cheaper without changing what they give (issue 13, speed).

* ``.nii.gz`` runs are decompressed by ``GunzipReader`` (large pieces, straight into the array) instead of
  Python's ``GzipFile``: the arrays must equal nibabel's own reading bit for bit, scaled integers included,
  and damaged files must still fail.
* The brain voxels are gathered volume by volume (``masked_series``): same values and memory layout as
  ``data[mask][:, keep]``.
* The two figures are written without matplotlib (``reports/svg.py``): valid SVG, identical bytes for identical
  inputs, the report's texts; the GLM node's process does not import matplotlib (``test_glm_speed_node.py``).
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_m2i.errors import BadDataError
from bids_m2i.interfaces.glm import masked_series
from bids_m2i.interfaces.images import GunzipReader, load_bold, read_float32

ROOT = Path(__file__).resolve().parents[1]


def _nifti_gz(path: Path, data: np.ndarray, stored=None, slope=None, members: int = 1) -> Path:
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    if stored is not None:
        img.set_data_dtype(stored)
    if slope is not None:
        img.header.set_slope_inter(*slope)
    raw = img.to_bytes()
    if members == 1:
        path.write_bytes(gzip.compress(raw, mtime=0))
    else:  # several gzip members with zero padding between them, as some tools write
        cut = np.linspace(0, len(raw), members + 1).astype(int)
        path.write_bytes(b"\0\0".join(gzip.compress(raw[a:b], mtime=0) for a, b in zip(cut[:-1], cut[1:])))
    return path


@pytest.mark.parametrize("case", ["float32", "int16_scaled", "uint8", "float64", "big_endian", "two_members",
                                  "five_members"])
def test_gunzip_reader_gives_nibabels_array(tmp_path, case):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((9, 7, 5, 40)) * 100 + 1000).astype(np.float32)
    kwargs = {"float32": {}, "int16_scaled": {"stored": np.int16}, "uint8": {"stored": np.uint8},
              "float64": {"stored": np.float64}, "big_endian": {"stored": np.dtype(">f4")},
              "two_members": {"members": 2}, "five_members": {"members": 5}}[case]
    if case == "uint8":
        data = np.clip(data / 10, 0, 255).astype(np.float32)
    path = _nifti_gz(tmp_path / "bold.nii.gz", data, **kwargs)
    img = nib.load(str(path))
    expected = np.asarray(img.dataobj, dtype=np.float32)
    ours = read_float32(img, path)
    assert ours.dtype == expected.dtype and ours.shape == expected.shape and ours.strides == expected.strides
    np.testing.assert_array_equal(ours, expected)
    assert ours.flags.writeable
    if case == "int16_scaled":
        assert img.dataobj.slope != 1.0       # the scaled path was exercised


def test_gunzip_reader_small_pieces_and_seek(tmp_path):
    content = np.random.default_rng(1).bytes(300_000)
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(content[:100_000], mtime=0) + gzip.compress(content[100_000:], mtime=0))
    with GunzipReader(path) as reader:
        reader.CHUNK = 4096                      # many reads, member boundaries inside a read
        assert reader.seek(1234) == 1234 and reader.tell() == 1234
        buffer = bytearray(200_000)
        assert reader.readinto(buffer) == 200_000
        assert bytes(buffer) == content[1234:201_234]
        assert reader.read() == content[201_234:]
        with pytest.raises(io.UnsupportedOperation):
            reader.seek(0)


def test_truncated_or_corrupt_gzip_still_fails(tmp_path):
    data = np.random.default_rng(2).standard_normal((6, 6, 4, 30)).astype(np.float32)
    path = _nifti_gz(tmp_path / "bold.nii.gz", data)
    good = path.read_bytes()
    path.write_bytes(good[: int(len(good) * 0.8)])                       # an interrupted copy
    with pytest.raises(BadDataError, match="Cannot read the image data"):
        load_bold(path)
    corrupt = bytearray(good)
    corrupt[10:40] = b"\xff" * 30          # the first deflate block's header: an invalid block type
    path.write_bytes(bytes(corrupt))
    with pytest.raises(BadDataError):
        load_bold(path)
    with pytest.raises(zlib.error):
        with GunzipReader(path) as reader:
            reader.read()


@pytest.mark.parametrize("partial_mask", [True, False])
@pytest.mark.parametrize("dropped", [0, 3])
def test_masked_series_equals_boolean_index(partial_mask, dropped):
    rng = np.random.default_rng(dropped + 10 * partial_mask)
    data = np.asfortranarray(rng.standard_normal((8, 9, 5, 40)).astype(np.float32))   # nibabel's layout
    mask = rng.random(data.shape[:3]) > 0.4 if partial_mask else np.ones(data.shape[:3], dtype=bool)
    keep = np.ones(data.shape[3], dtype=bool)
    keep[:dropped] = False
    expected = data[mask][:, keep]
    ours = masked_series(data, mask, keep)
    np.testing.assert_array_equal(ours, expected)
    assert ours.strides == expected.strides and ours.dtype == expected.dtype
    c_order = np.ascontiguousarray(data)                   # any other layout: the boolean index itself
    np.testing.assert_array_equal(masked_series(c_order, mask, keep), expected)


def _design(n_rows=120, n_trials=20):
    rng = np.random.default_rng(4)
    columns = {f"trial_{i:03d}": np.convolve(rng.random(n_rows) > 0.95, np.hanning(8), "same")
               for i in range(n_trials)}
    columns.update({f"drift_{k}": np.cos(np.pi * k * np.arange(n_rows) / n_rows) for k in (1, 2)})
    columns["constant"] = np.ones(n_rows)
    return pd.DataFrame(columns)


def test_figures_are_svg_with_the_reports_texts_and_identical_bytes(tmp_path):
    from bids_m2i.reports.figures import collinearity, plot_design_matrix, plot_ncsnr_histogram

    design = _design()
    ncsnr = np.r_[np.random.default_rng(5).gamma(2.0, 0.15, 3000), np.nan]
    first = plot_design_matrix(design, tmp_path / "design.svg").read_bytes()
    assert plot_design_matrix(design, tmp_path / "again.svg").read_bytes() == first
    hist = plot_ncsnr_histogram(ncsnr, tmp_path / "ncsnr.svg").read_bytes()
    empty = plot_ncsnr_histogram(np.array([np.nan]), tmp_path / "empty.svg").read_text()
    ns = {"s": "http://www.w3.org/2000/svg"}
    for text in (first.decode(), hist.decode(), empty):
        root = ET.fromstring(text.split("?>", 1)[1])             # well-formed XML
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("viewBox")
    texts = [t.text for t in ET.fromstring(first.decode().split("?>", 1)[1]).iterfind(".//s:text", ns)]
    stats = collinearity(design)
    assert (f"Design matrix (first run, LSA). Trial collinearity: median VIF {stats['vif_median']:.2f}, "
            f"max VIF {stats['vif_max']:.2f}, max |r| {stats['max_abs_corr']:.2f}") in texts
    assert "regressors (20 trials, then nuisance events and drifts)" in texts and "volume" in texts
    values = ncsnr[np.isfinite(ncsnr)]
    hist_texts = [t.text for t in ET.fromstring(hist.decode().split("?>", 1)[1]).iterfind(".//s:text", ns)]
    assert (f"ncsnr (median {np.median(values):.3f}, {np.mean(values > 0.2) * 100:.0f}% of voxels > 0.2)"
            in hist_texts)
    # 50 bars, one per non-empty bin
    path = ET.fromstring(hist.decode().split("?>", 1)[1]).find(".//s:path", ns).get("d")
    assert path.count("M") == int((np.histogram(values, bins=50)[0] > 0).sum())
    assert "no repeated stimuli, not defined" in empty


def test_design_image_holds_the_scaled_columns(tmp_path):
    # the embedded PNG: one gray level per design value (matplotlib's gray map over [min, max]), each value a
    # block of whole pixels
    import base64
    import re

    from PIL import Image

    from bids_m2i.reports.figures import plot_design_matrix

    design = _design(n_rows=50, n_trials=6)
    text = plot_design_matrix(design, tmp_path / "design.svg").read_text()
    png = base64.b64decode(re.search(r'href="data:image/png;base64,([^"]+)"', text).group(1))
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    values = design.to_numpy(dtype=float)
    image = values / np.abs(values).max(axis=0)
    levels = np.clip(np.floor((image - image.min()) / (image.max() - image.min()) * 256), 0, 255)
    ky, kx = pixels.shape[0] // values.shape[0], pixels.shape[1] // values.shape[1]
    assert pixels.shape == (values.shape[0] * ky, values.shape[1] * kx) and kx > 1
    np.testing.assert_array_equal(pixels[::ky, ::kx], levels.astype(np.uint8))


def test_nice_ticks():
    from bids_m2i.reports.svg import nice_ticks, tick_labels

    ticks, step = nice_ticks(-0.09, 1.8, max_ticks=8)
    assert step == 0.25 and ticks[0] == 0 and ticks[-1] == 1.75
    assert tick_labels(ticks, step)[:2] == ["0.00", "0.25"]
    ticks, step = nice_ticks(0, 199, max_ticks=10, integer=True)
    assert step == 20 and list(ticks[:3]) == [0, 20, 40]
    ticks, step = nice_ticks(0, 3, max_ticks=10, integer=True)
    assert step == 1 and list(ticks) == [0, 1, 2, 3]
    assert tick_labels(np.array([-0.5, 0.0]), 0.5) == ["\u22120.5", "0.0"]


def test_gc_paused_restores_the_collector():
    import gc

    from bids_m2i.utils.process import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()        # left as found
    finally:
        gc.enable()


def test_figures_module_imports_no_matplotlib():
    code = "import sys, bids_m2i.reports.figures, bids_m2i.reports.svg; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out == ["False"]
