"""Brain model: a head-shaped volume, visual voxels with tuning, per-voxel HRFs, single-trial amplitudes.

Geometry is RAS (x left->right, y posterior->anterior, z inferior->superior) in mm, the grid centre at 0.
The head is an analytic object (scalp, skull, cortex with gyral folds, white matter, ventricles) that can be
evaluated at any point; it is averaged over each voxel's extent (the voxel point-spread function) and kept
on a 2x finer grid for the motion model (``motion.py``).

Responsive voxels:
- *early* (V1-like, at the occipital pole): a population receptive field (pRF: centre, size; retinotopic
  layout, size growing with eccentricity) pooling luminance, contrast energy (with a compressive exponent
  as Kay et al. 2013's CSS model) and colour opponency;
- *higher* (ventral occipito-temporal): linear-nonlinear tuning to image-level features (category, colour,
  size, position, clutter, background), weights that vary smoothly over cortex.
Each voxel has a stimulus-independent mean response ``base`` and a stimulus-specific part ``spread * z``
(``z`` standardised over the stimulus set). Imagery drives the same voxels with a smaller gain
(relatively larger in higher voxels), a per-trial vividness and more trial noise.

HRFs: a continuous double-gamma family, parameters drawn per voxel (smooth over space + voxel noise):
peak 4.5-7 s, peak dispersion, undershoot delay, dispersion and ratio. It is not the SPM/Glover canonical
nor any fixed library.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special, stats

from . import stimuli as stim_mod

FINE_DT = 0.1  # s: time grid of the neural and BOLD model
HRF_LENGTH = 32.0  # s


# ----------------------------------------------------------------------------------------------- geometry
@dataclass
class Geometry:
    shape: tuple[int, int, int]
    voxel_mm: float

    @property
    def affine(self) -> np.ndarray:
        """Voxel index -> RAS mm, grid centre at the origin."""
        affine = np.diag([self.voxel_mm] * 3 + [1.0])
        affine[:3, 3] = -self.voxel_mm * (np.asarray(self.shape) - 1) / 2
        return affine

    @property
    def fov_mm(self) -> np.ndarray:
        return np.asarray(self.shape) * self.voxel_mm

    def voxel_centres_mm(self) -> np.ndarray:
        """RAS mm of every voxel centre, shape ``(nx, ny, nz, 3)``."""
        grids = np.meshgrid(*[np.arange(n) for n in self.shape], indexing="ij")
        ijk = np.stack(grids, axis=-1).astype(float)
        return ijk * self.voxel_mm + self.affine[:3, 3]


class HeadModel:
    """An analytic head: intensities (arbitrary scanner units) at any RAS-mm point of the head's own frame."""

    def __init__(self, geometry: Geometry, rng: np.random.Generator, scale: float = 1.0):
        fov = geometry.fov_mm
        # the head fills most of the field of view (scaled with it; see docs/simulator.md); ``scale`` is the
        # participant's head (and brain) size relative to the preset's
        self.head_axes = np.array([0.40, 0.44, 0.40]) * fov * float(scale)
        self.centre = np.array([0.0, 0.0, 0.02 * fov[2]])
        self.brain_axes = 0.82 * self.head_axes  # scalp + skull + CSF take the outer 18 %
        self.edge_mm = 0.5 * geometry.voxel_mm  # width of tissue boundaries
        # gyral folding: random low-frequency 3-D waves modulating the grey-matter band
        self.fold_k = rng.normal(0, 1, (6, 3)) * (2 * np.pi / (8.0 * geometry.voxel_mm))
        self.fold_phase = rng.uniform(0, 2 * np.pi, 6)
        self.levels = {"scalp": 850.0, "skull": 120.0, "csf": 1500.0, "grey": 1150.0, "white": 880.0}

    def _radius(self, points, axes):
        return np.sqrt((((points - self.centre) / axes) ** 2).sum(-1))

    def intensity(self, points: np.ndarray) -> np.ndarray:
        """Intensity at ``points`` (..., 3) in mm (head frame)."""
        r_head = self._radius(points, self.head_axes)
        r_brain = self._radius(points, self.brain_axes)
        scale_head = float(self.head_axes.mean())
        scale_brain = float(self.brain_axes.mean())
        head = special.expit((1 - r_head) * scale_head / self.edge_mm)
        brain = special.expit((1 - r_brain) * scale_brain / self.edge_mm)
        scalp = special.expit((r_head - 0.92) * scale_head / self.edge_mm)  # outer shell of the head
        # cortical grey band: outer part of the brain, folded
        folds = np.zeros(points.shape[:-1])
        for k, phase in zip(self.fold_k, self.fold_phase):
            folds += np.cos(points @ k + phase)
        band = 0.80 + 0.06 * folds / np.sqrt(len(self.fold_k))
        grey = special.expit((r_brain - band) * scale_brain / self.edge_mm)
        # ventricles: two ellipsoids near the centre
        ventricle = np.zeros(points.shape[:-1])
        for side in (-1, 1):
            c = self.centre + np.array([side * 0.12, 0.05, 0.05]) * self.brain_axes
            r = np.sqrt((((points - c) / (np.array([0.08, 0.30, 0.12]) * self.brain_axes)) ** 2).sum(-1))
            ventricle = np.maximum(ventricle, special.expit((1 - r) * 8))
        tissue = self.levels["white"] + (self.levels["grey"] - self.levels["white"]) * grey
        tissue = tissue + (self.levels["csf"] - tissue) * ventricle
        outside_brain = self.levels["skull"] + (self.levels["scalp"] - self.levels["skull"]) * scalp
        return head * (brain * tissue + (1 - brain) * outside_brain)

    def brain_mask(self, geometry: Geometry) -> np.ndarray:
        """Voxels whose centre lies inside the brain, shape ``geometry.shape`` bool."""
        return self._radius(geometry.voxel_centres_mm(), self.brain_axes) < 0.97

    def psf_fine_grid(self, geometry: Geometry, chunk: int = 8) -> np.ndarray:
        """The head averaged over one voxel's extent, sampled on a 2x finer grid.

        Sample ``j`` of the fine grid is at voxel coordinate ``j / 2``; shape ``2 * shape - 1``. Each fine
        sample is the mean of 8 sub-points (a cell of half a voxel); a separable [1, 2, 1] / 4 filter then
        makes it the mean over a whole voxel (the acquisition's box point-spread function).
        """
        fine_shape = tuple(2 * n - 1 for n in geometry.shape)
        offsets = np.array([-0.125, 0.125])
        cells = np.zeros(fine_shape)
        origin = geometry.affine[:3, 3]
        for z0 in range(0, fine_shape[2], chunk):
            zs = np.arange(z0, min(z0 + chunk, fine_shape[2])) / 2.0
            xs, ys = np.arange(fine_shape[0]) / 2.0, np.arange(fine_shape[1]) / 2.0
            acc = np.zeros((fine_shape[0], fine_shape[1], len(zs)))
            for dx in offsets:
                for dy in offsets:
                    for dz in offsets:
                        grid = np.stack(np.meshgrid(xs + dx, ys + dy, zs + dz, indexing="ij"), axis=-1)
                        acc += self.intensity(grid * geometry.voxel_mm + origin)
            cells[:, :, z0:z0 + len(zs)] = acc / 8
        kernel = np.array([0.25, 0.5, 0.25])
        for axis in range(3):
            cells = ndimage.convolve1d(cells, kernel, axis=axis, mode="nearest")
        return cells


