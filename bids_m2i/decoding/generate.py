"""Images from predicted CLIP image embeddings with Stable unCLIP (diffusers), optionally from a low-level start.

Two ways to generate:

``generate_unclip``
    diffusers' ``StableUnCLIPImg2ImgPipeline`` called with ``image_embeds=`` (the predicted embedding
    replaces the CLIP encoding of an input image); the denoising starts from pure noise.
``generate_from_low_level``
    our own denoising loop (``--target pixels clip``): the low-level reconstruction (the ``pixels``
    decoder's image) is encoded with the VAE, noised to timestep ``t ~ strength * T`` with the scheduler,
    and only the remaining steps run, with the UNet conditioned on the (noise-augmented) predicted
    embedding and classifier-free guidance. The pipeline has no ``strength`` argument, hence this loop
    (the idea is SDEdit's, Meng et al. 2022; Brain-Diffuser and MindEye2 start from a low-level image the
    same way). ``strength = 0`` returns the VAE round trip of the low-level image, ``1`` ignores it.

Determinism: every item has its own ``torch.Generator`` seeded from ``(seed, item index)``, so an image does
not depend on the batch it was generated in, nor on the other items. Every image comes with metadata for
its JSON sidecar; images made with tiny random weights say so (``ModelsTiny``, ``Warning``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..errors import BadDataError, UsageError
from ..utils.torch_runtime import torch_threads as _torch_threads

log = logging.getLogger("m2i.decoding")

TINY_IMAGE_WARNING = "generated with tiny random weights: the image is noise"


@dataclass(frozen=True)
class GenerationSettings:
    """Sampler settings (defaults of diffusers' StableUnCLIPImg2ImgPipeline: 20 steps, guidance 10).

    Attributes
    ----------
    steps
        Number of denoising steps of the full schedule (the low-level start runs ``round(steps*strength)``).
    guidance_scale
        Classifier-free guidance weight (``<= 1`` disables guidance: one UNet pass per step).
    noise_level
        Noise augmentation of the image embedding, in the image-noising scheduler's timesteps (0..999);
        SD 2.1 unCLIP was trained with it, 0 keeps the embedding as predicted.
    strength
        Low-level start only: fraction of the schedule that is re-run from the noised low-level latent.
    batch_size
        Items per UNet batch (a memory knob: results do not depend on it).
    text_weight
        With a prompt (the caption retrieved by the text channel): the weight of text guidance against image
        guidance (0 = image only, 1 = text only; see ``_mixed_guidance``).
    """

    steps: int = 20
    guidance_scale: float = 10.0
    noise_level: int = 0
    strength: float = 0.75
    batch_size: int = 4
    text_weight: float = 0.5

    def validate(self) -> None:
        if self.steps < 1:
            raise UsageError(f"steps must be >= 1 (got {self.steps})")
        if not 0.0 <= self.strength <= 1.0:
            raise UsageError(f"strength must be in [0, 1] (got {self.strength})")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be >= 1 (got {self.batch_size})")
        if self.noise_level < 0:
            raise UsageError(f"noise level must be >= 0 (got {self.noise_level})")
        if not 0.0 <= self.text_weight <= 1.0:
            raise UsageError(f"text weight must be in [0, 1] (got {self.text_weight})")


def item_seeds(seed: int, n_items: int, offset: int = 0) -> list[int]:
    """Independent per-item seeds from one run seed (numpy SeedSequence of ``(seed, item index)``).

    ``offset`` is the index of the first item, so that generating items 10..19 alone gives the same seeds
    as generating 0..19 and keeping 10..19.
    """
    return [int(np.random.SeedSequence([int(seed), offset + i]).generate_state(1, dtype=np.uint32)[0]) for i in range(n_items)]


def _generators(seeds: Sequence[int], device) -> list:
    import torch

    # CUDA generators for CUDA runs: diffusers' randn_tensor would otherwise draw on the CPU and copy
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    return [torch.Generator(device=kind).manual_seed(int(s)) for s in seeds]


def _embeds_tensor(pipeline, image_embeds, settings: GenerationSettings) -> "torch.Tensor":
    import torch

    from ..models.loading import image_embed_dim

    settings.validate()
    max_level = int(pipeline.image_noising_scheduler.config.num_train_timesteps) - 1
    if settings.noise_level > max_level:
        raise UsageError(f"noise level must be in 0..{max_level} (got {settings.noise_level})")

    embeds = torch.as_tensor(np.asarray(image_embeds, dtype=np.float32))
    if embeds.ndim != 2:
        raise BadDataError(f"image embeddings must be a 2-D array (items x features), got shape {tuple(embeds.shape)}")
    expected = image_embed_dim(pipeline)
    if embeds.shape[1] != expected:
        raise BadDataError(
            f"the predicted CLIP features are {embeds.shape[1]}-d but the unCLIP model expects {expected}-d",
            hint="use the open_clip model of the models folder that matches unclip (ViT-H-14 for SD 2.1 unCLIP-H)",
        )
    if not torch.isfinite(embeds).all():
        raise BadDataError("the predicted CLIP features contain NaN or infinite values", hint="check the decoder")
    return embeds.to(device=pipeline.device, dtype=pipeline.unet.dtype)


def _batches(n_items: int, batch_size: int):
    for start in range(0, n_items, batch_size):
        yield slice(start, min(n_items, start + batch_size))


def generate_unclip(
    pipeline,
    image_embeds,
    seeds: Sequence[int],
    settings: GenerationSettings = GenerationSettings(),
    *,
    height: int | None = None,
    width: int | None = None,
    n_threads: int | None = None,
):
    """Generate one image per embedding with the unCLIP pipeline (denoising from noise).

    Parameters
    ----------
    pipeline
        ``StableUnCLIPImg2ImgPipeline`` (see :func:`bids_m2i.models.loading.load_unclip_pipeline`).
    image_embeds
        Array ``(n_items, embed_dim)``: predicted CLIP image embeddings, un-normalised (as the image encoder
        of the pipeline outputs them).
    seeds
        One seed per item (:func:`item_seeds`).
    settings
        Steps, guidance, embedding noise level, batch size.
    height, width
        Output size in pixels; default the model's native size (768 for SD 2.1 unCLIP).

    Returns
    -------
    list of PIL.Image.Image, one per item, in order.
    """
    import torch

    embeds = _embeds_tensor(pipeline, image_embeds, settings)
    if len(seeds) != embeds.shape[0]:
        raise UsageError(f"{len(seeds)} seeds for {embeds.shape[0]} embeddings")
    images = []
    with _torch_threads(n_threads), torch.inference_mode():
        for batch in _batches(embeds.shape[0], settings.batch_size):
            n = batch.stop - batch.start
            output = pipeline(
                prompt=[""] * n,  # a list: one (empty) prompt per embedding, so batch sizes agree
                image_embeds=embeds[batch],
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                noise_level=settings.noise_level,
                generator=_generators(seeds[batch], pipeline.device),
                height=height,
                width=width,
                output_type="pil",
            )
            images.extend(output.images)
    return images


def _native_size(pipeline) -> int:
    return int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)


def _encode_low_level(pipeline, low_level_images, height: int, width: int):
    """VAE latents (mean of the posterior, scaled) of the low-level images, resized to the output size."""
    pixels = pipeline.image_processor.preprocess(list(low_level_images), height=height, width=width)
    pixels = pixels.to(device=pipeline.device, dtype=pipeline.vae.dtype)
    # the posterior mean, not a sample: the low-level image is the start, its randomness comes from the
    # scheduler noise below
    latents = pipeline.vae.encode(pixels).latent_dist.mode()
    return latents * pipeline.vae.config.scaling_factor


def _decode(pipeline, latents):
    decoded = pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor, return_dict=False)[0]
    return pipeline.image_processor.postprocess(decoded, output_type="pil")


def _start_timesteps(pipeline, steps: int, strength: float):
    """The tail of the sampler's schedule that starts near ``strength * T`` (empty for strength 0)."""
    scheduler = pipeline.scheduler
    scheduler.set_timesteps(steps, device=pipeline.device)
    n_run = min(steps, int(round(steps * strength)))
    order = int(getattr(scheduler, "order", 1))
    timesteps = scheduler.timesteps[(steps - n_run) * order :]
    if hasattr(scheduler, "set_begin_index"):
        # multistep/Karras schedulers track their position; tell them we start part-way
        scheduler.set_begin_index((steps - n_run) * order)
    return timesteps


def _low_level_batch(pipeline, embeds, low_level_images, generators, settings: GenerationSettings, height, width,
                     prompts=None):
    """Denoise one batch: from the noised low-level latent (``low_level_images``) or from noise (None), guided
    by the image embedding and, when ``prompts`` are given, by the text prompt (see :func:`_mixed_guidance`)."""
    import torch

    device = pipeline.device
    n = embeds.shape[0]
    guided = settings.guidance_scale > 1.0
    with_text = prompts is not None and settings.text_weight > 0

    # the empty text, as the pipeline does when only an image embedding is given
    empty_embeds, _ = pipeline.encode_prompt(
        prompt=[""] * n, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    # the pipeline's own noise augmentation of the embedding: normalise, noise at noise_level, unnormalise,
    # append the sinusoidal noise-level embedding -> (n, 2 * embed_dim) class labels of the UNet
    class_labels = pipeline.noise_image_embeddings(
        image_embeds=embeds, noise_level=settings.noise_level, generator=generators
    )
    zero_labels = torch.zeros_like(class_labels)  # the unconditional class label of StableUnCLIPImg2ImgPipeline
    # branches: [image] (+ [text] with a prompt) (+ [unconditional] with guidance), one UNet batch
    texts, labels = [empty_embeds], [class_labels]
    if with_text:
        text_embeds, _ = pipeline.encode_prompt(
            prompt=list(prompts), device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        texts.append(text_embeds)
        labels.append(zero_labels if guided else class_labels)
    if guided:
        texts.append(empty_embeds)
        labels.append(zero_labels)
    prompt_embeds, class_labels = torch.cat(texts), torch.cat(labels)

    timesteps = _start_timesteps(pipeline, settings.steps, settings.strength if low_level_images is not None else 1.0)
    noise_shape = (pipeline.unet.config.in_channels, height // pipeline.vae_scale_factor,
                   width // pipeline.vae_scale_factor)
    noise = torch.stack(
        [torch.randn(noise_shape, generator=g, device=g.device, dtype=torch.float32) for g in generators]
    ).to(device=device, dtype=prompt_embeds.dtype)
    if low_level_images is not None:
        clean_latents = _encode_low_level(pipeline, low_level_images, height, width).to(prompt_embeds.dtype)
        if len(timesteps) == 0:
            return _decode(pipeline, clean_latents)
        latents = pipeline.scheduler.add_noise(clean_latents, noise, timesteps[:1].repeat(n))
    else:
        latents = noise * pipeline.scheduler.init_noise_sigma
    step_kwargs = pipeline.prepare_extra_step_kwargs(generators, 0.0)
    n_branches = len(texts)
    for t in timesteps:
        model_input = torch.cat([latents] * n_branches)
        model_input = pipeline.scheduler.scale_model_input(model_input, t)
        prediction = pipeline.unet(
            model_input, t, encoder_hidden_states=prompt_embeds, class_labels=class_labels, return_dict=False
        )[0]
        prediction = _mixed_guidance(prediction.chunk(n_branches), with_text, guided, settings)
        latents = pipeline.scheduler.step(prediction, t, latents, **step_kwargs, return_dict=False)[0]
    return _decode(pipeline, latents)


def _mixed_guidance(branches, with_text: bool, guided: bool, settings: GenerationSettings):
    """Noise prediction from the branches' predictions (composable guidance, Liu et al. 2022).

    With guidance and a prompt: ``u + g * ((1 - w) * (e_image - u) + w * (e_text - u))`` where ``e_image`` is
    conditioned on the decoded image embedding (empty text), ``e_text`` on the retrieved caption (no image
    embedding), ``u`` on neither, ``g`` the guidance scale and ``w`` = ``text_weight`` (0.5: image and text
    guidance half and half, as MIRAGE mixes them). Without guidance: the two conditional predictions are
    mixed with the same weights (``e_text`` then also carries the image embedding).
    """
    image = branches[0]
    text = branches[1] if with_text else None
    w = settings.text_weight
    if not guided:
        return image if text is None else (1 - w) * image + w * text
    unconditional = branches[-1]
    direction = image - unconditional
    if text is not None:
        direction = (1 - w) * direction + w * (text - unconditional)
    return unconditional + settings.guidance_scale * direction


def generate_from_low_level(
    pipeline,
    image_embeds,
    low_level_images: Sequence,
    seeds: Sequence[int],
    settings: GenerationSettings = GenerationSettings(),
    *,
    height: int | None = None,
    width: int | None = None,
    n_threads: int | None = None,
    prompts: Sequence[str] | None = None,
):
    """Generate images starting from noised latents of low-level reconstructions (or from noise).

    Parameters
    ----------
    pipeline
        ``StableUnCLIPImg2ImgPipeline``.
    image_embeds
        Array ``(n_items, embed_dim)`` of predicted CLIP image embeddings.
    low_level_images
        ``n_items`` PIL images (or arrays ``(H, W, 3)`` in [0, 1]): the ``pixels`` decoder's
        reconstructions; resized to the output size. None: the whole schedule runs from noise.
    prompts
        ``n_items`` texts (the captions the text channel retrieved), mixed with the image guidance by
        ``settings.text_weight``; None: image guidance only.
    seeds
        One seed per item.
    settings
        ``strength`` in [0, 1]: 0 returns the VAE round trip of the low-level image, 1 a generation from
        (almost) pure noise.

    Returns
    -------
    list of PIL.Image.Image, one per item.
    """
    import torch

    embeds = _embeds_tensor(pipeline, image_embeds, settings)
    n_items = embeds.shape[0]
    n_low = n_items if low_level_images is None else len(low_level_images)
    if len(seeds) != n_items or n_low != n_items or (prompts is not None and len(prompts) != n_items):
        raise UsageError(f"{n_items} embeddings, {n_low} low-level images and {len(seeds)} seeds"
                         + (f" and {len(prompts)} prompts" if prompts is not None else ""))
    height = height or _native_size(pipeline)
    width = width or _native_size(pipeline)
    images = []
    with _torch_threads(n_threads), torch.inference_mode():
        for batch in _batches(n_items, settings.batch_size):
            images.extend(
                _low_level_batch(
                    pipeline,
                    embeds[batch],
                    None if low_level_images is None else list(low_level_images[batch]),
                    _generators(seeds[batch], pipeline.device),
                    settings,
                    height,
                    width,
                    prompts=None if prompts is None else list(prompts[batch]),
                )
            )
    return images


def image_metadata(info: dict, seed: int, settings: GenerationSettings, *, low_level_start: bool, models=None) -> dict:
    """Sidecar fields of one generated image (BIDS-style CamelCase keys).

    ``info`` is what :func:`~bids_m2i.models.loading.load_unclip_pipeline` returns; ``models`` what
    :func:`~bids_m2i.models.store.models_metadata` returns (merged in when given).
    """
    meta = {
        "Generator": "unclip",
        "GeneratorStart": "low-level reconstruction" if low_level_start else "noise",
        "Seed": int(seed),
        "Steps": settings.steps,
        "GuidanceScale": settings.guidance_scale,
        "NoiseLevel": settings.noise_level,
        "Strength": settings.strength if low_level_start else None,
        "ImageEmbedDim": info.get("image_embed_dim"),
        "Device": info.get("device"),
        "DType": info.get("dtype"),
        "UnclipSource": info.get("source"),
        "ModelsTiny": bool(info.get("tiny", False)),
    }
    if meta["Strength"] is None:
        del meta["Strength"]
    if models:
        meta.update({k: v for k, v in models.items() if k not in meta or k == "ModelsTiny"})
        meta["ModelsTiny"] = bool(info.get("tiny", False)) or bool(models.get("ModelsTiny", False))
    if meta["ModelsTiny"]:
        meta["Warning"] = TINY_IMAGE_WARNING
    return meta


def generate_images(
    models_dir: str | os.PathLike,
    image_embeds,
    *,
    seed: int = 0,
    item_offset: int = 0,
    low_level_images: Sequence | None = None,
    settings: GenerationSettings = GenerationSettings(),
    device: str = "auto",
    n_threads: int | None = None,
    pipeline=None,
    info: dict | None = None,
    prompts: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
):
    """Load the unCLIP pipeline (unless given) and generate one image per embedding, with sidecar metadata.

    Parameters
    ----------
    models_dir
        The models folder (``--models-dir``).
    image_embeds
        Array ``(n_items, embed_dim)``.
    seed, item_offset
        Run seed and the index of the first item (seeds per item: :func:`item_seeds`).
    low_level_images
        ``n_items`` low-level reconstructions for the low-level start, or None for unCLIP from noise.
    pipeline, info
        An already loaded pipeline and its info (from ``load_unclip_pipeline``), to load once per run.
    prompts
        One text prompt per item (retrieved captions), mixed with image guidance (``settings.text_weight``).
    seeds
        One seed per image, overriding :func:`item_seeds` (best-of-N candidates have seeds of their own).

    Returns
    -------
    (images, metadata)
        Lists of PIL images and of sidecar dicts, one per item.
    """
    from ..models.loading import load_unclip_pipeline
    from ..models.store import models_metadata

    if pipeline is None:
        pipeline, info = load_unclip_pipeline(models_dir, device=device)
    info = info or {}
    n_items = int(np.shape(image_embeds)[0])
    seeds = list(seeds) if seeds is not None else item_seeds(seed, n_items, offset=item_offset)
    if low_level_images is None and prompts is None:
        images = generate_unclip(pipeline, image_embeds, seeds, settings, n_threads=n_threads)
    else:
        images = generate_from_low_level(pipeline, image_embeds, low_level_images, seeds, settings, n_threads=n_threads,
                                         prompts=prompts)
    models = models_metadata(models_dir, components=["unclip"]) if models_dir is not None else None
    metadata = [
        image_metadata(info, s, settings, low_level_start=low_level_images is not None, models=models) for s in seeds
    ]
    for k, meta in enumerate(metadata):
        meta["GenerationSettings"] = asdict(settings)
        meta["Prompt"] = prompts[k] if prompts is not None else ""
        if prompts is not None:
            meta["TextWeight"] = settings.text_weight
    return images, metadata
