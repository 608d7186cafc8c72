"""A participant scanned in several sessions, with the truth defined in head coordinates (QA pass 29).

Builds on the real ds001506 layout (its events and sidecars: 8 s image blocks, TR 2 s) a synthetic head whose
anatomy and single-trial responses are smooth functions of *head* millimetres. Each session places the head in
the scanner with its own rigid pose and samples it on its own grid (voxel size, field of view, slice count,
oblique affine, TR, gain, int16 scale factors), slice by slice at its own ``SliceTiming``, with a little motion
within the run. Because the truth is a function of position in the head, the true response of every trial at
every voxel of the participant grid (session 1's head = session 1's scanner world) is known, whatever grid and
pose the session had: betas are scored by their correlation with it, per voxel across trials.

Used by ``tests/test_qa_sessions.py``; :func:`build_session` and :func:`score_session` are the pieces.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from fixture_datasets import last_event_end, make_fixture_copy

DATASET = "ds001506"
SESSIONS = ("perceptionNaturalImageTraining01", "perceptionNaturalImageTraining02")
HEAD_RADII = np.array([30.0, 34.0, 22.0])   # mm: a small head that fits 24 x 24 x 16 voxels of 3 mm
N_BLOBS = 160                                 # response patterns: trial weights on smooth blobs
BLOB_SIGMA = 5.0                              # mm: finer than the moves tested, coarser than a voxel
TRIAL_CODES = ("1", "2")                      # ds001506 perception: 1 = image (trial), 2 = repeat (nuisance)
IMAGERY_CODES = ("2", "1", "3")               # ds001506 imagery: 2 = imagery (trial), 1 = cue, 3 = evaluation


def codes_of(session: str) -> tuple:
    """Event codes with a response, the trial code first (imagery sessions code them otherwise)."""
    return IMAGERY_CODES if "imagery" in session else TRIAL_CODES


def rotation(degrees_xyz) -> np.ndarray:
    rx, ry, rz = np.deg2rad(degrees_xyz)
    x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return z @ y @ x


def rigid(degrees_xyz=(0, 0, 0), shift_mm=(0, 0, 0)) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation(degrees_xyz)
    out[:3, 3] = shift_mm
    return out


def grid_affine(zooms, shape, degrees_xyz=(0, 0, 0), centre_mm=(0, 0, 0)) -> np.ndarray:
    """Voxel -> scanner mm, the grid centred on ``centre_mm`` and rotated (oblique) by ``degrees_xyz``."""
    affine = np.eye(4)
    affine[:3, :3] = rotation(degrees_xyz) @ np.diag(zooms)
    affine[:3, 3] = np.asarray(centre_mm) - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return affine


@dataclass
class Head:
    """Anatomy and response patterns as functions of head millimetres."""
    seed: int = 0
    anatomy_centres: np.ndarray = field(init=False)
    anatomy_weights: np.ndarray = field(init=False)
    blob_centres: np.ndarray = field(init=False)

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        inside = lambda n: rng.uniform(-0.75, 0.75, (n, 3)) * HEAD_RADII  # noqa: E731
        self.anatomy_centres = inside(12)
        self.anatomy_weights = rng.uniform(-0.35, 0.35, 12)  # asymmetric texture: registration has a unique answer
        self.blob_centres = inside(N_BLOBS)

    def head_fraction(self, xyz: np.ndarray) -> np.ndarray:
        """1 inside the head, 0 outside, a 2 mm soft edge."""
        r = np.sqrt(((xyz / HEAD_RADII) ** 2).sum(-1))
        return 1.0 / (1.0 + np.exp((r - 1.0) * HEAD_RADII.min() / 2.0))

    def intensity(self, xyz: np.ndarray) -> np.ndarray:
        d2 = squared_distances(xyz, self.anatomy_centres)
        texture = 1.0 + (np.exp(-d2 / (2 * 8.0 ** 2)) * self.anatomy_weights).sum(-1)
        return 30.0 + 970.0 * self.head_fraction(xyz) * texture

    def blobs(self, xyz: np.ndarray) -> np.ndarray:
        """(n_points, N_BLOBS) basis of the response patterns."""
        return np.exp(-squared_distances(xyz, self.blob_centres) / (2 * BLOB_SIGMA ** 2))


def squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.maximum((points ** 2).sum(1)[:, None] + (centres ** 2).sum(1)[None] - 2 * points @ centres.T, 0.0)


def amplitudes(weights: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """% signal change of each event (rows of ``weights``) at each point (rows of ``basis``)."""
    return 1.0 + 1.5 * weights @ basis.T


@dataclass
class SessionSpec:
    """How one session saw the head. ``pose``: scanner mm -> head mm (session 1: identity)."""
    label: str
    pose: np.ndarray = field(default_factory=lambda: np.eye(4))
    zooms: tuple = (3.0, 3.0, 3.0)
    shape: tuple = (24, 24, 16)
    oblique_deg: tuple = (0.0, 0.0, 0.0)
    fov_centre: tuple = (0.0, 0.0, 0.0)
    tr: float = 2.0
    gain: float = 1.0
    int16: bool = False
    motion_mm: float = 0.2          # within-run motion amplitude (mm and degrees, slow sinusoids)
    runs: tuple = (1,)
    n_volumes: dict = field(default_factory=dict)  # run -> volumes (default: last event + 10 s)


def events_of(bids: Path, session: str, run: int) -> tuple[Path, pd.DataFrame]:
    bold = next(bids.glob(f"sub-01/ses-{session}/func/*_run-{run:02d}_bold.nii.gz"))
    events = pd.read_csv(str(bold).replace("_bold.nii.gz", "_events.tsv"), sep="\t", dtype={"event_type": str})
    return bold, events


def slice_times(n_slices: int, tr: float) -> list[float]:
    """Interleaved ascending slice times (odd slices first), as many scanners do."""
    order = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    times = np.empty(n_slices)
    times[order] = np.arange(n_slices) * tr / n_slices
    return [round(float(t), 4) for t in times]


def build_session(bids: Path, head: Head, spec: SessionSpec, weights: dict, seed: int = 0) -> None:
    """Overwrite the session's runs ``spec.runs`` with the head sampled as ``spec`` says.

    ``weights[(session, run)]``: (n_events, N_BLOBS) trial weights of the run's events whose ``event_type`` is in
    :func:`codes_of` (created here when absent, drawn from ``seed``).
    """
    from nilearn.glm.first_level import compute_regressor

    rng = np.random.default_rng(seed)
    affine = grid_affine(spec.zooms, spec.shape, spec.oblique_deg, spec.fov_centre)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in spec.shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    times_of_slice = np.array(slice_times(spec.shape[2], spec.tr))
    for run in spec.runs:
        bold, events = events_of(bids, spec.label, run)
        keep = events[events["event_type"].isin(codes_of(spec.label))].reset_index(drop=True)
        w = weights.setdefault((spec.label, run), rng.standard_normal((len(keep), N_BLOBS)))
        if "imagery" in spec.label:
            # the app models cues and evaluations with one regressor per type (26 of each a run): one response
            # pattern per type, so that the truth is one the model can hold
            for code in codes_of(spec.label)[1:]:
                rows = np.flatnonzero((keep["event_type"] == code).to_numpy())
                w[rows] = w[rows[:1]]
        n_volumes = spec.n_volumes.get(run) or int(math.ceil((last_event_end(bold.with_name(
            bold.name.replace("_bold.nii.gz", "_events.tsv"))) + 10.0) / spec.tr))
        # every slice at its own time: the slice times are multiples of TR / n_slices, so regressors on that
        # regular grid of times, then picked per (volume, slice)
        step = spec.tr / spec.shape[2]
        fine = np.arange(n_volumes * spec.shape[2]) * step
        regressors = np.column_stack([compute_regressor([[o], [d], [1.0]], "glover", fine, oversampling=2)[0][:, 0]
                                      for o, d in zip(keep["onset"], keep["duration"])])
        index = np.arange(n_volumes)[:, None] * spec.shape[2] + np.round(times_of_slice / step).astype(int)[None]
        regressors = regressors[index]  # (volumes, slices, events)
        phase = rng.uniform(0, 2 * np.pi, 6)
        data = np.empty((len(world), n_volumes), dtype=np.float32)
        slice_of_voxel = ijk[:, 2]
        for n in range(n_volumes):
            wobble = spec.motion_mm * np.sin(2 * np.pi * n / n_volumes + phase)
            pose = spec.pose @ rigid(wobble[:3], wobble[3:])
            xyz = world @ pose[:3, :3].T + pose[:3, 3]
            base = head.intensity(xyz)
            percent = regressors[n][slice_of_voxel] * amplitudes(w, head.blobs(xyz)).T  # (voxels, events)
            data[:, n] = spec.gain * base * (1 + head.head_fraction(xyz) * percent.sum(1) / 100.0)
        data = data.reshape(*spec.shape, n_volumes)
        data += rng.normal(0, 1.0 * spec.gain, data.shape).astype(np.float32)
        img = nib.Nifti1Image(data, affine)
        if spec.int16:
            img.set_data_dtype(np.int16)  # nibabel picks scl_slope/scl_inter
        img.header.set_zooms(tuple(spec.zooms) + (spec.tr,))
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_qform(affine, 1)
        img.header.set_sform(affine, 1)
        nib.save(img, bold)
        sidecar = bold.with_name(bold.name.replace(".nii.gz", ".json"))
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        meta.update(RepetitionTime=spec.tr, SliceTiming=slice_times(spec.shape[2], spec.tr))
        meta.pop("MultibandAccelerationFactor", None)
        sidecar.write_text(json.dumps(meta))


def make_dataset(tmp: Path, specs: list[SessionSpec], seed: int = 0):
    """ds001506 with ``specs``' sessions built; returns (bids, head, weights)."""
    bids = make_fixture_copy(DATASET, tmp / "bids", sessions=[s.label for s in specs], shape=(4, 4, 4))
    head, weights = Head(seed), {}
    for k, spec in enumerate(specs):
        build_session(bids, head, spec, weights, seed=seed + 100 * (k + 1))
    return bids, head, weights


