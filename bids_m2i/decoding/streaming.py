"""Choose the decoding voxels before loading the betas, one session (statseries) at a time.

Why: with ``--top-k-voxels K`` the decoder keeps only the K voxels of highest noise-ceiling SNR (ncsnr, NSD;
:func:`bids_m2i.decoding.voxels.compute_ncsnr`) among the training trials, yet reading every session's betas for
every mask voxel first costs ``trials x voxels x 4`` bytes: 24 GB for 40 sessions x 750 trials x 200k voxels,
before the choice throws 90 % of it away. Here the choice is made from statistics streamed from the files,
and only the chosen voxels are then read.

What ncsnr needs, per voxel, over the training trials (z-scoring is a per-voxel affine map, so everything can be
taken on the raw betas ``b`` and divided by the variance at the end):

* the variance ``s2`` (ddof 0): running sums of ``b`` and ``b**2``, O(voxels);
* the mean over repeated stimuli ``j`` of the within-stimulus variance (ddof 1)
  ``(sum_i b_i**2 - (sum_i b_i)**2 / c_j) / (c_j - 1)``. Its first term is a running sum weighted by
  ``1 / (c_j - 1)`` (the repeat counts are known from the events tables before any beta is read), O(voxels);
  its second needs each stimulus' sum ``sum_i b_i`` over its repeats, which sit in different sessions: one
  float64 per repeated stimulus and voxel.

The per-stimulus sums are the only large state: ``8 x repeated stimuli`` bytes per voxel (72 kB for NSD's
~9,000 repeated training images). The voxels are therefore taken in blocks that fit ``memory_gb``, one pass
over the files per block, then one last pass reads the chosen voxels of every trial. The scores equal
:func:`compute_ncsnr`'s up to float rounding (float64 sums here, float32 z-scores there; relative differences
~1e-6), so the chosen set is the in-memory one except where two voxels' scores tie at the K-th place within
that rounding (tests/test_decoding_streaming.py checks equality on simulated and pipeline betas).

Each file is decompressed sequentially once per pass (:func:`iter_volume_chunks`): nibabel's array proxy
reopens a gzip file for every slice and so decompresses it from the start each time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BadDataError

LOG = logging.getLogger("m2i.decoding")

NA = "n/a"
DEFAULT_MEMORY_GB = 4.0  # the per-stimulus sums of one voxel block; the chosen betas come on top


@dataclass
class StatSeries:
    """One statseries file: where its volumes start and how to turn the stored numbers into betas."""

    path: str
    shape: tuple
    dtype: np.dtype
    offset: int
    slope: float
    inter: float

    @property
    def n_volumes(self) -> int:
        return int(self.shape[3]) if len(self.shape) == 4 else 1

    @classmethod
    def open(cls, path: str) -> "StatSeries":
        import nibabel as nib

        image = nib.load(path)  # header only
        proxy = image.dataobj
        slope = float(getattr(proxy, "slope", 1.0))
        inter = float(getattr(proxy, "inter", 0.0))
        return cls(str(path), tuple(image.shape), np.dtype(image.get_data_dtype()), int(proxy.offset),
                   slope if np.isfinite(slope) and slope != 0 else 1.0, inter if np.isfinite(inter) else 0.0)


def iter_volume_chunks(series: StatSeries, voxels: np.ndarray, chunk_volumes: int = 32):
    """Yield ``(first_volume, (n, len(voxels)) float32)`` through the file once, ``chunk_volumes`` at a time.

    ``voxels`` are flat indices of the 3-D grid in the file's (Fortran) order. Scaling (scl_slope/scl_inter)
    is applied like nibabel does.
    """
    from nibabel.openers import ImageOpener

    per_volume = int(np.prod(series.shape[:3]))
    itemsize = series.dtype.itemsize
    with ImageOpener(series.path, "rb") as handle:
        handle.seek(series.offset)
        for start in range(0, series.n_volumes, chunk_volumes):
            count = min(chunk_volumes, series.n_volumes - start)
            raw = handle.read(count * per_volume * itemsize)
            if len(raw) != count * per_volume * itemsize:
                raise BadDataError(f"{Path(series.path).name} ends before its last volume", path=series.path,
                                   hint="the file is probably truncated: rerun the GLM step")
            # each volume is contiguous on disk: (count, voxels of one volume)
            block = np.frombuffer(raw, dtype=series.dtype).reshape(count, per_volume)[:, voxels]
            block = block.astype(np.float32, copy=False)
            if series.slope != 1.0 or series.inter != 0.0:
                block = block * np.float32(series.slope) + np.float32(series.inter)
            yield start, block


def fortran_indices(mask: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Flat Fortran-order indices of the mask's voxels, in the mask's C order (``betas`` column order),
    or of ``columns`` of them."""
    coords = np.nonzero(mask)
    if columns is not None:
        coords = tuple(c[columns] for c in coords)
    return np.ravel_multi_index(coords, mask.shape, order="F")


