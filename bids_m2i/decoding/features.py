"""Stimulus features: the targets the decoder predicts from betas.

Spaces
------
``pixels``
    The stimulus centre-cropped to a square and box-downsampled to ``size x size`` RGB in [0, 1]
    (no weights). Optionally projected on a PCA basis learned from the *training* stimuli only
    (:class:`PixelBasis`); :func:`pixels_to_image` inverts the transform.
``clip``
    open_clip image embeddings, **un-normalised** (for ViT-H-14: 1024-d, the conditioning space of
    Stable Diffusion 2.1 unCLIP-H), from a local folder ``MODELS/open_clip/<arch>/`` holding
    ``open_clip_config.json`` + ``open_clip_model.safetensors``. Nothing is downloaded.

Features of each stimulus file are cached in ``<work>/features/<space>-<fingerprint>/<content-sha256>.npy``:
the fingerprint hashes the extractor's model and parameters, the file name hashes the image bytes, so a
renamed stimulus hits the cache and an edited one does not.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import BadDataError, InputMissingError, UsageError
from ..models.store import sha256_of
from ..utils.atomic import save_npy

LOG = logging.getLogger("m2i.decoding")


# ----------------------------------------------------------------------------------------------------------
# images


def load_image(path) -> "Image.Image":  # noqa: F821
    """Read an image file as RGB (PIL), at most :data:`~bids_m2i.utils.images.MAX_STIMULUS_SIDE` px on its
    shorter side (16-bit PNGs scaled, not clipped to white; transparency on gray)."""
    from PIL import UnidentifiedImageError

    from ..utils.images import read_stimulus

    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"Stimulus image not found: {path}", path=path,
                                hint="check the stim_file column and BIDS_DIR/stimuli/")
    try:
        return read_stimulus(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise BadDataError(f"Cannot read stimulus image {path}: {exc}", path=path,
                           hint="replace the file with a readable PNG/JPEG") from exc


def center_square(image):
    """Centre crop a PIL image to a square (stimuli are shown square in NSD-like designs)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


# ----------------------------------------------------------------------------------------------------------
# pixels


def pixel_vector(image, size: int = 64) -> np.ndarray:
    """Image -> float32 vector (size*size*3,) in [0, 1], row-major (H, W, RGB).

    Box filtering averages each output pixel's footprint: the right low-pass for a pixel target.
    """
    from PIL import Image

    small = center_square(image.convert("RGB")).resize((size, size), Image.Resampling.BOX)
    return (np.asarray(small, dtype=np.float32) / 255.0).reshape(-1)


class PixelBasis:
    """PCA basis of pixel vectors, learned on training stimuli only.

    Attributes
    ----------
    mean : ndarray (d,)
    components : ndarray (k, d)
        Orthonormal rows.
    """

    def __init__(self, mean: np.ndarray, components: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.components = np.asarray(components, dtype=np.float32)

    @classmethod
    def fit(cls, vectors: np.ndarray, n_components: int) -> "PixelBasis":
        """Fit on ``vectors`` (n_train_stimuli, d); keeps min(n_components, n - 1, d) components."""
        vectors = np.asarray(vectors, dtype=np.float64)
        mean = vectors.mean(0)
        # SVD of the centred data: rows of vt are the principal axes (deterministic sign: largest
        # absolute loading positive)
        _, _, vt = np.linalg.svd(vectors - mean, full_matrices=False)
        k = int(min(n_components, max(1, vectors.shape[0] - 1), vectors.shape[1]))
        vt = vt[:k]
        signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(1)])
        return cls(mean, vt * signs[:, None])

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """(n, d) -> (n, k) coefficients."""
        return (np.asarray(vectors, dtype=np.float32) - self.mean) @ self.components.T

    def inverse_transform(self, coefficients: np.ndarray) -> np.ndarray:
        """(n, k) -> (n, d) pixel vectors (not clipped)."""
        return np.asarray(coefficients, dtype=np.float32) @ self.components + self.mean

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"pixel_pca_mean": self.mean, "pixel_pca_components": self.components}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "PixelBasis":
        return cls(arrays["pixel_pca_mean"], arrays["pixel_pca_components"])