def smooth_field(rng: np.random.Generator, shape, sigma_vox: float, n: int = 1) -> np.ndarray:
    """``n`` Gaussian-smoothed random fields, each standardised to mean 0, sd 1; shape ``(n, *shape)``."""
    fields = np.empty((n, *shape))
    for k in range(n):
        field = ndimage.gaussian_filter(rng.normal(size=shape), sigma_vox, mode="wrap")
        fields[k] = (field - field.mean()) / (field.std() + 1e-12)
    return fields


# ------------------------------------------------------------------------------------------------ regions
def visual_regions(geometry: Geometry, head: HeadModel, brain: np.ndarray, n_early: int, n_higher: int):
    """Pick the early (occipital pole) and higher (ventral occipito-temporal) voxels.

    Returns ``roi`` (shape ``geometry.shape``, 0 none / 1 early / 2 higher) and the pole position (mm).
    """
    centres = geometry.voxel_centres_mm()
    axes = head.brain_axes
    pole = head.centre + np.array([0.0, -0.88, -0.05]) * axes
    roi = np.zeros(geometry.shape, dtype=np.uint8)
    inside = np.argwhere(brain)
    dist_pole = np.linalg.norm(centres[brain] - pole, axis=1)
    early = inside[np.argsort(dist_pole, kind="stable")[:n_early]]
    roi[tuple(early.T)] = 1
    per_side = [n_higher // 2, n_higher - n_higher // 2]
    for side, count in zip((-1, 1), per_side):
        point = head.centre + np.array([side * 0.50, -0.45, -0.45]) * axes
        candidates = np.argwhere(brain & (roi == 0))
        dist = np.linalg.norm(centres[tuple(candidates.T)] - point, axis=1)
        chosen = candidates[np.argsort(dist, kind="stable")[:count]]
        roi[tuple(chosen.T)] = 2
    return roi, pole


@dataclass
class VoxelModel:
    """Everything about the responsive voxels; arrays have one row per responsive voxel."""

    ijk: np.ndarray  # (n, 3) int
    role: np.ndarray  # (n,) str: early | higher
    prf_x: np.ndarray  # (n,) pRF centre, fraction of image width (0 = left); n/a (nan) for higher
    prf_y: np.ndarray  # (n,) fraction of image height (0 = top)
    prf_size: np.ndarray  # (n,) sd, fraction of image width
    weights: np.ndarray  # (n, n_weights): early [lum, contrast, red-green, blue-yellow, ...0]; higher: features
    base: np.ndarray  # (n,) % signal change: stimulus-independent mean perception response
    spread: np.ndarray  # (n,) % signal change: sd over stimuli of the stimulus-specific response
    imagery_gain: np.ndarray  # (n,) fraction of the perception response evoked by imagery
    trial_noise: np.ndarray  # (n,) % signal change: sd of trial-to-trial variability (perception)
    hrf: dict  # name -> (n,) arrays: peak, dispersion, undershoot_peak, undershoot_dispersion, undershoot_ratio


EARLY_WEIGHT_NAMES = ["luminance", "contrast", "red_green", "blue_yellow"]
HIGHER_FEATURE_NAMES = ([f"category_{s}" for s in stim_mod.SHAPES] + ["main_r", "main_g", "main_b", "main_size",
                        "main_x", "main_y", "n_objects", "bg_luminance", "main_textured", "bg_r", "bg_g", "bg_b"]
                        + [f"bg_{t}" for t in stim_mod.BACKGROUND_TEXTURES])


def build_voxel_model(rng: np.random.Generator, geometry: Geometry, roi: np.ndarray, pole: np.ndarray,
                      cfg: dict) -> VoxelModel:
    """Draw pRFs, tuning weights, response gains and HRFs of the responsive voxels."""
    ijk = np.argwhere(roi > 0)
    roles = np.where(roi[tuple(ijk.T)] == 1, "early", "higher")
    n = len(ijk)
    centres = geometry.voxel_centres_mm()[tuple(ijk.T)]
    early = roles == "early"

    # retinotopy: hemisphere -> contralateral hemifield, above/below the calcarine -> lower/upper field,
    # distance from the pole -> eccentricity (fovea at the pole)
    offset = centres - pole
    distance = np.linalg.norm(offset, axis=1)
    max_distance = max(distance[early].max() if early.any() else 1.0, 1e-6)
    ecc = 0.03 + 0.42 * distance / max_distance + rng.normal(0, 0.02, n)
    angle = np.arctan2(offset[:, 2], np.abs(offset[:, 0]) + 0.5 * geometry.voxel_mm) + rng.normal(0, 0.15, n)
    side = np.where(offset[:, 0] < 0, 1.0, -1.0)  # left hemisphere sees the right visual field
    prf_x = np.clip(0.5 + side * ecc * np.cos(angle), 0.02, 0.98)
    prf_y = np.clip(0.5 + ecc * np.sin(angle), 0.02, 0.98)
    prf_size = np.clip(0.04 + 0.22 * ecc + rng.normal(0, 0.01, n), 0.03, None)
    prf_x[~early] = np.nan
    prf_y[~early] = np.nan
    prf_size[~early] = np.nan

    # tuning weights vary smoothly over cortex (neighbouring voxels are alike) plus voxel noise
    n_features = len(HIGHER_FEATURE_NAMES)
    fields = smooth_field(rng, geometry.shape, sigma_vox=1.5, n=n_features)[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]].T
    weights = np.zeros((n, n_features))
    weights[~early] = 0.7 * fields[~early] + 0.5 * rng.normal(size=((~early).sum(), n_features))
    early_w = np.column_stack([
        rng.normal(0.8, 0.4, n),  # luminance
        np.abs(rng.normal(1.0, 0.3, n)),  # contrast energy
        rng.normal(0.0, 0.7, n) + 0.3 * fields[:, 0],  # red-green opponency
        rng.normal(0.0, 0.6, n) + 0.3 * fields[:, 1],  # blue-yellow opponency
    ])
    weights[early, : len(EARLY_WEIGHT_NAMES)] = early_w[early]

    base = np.exp(rng.normal(np.log(cfg["response_base"]), 0.35, n))
    spread = base * np.clip(rng.normal(cfg["response_spread"], 0.08, n), 0.1, None)
    base[~early] *= 0.7  # higher areas: weaker mean drive, relatively more selective
    imagery_gain = np.where(early, cfg["imagery_gain_early"], cfg["imagery_gain_higher"]) * np.exp(
        rng.normal(0, 0.25, n))
    trial_noise = spread * cfg["trial_noise_ratio"] * np.exp(rng.normal(0, 0.2, n))
    return VoxelModel(ijk=ijk, role=roles, prf_x=prf_x, prf_y=prf_y, prf_size=prf_size, weights=weights,
                      base=base, spread=spread, imagery_gain=imagery_gain, trial_noise=trial_noise,
                      hrf=draw_hrf_params(rng, geometry, ijk))


