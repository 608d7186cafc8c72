"""One loader per model component (``bids_m2i.models.loading``), on tiny random-weight models.

open_clip (model + preprocessing + tokenizer) here; the unCLIP pipeline and the evaluation networks in
tests/test_models_store.py and tests/test_evaluation_feature_spaces.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bids_m2i.errors import BadDataError, InputMissingError


def _image(seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((40, 40, 3)) * 255).astype(np.uint8))


def test_open_clip_loader_gives_model_preprocess_and_tokenizer(tmp_path):
    """Tiny random-weight CLIP: the loaded component encodes images and texts, the decoding features use
    the very object they are given (no second load), and a folder without weights is a clear error."""
    import torch

    from bids_m2i.decoding.features import ClipExtractor
    from bids_m2i.decoding.text import ClipTextSpace
    from bids_m2i.models.loading import OpenClipModel, load_open_clip_folder
    from bids_m2i.models.tiny import make_tiny_open_clip

    folder = make_tiny_open_clip(tmp_path / "open_clip" / "ViT-H-14", embed_dim=24, seed=3)
    loaded = load_open_clip_folder(folder, device="cpu")
    assert isinstance(loaded, OpenClipModel) and loaded.embed_dim == 24 and loaded.tiny
    assert not loaded.model.training
    with torch.no_grad():
        tokens = loaded.tokenizer(["a red circle"])
        text = loaded.model.encode_text(tokens, normalize=False)
        image = loaded.model.encode_image(loaded.preprocess(_image())[None], normalize=False)
    assert text.shape == image.shape == (1, 24)

    extractor = ClipExtractor(folder, loaded=loaded)
    np.testing.assert_allclose(extractor.encode_images([_image()]), image.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ClipTextSpace(extractor).encode_texts(["a red circle"]), text.numpy(), rtol=1e-6)
    assert extractor._load() is loaded
    # loaded lazily by the same loader: the same numbers
    np.testing.assert_array_equal(ClipExtractor(folder, device="cpu").encode_images([_image()]),
                                  extractor.encode_images([_image()]))

    (folder / "open_clip_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BadDataError, match="Cannot load the open_clip model"):
        load_open_clip_folder(folder, device="cpu")
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(InputMissingError, match="open_clip_model.safetensors"):
        load_open_clip_folder(folder, device="cpu")


def test_decoding_clip_comes_from_the_models_folder(tmp_path):
    from bids_m2i.models.loading import load_decoding_clip, load_open_clip
    from bids_m2i.models.tiny import make_tiny_models

    make_tiny_models(tmp_path, seed=0, include_eval=False)
    clip = load_decoding_clip(tmp_path, device="cpu")
    assert clip.is_tiny and clip._loaded is not None  # loaded once, here, before any engine uses it
    model, preprocess, info = load_open_clip(tmp_path, device="cpu")
    assert info["loaded"].folder == clip.folder
    features = clip.encode_images([_image(1)])
    import torch

    with torch.no_grad():
        expected = model.encode_image(preprocess(_image(1))[None], normalize=False).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-6)
    with pytest.raises(InputMissingError, match="models folder"):
        load_decoding_clip(None)