def statseries_of(out: Path, session: str) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    path = next(out.rglob(f"sub-01_ses-{session}_task-*_stat-effect_desc-*_statseries.nii.gz"))
    rows = pd.read_csv(str(path).replace("_stat-effect", "").replace("_statseries.nii.gz", "_events.tsv"), sep="\t")
    img = nib.load(path)
    return np.asarray(img.dataobj, dtype=np.float32), rows, img.affine


def score_session(out: Path, bids: Path, head: Head, weights: dict, session: str, inner: float = 0.8,
                  reference_pose: np.ndarray | None = None) -> dict:
    """Betas of ``session`` against the truth at the participant grid's voxels (head mm = session 1 mm).

    Returns r (mean over voxels of the correlation across trials), slope (median over voxels of the regression
    slope of betas on the true % signal: units), n_voxels scored and n_trials. Voxels scored: the brain mask
    within ``inner`` of the head's radii (edges of a resampled head mix it with air)."""
    betas, rows, affine = statseries_of(out, session)
    masks = list(out.rglob("sub-01_desc-brain_mask.nii.gz"))
    # fMRIPrep inputs: no mask of ours; the voxels that have betas
    mask = np.asarray(nib.load(masks[0]).dataobj) > 0 if masks else np.any(betas != 0, axis=3)
    ijk = np.argwhere(mask)
    # head mm of the participant grid's voxels: its world is the scanner's of the run that defines it (the
    # app's first run; ``reference_pose`` is that session's pose, identity for session 1)
    pose = np.eye(4) if reference_pose is None else reference_pose
    xyz = ijk @ (pose[:3, :3] @ affine[:3, :3]).T + pose[:3, :3] @ affine[:3, 3] + pose[:3, 3]
    inside = np.sqrt(((xyz / HEAD_RADII) ** 2).sum(-1)) < inner
    ijk, xyz = ijk[inside], xyz[inside]
    basis = head.blobs(xyz)
    truth = []
    for _, row in rows.iterrows():
        _, events = events_of(bids, session, int(row["run"]))
        keep = events[events["event_type"].isin(codes_of(session))].reset_index(drop=True)
        k = int(np.argmin(np.abs(keep["onset"].to_numpy() - float(row["onset"]))))
        truth.append(amplitudes(weights[(session, int(row["run"]))][k:k + 1], basis)[0])
    truth = np.array(truth)                               # trials x voxels
    measured = betas[tuple(ijk.T)].T                      # trials x voxels
    r, slope, varied = against_truth(measured, truth)
    aligned = oracle_betas(out, bids, session, ijk)
    r_aligned = against_truth(aligned, truth)[0] if aligned is not None else np.array([np.nan])
    return {"r": float(np.nanmean(r)), "slope": float(np.nanmedian(slope)), "n_voxels": int(varied.sum()),
            "n_trials": int(len(rows)), "mean_beta": float(np.median(measured.mean(0))),
            "mean_truth": float(np.median(truth.mean(0))), "r_preproc": float(np.nanmean(r_aligned))}


