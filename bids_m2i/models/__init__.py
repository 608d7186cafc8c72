"""The models folder (``--models-dir``): manifest, checks, tiny random models, safe loading.

Layout (DESIGN.md "Models folder")::

    manifest.json        files with sha256, sizes, tensor shapes, source, licence, "tiny": true|false
    unclip/              diffusers save_pretrained of StableUnCLIPImg2ImgPipeline
    open_clip/<arch>/    open_clip_config.json + open_clip_model.safetensors
    eval/                torchvision feature networks as safetensors (alexnet, inception_v3, efficientnet_b1, swav)

Nothing in the folder is executed: weights load with safetensors only (``torch.load(weights_only=True)``
where a format has no alternative), configs are JSON, and nothing is downloaded while ``m2i`` runs.
"""

from .store import (  # noqa: F401
    MANIFEST_NAME,
    check_models,
    list_models,
    models_metadata,
    read_manifest,
    resolve_models_dir,
    write_manifest,
)