def read_series(statseries: list[str], events: list[str], mask: np.ndarray):
    """Headers and events tables of the statseries (no betas read): ``([StatSeries], trials)``.

    The events tables become one trials table with a ``source`` column (the statseries file name).
    """
    series, tables = [], []
    for series_path, events_path in zip(statseries, events):
        item = StatSeries.open(series_path)
        if tuple(item.shape[:3]) != tuple(mask.shape):
            raise BadDataError(f"{Path(series_path).name} is {item.shape[:3]}, the mask {mask.shape}",
                               path=series_path)
        table = pd.read_csv(events_path, sep="\t", dtype=str, keep_default_na=False)
        if len(table) != item.n_volumes:
            raise BadDataError(f"{Path(events_path).name} has {len(table)} rows for {item.n_volumes} volumes",
                               path=events_path)
        table["source"] = Path(series_path).name
        series.append(item)
        tables.append(table)
    return series, pd.concat(tables, ignore_index=True)


def read_columns(series: list[StatSeries], voxels: np.ndarray, chunk_volumes: int = 32) -> np.ndarray:
    """(all volumes of all series, len(voxels)) float32; ``voxels`` as in :func:`iter_volume_chunks`."""
    out = np.empty((sum(s.n_volumes for s in series), len(voxels)), dtype=np.float32)
    row = 0
    for item in series:
        for start, block in iter_volume_chunks(item, voxels, chunk_volumes):
            out[row + start:row + start + len(block)] = block
        row += item.n_volumes
    return out


def training_trials(trials: pd.DataFrame, seed: int = 0, fine_tune_imagery: bool = False):
    """The rows the decoder trains on and their stimulus labels, as :func:`reconstruct_participant` finds
    them (same column clean-up, same :func:`split_trials`), in the same order."""
    from .splits import split_trials

    trials = trials.reset_index(drop=True).copy()
    for column in ("condition", "cue", "stimulus", "stim_file", "cue_text", "category"):
        if column not in trials:
            trials[column] = NA
        trials[column] = trials[column].astype(str).replace({"": NA, "nan": NA})
    split = split_trials(trials, seed=seed, fine_tune_imagery=fine_tune_imagery)
    return np.asarray(split.train), trials["stimulus"].to_numpy()[split.train]


class _BlockStatistics:
    """Running per-voxel sums over the training rows of one voxel block (see the module docstring)."""

    def __init__(self, n_voxels: int, n_repeated: int):
        self.shift = None  # the first training row: centring keeps the float64 sums well conditioned
        self.total = np.zeros(n_voxels)
        self.squares = np.zeros(n_voxels)
        self.weighted_squares = np.zeros(n_voxels)  # sum over repeated-stimulus rows of b**2 / (c - 1)
        self.stimulus_sums = np.zeros((n_repeated, n_voxels))
        self.low = np.full(n_voxels, np.inf, dtype=np.float32)
        self.high = np.full(n_voxels, -np.inf, dtype=np.float32)

    def add(self, rows: np.ndarray, repeated_id: np.ndarray, weight: np.ndarray) -> None:
        """``rows`` (n, v) training betas; ``repeated_id`` (n,) index of their stimulus among the repeated
        ones or -1; ``weight`` (n,) 1 / (repeats - 1) (0 when not repeated)."""
        from scipy import sparse

        if not np.isfinite(rows).all():
            raise BadDataError("betas contain NaN or infinite values inside the mask",
                               hint="check the GLM outputs or restrict the mask")
        np.minimum(self.low, rows.min(0), out=self.low)
        np.maximum(self.high, rows.max(0), out=self.high)
        if self.shift is None:
            self.shift = rows[0].astype(np.float64)
        centred = rows - self.shift
        self.total += centred.sum(0)
        squared = centred * centred
        self.squares += squared.sum(0)
        self.weighted_squares += weight @ squared
        repeated = repeated_id >= 0
        if repeated.any():
            ids, inverse = np.unique(repeated_id[repeated], return_inverse=True)
            onehot = sparse.csr_matrix((np.ones(len(inverse)), (inverse.ravel(), np.arange(len(inverse)))),
                                       shape=(len(ids), len(inverse)))
            self.stimulus_sums[ids] += onehot @ centred[repeated]

    def ncsnr(self, n_rows: int, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32, varying bool) with :func:`compute_ncsnr`'s definition."""
        varying = self.high > self.low
        mean = self.total / n_rows
        variance = np.maximum(self.squares / n_rows - mean * mean, 0.0)
        c = counts.astype(float)[:, None]
        within = self.weighted_squares - (self.stimulus_sums ** 2 / (c * (c - 1))).sum(0)
        noise = (within / len(counts)) / np.where(variance > 0, variance, 1.0)
        signal_sd = np.sqrt(np.clip(1.0 - noise, 0.0, None))
        scores = (signal_sd / np.sqrt(np.maximum(noise, 1e-12))).astype(np.float32)
        return np.where(varying, scores, 0.0).astype(np.float32), varying