def against_truth(measured: np.ndarray, truth: np.ndarray):
    """Per-voxel correlation across trials and regression slope on the truth, for the voxels whose true response
    varies across trials (between blobs it hardly does)."""
    t = truth - truth.mean(0)
    m = measured - measured.mean(0)
    r = (t * m).sum(0) / np.sqrt((t ** 2).sum(0) * (m ** 2).sum(0) + 1e-12)
    slope = (t * m).sum(0) / (t ** 2).sum(0)
    varied = t.std(0) > 0.3
    return r[varied], slope[varied], varied


def oracle_betas(out: Path, bids: Path, session: str, ijk: np.ndarray) -> np.ndarray | None:
    """Trial betas (% of the run mean) fitted to the app's preprocessed BOLD of ``session`` with the model that
    made the data (every event its own regressor, the synthesis' HRF, a linear trend): scores the preprocessing,
    i.e. whether the session's voxels landed on the participant grid's, apart from the GLM."""
    from nilearn.glm.first_level import compute_regressor

    pieces = []
    for path in sorted(out.rglob(f"sub-01_ses-{session}_task-*_run-*_desc-preproc_bold.nii.gz")):
        run = int(path.name.split("_run-")[1].split("_")[0])
        img = nib.load(path)
        tr = float(img.header.get_zooms()[3])
        data = np.asarray(img.dataobj, dtype=np.float64)[tuple(ijk.T)].T  # volumes x voxels
        raw = next(bids.glob(f"sub-01/ses-{session}/func/*_run-{run:02d}_bold.json"))
        frame_times = float(np.median(json.loads(raw.read_text())["SliceTiming"])) + tr * np.arange(len(data))
        _, events = events_of(bids, session, run)
        keep = events[events["event_type"].isin(codes_of(session))]
        keep = keep[keep["onset"] < tr * len(data)].reset_index(drop=True)  # the app drops those, saying so
        design = np.column_stack([compute_regressor([[o], [d], [1.0]], "glover", frame_times)[0][:, 0]
                                  for o, d in zip(keep["onset"], keep["duration"])]
                                 + [np.ones(len(data)), np.linspace(-1, 1, len(data))])
        betas = np.linalg.lstsq(design, data, rcond=None)[0][:len(keep)]
        pieces.append(100 * betas[(keep["event_type"] == codes_of(session)[0]).to_numpy()] / data.mean(0).clip(1e-6))
    return np.concatenate(pieces) if pieces else None


