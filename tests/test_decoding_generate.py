"""unCLIP generation and the low-level start, on tiny random-weight models (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bids_m2i.decoding.generate import (
    GenerationSettings,
    generate_from_low_level,
    generate_images,
    generate_unclip,
    image_metadata,
    item_seeds,
)
from bids_m2i.errors import BadDataError, UsageError

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from bids_m2i.models.tiny import make_tiny_models

    folder = tmp_path_factory.mktemp("gen_models") / "tiny"
    make_tiny_models(folder, seed=0, include_eval=False)
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_models):
    from bids_m2i.models.loading import load_unclip_pipeline

    return load_unclip_pipeline(tiny_models, device="cpu")


@pytest.fixture()
def embeds():
    return np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)


@pytest.fixture()
def low_level_images():
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    base = np.stack([xx, yy, (xx + yy) / 2], axis=-1)
    return [Image.fromarray((base * 255 * (0.4 + 0.3 * k)).astype(np.uint8)) for k in range(3)]


def _arr(image):
    return np.asarray(image, dtype=np.float64)


def _mean_abs(a, b):
    return float(np.abs(_arr(a) - _arr(b)).mean())


FAST = GenerationSettings(steps=4, guidance_scale=3.0, batch_size=3)


def test_item_seeds_are_per_item_and_offset_consistent():
    seeds = item_seeds(7, 5)
    assert len(set(seeds)) == 5
    assert item_seeds(7, 3, offset=2) == seeds[2:]
    assert item_seeds(8, 5) != seeds


def test_unclip_images_have_the_model_size(tiny_pipeline, embeds):
    pipeline, info = tiny_pipeline
    assert info["image_embed_dim"] == 32 and info["tiny"] is True
    images = generate_unclip(pipeline, embeds, item_seeds(0, 3), FAST)
    assert len(images) == 3
    assert all(im.size == (32, 32) and im.mode == "RGB" for im in images)
    # distinct embeddings and seeds give distinct images
    assert _mean_abs(images[0], images[1]) > 1.0


def test_unclip_is_deterministic_and_seed_dependent(tiny_pipeline, embeds):
    pipeline, _ = tiny_pipeline
    seeds = item_seeds(0, 3)
    first = generate_unclip(pipeline, embeds, seeds, FAST)
    again = generate_unclip(pipeline, embeds, seeds, FAST)
    other = generate_unclip(pipeline, embeds, item_seeds(1, 3), FAST)
    assert all(np.array_equal(_arr(a), _arr(b)) for a, b in zip(first, again))
    assert all(_mean_abs(a, b) > 1.0 for a, b in zip(first, other))


def test_unclip_batched_equals_unbatched(tiny_pipeline, embeds):
    pipeline, _ = tiny_pipeline
    seeds = item_seeds(0, 3)
    batched = generate_unclip(pipeline, embeds, seeds, FAST)
    single = generate_unclip(pipeline, embeds, seeds, GenerationSettings(steps=4, guidance_scale=3.0, batch_size=1))
    alone = generate_unclip(pipeline, embeds[2:], seeds[2:], FAST)
    for a, b in zip(batched, single):
        # batched convolutions may round differently: allow one or two grey levels
        assert np.abs(_arr(a) - _arr(b)).max() <= 2
    assert np.abs(_arr(batched[2]) - _arr(alone[0])).max() <= 2


def test_embedding_conditions_the_image(tiny_pipeline, embeds):
    pipeline, _ = tiny_pipeline
    seeds = [11, 11]
    two = np.stack([embeds[0], embeds[1] * 3.0])
    images = generate_unclip(pipeline, two, seeds, FAST)
    assert _mean_abs(images[0], images[1]) > 0.5  # same seed, different embedding -> different image


def test_wrong_embedding_size_is_bad_data(tiny_pipeline):
    pipeline, _ = tiny_pipeline
    with pytest.raises(BadDataError, match="1024-d but the unCLIP model expects 32-d"):
        generate_unclip(pipeline, np.zeros((1, 1024), np.float32), [0], FAST)
    with pytest.raises(BadDataError, match="NaN"):
        generate_unclip(pipeline, np.full((1, 32), np.nan, np.float32), [0], FAST)
    with pytest.raises(UsageError):
        generate_unclip(pipeline, np.zeros((2, 32), np.float32), [0], FAST)


def _vae_round_trip(pipeline, image):
    """Encode (posterior mean) and decode with the VAE, computed here independently of generate.py."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        latent = pipeline.vae.encode(x).latent_dist.mean
        y = pipeline.vae.decode(latent).sample
    y = ((y[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).numpy()
    return y


def test_low_level_start_at_strength_zero_is_the_vae_round_trip(tiny_pipeline, embeds, low_level_images):
    pipeline, _ = tiny_pipeline
    seeds = item_seeds(0, 3)
    out = generate_from_low_level(pipeline, embeds, low_level_images, seeds, GenerationSettings(steps=20, strength=0.0))
    for image, low in zip(out, low_level_images):
        expected = _vae_round_trip(pipeline, low)
        assert image.size == (32, 32)
        assert np.abs(_arr(image) - expected).max() <= 1.0  # uint8 rounding only


def test_low_level_start_moves_away_with_strength(tiny_pipeline, embeds, low_level_images):
    pipeline, _ = tiny_pipeline
    seeds = item_seeds(0, 3)
    reference = [_vae_round_trip(pipeline, low) for low in low_level_images]

    def distance(strength):
        out = generate_from_low_level(
            pipeline, embeds, low_level_images, seeds, GenerationSettings(steps=20, strength=strength, batch_size=3)
        )
        return np.mean([np.abs(_arr(o) - r).mean() for o, r in zip(out, reference)])

    near, mid, far = distance(0.05), distance(0.3), distance(1.0)
    assert near < 5.0  # one small step from t=1: (nearly) the round trip
    assert near < mid < far


def test_low_level_start_is_deterministic_and_batch_independent(tiny_pipeline, embeds, low_level_images):
    pipeline, _ = tiny_pipeline
    seeds = item_seeds(3, 3)
    settings = GenerationSettings(steps=6, strength=0.5, guidance_scale=5.0, batch_size=3)
    a = generate_from_low_level(pipeline, embeds, low_level_images, seeds, settings)
    b = generate_from_low_level(pipeline, embeds, low_level_images, seeds, settings)
    c = generate_from_low_level(
        pipeline, embeds, low_level_images, seeds, GenerationSettings(steps=6, strength=0.5, guidance_scale=5.0, batch_size=1)
    )
    d = generate_from_low_level(pipeline, embeds, low_level_images, item_seeds(4, 3), settings)
    for x, y, z, w in zip(a, b, c, d):
        assert np.array_equal(_arr(x), _arr(y))
        assert np.abs(_arr(x) - _arr(z)).max() <= 2
        assert _mean_abs(x, w) > 0.5


def test_low_level_start_resizes_the_input(tiny_pipeline, embeds):
    pipeline, _ = tiny_pipeline
    big = [Image.new("RGB", (64, 48), (200, 30, 30))]
    out = generate_from_low_level(pipeline, embeds[:1], big, [0], GenerationSettings(steps=4, strength=0.5))
    assert out[0].size == (32, 32)


def test_settings_are_validated(tiny_pipeline, embeds, low_level_images):
    pipeline, _ = tiny_pipeline
    with pytest.raises(UsageError):
        generate_from_low_level(pipeline, embeds, low_level_images, item_seeds(0, 3), GenerationSettings(strength=1.5))
    with pytest.raises(UsageError):
        generate_unclip(pipeline, embeds, item_seeds(0, 3), GenerationSettings(steps=0))
    with pytest.raises(UsageError, match="0..999"):
        generate_unclip(pipeline, embeds, item_seeds(0, 3), GenerationSettings(noise_level=1000))


def test_metadata_says_tiny_and_records_settings(tiny_models, tiny_pipeline, embeds, low_level_images):
    pipeline, info = tiny_pipeline
    settings = GenerationSettings(steps=3, strength=0.4, batch_size=2)
    images, meta = generate_images(
        tiny_models, embeds, seed=5, low_level_images=low_level_images, settings=settings, pipeline=pipeline, info=info
    )
    assert len(images) == len(meta) == 3
    assert [m["Seed"] for m in meta] == item_seeds(5, 3)
    for m in meta:
        assert m["ModelsTiny"] is True
        assert m["Warning"] == "generated with tiny random weights: the image is noise"
        assert m["Strength"] == 0.4 and m["Steps"] == 3 and m["GeneratorStart"] == "low-level reconstruction"
        assert "unclip" in m["Models"]
    plain = image_metadata({"tiny": False}, 1, settings, low_level_start=False)
    assert "Warning" not in plain and "Strength" not in plain and plain["ModelsTiny"] is False


def test_clip_features_to_unclip_end_to_end(tiny_models, tiny_pipeline, low_level_images):
    """Tiny open_clip image embeddings have the size the tiny unCLIP expects: clip -> unclip runs."""
    from bids_m2i.models.loading import load_open_clip

    pipeline, info = tiny_pipeline
    model, preprocess, clip_info = load_open_clip(tiny_models, device="cpu")
    with torch.no_grad():
        features = model.encode_image(torch.stack([preprocess(im) for im in low_level_images])).numpy()
    images, meta = generate_images(
        tiny_models, features, settings=GenerationSettings(steps=2, batch_size=3), pipeline=pipeline, info=info
    )
    assert features.shape == (3, clip_info["embed_dim"]) and len(images) == 3
    assert meta[0]["GeneratorStart"] == "noise"


def test_generate_images_loads_the_pipeline_itself(tiny_models, embeds):
    images, meta = generate_images(tiny_models, embeds[:1], settings=GenerationSettings(steps=2), device="cpu")
    assert images[0].size == (32, 32) and meta[0]["Device"] == "cpu" and meta[0]["DType"] == "float32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_generation(tiny_models, embeds, low_level_images):
    """On a GPU the pipeline runs in fp16; seeds still fix the images and batching does not change them."""
    from bids_m2i.models.loading import load_unclip_pipeline

    pipeline, info = load_unclip_pipeline(tiny_models, device="auto")
    assert info["device"].startswith("cuda") and info["dtype"] == "float16"
    assert pipeline.unet.dtype == torch.float16
    seeds = item_seeds(0, 3)
    a = generate_unclip(pipeline, embeds, seeds, FAST)
    b = generate_unclip(pipeline, embeds, seeds, FAST)
    c = generate_unclip(pipeline, embeds, seeds, GenerationSettings(steps=4, guidance_scale=3.0, batch_size=1))
    for x, y, z in zip(a, b, c):
        assert x.size == (32, 32)
        assert np.array_equal(_arr(x), _arr(y))
        assert np.abs(_arr(x) - _arr(z)).mean() < 2.0  # fp16 batched kernels may round differently
    zero = generate_from_low_level(pipeline, embeds, low_level_images, seeds, GenerationSettings(steps=20, strength=0.0))
    cpu_pipeline, _ = load_unclip_pipeline(tiny_models, device="cpu")
    for image, low in zip(zero, low_level_images):
        assert np.abs(_arr(image) - _vae_round_trip(cpu_pipeline, low)).mean() < 3.0  # fp16 vs fp32 round trip
    out = generate_from_low_level(pipeline, embeds, low_level_images, seeds, GenerationSettings(steps=6, strength=0.5))
    assert all(np.isfinite(_arr(o)).all() and _arr(o).std() > 0 for o in out)


def test_prompt_conditions_the_image_by_its_text_weight(tiny_pipeline, embeds, low_level_images):
    pipeline, _ = tiny_pipeline
    seeds = item_seeds(0, 3)
    prompts = ["a red circle", "a blue square", "a green star"]

    def run(weight, texts, low=low_level_images):
        settings = GenerationSettings(steps=4, guidance_scale=3.0, batch_size=3, text_weight=weight)
        return generate_from_low_level(pipeline, embeds, low, seeds, settings, prompts=texts)

    image_only = run(0.5, None)
    # text weight 0 is image guidance only, whatever the prompt
    assert all(_mean_abs(a, b) == 0 for a, b in zip(run(0.0, prompts), image_only))
    mixed = run(0.5, prompts)
    assert all(_mean_abs(a, b) > 0 for a, b in zip(mixed, image_only))
    # another prompt, another image; the same prompt, the same image
    other = run(0.5, list(reversed(prompts)))
    assert _mean_abs(mixed[0], other[0]) > 0 and _mean_abs(mixed[1], other[1]) == 0
    # from noise (no low-level start) with a prompt works too
    assert run(0.5, prompts, low=None)[0].size == (32, 32)
    with pytest.raises(UsageError):
        GenerationSettings(text_weight=1.5).validate()


def test_best_of_n_keeps_the_candidate_closest_to_the_decoded_embedding(tmp_path):
    from bids_m2i.decoding.select import ClipCosineSelector, candidate_seeds, save_candidates

    seeds = candidate_seeds(7, 3, 4)
    assert seeds.shape == (3, 4) and len(np.unique(seeds)) == 12
    assert seeds[:, 0].tolist() == item_seeds(7, 3)  # N = 1 gives the usual image

    class MeanColour:  # a stand-in encoder: the mean RGB of the image
        def encode_images(self, images):
            return np.stack([np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) for im in images])

    colours = [(250, 5, 5), (5, 250, 5), (5, 5, 250), (128, 128, 5)]
    candidates = [[Image.new("RGB", (8, 8), c) for c in colours] for _ in range(3)]
    decoded = np.array([[0, 1, 0], [0.1, 0, 1], [1, 1, 0]], dtype=np.float32)
    chosen, scores = ClipCosineSelector(MeanColour()).select(candidates, decoded)
    assert chosen.tolist() == [1, 2, 3]
    assert scores.shape == (3, 4) and (scores.argmax(1) == chosen).all()
    paths = save_candidates(tmp_path, candidates, seeds)
    assert len(paths) == 3 and all(len(row) == 4 for row in paths)
    assert paths[2][3].endswith(f"item-0002_cand-03_seed-{seeds[2, 3]}.png")
