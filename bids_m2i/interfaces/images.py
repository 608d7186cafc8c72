"""Reading BOLD images for the engines, with clear errors for unusable content."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BadDataError

LOGGER = logging.getLogger("m2i.interfaces")


def load_bold(path: str | Path):
    """(data float32 (X,Y,Z,T), affine, header) with scaled integers applied and content checks.

    NaN/Inf in a few voxels -> warning (set to 0 where the engines need finite values); a run that is all
    zeros or all non-finite -> BadDataError (exit 65).
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)  # applies scl_slope/scl_inter
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
        bad_voxels = int((~finite).any(axis=3).sum())
        LOGGER.warning("%s: %d voxel(s) with NaN/Inf values; they are set to 0 and left out of the brain mask",
                       path.name, bad_voxels)
        data = np.where(finite, data, 0).astype(np.float32)
    if not np.any(data):
        raise BadDataError(f"{path} is all zeros", path=path, hint="check the conversion from DICOM")
    return data, np.asarray(img.affine, dtype=np.float64), img.header


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