T1W_ZOOMS, T1W_SHAPE = (2.5, 2.5, 3.0), (28, 30, 16)


def build_fmriprep(tmp: Path, bids: Path, head: Head, specs: list[SessionSpec], weights: dict, seed: int = 0) -> Path:
    """An fMRIPrep 24 tree of ``specs``' sessions: every run's ``space-T1w`` BOLD on ONE oblique T1w grid (head
    mm = T1w mm, as fMRIPrep leaves it), slice-time corrected to the middle slice time (``StartTime``), in the
    session's gain, with its own confounds table; the raw runs of :func:`build_session` stay as they are (the
    app checks their length and TR against these)."""
    from nilearn.glm.first_level import compute_regressor

    fmriprep = tmp / "fmriprep"
    (fmriprep).mkdir(parents=True)
    (fmriprep / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "24.1.1"}]}))
    affine = grid_affine(T1W_ZOOMS, T1W_SHAPE, (10, 0, 0))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in T1W_SHAPE], indexing="ij"), -1).reshape(-1, 3)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    base, basis, inside = head.intensity(xyz), head.blobs(xyz), head.head_fraction(xyz)
    rng = np.random.default_rng(seed)
    for spec in specs:
        for run in spec.runs:
            bold, events = events_of(bids, spec.label, run)
            n_volumes = nib.load(bold).shape[3]
            keep = events[events["event_type"].isin(codes_of(spec.label))].reset_index(drop=True)
            start = float(np.median(slice_times(spec.shape[2], spec.tr)))
            frame_times = start + spec.tr * np.arange(n_volumes)
            regressors = np.column_stack([compute_regressor([[o], [d], [1.0]], "glover", frame_times)[0][:, 0]
                                          for o, d in zip(keep["onset"], keep["duration"])])
            percent = regressors @ amplitudes(weights[(spec.label, run)], basis)  # volumes x voxels
            data = spec.gain * base[None] * (1 + inside[None] * percent / 100.0)
            data = (data + rng.normal(0, spec.gain, data.shape)).T.reshape(*T1W_SHAPE, n_volumes)
            func = fmriprep / bold.parent.relative_to(bids)
            func.mkdir(parents=True, exist_ok=True)
            stem = bold.name.replace("_bold.nii.gz", "").replace(f"_run-{run:02d}", f"_run-{run}")
            img = nib.Nifti1Image(data.astype(np.float32), affine)
            img.set_data_dtype(np.int16)
            img.header.set_zooms(T1W_ZOOMS + (spec.tr,))
            img.header.set_xyzt_units("mm", "sec")
            img.header.set_qform(affine, 1)
            img.header.set_sform(affine, 4)
            nib.save(img, func / f"{stem}_space-T1w_desc-preproc_bold.nii.gz")
            (func / f"{stem}_space-T1w_desc-preproc_bold.json").write_text(json.dumps({
                "RepetitionTime": spec.tr, "SkullStripped": False, "TaskName": "perception",
                "SliceTimingCorrected": True, "StartTime": start}))
            nib.save(nib.Nifti1Image((inside > 0.5).reshape(T1W_SHAPE).astype(np.uint8), affine),
                     func / f"{stem}_space-T1w_desc-brain_mask.nii.gz")
            columns = {name: rng.normal(0, 0.05, n_volumes) for name in (
                "global_signal", "csf", "white_matter", "trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")}
            for name in ("dvars", "std_dvars", "framewise_displacement"):
                columns[name] = np.r_[np.nan, np.abs(rng.normal(0, 0.05, n_volumes - 1))]
            for k in range(6):
                columns[f"a_comp_cor_{k:02d}"] = rng.normal(0, 0.05, n_volumes)
            pd.DataFrame(columns).to_csv(func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False,
                                         na_rep="n/a")
    return fmriprep