def streamed_ncsnr(series: list[StatSeries], mask: np.ndarray, train_rows: np.ndarray, labels,
                   memory_gb: float = DEFAULT_MEMORY_GB, chunk_volumes: int = 32):
    """ncsnr of every mask voxel over the training rows, read a voxel block per pass: ``(scores, varying)``
    (both (n_mask_voxels,)). Scores are 0 when no training stimulus is repeated."""
    n_voxels = int(mask.sum())
    labels = np.asarray(labels).astype(str)
    distinct, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    repeated_stimuli = np.flatnonzero(counts >= 2)
    position_of = np.full(len(distinct), -1)
    position_of[repeated_stimuli] = np.arange(len(repeated_stimuli))
    n_total = sum(s.n_volumes for s in series)
    # per training row: its repeated-stimulus index and its weight 1 / (c - 1); -1 / 0 for other rows
    repeated_id = np.full(n_total, -1)
    weight = np.zeros(n_total)
    is_train = np.zeros(n_total, dtype=bool)
    is_train[train_rows] = True
    repeated_id[train_rows] = position_of[inverse.ravel()]
    row_counts = counts[inverse.ravel()]
    weight[train_rows] = np.where(row_counts >= 2, 1.0 / np.maximum(row_counts - 1, 1), 0.0)
    # bytes per voxel of a block: the per-stimulus sums, six running vectors and a chunk of rows
    per_voxel = 8 * len(repeated_stimuli) + 6 * 8 + 3 * 4 * chunk_volumes
    block = max(1, min(n_voxels, int(memory_gb * 1e9 // per_voxel)))
    n_blocks = math.ceil(n_voxels / block)
    LOG.info("voxel selection: ncsnr of %d voxels over %d training trials (%d repeated stimuli) in %d pass(es) "
             "over %d statseries", n_voxels, len(train_rows), len(repeated_stimuli), n_blocks, len(series))
    scores = np.zeros(n_voxels, dtype=np.float32)
    varying = np.zeros(n_voxels, dtype=bool)
    all_voxels = fortran_indices(mask)
    for first in range(0, n_voxels, block):
        columns = slice(first, min(n_voxels, first + block))
        stats = _BlockStatistics(columns.stop - columns.start, len(repeated_stimuli))
        row = 0
        for item in series:
            for start, chunk in iter_volume_chunks(item, all_voxels[columns], chunk_volumes):
                rows = slice(row + start, row + start + len(chunk))
                keep = is_train[rows]
                if keep.any():
                    stats.add(chunk[keep], repeated_id[rows][keep], weight[rows][keep])
            row += item.n_volumes
        if len(repeated_stimuli):
            scores[columns], varying[columns] = stats.ncsnr(len(train_rows), counts[repeated_stimuli])
        else:
            varying[columns] = stats.high > stats.low
    return scores, varying


def choose_voxels(scores: np.ndarray, varying: np.ndarray, top_k: int | None) -> np.ndarray:
    """The mask columns :class:`~bids_m2i.decoding.voxels.VoxelScaler` keeps: the varying voxels, then the
    ``top_k`` of highest score (ties to the lower index) unless no score is positive."""
    from .voxels import select_top_k

    candidates = np.flatnonzero(varying)
    if len(candidates) == 0:
        raise BadDataError("all voxels are constant over the training trials")
    if top_k is None or not np.any(scores[candidates] > 0):
        if top_k is not None:
            LOG.warning("no repeated training stimuli: cannot rank voxels by ncsnr; keeping all %d",
                        len(candidates))
        return candidates
    return candidates[select_top_k(scores[candidates], top_k)]


@dataclass
class SelectedBetas:
    betas: np.ndarray  # (n_trials, len(columns)) float32
    trials: pd.DataFrame
    columns: np.ndarray  # which of the mask's voxels (C order) the betas columns are
    n_mask_voxels: int


def load_selected_betas(statseries: list[str], events: list[str], mask: np.ndarray, top_k: int, *,
                        seed: int = 0, fine_tune_imagery: bool = False, memory_gb: float = DEFAULT_MEMORY_GB,
                        chunk_volumes: int = 32) -> SelectedBetas:
    """The betas of only the voxels the decoder will keep with ``--top-k-voxels top_k`` (and the same split
    ``seed``/``fine_tune_imagery``), every trial; see the module docstring for the memory."""
    mask = np.asarray(mask, dtype=bool)
    series, trials = read_series(statseries, events, mask)
    train_rows, labels = training_trials(trials, seed=seed, fine_tune_imagery=fine_tune_imagery)
    scores, varying = streamed_ncsnr(series, mask, train_rows, labels, memory_gb=memory_gb,
                                     chunk_volumes=chunk_volumes)
    columns = choose_voxels(scores, varying, top_k)
    LOG.info("voxel selection: reading %d of %d mask voxels", len(columns), len(scores))
    betas = read_columns(series, fortran_indices(mask, columns), chunk_volumes)
    return SelectedBetas(betas, trials, columns, len(scores))
