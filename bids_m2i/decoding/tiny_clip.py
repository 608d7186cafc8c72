"""A tiny random-weight open_clip model saved in the models-folder layout (for tests and smoke runs).

Layout written (the same as a real ``MODELS/open_clip/<arch>/`` folder)::

    folder/open_clip_config.json        {"model_cfg": {...}, "preprocess_cfg": {...}, "tiny": true}
    folder/open_clip_model.safetensors  state dict of ``open_clip.CLIP`` built from ``model_cfg``

The weights are random (seeded), so its embeddings carry no meaning; the architecture and the output
dimension are those of a real model, so the code paths are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.atomic import atomic_path, write_json

#: the vocabulary size of open_clip's SimpleTokenizer (token ids go up to 49407)
CLIP_VOCAB_SIZE = 49408


def tiny_open_clip_config(embed_dim: int = 1024, image_size: int = 32, width: int = 64,
                          layers: int = 2) -> dict:
    """The ``open_clip_config.json`` content of a tiny ViT CLIP."""
    return {
        "model_cfg": {
            "embed_dim": int(embed_dim),
            "vision_cfg": {"image_size": int(image_size), "layers": int(layers), "width": int(width),
                           "head_width": 32, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": CLIP_VOCAB_SIZE, "width": int(width),
                         "heads": max(1, int(width) // 32), "layers": int(layers)},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711],
                           "interpolation": "bicubic", "resize_mode": "shortest"},
        "tiny": True,
    }


def make_tiny_open_clip(folder, embed_dim: int = 1024, seed: int = 0, image_size: int = 32, width: int = 64,
                        layers: int = 2) -> Path:
    """Build a seeded random-weight open_clip ViT and save it as ``folder/open_clip_config.json`` and
    ``folder/open_clip_model.safetensors``.

    Parameters
    ----------
    folder : path
        Created if missing (e.g. ``MODELS/open_clip/ViT-H-14``).
    embed_dim : int
        Output dimension of image and text embeddings (1024 like ViT-H-14 by default).
    seed : int
        Same seed -> byte-identical weights.
    image_size, width, layers : int
        Vision input size and transformer size (tiny by default: about 3.5 M parameters, mostly the text
        token embedding, whose 49,408 rows the tokenizer needs).

    Returns
    -------
    Path of the folder.
    """
    import open_clip
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_open_clip_config(embed_dim, image_size, width, layers)
    config["seed"] = int(seed)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = CLIP(**config["model_cfg"])
        # open_clip initialises most weights in its own init; re-draw everything from our seed so that
        # weights depend on `seed` only (also the LayerNorms, so that the towers are not trivially
        # symmetric)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, tensor in sorted(model.state_dict().items()):
                if tensor.dtype.is_floating_point and tensor.ndim > 0:
                    scale = 0.02 if tensor.ndim > 1 else 0.1
                    noise = torch.randn(tensor.shape, generator=generator) * scale
                    if name.endswith("weight") and tensor.ndim == 1:
                        noise += 1.0  # LayerNorm gains around 1
                    tensor.copy_(noise)
            model.logit_scale.fill_(float(torch.log(torch.tensor(1 / 0.07))))
    finally:
        torch.random.set_rng_state(generator_state)
    del open_clip  # imported only to fail early with a clear message when open_clip is missing
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / "open_clip_model.safetensors") as tmp:
        # one metadata key only: safetensors writes several keys in a random order (bytes would differ)
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(folder / "open_clip_config.json", config)
    return folder


def read_open_clip_config(folder) -> dict:
    """Parse ``folder/open_clip_config.json``."""
    return json.loads((Path(folder) / "open_clip_config.json").read_text())