def cases() -> dict:
    """The session cases of QA pass 29 (session 1 as built, session 2 as named); figures in test_qa_sessions.py."""
    s1, s2 = SESSIONS
    moved = rigid((6, -4, 5), (6, -5, 4))
    return {
        "same": [SessionSpec(s1), SessionSpec(s2)],
        "moved": [SessionSpec(s1), SessionSpec(s2, pose=moved)],
        "moved_big": [SessionSpec(s1), SessionSpec(s2, pose=rigid((8, 5, -6), (-8, 6, 5)))],
        "grid": [SessionSpec(s1), SessionSpec(s2, zooms=(2.5, 2.5, 2.5), shape=(30, 30, 22), oblique_deg=(14, 0, 0),
                                              fov_centre=(0, 4, 3))],
        "slab": [SessionSpec(s1), SessionSpec(s2, zooms=(2.5, 2.5, 3.5), shape=(30, 30, 10), fov_centre=(0, 0, 2))],
        "tr": [SessionSpec(s1), SessionSpec(s2, tr=1.5)],
        "gain": [SessionSpec(s1), SessionSpec(s2, gain=1.7, int16=True)],
        "short": [SessionSpec(s1), SessionSpec(s2, n_volumes={1: 150})],
        "all": [SessionSpec(s1), SessionSpec(s2, pose=moved, zooms=(2.5, 2.5, 2.5), shape=(30, 30, 22),
                                             oblique_deg=(14, 0, 0), tr=1.5, gain=1.7, int16=True)],
        "imagery_moved": [SessionSpec(s1), SessionSpec("imagery01", pose=moved)],
    }


if __name__ == "__main__":
    # python tests/qa_sessions.py CASE [METHOD] [FOLDER]: build, run the app (--stop-after glm), print the scores
    import sys

    from bids_m2i.cli.run import run_cli

    name, method = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "fithrf")
    folder = Path(sys.argv[3] if len(sys.argv) > 3 else f"/tmp/qa_sessions/{name}-{method}")
    specs = cases()[name]
    bids, head, weights = make_dataset(folder, specs)
    (folder / "filters.json").write_text(json.dumps({"bold": {"run": [1]}}))
    code = run_cli([str(bids), str(folder / "out"), "participant", "--skip-bids-validation", "--stop-after", "glm",
                    "--glm", method, "-w", str(folder / "work"), "--bids-filter-file", str(folder / "filters.json"),
                    "--nprocs", "1"])
    # the participant grid is the first run's in session-label order
    reference = min(specs, key=lambda spec: spec.label).pose
    for spec in specs:
        print(name, method, spec.label, code, score_session(folder / "out", bids, head, weights, spec.label,
                                                            reference_pose=reference))