# ---------------------------------------------------------------------------------------------- HRF family
def draw_hrf_params(rng: np.random.Generator, geometry: Geometry, ijk: np.ndarray) -> dict:
    """Per-voxel double-gamma parameters: half smooth over space, half voxel-specific, mapped to ranges."""
    fields = smooth_field(rng, geometry.shape, sigma_vox=2.0, n=5)[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    mixed = (fields + rng.normal(size=fields.shape)) / np.sqrt(2)
    u = stats.norm.cdf(mixed)  # uniform(0, 1) marginals

    def span(k, low, high):
        return low + (high - low) * u[k]

    peak = span(0, 4.5, 7.0)
    return {
        "peak": peak,  # s, time of the maximum of the positive gamma
        "dispersion": span(1, 0.7, 1.2),  # s, gamma scale of the positive lobe
        "undershoot_peak": peak + span(2, 6.0, 11.0),  # s
        "undershoot_dispersion": span(3, 0.8, 1.4),  # s
        "undershoot_ratio": span(4, 0.08, 0.40),
    }


def hrf_kernels(hrf: dict, dt: float = FINE_DT, length: float = HRF_LENGTH) -> np.ndarray:
    """Sample the HRFs on a ``dt`` grid, shape ``(n_voxels, length / dt)``, each with peak value 1."""
    t = np.arange(0, length, dt)[None, :]

    def gamma_pdf(mode, scale):
        shape = mode[:, None] / scale[:, None] + 1  # mode of a gamma = (shape - 1) * scale
        return stats.gamma.pdf(t, shape, scale=scale[:, None])

    kernel = gamma_pdf(hrf["peak"], hrf["dispersion"]) - hrf["undershoot_ratio"][:, None] * gamma_pdf(
        hrf["undershoot_peak"], hrf["undershoot_dispersion"])
    return kernel / kernel.max(axis=1, keepdims=True)


def boxcar_peak(kernels: np.ndarray, duration: float, dt: float = FINE_DT) -> np.ndarray:
    """Peak of each kernel convolved with a boxcar of ``duration`` s (times dt), shape ``(n_voxels,)``."""
    width = max(int(round(duration / dt)), 1)
    cumulative = np.cumsum(kernels, axis=1)
    shifted = np.concatenate([np.zeros((len(kernels), width)), cumulative[:, :-width]], axis=1)
    return (cumulative - shifted).max(axis=1) * dt


# ------------------------------------------------------------------------------------------- stimulus drive
def early_features(image: np.ndarray, resolution: int) -> np.ndarray:
    """Local feature maps of an image for the pRF model, shape ``(4, resolution, resolution)``.

    Luminance (centred), contrast energy (local sd of luminance), red-green and blue-yellow opponency.
    """
    rgb = image.astype(float) / 255.0
    factor = rgb.shape[0] // resolution
    if factor > 1:
        rgb = rgb[: factor * resolution, : factor * resolution].reshape(resolution, factor, resolution, factor, 3)
        rgb = rgb.mean(axis=(1, 3))
    lum = rgb @ np.array([0.299, 0.587, 0.114])
    local_mean = ndimage.gaussian_filter(lum, 1.0)
    contrast = np.sqrt(ndimage.gaussian_filter((lum - local_mean) ** 2, 1.0))
    red_green = rgb[..., 0] - rgb[..., 1]
    blue_yellow = rgb[..., 2] - 0.5 * (rgb[..., 0] + rgb[..., 1])
    return np.stack([lum - 0.5, contrast, red_green, blue_yellow])


def prf_matrix(model: VoxelModel, resolution: int) -> np.ndarray:
    """Gaussian pRF weights of early voxels over the feature grid, shape ``(n_early, resolution**2)``."""
    early = model.role == "early"
    coords = (np.arange(resolution) + 0.5) / resolution
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    dx = xx.ravel()[None, :] - model.prf_x[early, None]
    dy = yy.ravel()[None, :] - model.prf_y[early, None]
    weights = np.exp(-(dx ** 2 + dy ** 2) / (2 * model.prf_size[early, None] ** 2))
    return weights / weights.sum(axis=1, keepdims=True)


def stimulus_drive(model: VoxelModel, images: np.ndarray, features: np.ndarray, resolution: int) -> np.ndarray:
    """Raw (unstandardised) drive of each voxel by each image, shape ``(n_images, n_voxels)``.

    images : (n_images, S, S, 3) uint8; features : (n_images, n_features) image-level features.
    """
    early = model.role == "early"
    drive = np.zeros((len(images), len(model.role)))
    if early.any():
        maps = np.stack([early_features(img, resolution) for img in images])  # (n_img, 4, R, R)
        pooled = np.einsum("vp,ncp->ncv", prf_matrix(model, resolution), maps.reshape(len(images), 4, -1))
        w = model.weights[early]
        # compressive spatial summation on the contrast-energy channel (Kay et al. 2013)
        drive[:, early] = (w[:, 0] * pooled[:, 0] + w[:, 1] * np.sqrt(np.maximum(pooled[:, 1], 0))
                           + w[:, 2] * pooled[:, 2] + w[:, 3] * pooled[:, 3])
    if (~early).any():
        centred = (features - features.mean(0)) / (features.std(0) + 1e-9)
        linear = centred @ model.weights[~early].T / np.sqrt(features.shape[1])
        drive[:, ~early] = np.logaddexp(0, 2.0 * linear)  # softplus: selective, non-negative
    return drive


def standardise_drive(drive: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """z-score each voxel's drive with the mean/sd of ``reference`` rows (the stimulus set)."""
    mean, sd = reference.mean(0), reference.std(0) + 1e-12
    return (drive - mean) / sd


def stimulus_features_for(params_list) -> np.ndarray:
    return np.stack([stim_mod.image_level_features(p) for p in params_list])


# -------------------------------------------------------------------------------------------- amplitudes
def event_drives(rng: np.random.Generator, model: VoxelModel, events, z_by_name: dict, z_text_cue: np.ndarray,
                 cfg: dict) -> np.ndarray:
    """Neural drive per event and voxel (% signal change of a 3-s event's peak), shape ``(n_events, n_vox)``.

    Perception: ``gain_trial * (base + spread * z(stim)) + noise``. Cue (image flash / text): the perceptual
    response to what is on screen. Imagery: ``vividness * imagery_gain * (base + spread * z(target))`` plus
    trial noise (``imagery_noise_factor`` times the perception trial noise: relative to its smaller signal, noisier).
    """
    n_vox = len(model.role)
    drives = np.zeros((len(events), n_vox))
    for row_index, row in enumerate(events.itertuples(index=False)):
        if row.trial_type == "cue" and row.cue == "text":
            z = z_text_cue
        else:
            z = z_by_name[row.stimulus]
        attention = 1 + rng.normal(0, cfg["trial_gain_sd"])  # shared across voxels: arousal, attention
        perceptual = model.base + model.spread * z
        if row.trial_type == "imagery":
            vividness = np.exp(rng.normal(0, 0.3))
            noise = rng.normal(size=n_vox) * model.trial_noise * cfg["imagery_noise_factor"]
            drives[row_index] = vividness * attention * model.imagery_gain * perceptual + noise
        else:
            drives[row_index] = attention * perceptual + rng.normal(size=n_vox) * model.trial_noise
    return drives


def bold_timecourses(kernels: np.ndarray, drives: np.ndarray, events, n_fine: int) -> np.ndarray:
    """Noise-free BOLD (% signal change) on the fine grid, shape ``(n_voxels, n_fine)``.

    Each event's response is ``drive * (hrf * boxcar)(t - onset) / peak(hrf * boxcar_3s)``.
    """
    n_vox = kernels.shape[0]
    boxcars = np.zeros((len(events), n_fine))
    for k, (onset, duration) in enumerate(zip(events["onset"], events["duration"])):
        start = int(round(onset / FINE_DT))
        stop = min(start + max(int(round(duration / FINE_DT)), 1), n_fine)
        boxcars[k, start:stop] = 1.0
    neural = drives.T @ boxcars  # (n_vox, n_fine)
    size = n_fine + kernels.shape[1]
    n_fft = 1 << int(np.ceil(np.log2(size)))
    spectrum = np.fft.rfft(neural, n_fft, axis=1) * np.fft.rfft(kernels, n_fft, axis=1)
    bold = np.fft.irfft(spectrum, n_fft, axis=1)[:, :n_fine] * FINE_DT
    reference_peak = boxcar_peak(kernels, 3.0)
    return bold / reference_peak[:, None] if n_vox else bold


def true_amplitudes(kernels: np.ndarray, drives: np.ndarray, durations) -> np.ndarray:
    """Peak % signal change of each event's response, shape ``(n_events, n_voxels)``."""
    reference = boxcar_peak(kernels, 3.0)
    amplitudes = np.empty_like(drives)
    peaks = {d: boxcar_peak(kernels, d) / reference for d in sorted(set(float(x) for x in durations))}
    for k, duration in enumerate(durations):
        amplitudes[k] = drives[k] * peaks[float(duration)]
    return amplitudes
