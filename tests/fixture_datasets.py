"""Copies of the real-layout BIDS fixtures with small synthetic BOLD series, for tests.

``tests/data/real-bids/<name>`` holds the real events and sidecars of four public datasets but no images
(provenance and licences: ``tests/data/real-bids/PROVENANCE.md``; carried in the repository so that a fresh
clone passes its tests). :func:`make_fixture_copy` copies one into a temporary folder and writes, next to every
events file, a tiny ``_bold.nii.gz`` whose length covers the last event plus 10 s at the run's repetition time
(read from the sidecars with BIDS inheritance, top-level ``task-*_bold.json`` included), so that the app
can run on it with ``--skip-bids-validation``.

Usage from a test::

    from fixture_datasets import make_fixture_copy
    bids_dir = make_fixture_copy("ds001246", tmp_path / "ds001246", sessions=["perceptionTest01"])
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

#: Seconds of scan after the end of the last event (lets the HRF of the last trial come back down).
TAIL_SECONDS = 10.0


def fixtures_root() -> Path:
    """Folder of the real-layout fixtures: ``tests/data/real-bids`` (``$M2I_FIXTURES`` overrides it)."""
    env = os.environ.get("M2I_FIXTURES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "data" / "real-bids"


def _entities(name: str) -> dict[str, str]:
    stem = name.split(".", 1)[0]
    parts = stem.split("_")
    out = {}
    for part in parts[:-1]:
        if "-" in part:
            key, value = part.split("-", 1)
            out[key] = value
    out["suffix"] = parts[-1]
    return out


def inherited_sidecar(bold_path: Path, bids_root: Path) -> dict:
    """Metadata of ``bold_path`` merged over the BIDS inheritance chain (deeper and more specific wins)."""
    target = _entities(bold_path.name)
    chain: list[tuple[int, int, Path]] = []
    folder = bold_path.parent
    folders = []
    while True:
        folders.append(folder)
        if folder == bids_root or folder == folder.parent:
            break
        folder = folder.parent
    for depth, folder in enumerate(reversed(folders)):
        for candidate in folder.glob("*_bold.json"):
            ents = _entities(candidate.name)
            if all(target.get(k) == v for k, v in ents.items()):
                chain.append((depth, len(ents), candidate))
    merged: dict = {}
    for _, _, path in sorted(chain):
        merged.update(json.loads(path.read_text()))
    return merged


def last_event_end(events_path: Path) -> float:
    """Largest ``onset + duration`` of the rows with numeric values (CRLF and ``n/a`` tolerated)."""
    text = events_path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    end = 0.0
    for row in csv.DictReader(text.splitlines(), delimiter="\t"):
        try:
            onset = float(row["onset"])
            duration = float(row.get("duration") or 0.0)
        except (TypeError, ValueError):
            continue
        if math.isfinite(onset) and math.isfinite(duration):
            end = max(end, onset + duration)
    return end


def synthetic_bold(n_volumes: int, shape=(8, 8, 4), seed: int = 0) -> np.ndarray:
    """A head-like ellipsoid (~1000) in a dim background, small noise; int16, shape (*shape, n_volumes)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grids) <= 0.8
    base = np.where(inside, 1000.0, 30.0)[..., None]
    noise = rng.normal(0.0, 1.0, size=(*shape, n_volumes)) * np.where(inside, 10.0, 3.0)[..., None]
    return np.round(base + noise).astype(np.int16)


def write_bold(path: Path, data: np.ndarray, tr: float, voxel_mm: float = 3.0) -> Path:
    import nibabel as nib

    from bids_m2i.utils.atomic import save_nifti

    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -voxel_mm * (np.array(data.shape[:3]) - 1) / 2.0
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms((voxel_mm, voxel_mm, voxel_mm, float(tr)))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return save_nifti(img, path)


def make_fixture_copy(
    name: str,
    dest: str | os.PathLike,
    n_volumes: int | None = None,
    shape: tuple[int, int, int] = (8, 8, 4),
    seed: int = 0,
    *,
    sessions: Iterable[str] | None = None,
) -> Path:
    """Copy fixture ``name`` into ``dest`` and write a synthetic BOLD series for every events file.

    Parameters
    ----------
    name : str
        Folder under :func:`fixtures_root` (``ds001246``, ``ds001506``, ``ds000117``, ``ds001499``).
    dest : path
        Destination folder (created; must not exist or be empty).
    n_volumes : int, optional
        Same length for every run; default: enough volumes to cover the last event + 10 s at the TR.
    shape : tuple of 3 ints
        Spatial grid of the synthetic series (3 mm voxels).
    seed : int
        Random seed; run k (in sorted path order) uses ``seed + k``.
    sessions : iterable of str, optional
        Keep only these session labels (without ``ses-``); other session folders are not copied.

    Returns
    -------
    Path
        ``dest``, a BIDS dataset whose BOLD files are tiny int16 NIfTI with ``pixdim[4]`` = TR.
    """
    source = fixtures_root() / name
    if not source.is_dir():
        raise FileNotFoundError(f"fixture {name!r} not found under {fixtures_root()} (set M2I_FIXTURES)")
    dest = Path(dest)
    keep = None if sessions is None else {s.removeprefix("ses-") for s in sessions}

    def ignore(folder: str, names: list[str]) -> list[str]:
        if keep is None:
            return []
        return [n for n in names if n.startswith("ses-") and n.removeprefix("ses-") not in keep]

    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    shutil.copytree(source, dest, ignore=ignore, dirs_exist_ok=True)
    for path in dest.rglob("*"):  # the shared originals may be read-only
        path.chmod(path.stat().st_mode | 0o200)

    events_files = sorted(p for p in dest.rglob("*_events.tsv") if p.parent.name == "func")
    for k, events in enumerate(events_files):
        bold = events.with_name(events.name.replace("_events.tsv", "_bold.nii.gz"))
        meta = inherited_sidecar(bold, dest)
        tr = float(meta.get("RepetitionTime", 0) or 0)
        if tr <= 0:
            raise ValueError(f"no RepetitionTime for {bold} in its sidecars")
        length = n_volumes or int(math.ceil((last_event_end(events) + TAIL_SECONDS) / tr))
        write_bold(bold, synthetic_bold(length, shape, seed + k), tr)
    return dest


def run_length_seconds(bold_path: str | os.PathLike) -> float:
    """Duration of a BOLD series (n_volumes x TR from the header)."""
    import nibabel as nib

    img = nib.load(str(bold_path))
    return img.shape[3] * float(img.header.get_zooms()[3])


__all__ = ["fixtures_root", "make_fixture_copy", "inherited_sidecar", "last_event_end", "synthetic_bold"]