def pixels_to_image(vector, shape: Sequence[int], basis: PixelBasis | None = None):
    """Invert the pixel feature transform: (PCA inverse) + reshape + clip to [0, 1] -> PIL RGB image.

    Parameters
    ----------
    vector : array (d,) or (k,) when ``basis`` is given
    shape : (height, width, 3)
    basis : PixelBasis, optional
    """
    from PIL import Image

    vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    if basis is not None:
        vector = basis.inverse_transform(vector)
    pixels = np.clip(vector.reshape(tuple(shape)), 0.0, 1.0)
    return Image.fromarray(np.round(pixels * 255.0).astype(np.uint8), mode="RGB")


class PixelExtractor:
    """``pixels`` feature space (no weights)."""

    space = "pixels"

    def __init__(self, size: int = 64):
        self.size = int(size)

    @property
    def dim(self) -> int:
        return self.size * self.size * 3


    def fingerprint(self) -> str:
        return _short_hash({"space": "pixels", "size": self.size, "resample": "box", "crop": "center", "v": 1})

    def encode_images(self, images: Sequence) -> np.ndarray:
        return np.stack([pixel_vector(im, self.size) for im in images]).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# CLIP


class ClipExtractor:
    """``clip`` feature space: un-normalised open_clip image (and text) embeddings from a local folder.

    Parameters
    ----------
    folder : path
        ``MODELS/open_clip/<arch>/`` with ``open_clip_config.json`` and ``open_clip_model.safetensors``.
    device : ``auto`` | ``cpu`` | ``cuda``
    batch_size : int
    """

    space = "clip"

    def __init__(self, folder, device="auto", batch_size: int = 16, *, loaded=None):
        from ..utils.torch_runtime import resolve_device

        if folder is None and loaded is not None:
            folder = loaded.folder  # None for a model built in memory (benchmarks/bench_cuda.py)
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            self.config_path = self.folder / "open_clip_config.json"
            self.weights_path = self.folder / "open_clip_model.safetensors"
        if loaded is not None:
            # already loaded (by the run's one loader): its config is the one it was built from
            self.config = loaded.config
        else:
            for path in (self.config_path, self.weights_path):
                if not path.is_file():
                    raise InputMissingError(
                        f"open_clip model file missing: {path}", path=path,
                        hint="run `m2i-models prepare MODELS_DIR` (or `m2i-models make-tiny` for a smoke test) "
                             "and pass --models-dir")
            self.config = json.loads(self.config_path.read_text())
        self.device = loaded.device if loaded is not None else resolve_device(device)
        self.batch_size = int(batch_size)
        self._loaded = loaded  # a bids_m2i.models.loading.OpenClipModel (loaded on first use if not given)

    @property
    def dim(self) -> int:
        return int(self.config["model_cfg"]["embed_dim"])

    @property
    def is_tiny(self) -> bool:
        return bool(self.config.get("tiny", False))

    def fingerprint(self) -> str:
        # asked for by every stimulus_features call: hashed once per extractor
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = self._weights_fingerprint()
        return self._fingerprint

    def _weights_fingerprint(self) -> str:
        if self.folder is None:
            raise UsageError("a CLIP model built in memory has no weights file to fingerprint",
                             hint="load it from a models folder to cache features")
        # the weights file can be GBs: hash its size and its first and last 4 MiB, plus the full config
        size = self.weights_path.stat().st_size
        digest = hashlib.sha256()
        with open(self.weights_path, "rb") as fh:
            digest.update(fh.read(4 << 20))
            fh.seek(max(0, size - (4 << 20)))
            digest.update(fh.read())
        return _short_hash({"space": "clip", "config": self.config, "weights_size": size,
                            "weights_head_tail": digest.hexdigest(), "normalize": False, "v": 1})

    def _load(self):
        """The model, through the one open_clip loader (``bids_m2i.models.loading.load_open_clip_folder``)."""
        if self._loaded is None:
            from ..models.loading import load_open_clip_folder

            self._loaded = load_open_clip_folder(self.folder, self.device)
        return self._loaded

    def encode_images(self, images: Sequence) -> np.ndarray:
        """PIL images -> (n, embed_dim) float32 un-normalised embeddings."""
        import torch

        clip = self._load()
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start:start + self.batch_size]
                batch = torch.stack([clip.preprocess(im.convert("RGB")) for im in chunk])
                emb = clip.model.encode_image(batch.to(self.device), normalize=False)
                out.append(emb.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts (e.g. imagery cue texts) -> (n, embed_dim) float32 un-normalised text embeddings.

        The open_clip tokenizer works offline (its BPE vocabulary ships with the package).
        """
        import torch

        clip = self._load()
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                tokens = clip.tokenizer(list(texts[start:start + self.batch_size])).to(self.device)
                out.append(clip.model.encode_text(tokens, normalize=False).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)


def make_extractor(space: str, *, models_dir=None, clip_arch: str = "ViT-H-14", pixel_size: int = 64,
                   device="auto"):
    """Extractor for a feature space name (``pixels`` or ``clip``)."""
    if space == "pixels":
        return PixelExtractor(pixel_size)
    if space == "clip":
        if models_dir is None:
            raise InputMissingError("the clip target needs a models folder",
                                    hint="pass --models-dir or set M2I_MODELS_DIR")
        return ClipExtractor(Path(models_dir) / "open_clip" / clip_arch, device=device)
    from ..errors import UsageError

    raise UsageError(f"unknown feature space {space!r}", hint="use pixels or clip")


# ----------------------------------------------------------------------------------------------------------
# cached extraction


def feature_cache_dir(work_dir, extractor) -> Path:
    """``<work_dir>/features/<space>-<fingerprint>``."""
    return Path(work_dir) / "features" / f"{extractor.space}-{extractor.fingerprint()}"


def stimulus_features(paths: Sequence, extractor, work_dir=None, batch_size: int = 32) -> np.ndarray:
    """Features of each stimulus file, computed once and cached per file content.

    Parameters
    ----------
    paths : sequence of paths, length n
        Duplicates are fine (computed once).
    extractor : PixelExtractor | ClipExtractor
    work_dir : path, optional
        Cache root; no caching when None.

    Returns
    -------
    ndarray (n, extractor.dim) float32
    """
    paths = [Path(p) for p in paths]
    cache = feature_cache_dir(work_dir, extractor) if work_dir is not None else None
    unique = list(dict.fromkeys(paths))
    keys = {p: sha256_of(p) if p.is_file() else None for p in unique}
    missing = [p for p in unique if keys[p] is None]
    if missing:
        raise InputMissingError(f"Stimulus image not found: {missing[0]}", path=missing[0],
                                hint="check the stim_file column and BIDS_DIR/stimuli/")
    found: dict[str, np.ndarray] = {}
    todo = []
    for p in unique:
        key = keys[p]
        if key in found:
            continue
        cached = cache / f"{key}.npy" if cache is not None else None
        if cached is not None and cached.is_file():
            found[key] = np.load(cached)
        else:
            todo.append(p)
    todo = list({keys[p]: p for p in todo}.values())  # identical content computed once
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        feats = extractor.encode_images([load_image(p) for p in batch])
        for p, vec in zip(batch, feats):
            found[keys[p]] = vec
            if cache is not None:
                save_npy(cache / f"{keys[p]}.npy", vec)
    if todo:
        LOG.info("%s features: %d computed, %d from cache", extractor.space, len(todo), len(found) - len(todo))
    return np.stack([found[keys[p]] for p in paths]).astype(np.float32)


def category_means(features: np.ndarray, categories: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Category-level targets: the mean feature of each category's (perception) stimuli.

    Returns ``labels`` (c,) and ``means`` (c, d), labels sorted.
    """
    categories = np.asarray(list(categories)).astype(str)
    features = np.asarray(features, dtype=np.float32)
    labels, inverse = np.unique(categories, return_inverse=True)
    sums = np.zeros((len(labels), features.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse.ravel(), features)
    counts = np.bincount(inverse.ravel(), minlength=len(labels))
    return labels, (sums / counts[:, None]).astype(np.float32)


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]
