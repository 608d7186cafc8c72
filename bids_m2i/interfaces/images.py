"""Reading BOLD images for the engines, with clear errors for unusable content."""

from __future__ import annotations

import io
import logging
import zlib
from pathlib import Path

import numpy as np

from ..errors import BadDataError

LOGGER = logging.getLogger("m2i.interfaces")


def read_ahead(function, items, threads: int):
    """``function(item)`` for each item, yielded in order, computed ahead on ``threads`` threads (gunzip and numpy
    release the GIL while they work); ``threads`` ≤ 1 computes each item when it is asked for, on this thread.

    At most ``threads + 1`` results exist at a time: the one the caller holds and ``threads`` being computed or
    waiting (``utils.parallel.in_order_ahead``). An error is raised where its item is yielded, and the items not
    started yet never start."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        for item in items:
            yield function(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    from ..utils.parallel import in_order_ahead

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="m2i-read")
    try:
        yield from in_order_ahead(pool, function, items, threads)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def load_bold(path: str | Path):
    """(data float32 (X,Y,Z,T), affine, header) with scaled integers applied and content checks.

    NaN/Inf in a few voxels -> warning (set to 0 where the engines need finite values); a run that is all
    zeros, all non-finite, constant over time, already demeaned (every voxel's mean over time about 0), or has
    a volume of zeros or without any finite value -> BadDataError (65).
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = read_float32(img, path)  # applies scl_slope/scl_inter
    except Exception as exc:
        raise BadDataError(f"Cannot read the image data of {path}: {exc}", path=path,
                           hint="the file is probably truncated: re-export or re-download it") from exc
    if data.ndim != 4:
        raise BadDataError(f"{path} is not a 4-D time series (shape {data.shape})", path=path)
    finite = np.isfinite(data)
    if not finite.any():
        raise BadDataError(f"{path} holds no finite values (all NaN/Inf)", path=path,
                           hint="check the conversion from DICOM")
    if not finite.all():
        # a volume without a single finite value (a failed reconstruction or conversion of that volume) set to 0
        # passed as data: motion correction fitted noise to it (FD of 80 mm) and the run ended with exit 0
        empty = np.flatnonzero(~finite.any(axis=(0, 1, 2)))
        if len(empty):
            shown = ", ".join(str(int(i)) for i in empty[:8]) + (", ..." if len(empty) > 8 else "")
            raise BadDataError(f"{path}: {len(empty)} of its {data.shape[3]} volumes hold no finite value (all "
                               f"NaN/Inf): volume(s) {shown} (counted from 0)", path=path,
                               hint="check the conversion from DICOM, or leave this run out with --bids-filter-file")
        bad_voxels = int((~finite).any(axis=3).sum())
        LOGGER.warning("%s: %d voxel(s) with NaN/Inf values; they are set to 0 and left out of the brain mask",
                       path.name, bad_voxels)
        data = np.where(finite, data, 0).astype(np.float32)
    if not np.any(data):
        raise BadDataError(f"{path} is all zeros", path=path, hint="check the conversion from DICOM")
    # one volume of zeros (lost in a conversion or transfer): the same as the NaN volume above (exit 0 with
    # motion estimates of 350 mm); a scanner's volume always has noise, even outside the head
    blank = np.flatnonzero(~data.any(axis=(0, 1, 2)))
    if len(blank):
        shown = ", ".join(str(int(i)) for i in blank[:8]) + (", ..." if len(blank) > 8 else "")
        raise BadDataError(f"{path}: {len(blank)} of its {data.shape[3]} volumes are all zeros: volume(s) {shown} "
                           "(counted from 0)", path=path,
                           hint="check the conversion from DICOM, or leave this run out with --bids-filter-file")
    # every voxel constant over time (a placeholder or a volume copied over the run): nothing to model, and
    # motion correction's cost is undefined on it; the cheap first/last comparison settles real runs at once
    if data.shape[3] > 1 and np.array_equal(data[..., 0], data[..., -1]) and not np.any(data != data[..., :1]):
        raise BadDataError(f"{path} holds no signal: every voxel has the same value in all {data.shape[3]} volumes",
                           path=path, hint="check the conversion from DICOM (or leave this run out with "
                           "--bids-filter-file)")
    _refuse_demeaned(data, path)
    return data, np.asarray(img.affine, dtype=np.float64), img.header


#: a run whose voxels' means over time are below this share of how much they change between its first and last
#: volume (99th percentiles of both) is taken for an already demeaned, z-scored or percent-change series
DEMEANED_RATIO = 0.1


def _refuse_demeaned(data: np.ndarray, path: Path) -> None:
    """BadDataError (65) for a run whose every voxel's mean over time is about 0: an already demeaned, z-scored
    or percent-signal-change series (a cleaned derivative given as the raw BOLD).

    Why (QA pass 32): motion correction registers intensities, and the temporal median of such a run is noise
    about 0; the optimiser's gain (reference mean over volume mean) divided by sums near 0 and every volume's pose
    ran off (translations of 7e9 mm on a demeaned phantom run); the run was resampled from outside its field of
    view and the GLM, whose betas are % of each voxel's mean, went on: exit 0 with a "physically impossible
    head-motion" warning that blamed the registration. Raw magnitude images have means far above their
    volume-to-volume changes (a ratio of 10-100 in the head; above 1 even at an SNR of 5); a demeaned float run
    has ~1e-6. 99th percentiles, not maxima: one spike or hot voxel decides nothing."""
    if data.shape[3] < 2:
        return
    typical = float(np.percentile(np.abs(data.mean(axis=3, dtype=np.float64)), 99))
    change = float(np.percentile(np.abs(data[..., -1].astype(np.float64) - data[..., 0]), 99))
    if change > 0 and typical < DEMEANED_RATIO * change:
        raise BadDataError(
            f"{path}: every voxel's mean over time is about 0 (99th percentile {typical:.3g}, against "
            f"volume-to-volume changes of {change:.3g}): the run looks already demeaned, z-scored or in percent "
            "signal change", path=path,
            hint="give the scanner's BOLD images (the built-in preprocessing registers their intensities and "
                 "expresses betas in % of each voxel's mean), or a preprocessed dataset with its mean kept "
                 "(fMRIPrep's outputs with --derivatives)")


def read_float32(img, path: str | Path) -> np.ndarray:
    """``np.asarray(img.dataobj, dtype=np.float32)`` (nibabel's scaling and casting), with a ``.gz`` file
    decompressed by :class:`GunzipReader` instead of Python's ``GzipFile``."""
    from nibabel.arrayproxy import ArrayProxy

    proxy = img.dataobj
    if not (str(path).endswith(".gz") and type(proxy) is ArrayProxy):
        return np.asarray(proxy, dtype=np.float32)
    with GunzipReader(path) as stream:
        # the same array proxy (shape, on-disk type, offset, scale factors, order) over the faster stream
        fast = ArrayProxy(stream, (proxy.shape, proxy.dtype, proxy.offset, proxy.slope, proxy.inter),
                          mmap=False, order=proxy.order)
        return np.asarray(fast, dtype=np.float32)


class GunzipReader(io.RawIOBase):
    """The content of a gzip file as a forward-only file object (for nibabel's array reader).

    Python's ``GzipFile`` decompresses 8 KiB of input per turn of a Python loop: reading a run of 16 MB took
    about 1.5x the time of one zlib call over the whole file (0.12 against 0.08 CPU s; six runs per GLM step).
    This reads 4 MiB at a time and decompresses straight into the caller's buffer, so a run is never held
    twice in memory. Files of several gzip members (and zero padding between them) are read as ``gzip`` reads
    them; a file that ends inside a member raises ``EOFError``, as ``gzip`` does. Only forward seeks: nibabel
    reads the header with ``nib.load`` and then seeks once to the data."""

    CHUNK = 1 << 22

    def __init__(self, path: str | Path):
        super().__init__()
        self.name = str(path)
        self._file = open(path, "rb")
        self._decompressor = zlib.decompressobj(wbits=31)    # 31: a gzip header and trailer (CRC checked)
        self._in_member = False
        self._pending = b""          # compressed input not yet given to the decompressor
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("GunzipReader seeks from the start or the current position only")
        if offset < self._position:
            raise io.UnsupportedOperation("GunzipReader seeks forward only")
        while self._position < offset and self._next(min(offset - self._position, self.CHUNK)):
            pass
        return self._position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            piece = self._next(min(len(view) - filled, self.CHUNK))    # pieces of 4 MiB at most
            if not piece:
                break
            view[filled:filled + len(piece)] = piece
            filled += len(piece)
        return filled

    def _next(self, limit: int) -> bytes:
        """At most ``limit`` (> 0) next bytes of the content; ``b""`` at its end."""
        while True:
            if not self._in_member:
                self._pending = self._pending.lstrip(b"\0")      # padding between members
            if not self._pending:
                self._pending = self._file.read(self.CHUNK)
                if not self._pending:
                    if self._in_member:
                        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                    return b""
                continue
            self._in_member = True
            piece = self._decompressor.decompress(self._pending, limit)
            if self._decompressor.eof:
                self._pending = self._decompressor.unused_data
                self._decompressor = zlib.decompressobj(wbits=31)
                self._in_member = False
            else:
                self._pending = self._decompressor.unconsumed_tail
            if piece:
                self._position += len(piece)
                return piece

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def save_like(data: np.ndarray, affine: np.ndarray, path: str | Path, tr: float | None = None,
              dtype=np.float32, stored_dtype=None) -> Path:
    """Save ``data`` (cast to ``dtype``) as NIfTI. ``stored_dtype`` (e.g. ``np.int16``): the type on disk;
    nibabel then scales floats into it with a ``scl_slope``/``scl_inter`` fitted to the data's range and
    rounds (error at most half a slope), and readers get floats back through the same scaling."""
    import nibabel as nib

    from ..utils.atomic import save_nifti

    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    if stored_dtype is not None:
        img.set_data_dtype(stored_dtype)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None and np.asarray(data).ndim == 4:
        zooms = list(img.header.get_zooms()[:3]) + [float(tr)]
        img.header.set_zooms(zooms)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return save_nifti(img, path)
