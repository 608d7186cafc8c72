"""Load models from the models folder without executing anything from it and without the network.

Rules enforced here (DESIGN.md "Models folder"):

- every component is checked against ``manifest.json`` first (sizes and tensor shapes always, sha256 on
  request), so a pickle, a ``.py`` file, a truncated or swapped file stops the run with exit 65/66;
- weights are read with safetensors only (diffusers ``use_safetensors=True``); the pipeline's
  ``model_index.json`` may name only reviewed diffusers/transformers classes (no custom code, no
  ``trust_remote_code``);
- Hugging Face libraries run offline (``HF_HUB_OFFLINE=1``, ``local_files_only=True``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadDataError, InputMissingError, UsageError
from .store import EVAL_NETWORKS, check_models, read_manifest

log = logging.getLogger("m2i.models")


def enforce_offline() -> None:
    """Make Hugging Face libraries refuse any download for the rest of this process.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` when it is imported, so the module constant is set too
    when the library is already loaded.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import sys

    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


from ..utils.torch_runtime import resolve_device  # noqa: E402,F401  (re-exported)


def default_dtype(device):
    """fp16 on GPU (as SD is run in practice), fp32 on CPU (fp16 convolutions are slow or missing there)."""
    import torch

    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def load_unclip_pipeline(models_dir: str | os.PathLike, device="auto", dtype=None, *, verify_hashes: bool = False):
    """Load ``MODELS/unclip`` as a ``StableUnCLIPImg2ImgPipeline`` (local files, safetensors only).

    Parameters
    ----------
    models_dir
        The models folder.
    device
        ``auto``/``cpu``/``cuda``.
    dtype
        torch dtype; default fp16 on CUDA, fp32 on CPU.
    verify_hashes
        Also compare sha256 of every file with the manifest (slow for real weights).

    Returns
    -------
    (pipeline, info)
        ``info`` holds ``tiny`` (bool), ``image_embed_dim`` (int, read from the pipeline config), ``source``.
    """
    models_dir = Path(models_dir)
    check_models(models_dir, components=["unclip"], verify_hashes=verify_hashes)
    manifest = read_manifest(models_dir)
    enforce_offline()
    from diffusers import StableUnCLIPImg2ImgPipeline

    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    try:
        with quiet_hf_loading():
            pipeline = StableUnCLIPImg2ImgPipeline.from_pretrained(
                models_dir / "unclip", local_files_only=True, use_safetensors=True, **_dtype_kwarg(dtype)
            )
    except (OSError, ValueError, EnvironmentError) as exc:
        raise BadDataError(
            f"Cannot load the unCLIP pipeline from {models_dir / 'unclip'}: {exc}",
            path=models_dir / "unclip",
            hint="recreate it with `m2i-models prepare DIR` (or `m2i-models make-tiny DIR` for smoke tests)",
        ) from exc
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    info = {
        "tiny": bool(manifest["tiny"]),
        "image_embed_dim": image_embed_dim(pipeline),
        "source": manifest["components"]["unclip"].get("source", "n/a"),
        "dtype": str(dtype).replace("torch.", ""),
        "device": str(device),
    }
    return pipeline, info


def _dtype_kwarg(dtype) -> dict:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (0.36); pass whichever this version understands."""
    try:
        from diffusers.utils import deprecation_utils

        renamed = hasattr(deprecation_utils, "_resolve_dtype")
    except ImportError:
        renamed = False
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


@contextlib.contextmanager
def quiet_hf_loading():
    """No progress bars or advice (``pip install accelerate``) on the terminal while loading."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


def image_embed_dim(pipeline) -> int:
    """Size of the image embedding an unCLIP pipeline is conditioned on (1024 for SD 2.1 unCLIP-H)."""
    return int(pipeline.image_normalizer.config.embedding_dim)


def open_clip_component(models_dir: str | os.PathLike, role: str = "clip_features") -> str:
    """Component name (``open_clip/<arch>``) that plays ``role`` (``clip_features`` or ``clip_metric``)."""
    manifest = read_manifest(models_dir)
    name = manifest.get("roles", {}).get(role)
    if not name or name not in manifest["components"]:
        raise InputMissingError(
            f"The models folder {models_dir} has no open_clip model for {role}",
            path=Path(models_dir) / "manifest.json",
            hint="run `m2i-models prepare DIR` (adds open_clip/ViT-H-14 and open_clip/ViT-L-14)",
        )
    return name


@dataclass
class OpenClipModel:
    """A loaded open_clip component: the model (eval mode, fp32, on ``device``), its validation preprocessing,
    its tokenizer, and where it came from."""

    model: object
    preprocess: object
    tokenizer: object
    folder: Path
    config: dict
    device: object

    @property
    def embed_dim(self) -> int:
        return int(self.config["model_cfg"]["embed_dim"])

    @property
    def tiny(self) -> bool:
        return bool(self.config.get("tiny", False))


class _DropOpenClipNoWeightsWarning(logging.Filter):
    """open_clip warns 'initialized randomly' because we load the weights ourselves right after."""

    def filter(self, record):
        return "No pretrained weights loaded" not in record.getMessage()


def load_open_clip_folder(folder: str | os.PathLike, device="auto") -> OpenClipModel:
    """The one open_clip loader: ``folder/open_clip_config.json`` + ``open_clip_model.safetensors``.

    The model is built from the config alone (``load_weights=False``: open_clip reads no weight file and never
    downloads), then the safetensors state dict is loaded strictly. The tokenizer works offline (its BPE
    vocabulary ships with open_clip). Used by the decoding features (``clip``, ``clip-text``), the best-of-N
    selector and the CLIP metric.
    """
    import json

    import open_clip
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / "open_clip_config.json", folder / "open_clip_model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise InputMissingError(
                f"open_clip model file missing: {path}", path=path,
                hint="run `m2i-models prepare MODELS_DIR` (or `m2i-models make-tiny` for a smoke test) "
                     "and pass --models-dir")
    try:
        config = json.loads(config_path.read_text("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadDataError(f"{config_path.name} is not JSON ({exc})", path=config_path,
                           hint="re-create the folder with `m2i-models prepare` (or make-tiny)") from exc
    device = resolve_device(device)
    enforce_offline()
    quiet = _DropOpenClipNoWeightsWarning()
    logging.getLogger().addFilter(quiet)
    try:
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", load_weights=False,
                                                                         device="cpu")
        except (TypeError, KeyError, AttributeError) as exc:
            # a config of another open_clip version (unknown keys) or edited by hand (a text where a number
            # goes, an architecture name where the model_cfg object goes) was exit 1 at the decoding stage
            raise BadDataError(
                f"{config_path} does not describe a model this open_clip {open_clip.__version__} can build "
                f"({type(exc).__name__}: {exc})", path=config_path,
                hint="restore the config written by `m2i-models prepare` (or make-tiny), or re-create the "
                "folder with this version") from exc
        model.load_state_dict(load_file(str(weights_path)), strict=True)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    except (RuntimeError, ValueError, OSError, SafetensorError) as exc:
        raise BadDataError(f"Cannot load the open_clip model in {folder}: {exc}", path=folder,
                           hint="re-create the folder with `m2i-models prepare` (or make-tiny)") from exc
    finally:
        logging.getLogger().removeFilter(quiet)
    model = model.to(device).eval().requires_grad_(False)
    return OpenClipModel(model, preprocess, tokenizer, folder, config, device)


def load_open_clip(models_dir: str | os.PathLike, role: str = "clip_features", device="auto", *, verify_hashes=False):
    """Load the open_clip model that plays ``role`` in a models folder (checked against its manifest first).

    Returns
    -------
    (model, preprocess, info)
        ``model`` in eval mode on ``device`` (fp32), open_clip's validation ``preprocess`` transform, and
        ``info`` with ``component``, ``arch``, ``embed_dim``, ``tiny``, ``loaded`` (the
        :class:`OpenClipModel`, tokenizer included).
    """
    models_dir = Path(models_dir)
    name = open_clip_component(models_dir, role)
    check_models(models_dir, components=[name], verify_hashes=verify_hashes)
    manifest = read_manifest(models_dir)
    folder = models_dir / manifest["components"][name]["path"]
    if not (folder / "open_clip_model.safetensors").is_file():
        raise InputMissingError(
            f"No open_clip_model.safetensors in {folder}", path=folder, hint="rerun `m2i-models prepare DIR`"
        )
    loaded = load_open_clip_folder(folder, device)
    info = {
        "component": name,
        "arch": manifest["components"][name].get("arch", folder.name),
        "embed_dim": int(manifest["components"][name].get("embed_dim", 0)) or None,
        "tiny": bool(manifest["tiny"]),
        "loaded": loaded,
    }
    return loaded.model, loaded.preprocess, info


def find_decoding_clip_dir(models_dir: str | os.PathLike) -> Path:
    """``open_clip/ViT-H-14`` (the unCLIP-H conditioning space), else the only other architecture present."""
    root = Path(models_dir) / "open_clip"
    preferred = root / "ViT-H-14"
    if preferred.is_dir():
        return preferred
    present = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    others = [p for p in present if not p.name.startswith("ViT-L-14")]
    if len(others) == 1:
        return others[0]
    raise InputMissingError(f"No open_clip model for the clip target in {root}",
                            hint="expected open_clip/ViT-H-14/ (open_clip_config.json + open_clip_model.safetensors); "
                            "see docs/models.md (`m2i-models check DIR --for clip`)")


def load_decoding_clip(models_dir: str | os.PathLike | None, device="auto"):
    """The decoding CLIP model (``clip`` / ``clip-text`` targets, the best-of-N selector), loaded once and
    wrapped as the ``clip`` feature space (:class:`bids_m2i.decoding.features.ClipExtractor`)."""
    from ..decoding.features import ClipExtractor

    if models_dir is None:
        raise InputMissingError("--target clip/clip-text needs a models folder",
                                hint="pass --models-dir or set M2I_MODELS_DIR (see docs/models.md)")
    folder = find_decoding_clip_dir(models_dir)
    return ClipExtractor(folder, loaded=load_open_clip_folder(folder, device))


def load_eval_network(models_dir: str | os.PathLike, name: str, device="auto", *, verify_hashes=False):
    """Load one evaluation network (``alexnet``, ``inception_v3``, ``efficientnet_b1``, ``swav``) of a models
    folder, checked against its manifest first (see :func:`load_eval_network_file`)."""
    if name not in EVAL_NETWORKS:
        raise UsageError(f"Unknown evaluation network {name!r}", hint=f"one of {', '.join(EVAL_NETWORKS)}")
    models_dir = Path(models_dir)
    component = f"eval/{name}"
    check_models(models_dir, components=[component], verify_hashes=verify_hashes)
    manifest = read_manifest(models_dir)
    return load_eval_network_file(models_dir / manifest["components"][component]["path"], name, device)


def load_eval_network_file(path: str | os.PathLike, name: str, device="auto"):
    """The one loader of evaluation networks: the torchvision class of ``name``
    (:func:`bids_m2i.models.tiny.build_eval_network`) with the state dict of the safetensors file ``path``.

    Floating tensors may be stored in float16 and are cast to float32. Checkpoints saved from DataParallel
    (``module.`` prefixes) load, and SwAV's extra heads (``projection_head``, ``prototypes``, a classifier
    ``fc``) are dropped: the metrics read the trunk only.

    Returns
    -------
    torch.nn.Module in eval mode on ``device``, fp32.
    """
    from safetensors.torch import load_file

    from .tiny import build_eval_network

    path = Path(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # corrupt or not a safetensors file
        raise BadDataError(f"Cannot read the {name} weights: {exc}", path=path,
                           hint="re-create the models folder with `m2i-models prepare` (or `make-tiny` for tests)"
                           ) from exc
    state = {(k[len("module."):] if k.startswith("module.") else k): (v.float() if v.is_floating_point() else v)
             for k, v in state.items()}
    dropped = ("projection_head", "prototypes") + (("fc.",) if name == "swav" else ())
    state = {k: v for k, v in state.items() if not k.startswith(dropped)}
    network = build_eval_network(name)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BadDataError(
            f"The {name} weights in {path} do not match torchvision's architecture: {str(exc).splitlines()[0]}",
            path=path,
            hint="the file must hold a torchvision state dict saved with safetensors (`m2i-models prepare DIR`)",
        ) from exc
    return network.to(resolve_device(device)).eval().requires_grad_(False)


def load_weights_file(path: str | os.PathLike) -> dict:
    """Read a tensor file safely: safetensors, or ``torch.load(weights_only=True)`` for ``.pt``/``.pth``.

    For files outside the models folder (e.g. a decoder checkpoint a user supplies); the models folder
    itself holds safetensors only.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputMissingError(f"Weights file not found: {path}", path=path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses arbitrary objects with an UnpicklingError
        raise BadDataError(
            f"{path} is not a plain tensor file (refused to unpickle objects): {exc}",
            path=path,
            hint="convert it to safetensors",
        ) from exc
