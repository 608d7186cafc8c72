"""Image feature spaces for the evaluation metrics, loaded from the models folder.

Layers and preprocessing follow the evaluation code released with MindEye (Scotti et al. 2023), which took
them from Brain-Diffuser (Ozcelik & VanRullen 2023); see ``docs/evaluation.md``:

============  ==================================================  ==============================  =====
space         network / layer                                     input                           use
============  ==================================================  ==============================  =====
alexnet2      AlexNet ``features.4`` (2nd conv block, after ReLU) resize 256 bilinear, ImageNet norm  twoway
alexnet5      AlexNet ``features.11`` (5th conv block, after ReLU) same pass                       twoway
inception     Inception-v3 ``avgpool`` (2048)                     resize 342 bilinear, ImageNet norm  twoway
clip          open_clip ``encode_image`` (ViT-L/14: 768)          resize to the model size bicubic,  twoway
                                                                  CLIP norm
effnet        EfficientNet-B1 ``avgpool`` (1280)                  resize 255 bilinear, ImageNet norm  effnet_dist
swav          ResNet-50 (SwAV weights) ``avgpool`` (2048)         resize 224 bilinear, ImageNet norm  swav_dist
============  ==================================================  ==============================  =====

(``pixels`` needs no network: it is the 425 px RGB image itself, see ``metrics.py``.)

Weights are never downloaded: torchvision models are built with ``weights=None`` and their state dict is
read from ``MODELS/eval/<name>*.safetensors``; CLIP comes from ``MODELS/open_clip/<arch>/``
(``open_clip_config.json`` + ``open_clip_model.safetensors``), preferring OpenAI ViT-L/14 as the papers
use it. A space whose weights are missing is simply not offered (the table then says which spaces ran).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .metrics import images_to_tensor

__all__ = [
    "EVAL_WEIGHT_FILES",
    "FeatureExtractor",
    "SpaceExtractor",
    "load_feature_extractors",
    "extract_features",
    "find_clip_dir",
    "models_manifest_is_tiny",
]

LOG = logging.getLogger("m2i.evaluation")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Network name -> glob (under MODELS/eval/) of its safetensors state dict.
EVAL_WEIGHT_FILES = {
    "alexnet": "alexnet*.safetensors",
    "inception_v3": "inception*.safetensors",
    "efficientnet_b1": "efficientnet_b1*.safetensors",
    "swav": "swav*.safetensors",
}

# network -> (input resize of the shorter side, {space: graph node})
_NETWORK_SPACES = {
    "alexnet": (256, {"alexnet2": "features.4", "alexnet5": "features.11"}),
    "inception_v3": (342, {"inception": "avgpool"}),
    "efficientnet_b1": (255, {"effnet": "avgpool"}),
    "swav": (224, {"swav": "avgpool"}),
}


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class FeatureExtractor:
    """One network run once per batch of images, returning one or more feature spaces.

    Parameters
    ----------
    model : torch.nn.Module
        A module mapping a normalised batch (n, 3, S, S) to a dict {node: tensor} (or a tensor, for the
        single output ``"output"``).
    spaces : dict
        Feature space name -> output key of ``model``.
    size : int
        Side to resize images to before the network.
    interpolation : {"bilinear", "bicubic"}
    mean, std : tuple of float
        Channel normalisation.
    device : torch.device
    batch_size : int
    source : str
        Where the weights came from (for the table's ``note``).
    """

    model: Callable
    spaces: dict
    size: int
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 16
    source: str = ""

    @torch.no_grad()
    def __call__(self, images: Sequence) -> dict[str, np.ndarray]:
        """Features of ``images`` (PIL / arrays / tensors in [0, 1]) for every space: {space: (n, d)}."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1).to(self.device)
        std = torch.tensor(self.std).view(1, 3, 1, 1).to(self.device)
        outputs: dict[str, list] = {space: [] for space in self.spaces}
        n_images = len(images)
        for start in range(0, n_images, self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = images_to_tensor(chunk, size=self.size, interpolation=self.interpolation).to(self.device)
            result = self.model((batch - mean) / std)
            if not isinstance(result, dict):
                result = {"output": result}
            for space, key in self.spaces.items():
                outputs[space].append(result[key].reshape(batch.shape[0], -1).double().cpu().numpy())
        return {s: (np.concatenate(v) if v else np.zeros((0, 0))) for s, v in outputs.items()}


@dataclass
class SpaceExtractor:
    """Callable for one space: ``images -> (n, d)`` features (shares its network with sibling spaces)."""

    extractor: FeatureExtractor
    space: str

    def __call__(self, images: Sequence) -> np.ndarray:
        return self.extractor(images)[self.space]

    @property
    def source(self) -> str:
        return self.extractor.source


def find_clip_dir(models_dir: str | Path, preferred: str = "ViT-L-14") -> Path | None:
    """The open_clip folder to use for CLIP metrics: ``preferred*`` (OpenAI ViT-L/14) first, else any."""
    root = Path(models_dir) / "open_clip"
    if not root.is_dir():
        return None
    candidates = sorted(p for p in root.iterdir() if (p / "open_clip_config.json").is_file())
    preferred_dirs = [p for p in candidates if p.name.startswith(preferred)]
    # a plain ViT-L-14 (OpenAI) beats variants such as ViT-L-14-336 when both exist
    preferred_dirs.sort(key=lambda p: (p.name not in (preferred, f"{preferred}-openai", f"{preferred}-quickgelu"), p.name))
    chosen = (preferred_dirs or candidates or [None])[0]
    return chosen


def _clip_extractor(model, device: torch.device, batch_size: int, source: str) -> FeatureExtractor:
    """Wrap an open_clip model: ``encode_image`` on the whole image resized to the model's input size."""
    config = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = config.get("size", getattr(model.visual, "image_size", 224))
    if isinstance(size, (tuple, list)):
        size = int(size[0])
    mean = tuple(config.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(config.get("std", (0.26862954, 0.26130258, 0.27577711)))
    # MindEye evaluates CLIP on the whole image resized (bicubic), without a centre crop
    return FeatureExtractor(
        model=lambda x: {"clip": model.encode_image(x)}, spaces={"clip": "clip"}, size=int(size),
        interpolation="bicubic", mean=mean, std=std, device=device, batch_size=batch_size, source=source,
    )


def _load_clip(folder: Path, device: torch.device, batch_size: int) -> FeatureExtractor:
    from ..models.loading import load_open_clip_folder

    return _clip_extractor(load_open_clip_folder(folder, device).model, device, batch_size, f"open_clip/{folder.name}")


def load_feature_extractors(
    models_dir: str | Path | None,
    spaces: Sequence[str] | None = None,
    device: str | torch.device | None = "auto",
    batch_size: int = 16,
) -> dict[str, SpaceExtractor]:
    """Feature extractors whose weights exist under ``models_dir``.

    Parameters
    ----------
    models_dir : path or None
        The models folder (``--models-dir``). None or a missing folder gives no extractors.
    spaces : sequence of str, optional
        Restrict to these spaces (``clip alexnet2 alexnet5 inception effnet swav``); default all present.
    device : "auto", "cpu", "cuda" or torch.device
    batch_size : int
        Images per forward pass.

    Returns
    -------
    dict
        ``{space: callable(images) -> numpy array (n, d)}``; each value has a ``source`` attribute.
        Use :func:`extract_features` to run networks shared by several spaces (AlexNet) only once.
    """
    if models_dir is None or not Path(models_dir).is_dir():
        return {}
    models_dir = Path(models_dir)
    # random-weight folders (m2i-models make-tiny) must say so in every number they produce
    tiny = " (tiny random weights: meaningless numbers)" if models_manifest_is_tiny(models_dir) else ""
    wanted = set(spaces) if spaces is not None else None
    device = _pick_device(device)
    extractors: dict[str, SpaceExtractor] = {}

    if (models_dir / "manifest.json").is_file():
        # a folder written by m2i-models: load through its checked loaders (manifest shapes, fp16 files)
        return _extractors_from_manifest(models_dir, wanted, device, batch_size, tiny)

    if wanted is None or "clip" in wanted:
        folder = find_clip_dir(models_dir)
        if folder is not None:
            shared = _load_clip(folder, device, batch_size)
            shared.source += tiny
            extractors["clip"] = SpaceExtractor(shared, "clip")
            if not folder.name.startswith("ViT-L-14"):
                LOG.warning("CLIP metrics use %s: the papers use OpenAI ViT-L/14, numbers are not comparable", folder.name)

    for network, (size, node_of_space) in _NETWORK_SPACES.items():
        selected = {s: n for s, n in node_of_space.items() if wanted is None or s in wanted}
        if not selected:
            continue
        files = sorted((models_dir / "eval").glob(EVAL_WEIGHT_FILES[network]))
        if not files:
            LOG.info("no %s weights under %s/eval: spaces %s skipped", network, models_dir, sorted(selected))
            continue
        from ..models.loading import load_eval_network_file

        model = load_eval_network_file(files[0], network, device)
        shared = _network_extractor(model, selected, size, device, batch_size, f"eval/{files[0].name}{tiny}")
        for space in selected:
            extractors[space] = SpaceExtractor(shared, space)
    return extractors


def _network_extractor(model, selected: dict, size: int, device, batch_size: int, source: str) -> FeatureExtractor:
    from torchvision.models.feature_extraction import create_feature_extractor

    model.eval()
    with warnings.catch_warnings():
        # torchvision notes that eval- and train-mode graphs differ; we only ever run eval mode
        warnings.simplefilter("ignore", UserWarning)
        graph = create_feature_extractor(model, return_nodes=sorted(set(selected.values()))).to(device)
    return FeatureExtractor(model=graph, spaces=selected, size=size, device=device, batch_size=batch_size, source=source)


def _extractors_from_manifest(models_dir: Path, wanted, device, batch_size: int, tiny: str) -> dict[str, SpaceExtractor]:
    """Extractors for the components a models-folder manifest lists, loaded by ``bids_m2i.models``."""
    from ..models.loading import load_eval_network, load_open_clip
    from ..models.store import read_manifest

    manifest = read_manifest(models_dir)
    components = manifest.get("components", {})
    roles = manifest.get("roles", {})
    extractors: dict[str, SpaceExtractor] = {}
    if wanted is None or "clip" in wanted:
        # the papers' ViT-L/14 when present, else the decoding model's CLIP
        role = next((r for r in ("clip_metric", "clip_features") if roles.get(r) in components), None)
        if role is not None:
            model, _, info = load_open_clip(models_dir, role=role, device=device)
            shared = _clip_extractor(model, device, batch_size, f"{info['component']}{tiny}")
            extractors["clip"] = SpaceExtractor(shared, "clip")
            if role != "clip_metric":
                LOG.warning("CLIP metrics use %s: the papers use OpenAI ViT-L/14, numbers are not comparable",
                            info["component"])
    for network, (size, node_of_space) in _NETWORK_SPACES.items():
        selected = {s: n for s, n in node_of_space.items() if wanted is None or s in wanted}
        if not selected or f"eval/{network}" not in components:
            continue
        model = load_eval_network(models_dir, network, device=device)
        source = f"{components[f'eval/{network}'].get('path', f'eval/{network}')}{tiny}"
        shared = _network_extractor(model, selected, size, device, batch_size, source)
        for space in selected:
            extractors[space] = SpaceExtractor(shared, space)
    return extractors


def extract_features(extractors: dict, images: Sequence, spaces: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Run every needed network once on ``images``: {space: (n, d)}."""
    spaces = list(extractors) if spaces is None else [s for s in spaces if s in extractors]
    done: dict[int, dict[str, np.ndarray]] = {}
    features = {}
    for space in spaces:
        extractor = extractors[space]
        shared = getattr(extractor, "extractor", None)
        if shared is None:  # any plain callable images -> (n, d)
            features[space] = np.asarray(extractor(images), dtype=np.float64).reshape(len(images), -1)
            continue
        if id(shared) not in done:
            done[id(shared)] = shared(images)
        features[space] = done[id(shared)][space]
    return features


def models_manifest_is_tiny(models_dir: str | Path | None) -> bool:
    """Whether the models folder's manifest says its weights are random (``"tiny": true``)."""
    if models_dir is None:
        return False
    manifest = Path(models_dir) / "manifest.json"
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if isinstance(data, dict):
        if data.get("tiny") is True:
            return True
        files = data.get("files")
        if isinstance(files, (list, dict)):
            entries = files.values() if isinstance(files, dict) else files
            return any(isinstance(e, dict) and e.get("tiny") is True for e in entries)
    return False
