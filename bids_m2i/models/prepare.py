"""``m2i-models prepare DIR``: fetch the real weights once (needs a network), store them as safetensors.

What is fetched (DESIGN.md "Models folder"):

- ``unclip/``: ``stabilityai/stable-diffusion-2-1-unclip`` (SD 2.1 unCLIP-H, conditioned on 1024-d
  OpenCLIP ViT-H-14 image embeddings), safetensors files only, re-saved with ``save_pretrained``;
- ``open_clip/ViT-H-14``: OpenCLIP ViT-H-14 ``laion2b_s32b_b79k`` (the features unCLIP-H is conditioned on);
- ``open_clip/ViT-L-14``: OpenAI CLIP ViT-L/14 (QuickGELU), for CLIP metrics comparable with the papers;
- ``eval/``: torchvision AlexNet, Inception-v3, EfficientNet-B1 (ImageNet) and the SwAV ResNet-50 trunk
  (Caron et al. 2020), as MindEye's metrics use them.

Downloads go to ``DIR/.download`` and are deleted afterwards; pickled checkpoints that some sources only
publish (torchvision ``.pth``, SwAV ``.pth.tar``) are read with ``torch.load(weights_only=True)`` and
converted to safetensors; nothing in the folder is a pickle afterwards. Without a network (or with
``HF_HUB_OFFLINE=1``) ``prepare`` refuses before writing anything (exit 66): run it on a machine with a
network and copy the folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

from ..errors import InputMissingError, UsageError
from ..utils.atomic import write_text
from .store import (
    EVAL_NETWORKS,
    MANIFEST_NAME,
    UNCLIP_ALLOWED_CLASSES,
    _check_unclip_index,
    read_manifest,
    write_manifest,
)

log = logging.getLogger("m2i.models")

UNCLIP_REPO = "stabilityai/stable-diffusion-2-1-unclip"
CLIP_FEATURES = ("ViT-H-14", "ViT-H-14", "laion2b_s32b_b79k")  # folder name, open_clip arch, pretrained tag
CLIP_METRIC = ("ViT-L-14", "ViT-L-14-quickgelu", "openai")
SWAV_URL = "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar"
NETWORK_PROBE = ("huggingface.co", 443)

LICENCES = {
    "unclip": "CreativeML Open RAIL++-M (https://huggingface.co/stabilityai/stable-diffusion-2-1-unclip)",
    "ViT-H-14": "MIT (OpenCLIP; trained on LAION-2B)",
    "ViT-L-14": "MIT (OpenAI CLIP)",
    "torchvision": "BSD-3-Clause (torchvision); trained on ImageNet: check its terms of access",
    "swav": "CC BY-NC 4.0 (facebookresearch/swav)",
}


def network_available(host_port: tuple[str, int] = NETWORK_PROBE, timeout_s: float = 3.0) -> bool:
    """True when a TCP connection to the Hugging Face Hub can be opened (tests patch this to False)."""
    try:
        with socket.create_connection(host_port, timeout=timeout_s):
            return True
    except OSError:
        return False


def refuse_without_network(models_dir: Path) -> None:
    """Raise InputMissingError (exit 66) when downloads are impossible or forbidden."""
    offline_env = [name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(name, "") not in ("", "0")]
    if offline_env:
        raise InputMissingError(
            f"`m2i-models prepare` downloads weights, but {offline_env[0]}=1 forbids it",
            path=models_dir,
            hint=f"unset {offline_env[0]} for this command, or run it on a machine with a network and copy {models_dir}",
        )
    if not network_available():
        raise InputMissingError(
            f"`m2i-models prepare` needs a network to download the weights, and {NETWORK_PROBE[0]} cannot be reached",
            path=models_dir,
            hint=f"run `m2i-models prepare {models_dir}` on a machine with internet access and copy the folder here "
            "(nothing was written); for smoke tests without weights use `m2i-models make-tiny DIR`",
        )


def prepare_models(
    models_dir: str | os.PathLike,
    *,
    unclip_repo: str = UNCLIP_REPO,
    fp16: bool = False,
    include: tuple[str, ...] = ("unclip", "clip", "eval"),
) -> Path:
    """Download, convert and record the real weights; returns the manifest path.

    Parameters
    ----------
    models_dir
        Folder to fill.
    unclip_repo
        Hugging Face repository of a ``StableUnCLIPImg2ImgPipeline``.
    fp16
        Keep the unCLIP weights in float16 (half the disk: ~2.6 GB instead of ~5 GB).
    include
        Which parts to fetch (``unclip``, ``clip``, ``eval``).
    """
    models_dir = Path(models_dir)
    components, roles = _existing_real_components(models_dir)
    refuse_without_network(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    download = models_dir / ".download"
    download.mkdir(exist_ok=True)
    try:
        if "clip" in include or "unclip" in include:
            for folder, arch, tag in (CLIP_FEATURES, CLIP_METRIC):
                components[f"open_clip/{folder}"] = _fetch_open_clip(models_dir, download, folder, arch, tag)
            roles.update(clip_features=f"open_clip/{CLIP_FEATURES[0]}", clip_metric=f"open_clip/{CLIP_METRIC[0]}")
        if "unclip" in include:
            components["unclip"] = _fetch_unclip(models_dir, download, unclip_repo, fp16)
        if "eval" in include:
            for name in EVAL_NETWORKS:
                components[f"eval/{name}"] = _fetch_eval(models_dir, download, name)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return write_manifest(models_dir, components, tiny=False, roles=roles)


def _existing_real_components(models_dir: Path) -> tuple[dict, dict]:
    """Components already prepared in ``models_dir`` (kept when ``--only`` fetches a part).

    A folder of tiny models is refused: mixing random and real weights would make outputs lie.
    """
    if not (models_dir / MANIFEST_NAME).is_file():
        return {}, {}
    manifest = read_manifest(models_dir)
    if manifest["tiny"]:
        raise UsageError(
            f"{models_dir} holds tiny random models (make-tiny); prepare the real weights in another folder",
            path=models_dir,
            hint="use an empty folder, or delete this one first",
        )
    components = {
        name: {k: v for k, v in info.items() if k != "tiny"}
        for name, info in manifest["components"].items()
        if (models_dir / info["path"]).exists()
    }
    return components, dict(manifest.get("roles", {}))


def _fetch_unclip(models_dir: Path, download: Path, repo: str, fp16: bool) -> dict:
    import torch
    from diffusers import StableUnCLIPImg2ImgPipeline
    from huggingface_hub import snapshot_download

    from .loading import _dtype_kwarg

    local = Path(
        snapshot_download(
            repo,
            local_dir=download / "unclip",
            # configs, tokenizer files and safetensors only: never the .ckpt/.bin pickles; the repository
            # holds fp32 and fp16 copies of every weight, fetch one
            allow_patterns=["model_index.json", "*/*.json", "*/*.txt", "*/*.fp16.safetensors" if fp16 else "*/*.safetensors"],
            ignore_patterns=["*.bin", "*.ckpt", "*.pt", "*.pth"] + ([] if fp16 else ["*.fp16.safetensors"]),
        )
    )
    problems = _check_unclip_index(local)
    if problems:
        raise InputMissingError(f"{repo} is not a plain StableUnCLIPImg2ImgPipeline: {problems[0]}", path=local)
    variant = "fp16" if fp16 and any(local.rglob("*.fp16.safetensors")) else None
    pipeline = StableUnCLIPImg2ImgPipeline.from_pretrained(
        local,
        local_files_only=True,
        use_safetensors=True,
        variant=variant,
        **_dtype_kwarg(torch.float16 if fp16 else torch.float32),
    )
    target = models_dir / "unclip"
    shutil.rmtree(target, ignore_errors=True)
    pipeline.save_pretrained(target, safe_serialization=True)
    return {
        "kind": "unclip",
        "path": "unclip",
        "class": "StableUnCLIPImg2ImgPipeline",
        "image_embed_dim": int(pipeline.image_normalizer.config.embedding_dim),
        "image_size": int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor),
        "source": f"https://huggingface.co/{repo}",
        "licence": LICENCES["unclip"],
        "dtype": "float16" if fp16 else "float32",
        "allowed_classes": sorted({f"{lib}.{cls}" for pairs in UNCLIP_ALLOWED_CLASSES.values() for lib, cls in pairs}),
    }


def _fetch_open_clip(models_dir: Path, download: Path, folder: str, arch: str, tag: str) -> dict:
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model(arch, pretrained=tag, cache_dir=str(download / "open_clip"))
    model_cfg = open_clip.get_model_config(arch)
    if tag == "openai":
        model_cfg["quick_gelu"] = True  # OpenAI's weights were trained with QuickGELU
    preprocess_cfg = {
        "mean": list(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
        "std": list(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),
    }
    target = models_dir / "open_clip" / folder
    target.mkdir(parents=True, exist_ok=True)
    write_text(
        target / "open_clip_config.json",
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2, sort_keys=True) + "\n",
    )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(target / "open_clip_model.safetensors"))
    return {
        "kind": "open_clip",
        "path": f"open_clip/{folder}",
        "arch": arch,
        "pretrained": tag,
        "embed_dim": int(model_cfg["embed_dim"]),
        "source": f"open_clip {arch} pretrained={tag}",
        "licence": LICENCES[folder],
    }


def _fetch_eval(models_dir: Path, download: Path, name: str) -> dict:
    import torch
    import torchvision

    from .tiny import build_eval_network, save_state_dict

    torch.hub.set_dir(str(download / "torch_hub"))
    network = build_eval_network(name)
    if name == "swav":
        checkpoint = torch.hub.load_state_dict_from_url(SWAV_URL, map_location="cpu", weights_only=True)
        checkpoint = checkpoint.get("state_dict", checkpoint)
        trunk = {k.removeprefix("module."): v for k, v in checkpoint.items()}
        wanted = network.state_dict().keys()
        network.load_state_dict({k: trunk[k] for k in wanted}, strict=True)
        source, licence = SWAV_URL, LICENCES["swav"]
    else:
        weights = {
            "alexnet": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
            "inception_v3": torchvision.models.Inception_V3_Weights.IMAGENET1K_V1,
            "efficientnet_b1": torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V1,
        }[name]
        # torchvision verifies the published hash and loads with torch.load(weights_only=True)
        network.load_state_dict(weights.get_state_dict(progress=False, check_hash=True), strict=True)
        source, licence = f"torchvision {weights}", LICENCES["torchvision"]
    save_state_dict(network, models_dir / "eval" / f"{name}.safetensors")
    return {
        "kind": "eval",
        "path": f"eval/{name}.safetensors",
        "network": name,
        "dtype": "float32",
        "source": source,
        "licence": licence,
    }
