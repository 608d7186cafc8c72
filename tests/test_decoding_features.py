"""Stimulus features: pixels (+ PCA inverse), tiny open_clip, cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bids_m2i.decoding import features as F
from bids_m2i.models.tiny import make_tiny_open_clip


def _write_images(folder, n=5, size=(40, 30)):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        path = folder / f"img-{i:02d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def test_pixel_vector_box_downsampling_known_answer():
    arr = np.zeros((4, 6, 3), np.uint8)  # centre square = columns 1..4
    arr[:, 1:3] = 255
    vec = F.pixel_vector(Image.fromarray(arr), size=2)
    assert vec.shape == (12,) and vec.dtype == np.float32
    np.testing.assert_allclose(vec.reshape(2, 2, 3)[:, :, 0], [[1, 0], [1, 0]])


def test_pca_roundtrip_and_pixels_to_image():
    rng = np.random.default_rng(3)
    train = rng.random((30, 48)).astype(np.float32)
    basis = F.PixelBasis.fit(train, n_components=50)
    assert basis.n_components == 29  # at most n - 1
    coeffs = basis.transform(train)
    np.testing.assert_allclose(basis.inverse_transform(coeffs), train, atol=1e-5)
    image = F.pixels_to_image(coeffs[0], (4, 4, 3), basis)
    assert image.size == (4, 4) and image.mode == "RGB"
    np.testing.assert_allclose(np.asarray(image) / 255.0, train[0].reshape(4, 4, 3), atol=1 / 255 + 1e-5)
    clipped = F.pixels_to_image(np.full(48, 2.0), (4, 4, 3))
    assert np.asarray(clipped).max() == 255


def test_cache_hit_gives_identical_arrays_and_skips_work(tmp_path, monkeypatch):
    paths = _write_images(tmp_path)
    extractor = F.PixelExtractor(size=8)
    first = F.stimulus_features(paths + paths[:2], extractor, work_dir=tmp_path / "work")
    cache = F.feature_cache_dir(tmp_path / "work", extractor)
    assert len(list(cache.glob("*.npy"))) == 5

    def forbidden(images):
        raise AssertionError("cache miss")

    monkeypatch.setattr(extractor, "encode_images", forbidden)
    second = F.stimulus_features(paths + paths[:2], extractor, work_dir=tmp_path / "work")
    np.testing.assert_array_equal(first, second)
    # keyed by content: a renamed copy hits the cache, an edited file does not
    renamed = tmp_path / "renamed.png"
    renamed.write_bytes(paths[0].read_bytes())
    np.testing.assert_array_equal(F.stimulus_features([renamed], extractor, tmp_path / "work")[0], first[0])
    Image.new("RGB", (10, 10), (1, 2, 3)).save(paths[1])
    with pytest.raises(AssertionError, match="cache miss"):
        F.stimulus_features([paths[1]], extractor, tmp_path / "work")
    assert F.PixelExtractor(size=16).fingerprint() != extractor.fingerprint()


def test_missing_stimulus_is_input_missing(tmp_path):
    from bids_m2i.errors import InputMissingError

    with pytest.raises(InputMissingError):
        F.stimulus_features([tmp_path / "nope.png"], F.PixelExtractor(8))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_open_clip(tmp_path_factory.mktemp("models") / "open_clip" / "ViT-H-14", embed_dim=48, seed=0)


def test_tiny_clip_features_shape_and_determinism(tiny_clip, tmp_path):
    paths = _write_images(tmp_path, n=3)
    ex = F.make_extractor("clip", models_dir=tiny_clip.parent.parent, device="cpu")
    assert ex.is_tiny and ex.dim == 48
    feats = F.stimulus_features(paths, ex, work_dir=tmp_path / "work")
    assert feats.shape == (3, 48) and feats.dtype == np.float32
    assert np.linalg.norm(feats, axis=1).std() > 0 or not np.allclose(np.linalg.norm(feats, axis=1), 1.0)
    again = F.ClipExtractor(tiny_clip, device="cpu").encode_images([F.load_image(p) for p in paths])
    np.testing.assert_allclose(again, feats, rtol=1e-5, atol=1e-6)
    texts = ex.encode_texts(["a red square", "a blue circle"])
    assert texts.shape == (2, 48) and not np.allclose(texts[0], texts[1])
    # same seed -> identical weights file; other seed -> different
    other = make_tiny_open_clip(tmp_path / "same", embed_dim=48, seed=0)
    assert (other / "open_clip_model.safetensors").read_bytes() == (tiny_clip / "open_clip_model.safetensors").read_bytes()
    diff = make_tiny_open_clip(tmp_path / "diff", embed_dim=48, seed=1)
    assert F.ClipExtractor(diff).fingerprint() != ex.fingerprint()


def test_missing_clip_folder_is_input_missing(tmp_path):
    from bids_m2i.errors import InputMissingError

    with pytest.raises(InputMissingError):
        F.ClipExtractor(tmp_path / "open_clip" / "ViT-H-14")


def test_category_means():
    feats = np.array([[1, 0], [3, 0], [0, 5]], np.float32)
    labels, means = F.category_means(feats, ["cat", "cat", "dog"])
    assert list(labels) == ["cat", "dog"]
    np.testing.assert_allclose(means, [[2, 0], [0, 5]])
